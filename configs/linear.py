# Linear transformer. Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'linear'
