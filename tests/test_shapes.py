"""
Shapes, the image task generated offline (prepare_shapes.py): the class is the kind drawn twice, the images are a
function of the seed, the shapes never touch, the files are written whole or not at all and never over another
dataset; train_vit.py reads the set (dataset='shapes'), and bad input is one line.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import prepare_shapes
import train_vit
from conftest import ENV, ROOT, write_byte_corpus
from test_train_vit import DIST, config
from training import ConfigError


def test_the_label_is_the_kind_drawn_twice(monkeypatch):
    drawn = []
    mask = prepare_shapes.shape_mask
    monkeypatch.setattr(prepare_shapes, 'shape_mask', lambda kind, side: drawn.append(kind) or mask(kind, side))
    rng = np.random.Generator(np.random.PCG64(3))
    for _ in range(200):
        drawn.clear()
        _, label = prepare_shapes.draw_image(rng)
        counts = {kind: drawn.count(kind) for kind in drawn}
        assert counts.pop(prepare_shapes.KINDS[label]) == 2 and list(counts.values()) == [1, 1]


def test_shapes_fill_their_box_as_named():
    disc, square, triangle, cross = (prepare_shapes.shape_mask(kind, 8) for kind in prepare_shapes.KINDS)
    assert square.all() and not disc[0, 0] and disc[4, 4] and np.array_equal(disc, disc.T)
    assert triangle[-1].all() and triangle[0].sum() <= 2 and np.array_equal(triangle, triangle[:, ::-1])
    assert cross[4].all() and cross[:, 4].all() and not cross[0, 0] and np.array_equal(cross, cross.T)


def test_images_are_a_function_of_the_seed_and_the_shapes_never_touch():
    images, labels = prepare_shapes.generate(300, seed=5)
    again, labels_again = prepare_shapes.generate(300, seed=5)
    assert images.shape == (300, 32, 32, 3) and images.dtype == labels.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(prepare_shapes.generate(300, seed=6)[0], images)
    assert np.bincount(labels, minlength=4).min() > 50  # the 4 classes, balanced
    for image in images[:100]:  # four shapes, each one bright colour, their boxes a pixel apart at least
        colours = [colour for colour in np.unique(image[(image >= 100).all(-1)], axis=0)
                   if (image == colour).all(-1).sum() >= 6]  # (noise may pass 100 at a pixel, never at six)
        assert len(colours) == 4
        boxes = [(ys.min(), ys.max(), xs.min(), xs.max())
                 for ys, xs in (np.nonzero((image == colour).all(-1)) for colour in colours)]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[1] + 1 < b[0] or b[1] + 1 < a[0] or a[3] + 1 < b[2] or b[3] + 1 < a[2]


def test_the_command_writes_a_set_skips_a_rerun_and_refuses_bad_input(tmp_path):
    data_dir = tmp_path / 'shapes'
    command = [sys.executable, 'prepare_shapes.py', '--n_train=40', '--n_val=12', f'--data_dir={data_dir}']
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'wrote' in done.stdout
    meta = json.loads((data_dir / 'meta.json').read_text())
    assert meta['classes'] == list(prepare_shapes.KINDS) and meta['images'] == {'train': 40, 'val': 12}
    with np.load(data_dir / 'train.npz') as arrays:
        expected = prepare_shapes.generate(40, seed=0)
        assert np.array_equal(arrays['images'], expected[0]) and np.array_equal(arrays['labels'], expected[1])
    written = {path.name: path.stat().st_mtime_ns for path in data_dir.iterdir()}
    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and 'already holds this set' in again.stdout
    assert {path.name: path.stat().st_mtime_ns for path in data_dir.iterdir()} == written
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    write_byte_corpus(corpus)
    for args, message in (([f'--data_dir={corpus}'], 'holds a byte corpus (prepare_enwik8.py), not Shapes images'),
                          (['--n_train=0', f'--data_dir={data_dir}'], '--n_train=0, --n_val=12: each must be')):
        bad = subprocess.run([*command, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and bad.stderr.count('\n') == 1 and message in bad.stderr
    assert {path.name: path.stat().st_mtime_ns for path in data_dir.iterdir()} == written
    assert sorted(path.name for path in corpus.iterdir()) == ['meta.json', 'test.bin', 'train.bin', 'val.bin']


@pytest.fixture
def shapes_dir(tmp_path):
    assert prepare_shapes.main(['--n_train=64', '--n_val=16', f'--data_dir={tmp_path / "shapes"}']) == 0
    return tmp_path / 'shapes'


def test_train_vit_reads_the_set(shapes_dir):
    train_set, augment, split, eval_set, classes = train_vit.load_data(config(dataset='shapes',
                                                                              data_dir=str(shapes_dir)), DIST)
    assert split == 'val' and classes == list(prepare_shapes.KINDS) and (len(train_set), len(eval_set)) == (64, 16)
    images, labels = prepare_shapes.generate(16, seed=1)  # val: seed + 1
    x, label = eval_set[3]  # normalised to [-1, 1], no augmentation
    assert label == labels[3] and torch.allclose((x + 1) / 2, torch.from_numpy(images[3]).permute(2, 0, 1) / 255)
    image, _ = train_set[0]
    flipped = {tuple(augment(image).flatten()[:64].tolist()) for _ in range(30)}  # the flips are the augmentation
    assert augment(image).shape == (3, 32, 32) and 2 <= len(flipped) <= 4


def test_bad_shapes_input_is_one_line(shapes_dir, tmp_path):
    cases = [(dict(data_dir=str(tmp_path / 'nowhere')), 'holds no Shapes images: run `python prepare_shapes.py'),
             (dict(image_size=64), 'image_size=64: Shapes images are 32x32')]
    (shapes_dir / 'val.npz').write_bytes(b'not a zip')
    cases.append((dict(), f"cannot read {shapes_dir / 'val.npz'}"))
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            train_vit.load_data(config(**{'dataset': 'shapes', 'data_dir': str(shapes_dir), **overrides}), DIST)
        assert '\n' not in str(error.value)


@pytest.mark.slow
def test_a_vit_trains_and_resumes_on_shapes(vit, shapes_dir, tmp_path):
    rows = vit.train(tmp_path, '--dataset=shapes', f'--data_dir={shapes_dir}', '--batch_size=16', '--max_iters=8',
                     '--lr_decay_iters=8', '--eval_interval=4')
    assert [row['iter'] for row in rows if 'val_acc' in row] == [0, 4, 8]
    vit.main(f'--out_dir={tmp_path}', '--dataset=shapes', f'--data_dir={shapes_dir}', '--init_from=resume',
             '--eval_only=True')
    assert set(json.loads((tmp_path / 'eval.json').read_text())['val']) == {'loss', 'acc', 'images'}
