# Long Range Arena, byte-level text classification (IMDB), LRA's recipe. Sources, in the LRA repository
# (github.com/google-research/long-range-arena): lra_benchmarks/text_classification/configs/base_tc_config.py
# (config), text_classification/train.py (optimizer, schedule), models/transformer/transformer.py (defaults).
# Data: python prepare_lra.py text (25,000 train / 25,000 test reviews as bytes, cut to 4,096: the paper's 4K;
# base_tc_config.py's max_length = 1000 is not what the paper reports)
data_dir = 'data/lra/text'
n_layer = 4                # num_layers = 4
n_embd = 256               # emb_dim = qkv_dim = 256
n_head = 4                 # num_heads = 4
mlp_ratio = 4              # mlp_dim = 1024 = 4 x 256, also the classifier head's width
pool = 'cls'               # classifier_pool = "CLS"
position = 'sinusoidal'    # TransformerEncoder's default learn_pos_emb=False: fixed sinusoids
dropout = 0.1              # the encoder's default dropout_rate (attention_dropout_rate 0.1: no counterpart here)
batch_size = 32            # batch_size = 32
max_iters = 20000          # num_train_steps = 20000
optimizer = 'adamw'        # train.py: optim.Adam(beta1=0.9, beta2=0.98, eps=1e-9, weight_decay), decoupled decay
beta1 = 0.9
beta2 = 0.98
weight_decay = 0.1         # weight_decay = 1e-1
lr_schedule = 'rsqrt'      # factors = "constant * linear_warmup * rsqrt_decay"
learning_rate = 0.05       # learning_rate = 0.05, the constant: lr peaks at 0.05 / sqrt(8000) = 5.6e-4
warmup_iters = 8000        # warmup = 8000
grad_clip = 0.0            # train.py does not clip
eval_iters = 20            # LRA scores all of val (= test for IMDB) every 100 steps; here 20 batches every 500,
eval_interval = 500        # and eval_only scores all of val and test
