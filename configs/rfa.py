# RFA. Peng et al. 2021, "Random Feature Attention", arXiv:2103.02143 (gated in causal mode: rfa_gate).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'rfa'
