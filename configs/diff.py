# Differential attention. Ye et al. 2024, "Differential Transformer", arXiv:2410.05258. Causal and bidirectional.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'diff'
