# Forgetting attention (FoX). Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate",
# arXiv:2503.02130. Causal only.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'fox'
