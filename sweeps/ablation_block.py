# Block ablation: how much of the leaders' margin is their attention and how much the block around it. Six variants
# of the causal-LM table, each with the output gate and the norm of the heads' outputs both off (softmax's and
# linear's block) and both on (swish(x W_g) and a per-head RMSNorm, the block of Gated DeltaNet and of fla's GLA and
# RetNet layers): the paper's own block is the main table's row. 3 seeds, on the CPU recipe of shakespeare_gpt.py
# (configs/cpu_small.py for 800 steps), the rest of the recipe unchanged.
# Time: the fastest of each variant's three runs in results/shakespeare_gpt (800 steps, a busy machine) took softmax
# 119 s, linear 157, retention 154, gla 311, deltanet 191, gated_deltanet 212: 1144 s for the six. With 3% for the
# gate and the norm where they are added and 10 s a run to start and evaluate the full splits:
# 2 x 3 x 1144 s x 1.03 + 36 x 10 s = 124 min.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
overrides = {'max_iters': 800, 'lr_decay_iters': 800, 'eval_interval': 200}
runs = [{'output_gate': 'none', 'head_norm': 'none'}, {'output_gate': 'swish', 'head_norm': 'rmsnorm'}]
axes = {'attention': ['softmax', 'linear', 'retention', 'gla', 'deltanet', 'gated_deltanet']}
seeds = [1, 2, 3]
