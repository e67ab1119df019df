# Long Range Arena (Tay et al. 2020, arXiv:2011.04006): LRA's recipe of a task (configs/lra/<task>.py) for every
# registered bidirectional variant, 1 seed, for GPUs. sweep.py gives every run of a sweep the same config files, so
# one call runs one task (ListOps by default); the five, each into its own results folder (report.py makes one table
# per folder):
#   for task in listops text retrieval image pathfinder; do python prepare_lra.py $task &&
#     python sweep.py sweeps/lra.py --configs="['configs/lra/$task.py']" --out_dir=results/lra_$task; done
# Cost: a step costs about 3x its forward pass; counting 2 FLOPs per multiply-add, a forward pass of softmax
# attention's model costs, per position and layer, 2 (4 + 2 mlp_ratio) n_embd^2 in the projections and MLP plus
# 4 T n_embd in attention (T positions). Per softmax run, training only:
#   listops     5,000 steps x 32 x 2,001 positions = 3.2e8, 6 layers of 512:   187 MFLOP/position = 6.0e16 FLOP
#   text       20,000 x 32 x 4,097 = 2.6e9,                4 layers of 256:    69 MFLOP/position = 1.8e17
#   retrieval   5,000 x 32 x 2 x 4,001 = 1.3e9,            4 layers of 128:    29 MFLOP/position = 3.8e16
#   image      35,000 x 256 x 1,025 = 9.2e9,               1 layer of 32:     0.44 MFLOP/position = 4.1e15
#   pathfinder 62,400 x 512 x 1,024 = 3.3e10,              1 layer of 128:    2.2 MFLOP/position = 7.1e16
# so 3.5e17 FLOP for the five (1e17 FLOP is 33 minutes at 50 TFLOP/s sustained; the one-layer image and pathfinder
# models are too small to sustain such rates and run slower than their FLOPs say). The linear family replaces the
# 4 T n_embd attention term by terms in n_embd x head size, most of text's and retrieval's cost.
trainer = 'train_lra.py'
configs = ['configs/lra/listops.py']
axes = {'attention': '*bidirectional'}
seeds = [1]
out_dir = 'results/lra_listops'
