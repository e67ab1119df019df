# TransNormerLLM's lightning attention. Qin et al. 2023, "TransNormerLLM", arXiv:2307.14995; Qin et al. 2024,
# "Lightning Attention-2", arXiv:2401.04658.
# Causal only.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'lightning'
