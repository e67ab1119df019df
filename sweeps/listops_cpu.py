# ListOps on CPU (configs/lra/listops_cpu.py: ListOps-512, 2 layers of 64, 400 steps of 32 expressions) for softmax,
# linear, performer, local and cosformer, 3 seeds. Data:
#   python prepare_lra.py listops --min_length=128 --max_length=512 --data_dir=data/lra/listops512
# Time: TBD
trainer = 'train_lra.py'
configs = ['configs/lra/listops_cpu.py']
axes = {'attention': ['softmax', 'linear', 'performer', 'local', 'cosformer']}
seeds = [1, 2, 3]
