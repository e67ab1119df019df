# Performer, FAVOR+. Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'performer'
