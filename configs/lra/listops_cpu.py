# ListOps on CPU: a few hundred steps of a small encoder on ListOps-512, minutes on two cores (see
# sweeps/listops_cpu.py for the measured time). Data, LRA's generator at a quarter of its lengths (expressions of
# more than 128 and fewer than 512 tokens, 96,000 / 2,000 / 2,000):
#   python prepare_lra.py listops --min_length=128 --max_length=512 --data_dir=data/lra/listops512
# At LRA's 2,000 tokens, softmax attention alone takes 2.1 s per layer and step (forward and backward, batch 16,
# 2 heads of 32) on two cores: too slow for a CPU sweep of several variants.
data_dir = 'data/lra/listops512'
n_layer = 2
n_embd = 64
n_head = 2
mlp_ratio = 4
pool = 'cls'
position = 'sinusoidal'
dropout = 0.0
batch_size = 32
max_iters = 400
lr_schedule = 'cosine'     # a short run: warmup, then cosine decay (LRA's rsqrt decay is for thousands of steps)
learning_rate = 1e-3
warmup_iters = 40
lr_decay_iters = 400
min_lr = 1e-4
weight_decay = 0.01
eval_interval = 100
eval_iters = 8             # the quick estimate on 256 val examples; eval_only scores all 2,000 of val and test
log_interval = 20
