# Scaled dot-product attention. Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'softmax'
