# DeltaNet. Yang et al. 2024,
# "Parallelizing Linear Transformers with the Delta Rule over Sequence Length", arXiv:2406.06484.
# Causal only; the paper adds --short_conv=4.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'deltanet'
