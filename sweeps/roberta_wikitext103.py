# Masked LM on WikiText-103: train_bert.py's baseline recipe (its defaults: a RoBERTa-small, 8 layers, 512 wide,
# 50k steps of 64k tokens) for every registered bidirectional variant, 3 seeds. Data: python prepare_wikitext103.py.
# For GPUs: one run is 50,000 x 65,536 = 3.3B tokens, so a variant training at R tokens/s takes 3.3e9 / R seconds,
# and the sweep 21 such runs (7 variants x 3 seeds); `--dry_run=True` prints one line per run for a job array.
trainer = 'train_bert.py'
axes = {'attention': '*bidirectional'}
seeds = [1, 2, 3]
