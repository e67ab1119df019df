# Block ablation: how much of the leaders' margin is their attention and how much the block around it. Six variants
# of the causal-LM table, each with the output gate and the norm of the heads' outputs both off (softmax's and
# linear's block) and both on (swish(x W_g) and a per-head RMSNorm, the block of Gated DeltaNet and of fla's GLA and
# RetNet layers): the paper's own block is the main table's row. 3 seeds, on the CPU recipe of shakespeare_gpt.py
# (configs/cpu_small.py: 2000 steps), the rest of the recipe unchanged.
# Time: the six variants' runs take 6 (softmax) to 16 minutes (gla) of one thread; 36 runs, about 6 hours of one
# thread.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
runs = [{'output_gate': 'none', 'head_norm': 'none'}, {'output_gate': 'swish', 'head_norm': 'rmsnorm'}]
axes = {'attention': ['softmax', 'linear', 'retention', 'gla', 'deltanet', 'gated_deltanet']}
seeds = [1, 2, 3]
