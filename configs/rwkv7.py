# RWKV-7 "Goose" time mixing. Peng et al. 2025, arXiv:2503.14456. Causal only; its token shift is not modelled
# (--short_conv=2 mixes each token with the one before instead).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'rwkv7'
