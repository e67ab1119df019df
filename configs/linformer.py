# Linformer. Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity", arXiv:2006.04768.
# Bidirectional only (linformer_k: the projected length).
# selects the variant; everything else is the trainer's baseline recipe or other configs (e.g. configs/cpu_small.py)
attention = 'linformer'
