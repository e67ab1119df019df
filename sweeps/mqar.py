# Multi-query associative recall (Zoology, arXiv:2312.04927): every registered causal variant at (T, kv) = (64, 4),
# (128, 8) and (256, 16), three learning rates, 2 seeds, on CPU: configs/mqar/cpu.py (2 layers of width 64, one
# head, vocabulary 8192, batch 64 for 3000 steps; batch 32 at T = 256, as configs/mqar/t256_kv16.py and Zoology).
# Zoology reports, per model and setting, the best accuracy over a learning-rate grid (4 values from 1e-4 to 1e-2, a
# factor 4.6 apart, over 12.5k steps); here 3 values a factor 3 apart around the recipe's 1e-3. Report with
#   python report.py results/mqar --best_over=learning_rate
# which keeps, per variant and setting, the learning rate with the best mean val accuracy over seeds.
# Time: a softmax step of configs/cpu_small.py takes 0.115 s on two idle cores (see shakespeare_gpt.py); measured
# against it (one thread, 20 steps, the faster of two rounds on a busy machine), a step of this recipe costs, for
# the 7 variants together, 3.15x at (64, 4) (softmax 0.37x, performer 0.65x), 6.70x at (128, 8) and 7.80x at
# (256, 16) (15.60x at batch 64): 17.65 x 0.115 s = 2.03 s for one step of every variant and setting. With 2% for
# the periodic evaluations and 15 s a run to start, draw its data and evaluate, one seed at one learning rate takes
# 3000 x 2.03 s x 1.02 + 21 x 15 s = 109 min (a softmax run at (64, 4) 2.5 min; measured on one thread of the busy
# machine: 8.5 min, eval_only 10 s), and the whole sweep 6 x 109 min = 11 hours. Seeds are the outer loop: stopped
# after about 5.5 hours, it holds the first seed of every run. Each variant registered later adds its share (about
# 1/7 of this for one like linear attention). On a shared machine run it with OMP_NUM_THREADS=1.
trainer = 'train_mqar.py'
configs = ['configs/mqar/cpu.py']
runs = [{'block_size': 64, 'num_kv_pairs': 4},
        {'block_size': 128, 'num_kv_pairs': 8},
        {'block_size': 256, 'num_kv_pairs': 16, 'batch_size': 32}]
axes = {'attention': '*causal', 'learning_rate': [3e-4, 1e-3, 3e-3]}
seeds = [1, 2]
