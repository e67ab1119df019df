# a few minutes on a laptop CPU: masked LM on tiny shakespeare as bytes, prepared with
#   python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare
data_dir = 'data/shakespeare'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 32
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
local_window = 64         # 32 on each side
