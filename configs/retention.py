# RetNet multi-scale retention. Sun et al. 2023, "Retentive Network", arXiv:2307.08621.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'retention'
