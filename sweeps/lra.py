# Long Range Arena (Tay et al. 2020, arXiv:2011.04006): LRA's recipe of a task (configs/lra/<task>.py) for every
# registered bidirectional variant, 1 seed, for GPUs. sweep.py gives every run of a sweep the same config files, so
# one call runs one task (ListOps by default); the five, each into its own results folder (report.py makes one table
# per folder):
#   for task in listops text retrieval image pathfinder; do
#     python prepare_lra.py $task && python sweep.py sweeps/lra.py --configs="['configs/lra/$task.py']" --out_dir=results/lra_$task
#   done
# Cost, TBD
trainer = 'train_lra.py'
configs = ['configs/lra/listops.py']
axes = {'attention': '*bidirectional'}
seeds = [1]
out_dir = 'results/lra_listops'
