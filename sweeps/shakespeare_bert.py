# Masked LM on tiny shakespeare (bytes): every registered bidirectional variant, 3 seeds, on CPU, at the quick-start
# recipe (configs/bert/cpu_small.py: 2000 steps), where softmax reaches 43.7% masked-byte accuracy; at 800 steps (the
# table's recipe before) 8 of 10 variants sat on the plateau of predicting a masked byte from byte frequencies.
# Data: python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare
# Time: a softmax step takes 0.195 s on two idle cores with the periodic evaluations (2000 steps in 6.5 minutes);
# the variants cost 1x to 1.8x softmax's step. Run two `--dry_run` streams with OMP_NUM_THREADS=1; seeds outermost.
trainer = 'train_bert.py'
configs = ['configs/bert/cpu_small.py']
axes = {'attention': '*bidirectional'}
seeds = [1, 2, 3]
