# Heads ablation: one head of 128 against four of 32, softmax and linear attention, 3 seeds, on the CPU recipe of
# shakespeare_gpt.py (tiny shakespeare bytes, configs/cpu_small.py: 2000 steps).
# Time: 12 runs of 4 (softmax) to 7 minutes (linear) of one thread each (see shakespeare_gpt.py).
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
axes = {'attention': ['softmax', 'linear'], 'n_head': [1, 4]}
seeds = [1, 2, 3]
