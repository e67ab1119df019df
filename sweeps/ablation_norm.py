# Normalisation ablation: the norm (LayerNorm, RMSNorm, ScaleNorm) x where it sits (pre- or post-norm) x softmax
# and linear attention, 2 seeds, on the CPU recipe of shakespeare_gpt.py (configs/cpu_small.py for 800 steps).
# Time (see shakespeare_gpt.py): a softmax step 0.115 s on two idle cores, linear 1.26x, the norms taken as equal:
# 2 x 6 x 800 x 0.115 s x (1 + 1.26) x 1.04 + 24 x 10 s = 47 min.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
overrides = {'max_iters': 800, 'lr_decay_iters': 800, 'eval_interval': 200}
axes = {'attention': ['softmax', 'linear'], 'norm': ['layernorm', 'rmsnorm', 'scalenorm'],
        'norm_position': ['pre', 'post']}
seeds = [1, 2]
