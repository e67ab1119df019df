# HGRN2. Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion", arXiv:2404.07904.
# Causal only.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'hgrn2'
