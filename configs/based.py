# Based. Arora et al. 2024,
# "Simple linear attention language models balance the recall-throughput tradeoff", arXiv:2402.18668.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'based'
