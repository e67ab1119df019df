# ListOps on CPU (configs/lra/listops_cpu.py: ListOps-128, 2 layers of 64, 1000 steps of 32 expressions): every
# registered bidirectional variant, 3 seeds. Data:
#   python prepare_lra.py listops --min_length=32 --max_length=128 --data_dir=data/lra/listops128
# Time: a softmax run takes about 2 minutes of one thread (1500 steps took 2.5 on a busy machine); the variants
# cost 1x to 3x that. Run two `--dry_run` streams with OMP_NUM_THREADS=1; seeds are the outer loop.
trainer = 'train_lra.py'
configs = ['configs/lra/listops_cpu.py']
axes = {'attention': '*bidirectional'}
seeds = [1, 2, 3]
