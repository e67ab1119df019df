# a few minutes on a laptop CPU: a small ViT on CIFAR-10 (downloaded into data/ on the first run)
n_layer = 4
n_head = 4
n_embd = 128
batch_size = 64
num_workers = 0            # the model and the loader share the CPU cores
dropout = 0.0
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
warmup_iters = 100
min_lr = 1e-4
eval_interval = 500
log_interval = 50
