# Heads ablation: one head of 128 against four of 32, softmax and linear attention, 2 seeds, on the CPU recipe of
# shakespeare_gpt.py (tiny shakespeare bytes, configs/cpu_small.py for 800 steps).
# Time (see shakespeare_gpt.py): a softmax step 0.115 s on two idle cores, linear 1.26x, taken as the same for
# either head count (the same matmul work): 2 x 2 x 800 x 0.115 s x (1 + 1.26) x 1.04 + 8 x 10 s = 16 min.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
overrides = {'max_iters': 800, 'lr_decay_iters': 800, 'eval_interval': 200}
axes = {'attention': ['softmax', 'linear'], 'n_head': [1, 4]}
seeds = [1, 2]
