# BigBird (ITC). Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", arXiv:2007.14062.
# Causal: window and global blocks only (bigbird_random is bidirectional).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'bigbird'
