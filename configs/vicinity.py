# Vicinity attention. Sun et al. 2022, "Vicinity Vision Transformer", arXiv:2206.10552.
# train_vit.py only (it reads the patch grid); bidirectional.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'vicinity'
