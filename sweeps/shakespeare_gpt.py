# Causal LM on tiny shakespeare (bytes): every registered causal variant, 3 seeds, on CPU.
# Data: python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare
# configs/cpu_small.py for 800 steps instead of 2000, so that the four CPU sweeps (this one's 21 runs,
# shakespeare_bert's 14, ablation_norm's 24, ablation_heads' 8: 67 runs) take about 2.7 hours on two idle cores.
# The arithmetic: a softmax step of configs/cpu_small.py takes 0.115 s on two idle cores (17.8k tokens/s);
# measured against it (one thread, 40 steps, the faster of two rounds on a busy machine), a step of linear costs
# 1.26x, performer 2.35x (256 random features over 32-wide heads), cosformer 1.23x, retention 1.23x, norm_linear
# 1.27x, local 1.15x: 9.50x softmax's for the 7 variants. With 4% for the periodic evaluations and 10 s a run to
# start and to evaluate the full splits, this sweep takes 3 x 800 x 0.115 s x 9.50 x 1.04 + 21 x 10 s = 49 min
# (a softmax run 1.8 min, a performer run 3.9); shakespeare_bert 47 min, ablation_norm 47, ablation_heads 16:
# 159 min in all, 2.4 min a run on average.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
overrides = {'max_iters': 800, 'lr_decay_iters': 800, 'eval_interval': 200}
axes = {'attention': '*causal'}
seeds = [1, 2, 3]
