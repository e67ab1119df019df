# Hedgehog. Zhang et al. 2024,
# "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry", arXiv:2402.04347.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'hedgehog'
