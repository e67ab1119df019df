# ListOps on CPU (configs/lra/listops_cpu.py: ListOps-512, 2 layers of 64, 400 steps of 32 expressions) for softmax,
# linear, performer, local and cosformer, 3 seeds. Data:
#   python prepare_lra.py listops --min_length=128 --max_length=512 --data_dir=data/lra/listops512
# Time: one softmax run of configs/lra/listops_cpu.py took 28 min (4.2 s a step) on this project's machine while it
# was shared (load 10-12 on two cores) and ended at 30.6% val / 33.6% test accuracy (the most frequent class is 17%).
# Back to back with configs/cpu_small.py in the same conditions, its step took 0.74x and 0.90x a cpu_small step,
# which takes 0.115 s on two idle cores: about 0.1 s idle (by FLOPs, 22.6 against 11.7 GFLOP a step, up to 0.22 s).
# Taking 0.2 s, shakespeare_gpt.py's relative costs of the variants (linear 1.26x, performer 2.35x, local 1.15x,
# cosformer 1.23x: 7.0x softmax for the five; measured at T=128, causal, so an estimate here), 10% for the periodic
# evaluations and 20 s a run to start and to evaluate the full splits: 3 x 400 x 0.2 s x 7.0 x 1.1 + 15 x 20 s =
# 36 min on two idle cores, several times that on a shared machine. Measured (two runs at a time, one thread each,
# nothing else running; start and evaluation included): softmax 2.7 min a run, linear 1.9, cosformer 1.7,
# performer 6.6, local 6.4: 58 thread-minutes for the 15 runs, 29 minutes on two cores.
trainer = 'train_lra.py'
configs = ['configs/lra/listops_cpu.py']
axes = {'attention': ['softmax', 'linear', 'performer', 'local', 'cosformer']}
seeds = [1, 2, 3]
