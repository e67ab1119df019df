# Long Range Arena, ListOps (Tay et al. 2020, arXiv:2011.04006), LRA's recipe. Sources, in the LRA repository
# (github.com/google-research/long-range-arena): lra_benchmarks/listops/configs/base_listops_config.py (config),
# listops/train.py (optimizer, schedule), models/transformer/transformer.py (encoder defaults).
# Data: python prepare_lra.py listops (96,000 / 2,000 / 2,000 expressions of 501-1,999 tokens, seq_len 2,000)
data_dir = 'data/lra/listops'
n_layer = 6                # num_layers = 6
n_embd = 512               # emb_dim = qkv_dim = 512
n_head = 8                 # num_heads = 8
mlp_ratio = 4              # mlp_dim = 2048 = 4 x 512, also the classifier head's width
pool = 'cls'               # pooling_mode = "CLS"
position = 'sinusoidal'    # TransformerEncoder's default learn_pos_emb=False: fixed sinusoids
dropout = 0.1              # the encoder's default dropout_rate (its attention_dropout_rate 0.1 has no counterpart:
                           # no variant here drops attention weights)
batch_size = 32            # batch_size = 32
max_iters = 5000           # num_train_steps = 5000
optimizer = 'adamw'        # train.py: optim.Adam(beta1=0.9, beta2=0.98, eps=1e-9, weight_decay), decoupled decay as
                           # AdamW's (theirs decays every parameter, here matrices and embeddings only; eps 1e-8)
beta1 = 0.9
beta2 = 0.98
weight_decay = 0.1         # weight_decay = 1e-1
lr_schedule = 'rsqrt'      # create_learning_rate_scheduler's default "constant * linear_warmup * rsqrt_decay"
learning_rate = 0.05       # learning_rate = 0.05, the constant: lr peaks at 0.05 / sqrt(1000) = 1.6e-3
warmup_iters = 1000        # warmup = 1000 (the scheduler's default warmup_steps, which listops/train.py uses)
grad_clip = 0.0            # train.py does not clip
eval_iters = 20            # num_eval_steps = 20 batches of val (LRA evaluates them every eval_frequency = 20 steps;
eval_interval = 500        # here every 500, also the checkpoint interval); eval_only scores all of val and test
