# Image classification on Shapes (generated offline: python prepare_shapes.py), every registered bidirectional
# variant, vicinity and sra (which need an image's patch grid) among them, 3 seeds, on CPU: configs/vit/shapes_cpu.py,
# 1000 steps of a 4-layer ViT of width 128 over 65 tokens (64 patches of 4x4 and the class token), batch 64.
# Time: a softmax run takes about 10 minutes of one thread (about 130 images/s while training, and three passes over
# the 5,000 val images); run two streams of `--dry_run` lines with OMP_NUM_THREADS=1. Seeds are the outer loop.
trainer = 'train_vit.py'
configs = ['configs/vit/shapes_cpu.py']
axes = {'attention': '*bidirectional'}
seeds = [1, 2, 3]
