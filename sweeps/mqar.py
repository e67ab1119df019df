# Multi-query associative recall (Zoology, arXiv:2312.04927): every registered causal variant at (T, kv) = (64, 4),
# (128, 8) and (256, 16), three learning rates, 2 seeds, on CPU: configs/mqar/cpu.py (2 layers of width 64, one
# head, vocabulary 8192, batch 64 for 3000 steps; batch 32 at T = 256, as configs/mqar/t256_kv16.py and Zoology).
# Zoology reports, per model and setting, the best accuracy over a learning-rate grid (4 values from 1e-4 to 1e-2, a
# factor 4.6 apart, over 12.5k steps); here 3 values a factor 3 apart around the recipe's 1e-3. Report with
#   python report.py results/mqar --best_over=learning_rate
# which keeps, per variant and setting, the learning rate with the best mean val accuracy over seeds.
# Time, measured at (64, 4) with two runs at a time, one thread each, on this project's 2-core machine: a run takes
# 3.3 min (softmax) to 8.4 min (gla), start and evaluation included; one learning rate and seed of all 13 registered
# causal variants, 70 min of one thread (softmax 3.3, local 3.5, retention 4.4, norm_linear 4.5, linear 4.6,
# cosformer 4.6, hedgehog 5.2, deltanet 5.3, gated_deltanet 5.5, based 6.6, performer 6.6, rfa 7.8, gla 8.4).
# (128, 8) and (256, 16) cost about 2.1x and 2.5x that (their steps against (64, 4) steps, measured for the first 7
# variants), so the whole sweep is about 6 x 70 min x 5.6 = 39 hours of one thread: 20 hours on two cores, two
# streams of `--dry_run` lines. Seeds are the outer loop: stopped after about 10 hours, it holds the first seed of
# every run. Each variant registered later adds its share. On a shared machine run it with OMP_NUM_THREADS=1.
# Only (64, 4) trains in this CPU recipe: at (128, 8) softmax ends at 8.9 to 10.5% val at all three learning rates
# (12.5% is one of the 8 values in context; 10.9% with twice the steps), where Zoology trains on 33 times the
# examples, about 4 hours a run here. Run the larger settings on a GPU at Zoology's recipe: sweeps/mqar_gpu.py.
trainer = 'train_mqar.py'
configs = ['configs/mqar/cpu.py']
runs = [{'block_size': 64, 'num_kv_pairs': 4},
        {'block_size': 128, 'num_kv_pairs': 8},
        {'block_size': 256, 'num_kv_pairs': 16, 'batch_size': 32}]
axes = {'attention': '*causal', 'learning_rate': [3e-4, 1e-3, 3e-3]}
seeds = [1, 2]
