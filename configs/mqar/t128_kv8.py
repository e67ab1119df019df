# MQAR at (T, kv) = (128, 8): after configs/mqar/cpu.py (or the defaults), the second of Zoology's Figure 2 settings.
block_size = 128
num_kv_pairs = 8
