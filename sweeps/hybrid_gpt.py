# The hybrid row of the causal-LM table: Gated DeltaNet with a softmax layer after every three (layer_attention;
# configs/cpu_small.py has 4 layers: three gated_deltanet, then softmax), at the recipe of shakespeare_gpt.py. Its
# runs go into that table's folder, where report.py shows the pattern in the attention column.
trainer = 'train_gpt.py'
configs = ['configs/cpu_small.py']
runs = [{'layer_attention': 'gated_deltanet*3,softmax'}]
seeds = [1, 2, 3]
out_dir = 'results/shakespeare_gpt'
