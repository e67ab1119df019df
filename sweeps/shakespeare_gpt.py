# Causal LM on tiny shakespeare (bytes): every registered causal variant, 3 seeds, on CPU, at the quick start's
# recipe (configs/cpu_small.py: 2000 steps, 4.1M tokens), where softmax reaches 2.51 bpc; at 800 steps (the
# table's recipe before) every variant was still in early training (softmax at 2.99 bpc).
# Data: python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare
# Time: a softmax run takes about 4 minutes on two idle cores; the causal variants cost 1.2x to 2.6x softmax's step
# on CPU, so three seeds of all of them take most of a day of this 2-core machine: run two `--dry_run` streams (or two
# sweep processes, which leave each other's runs alone) with OMP_NUM_THREADS=1. Seeds are the outer loop.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
axes = {'attention': '*causal'}
seeds = [1, 2, 3]
