# MQAR (64, 4) with 5 seeds: whether a run leaves the 25% plateau is close to a coin flip per seed for several
# variants, so the 2 seeds of sweeps/mqar.py's grid cannot rank them. Each variant at the best learning rate of that
# grid (python report.py results/mqar --where=block_size=64 --best_over=learning_rate), seeds 1 to 5 into the same
# folder: seeds 1 and 2 are the grid's own runs (finished, so skipped), 3 to 5 are new. Report with solved k/n:
#   python report.py results/mqar --where=block_size=64 --best_over=learning_rate --solved=90
# A variant joins _best_learning_rate when its grid is complete on today's code (the variants registered after the
# first 13 run theirs first). Zoology's width axis: softmax, linear and the leaders also at width 128
# (configs/mqar/cpu.py has 64), at the same learning rate.
# Time: a (64, 4) run takes 3.3 (softmax) to 8.4 minutes (gla) of one thread; width 128 about 2.5x that.
_best_learning_rate = {'softmax': 1e-3, 'linear': 1e-3, 'performer': 1e-3, 'cosformer': 1e-3, 'retention': 3e-4,
                       'norm_linear': 1e-3, 'local': 3e-3, 'gla': 1e-3, 'based': 1e-3, 'hedgehog': 1e-3,
                       'deltanet': 3e-4, 'gated_deltanet': 1e-3, 'rfa': 3e-4}
_wide = ['softmax', 'linear', 'gla', 'based', 'local']
trainer = 'train_mqar.py'
configs = ['configs/mqar/cpu.py']
runs = ([{'block_size': 64, 'num_kv_pairs': 4, 'attention': name, 'learning_rate': rate}
         for name, rate in _best_learning_rate.items()] +
        [{'block_size': 64, 'num_kv_pairs': 4, 'attention': name, 'learning_rate': _best_learning_rate[name],
          'n_embd': 128} for name in _wide])
seeds = [1, 2, 3, 4, 5]
out_dir = 'results/mqar'
