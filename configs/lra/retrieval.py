# Long Range Arena, byte-level document retrieval (ACL Anthology Network citation pairs), LRA's recipe. Sources, in
# the LRA repository (github.com/google-research/long-range-arena): lra_benchmarks/matching/configs/
# base_match_config.py (config), matching/train.py (optimizer, schedule), models/layers/common_layers.py
# (classifier_head_dual: [u, v, u * v, u - v] with interaction 'NLI', the paper's two-tower model).
# Data: python prepare_lra.py retrieval (two documents per example, each cut to 4,000 bytes: max_length = 4000)
data_dir = 'data/lra/retrieval'
n_layer = 4                # num_layers = 4
n_embd = 128               # emb_dim = qkv_dim = 128
n_head = 4                 # num_heads = 4
mlp_ratio = 4              # mlp_dim = 512 = 4 x 128, also the classifier head's width (then 256)
pool = 'cls'               # pooling_mode = "CLS"
position = 'sinusoidal'    # TransformerEncoder's default learn_pos_emb=False: fixed sinusoids
dropout = 0.1              # the encoder's default dropout_rate (attention_dropout_rate 0.1: no counterpart here)
batch_size = 32            # batch_size = 32
max_iters = 5000           # num_train_steps = 5000
optimizer = 'adamw'        # train.py: optim.Adam(beta1=0.9, beta2=0.98, eps=1e-9, weight_decay), decoupled decay
beta1 = 0.9
beta2 = 0.98
weight_decay = 0.1         # weight_decay = 1e-1
lr_schedule = 'rsqrt'      # factors = "constant * linear_warmup * rsqrt_decay"
learning_rate = 0.05       # learning_rate = 0.05, the constant
warmup_iters = 8000        # warmup = 8000, past num_train_steps: the lr rises for the whole run, to 3.5e-4
grad_clip = 0.0            # train.py does not clip
eval_iters = 20            # LRA scores all of val every 100 steps; here 20 batches every 500, and eval_only scores
eval_interval = 500        # all of val and test
