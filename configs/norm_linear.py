# TransNormer's NormAttention. Qin et al. 2022, "The Devil in Linear Transformer", arXiv:2210.10340.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'norm_linear'
