# cosFormer. Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention", arXiv:2202.08791.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'cosformer'
