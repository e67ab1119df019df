"""
Generate Shapes, an image classification task for train_vit.py that needs no download:
    python prepare_shapes.py                                    # data/shapes: 50,000 train, 5,000 val images
    python prepare_shapes.py --n_train=20000 --data_dir=data/shapes_20k
    python train_vit.py configs/vit/shapes_cpu.py               # a small ViT learns it on a CPU in minutes
Each 32x32 RGB image holds four shapes on a noisy dark background, each of a random size (6 to 10 pixels), colour and
place, none touching: one kind appears twice and two other kinds once, from four kinds (disc, square, triangle,
cross). The class is the kind that appears twice (4 classes, chance 25%). No single patch gives it away: every
object must be told apart and compared with the others across the image, the exchange between distant patches
that attention provides. Sizes, colours and the noise make the kinds hard to tell apart at the smallest sizes, so
the task leaves room between variants above chance and below 100%.
Writes {train,val}.npz (images: uint8 (N, 32, 32, 3); labels: uint8 (N,)) and meta.json to --data_dir, through a
staging folder (nothing half-written is ever there). The images are a function of --seed alone (numpy's PCG64
generator): a re-run whose meta.json already describes the same set is skipped.
"""
import argparse
import json
import os
import sys

import numpy as np

from prepare_enwik8 import ERRORS, refuse_another_dataset, staging, write_meta

KINDS = ('disc', 'square', 'triangle', 'cross')
SIZE = 32                  # images are SIZE x SIZE
SHAPE_SIZES = (6, 10)      # a shape's bounding box: side drawn from this range, inclusive
VERSION = 1                # of the generator: a change of how images are drawn changes it


def shape_mask(kind, side):
    """(side, side) bool mask of one shape filling its box."""
    y, x = np.mgrid[:side, :side] + 0.5  # pixel centres
    half = side / 2
    if kind == 'disc':
        return (y - half) ** 2 + (x - half) ** 2 <= half ** 2
    if kind == 'square':
        return np.ones((side, side), dtype=bool)
    if kind == 'triangle':  # apex up: the row at height y spans y / 2 either side of the centre
        return np.abs(x - half) <= y / 2
    arm = max(1, side // 4)  # cross: two bars of width 2 * arm through the centre
    return (np.abs(x - half) <= arm) | (np.abs(y - half) <= arm)


def draw_image(rng):
    """(image (SIZE, SIZE, 3) uint8, label): four shapes, kind `label` twice, placed with a pixel of gap."""
    label = int(rng.integers(len(KINDS)))
    others = rng.choice([k for k in range(len(KINDS)) if k != label], size=2, replace=False)
    kinds = [label, label, *others]
    background = rng.integers(0, 60)
    image = np.clip(background + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255)
    taken = np.zeros((SIZE, SIZE), dtype=bool)
    for kind in rng.permutation(kinds):
        while True:  # rejection sampling of a free box (four boxes of <= 10 pixels always fit in 32 x 32)
            side = int(rng.integers(SHAPE_SIZES[0], SHAPE_SIZES[1] + 1))
            top, left = rng.integers(0, SIZE - side + 1, size=2)
            box = (slice(max(top - 1, 0), top + side + 1), slice(max(left - 1, 0), left + side + 1))
            if not taken[box].any():
                break
        taken[box] = True
        mask = shape_mask(KINDS[kind], side)
        colour = rng.integers(100, 256, size=3)
        image[top:top + side, left:left + side][mask] = colour
    return image.round().astype(np.uint8), label


def generate(n, seed):
    """(images (n, SIZE, SIZE, 3) uint8, labels (n,) uint8) from a generator seeded by seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    images, labels = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8), np.empty(n, dtype=np.uint8)
    for i in range(n):
        images[i], labels[i] = draw_image(rng)
    return images, labels


def up_to_date(data_dir, meta):
    path = os.path.join(data_dir, 'meta.json')
    try:
        with open(path) as f:
            return json.load(f) == meta and all(os.path.exists(os.path.join(data_dir, f'{split}.npz'))
                                                for split in meta['images'])
    except (OSError, ValueError):
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--data_dir', default='data/shapes')
    parser.add_argument('--n_train', type=int, default=50_000)
    parser.add_argument('--n_val', type=int, default=5_000)
    parser.add_argument('--seed', type=int, default=0, help='train uses seed, val seed + 1')
    args = parser.parse_args(argv)
    meta = {'dataset': 'shapes', 'version': VERSION, 'classes': list(KINDS), 'image_size': SIZE, 'seed': args.seed,
            'images': {'train': args.n_train, 'val': args.n_val}}
    try:
        if args.n_train < 1 or args.n_val < 1:
            raise ValueError(f"--n_train={args.n_train}, --n_val={args.n_val}: each must be at least 1")
        refuse_another_dataset(args.data_dir, meta)
        if up_to_date(args.data_dir, meta):
            print(f"{args.data_dir} already holds this set (delete it to generate again)")
            return 0
        with staging(args.data_dir) as tmp:
            for offset, split in enumerate(('train', 'val')):
                images, labels = generate(meta['images'][split], args.seed + offset)
                with open(os.path.join(tmp, f'{split}.npz'), 'wb') as f:
                    np.savez(f, images=images, labels=labels)
            write_meta(tmp, meta)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = np.bincount(labels, minlength=len(KINDS))
    print(f"wrote {args.data_dir}: {args.n_train:,} train and {args.n_val:,} val images, {len(KINDS)} classes "
          f"(val per class: {', '.join(map(str, counts))})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
