# Nystromformer. Xiong et al. 2021, "Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention",
# arXiv:2102.03902. Bidirectional only (nystrom_landmarks: the number of landmarks).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'nystrom'
