# Long Range Arena, image classification on pixel sequences (grayscale CIFAR-10), LRA's recipe. Sources, in the LRA
# repository (github.com/google-research/long-range-arena): lra_benchmarks/image/configs/cifar10/
# base_cifar10_config.py and cifar10/transformer_base.py (config), image/train.py (optimizer, schedule).
# Data: python prepare_lra.py image (45,000 / 5,000 / 10,000 images of 1,024 pixels). LRA's encoder also treats
# black pixels as padding (its padding mask is inputs > 0); nothing is masked here.
data_dir = 'data/lra/image'
n_layer = 1                # num_layers = 1
n_embd = 32                # emb_dim = qkv_dim = 32
n_head = 1                 # num_heads = 1
mlp_ratio = 2              # mlp_dim = 64 = 2 x 32, also the classifier head's width
pool = 'cls'               # classifier_pool = 'CLS'
position = 'learned'       # learn_pos_emb = True
dropout = 0.3              # dropout_rate = 0.3 (attention_dropout_rate 0.2: no counterpart here)
batch_size = 256           # batch_size = 256
max_iters = 35000          # num_train_steps = (45000 // 256) x 200 epochs
optimizer = 'adamw'        # train.py: optim.Adam(beta1=0.9, beta2=0.98, eps=1e-9, weight_decay)
beta1 = 0.9
beta2 = 0.98
weight_decay = 0.0         # weight_decay = 0.
lr_schedule = 'cosine'     # factors = 'constant * linear_warmup * cosine_decay'
learning_rate = 5e-4       # learning_rate = .0005
warmup_iters = 175         # warmup = one epoch of 45000 // 256 steps
lr_decay_iters = 35175     # steps_per_cycle = 35000 steps of cosine after the warmup, down to 0
min_lr = 0.0
grad_clip = 0.0            # grad_clip_norm = None
eval_interval = 175        # eval_frequency = one epoch
eval_iters = 40            # num_eval_steps = 10000 // 256 (of the 5,000 val images: all of them)
