# Masked LM on tiny shakespeare (bytes): every registered bidirectional variant, 2 seeds, on CPU.
# Data: python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare
# configs/bert/cpu_small.py for 800 steps instead of 2000 (the CPU sweeps' budget: see shakespeare_gpt.py).
# A softmax step takes 0.195 s on two idle cores with the periodic evaluations (2000 steps in 6.5 min); measured
# against it (one thread, 40 steps, the faster of two rounds on a busy machine), a step of linear costs 1.11x,
# performer 1.75x, cosformer 0.98x, retention 1.38x, norm_linear 1.10x, local 1.25x: 8.56x softmax's for the 7
# variants. With 10 s a run to start and to evaluate the full splits: 2 x 800 x 0.195 s x 8.56 + 14 x 10 s = 47 min.
# At 2000 steps linear had not yet left the plateau of predicting bytes from their frequency (README): read this
# sweep as the early phase of training.
trainer = 'train_bert.py'
configs = ['configs/bert/cpu_small.py']
overrides = {'max_iters': 800, 'lr_decay_iters': 800, 'eval_interval': 200}
axes = {'attention': '*bidirectional'}
seeds = [1, 2]
