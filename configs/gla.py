# GLA. Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training", arXiv:2312.06635.
# Causal only.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'gla'
