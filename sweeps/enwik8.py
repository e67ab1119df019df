# enwik8: train_gpt.py's baseline recipe (its defaults: 12 layers, 512 wide, 38M parameters, 50k steps of 64k
# bytes) for every registered causal variant, 3 seeds. Data: python prepare_enwik8.py. For GPUs: one run is
# 50,000 x 65,536 = 3.3B bytes, so a variant training at R bytes/s takes 3.3e9 / R seconds (9.1 h at 100k/s,
# 4.6 h at 200k/s), and the sweep 21 such runs (7 variants x 3 seeds); `--dry_run=True` prints one line per run
# for a job array, one GPU each.
trainer = 'train_gpt.py'
axes = {'attention': '*causal'}
seeds = [1, 2, 3]
