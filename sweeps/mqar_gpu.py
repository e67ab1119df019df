# Multi-query associative recall at Zoology's Figure 2 recipe, for GPUs: train_mqar.py's defaults (2 layers of width
# 128, one head, vocabulary 8192, 100k training examples, batch 512 for 64 epochs = 12,500 steps, AdamW with cosine
# decay to 0, no warmup) for every registered causal variant at (T, kv) = (64, 4), (128, 8) and (256, 16) (batch 256
# at 256 tokens, as Zoology's configs, so 64 epochs are 25,000 steps there), over Zoology's learning rates,
# numpy.logspace(-4, -2, 4), one seed. Zoology's settings and batches are from its `iclr24_zoology_figure2` configs
# (HazyResearch/zoology). Report with
#   python report.py results/mqar_gpu --where=block_size=128 --best_over=learning_rate
# one table per setting, each variant at its best learning rate by val accuracy, as Zoology reports.
# This is the recipe that sweeps/mqar.py's CPU one cuts down 33-fold in examples: at (128, 8) that CPU recipe does
# not train (README, Results on CPU). Work per run, training only, counting 2 FLOPs per multiply-add and a step as
# 3x its forward: 64 epochs of 100k sequences of T positions, each costing 2 layers x (2 (4 + 2 x 4) 128^2 in
# projections and MLP + 4 T 128 in softmax attention) plus the head on kv / T of the positions (2 x 128 x 8192):
# about 1.2e15 FLOP at (64, 4), 2.6e15 at (128, 8) and 5.8e15 at (256, 16). A model this small leaves a GPU mostly
# idle, so a run's time is its steps' fixed costs (kernel launches, the optimizer): run several runs at once, one
# process each (the `--dry_run` lines, e.g. `xargs -P 8`). With the 13 causal variants registered today: 3 settings
# x 4 learning rates x 13 = 156 runs, about 149e9 tokens. Measured on one H200 (bf16, 16 CPU cores) with 16 runs at
# (128, 8) at once, for 5.5 minutes: 130k (gla) to 568k (softmax) tokens/s each, 5.9M together; at that rate the
# grid takes about 7 hours. One run alone went faster: performer at 3.6M tokens/s.
trainer = 'train_mqar.py'
configs = []
runs = [{'block_size': 64, 'num_kv_pairs': 4},
        {'block_size': 128, 'num_kv_pairs': 8},
        {'block_size': 256, 'num_kv_pairs': 16, 'batch_size': 256, 'max_iters': 25000, 'lr_decay_iters': 25000}]
axes = {'attention': '*causal', 'learning_rate': [1e-4, 4.6416e-4, 2.1544e-3, 1e-2]}
seeds = [1]
