# WikiText-103 (GPT-2 BPE tokens, vocab 50257 from meta.json), prepared with `python prepare_wikitext103.py`.
# The baseline recipe otherwise; eval_only reports token and word-level perplexity.
data_dir = 'data/wikitext103'
