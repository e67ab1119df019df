# MQAR at (T, kv) = (256, 16): after configs/mqar/cpu.py (or the defaults), the third of Zoology's Figure 2 settings.
block_size = 256
num_kv_pairs = 16
local_window = 128         # half the sequence, as at (64, 4)
