# FNet. Lee-Thorp et al. 2021, "FNet: Mixing Tokens with Fourier Transforms", arXiv:2105.03824.
# Bidirectional only.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'fnet'
