# Synthesizer. Tay et al. 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models", arXiv:2005.00743
# (synthesizer_mode: 'dense' or 'random').
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'synthesizer'
