# AFT. Zhai et al. 2021, "An Attention Free Transformer", arXiv:2105.14103 (aft_window = s for AFT-local, 0 = simple).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'aft'
