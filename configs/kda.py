# Kimi Delta Attention. Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention Architecture",
# arXiv:2510.26692. Causal only; the paper adds --short_conv=4.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'kda'
