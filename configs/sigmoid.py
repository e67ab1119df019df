# Sigmoid attention. Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
# arXiv:2409.04431. Causal and bidirectional.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'sigmoid'
