# A CPU recipe (nanoGPT's shakespeare_char CPU line, on bytes): tiny shakespeare prepared with
#   python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare
# 4.1M tokens in 2000 steps. Softmax ends at 1.741 nats/byte on the full val split (2.51 bpc), linear at
# 1.851 (2.67 bpc); 4 and 5 minutes on two idle cores (17.8k and 14.5k tokens/s).
data_dir = 'data/shakespeare'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
dropout = 0.0
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
warmup_iters = 100
min_lr = 1e-4
eval_interval = 250
eval_iters = 20
log_interval = 50
local_window = 64
