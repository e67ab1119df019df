# MQAR on CPU at (T, kv) = (64, 4), Zoology's easiest setting (attention reaches about 99% there): 2 layers of
# width 64 (Zoology's smallest d_model), one head, vocabulary 8192, batch 64 for 3000 steps (192k sequences, about
# 2 epochs of the 100k training examples), AdamW at 1e-3 with cosine decay to 0, no warmup, as Zoology's trainer.
# Softmax learns which tokens are values first (val accuracy about 25%: one of the 4 values in context), then
# recall, in a jump between steps 1000 and 1500, ending at 99.75% val and 99.76% test accuracy (README).
n_embd = 64
batch_size = 64
learning_rate = 1e-3
max_iters = 3000
lr_decay_iters = 3000
eval_interval = 250
log_interval = 50
