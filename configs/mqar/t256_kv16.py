# MQAR at (T, kv) = (256, 16): after configs/mqar/cpu.py (or the defaults), the third of Zoology's Figure 2 settings.
# Half the batch, as Zoology halves it at 256 tokens (512 -> 256): twice the tokens and the answers of a (64, 4) step.
block_size = 256
num_kv_pairs = 16
batch_size = 32
