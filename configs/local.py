# Sliding-window softmax attention. Child et al. 2019 (arXiv:1904.10509), Beltagy et al. 2020 (arXiv:2004.05150).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'local'
