# MQAR on CPU at (T, kv) = (64, 4), Zoology's easiest setting (attention reaches about 99% there).
# PLACEHOLDER: tuned below
n_embd = 128
batch_size = 64
max_iters = 3000
lr_decay_iters = 3000
eval_interval = 250
log_interval = 50
