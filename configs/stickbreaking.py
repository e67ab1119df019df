# Stick-breaking attention. Tan et al. 2024, "Scaling Stick-Breaking Attention: An Efficient Implementation and
# In-depth Study", arXiv:2410.17980. Causal only.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'stickbreaking'
