# Normalisation ablation: the norm (LayerNorm, RMSNorm, ScaleNorm) x where it sits (pre- or post-norm) x softmax
# and linear attention, 3 seeds, on the CPU recipe of shakespeare_gpt.py (configs/cpu_small.py: 2000 steps).
# Time: 36 runs of 4 (softmax) to 7 minutes (linear) of one thread each (see shakespeare_gpt.py).
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
axes = {'attention': ['softmax', 'linear'], 'norm': ['layernorm', 'rmsnorm', 'scalenorm'],
        'norm_position': ['pre', 'post']}
seeds = [1, 2, 3]
