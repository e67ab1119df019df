# Spatial-reduction attention. Wang et al. 2021, "Pyramid Vision Transformer", arXiv:2102.12122 (sra_ratio = R).
# train_vit.py only (it reads the patch grid); bidirectional.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'sra'
