# WikiText-103: train_gpt.py's baseline recipe on GPT-2 BPE tokens (configs/wikitext103.py; word-level perplexity)
# for every registered causal variant, 3 seeds. Data: python prepare_wikitext103.py. For GPUs: one run is
# 50,000 x 65,536 = 3.3B tokens (28 epochs), so a variant training at R tokens/s takes 3.3e9 / R seconds, and the
# sweep 21 such runs (7 variants x 3 seeds); `--dry_run=True` prints one line per run for a job array.
trainer = 'train_gpt.py'
configs = ['configs/wikitext103.py']
axes = {'attention': '*causal'}
seeds = [1, 2, 3]
