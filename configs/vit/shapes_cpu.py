# a small ViT on Shapes (python prepare_shapes.py: generated offline, 4 classes, chance 25%), on a CPU in minutes:
# softmax attention reaches 49 to 60% val accuracy in these 1000 steps (seeds 1 to 3: results/shapes_vit)
dataset = 'shapes'
data_dir = 'data/shapes'
n_layer = 4
n_head = 4
n_embd = 128
batch_size = 64
num_workers = 0            # the model and the loader share the CPU cores
dropout = 0.0
label_smoothing = 0.0
learning_rate = 1e-3
max_iters = 1000
lr_decay_iters = 1000
warmup_iters = 100
min_lr = 1e-4
eval_interval = 500
log_interval = 50
