# Long Range Arena, Pathfinder (32x32, the hard setting curv_contour_length_14), LRA's recipe. Sources, in the LRA
# repository (github.com/google-research/long-range-arena): lra_benchmarks/image/configs/pathfinder32/
# base_pathfinder32_config.py and pathfinder32/transformer_base.py (config), image/train.py (optimizer, schedule).
# Data: python prepare_lra.py pathfinder (80% / 10% / 10% of the 200,000 images, 1,024 pixels each)
data_dir = 'data/lra/pathfinder'
n_layer = 1                # num_layers = 1
n_embd = 128               # emb_dim = 128 (its qkv_dim = 64 has no counterpart: every variant projects to n_embd)
n_head = 4                 # num_heads = 4
mlp_ratio = 1              # mlp_dim = qkv_dim x 2 = 128 = 1 x 128, also the classifier head's width
pool = 'mean'              # classifier_pool = 'MEAN'
position = 'sinusoidal'    # learn_pos_emb = False
dropout = 0.2              # dropout_rate = 0.2 (attention_dropout_rate 0.1: no counterpart here)
batch_size = 512           # batch_size = 512
max_iters = 62400          # num_train_steps = (160000 // 512) x 200 epochs
optimizer = 'adamw'        # train.py: optim.Adam(beta1=0.9, beta2=0.98, eps=1e-9, weight_decay)
beta1 = 0.9
beta2 = 0.98
weight_decay = 0.0         # weight_decay = 0.
lr_schedule = 'cosine'     # factors = 'constant * linear_warmup * cosine_decay'
learning_rate = 1e-3       # learning_rate = .001
warmup_iters = 312         # warmup = one epoch of 160000 // 512 steps
lr_decay_iters = 62712     # steps_per_cycle = 62400 steps of cosine after the warmup, down to 0
min_lr = 0.0
grad_clip = 0.0            # grad_clip_norm = None
eval_interval = 312        # eval_frequency = one epoch
eval_iters = 39            # num_eval_steps = 20000 // 512
