# ListOps on CPU: a small encoder on ListOps-128, minutes a run on one core. Data, LRA's generator at lengths of 32 to
# 128 tokens (96,000 / 2,000 / 2,000 expressions):
#   python prepare_lra.py listops --min_length=32 --max_length=128 --data_dir=data/lra/listops128
# At LRA's 2,000 tokens softmax attention alone takes 2.1 s per layer and step on two cores, too slow for a CPU sweep
# of every variant; at ListOps-512 (128 to 512 tokens) softmax was still at the plateau of a uniform guess over the
# 10 answers (val loss ln 10) after 400 steps in 2 of 3 seeds. On ListOps-128 it leaves it within 250 steps in every
# seed (val accuracy 34 to 37% from then on, one thread, 1500 steps, seeds 1 to 3); 1000 steps here.
data_dir = 'data/lra/listops128'
n_layer = 2
n_embd = 64
n_head = 2
mlp_ratio = 4
pool = 'cls'
position = 'sinusoidal'
dropout = 0.0
batch_size = 32
max_iters = 1000
lr_schedule = 'cosine'     # a short run: warmup, then cosine decay (LRA's rsqrt decay is for thousands of steps)
learning_rate = 1e-3
warmup_iters = 100
lr_decay_iters = 1000
min_lr = 1e-4
weight_decay = 0.01
eval_interval = 250
eval_iters = 8             # the quick estimate on 256 val examples; eval_only scores all 2,000 of val and test
log_interval = 20
