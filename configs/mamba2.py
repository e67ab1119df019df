# Mamba-2's SSD layer. Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
# Structured State Space Duality", arXiv:2405.21060.
# Causal only; the paper adds --short_conv=4.
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'mamba2'
