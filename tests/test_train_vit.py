"""
train_vit.py on small made-up image sets: CIFAR-10 written in torchvision's real on-disk format and an ImageFolder
tree of PNGs (conftest.py), both read through the real torchvision classes; seeded augmentation and epoch order; it
learns bidirectionally; bad input is a one-line error. (What every trainer does the same way, Ctrl-C and resume with
or without DataLoader workers among it, is in test_trainers.py; every bidirectional variant learns in
test_train_lra.py.)
"""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar

import train_vit
from conftest import CIFAR10_CLASSES, read_log, run_script, write_cifar10, write_image_folder
from training import ConfigError


def cifar10_args(cifar_dir):
    return ['--dataset=cifar10', f'--data_dir={cifar_dir}']


def config(**overrides):
    return SimpleNamespace(**{**train_vit.DEFAULTS, **overrides})


DIST = SimpleNamespace(rank=0, world_size=1, master=True)


def test_cifar10_in_the_real_format_loads_through_torchvision(made_up_cifar, tmp_path):
    images, labels = write_cifar10(tmp_path, n_train=50, n_test=20)
    train_set, augment, split, eval_set, classes = train_vit.load_data(config(data_dir=str(tmp_path)), DIST)
    assert isinstance(train_set, torchvision.datasets.CIFAR10) and split == 'test'
    assert (len(train_set), len(eval_set), classes) == (50, 20, CIFAR10_CLASSES)
    image, label = train_set[7]  # untransformed: the PIL image we wrote
    assert np.array_equal(np.asarray(image), images[7]) and label == labels[7]
    x, label = eval_set[3]  # the eval transform: normalised, no augmentation
    assert x.shape == (3, 32, 32) and label == labels[53]
    mean, std = torch.tensor(train_vit.CIFAR10_MEAN)[:, None, None], torch.tensor(train_vit.CIFAR10_STD)[:, None, None]
    assert torch.allclose(x * std + mean, torch.from_numpy(images[53]).permute(2, 0, 1) / 255, atol=1e-6)
    assert augment(image).shape == (3, 32, 32)


def test_cifar10_that_cannot_be_fetched_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR10, 'url', (tmp_path / 'missing' / 'cifar-10-python.tar.gz').as_uri())
    with pytest.raises(ConfigError, match='CIFAR-10 is not in .* could not be fetched .*put cifar-10-python.tar.gz'):
        train_vit.load_data(config(data_dir=str(tmp_path)), DIST)


def test_image_folder_loads_through_torchvision(image_folder):
    cfg = config(dataset='imagefolder', data_dir=image_folder, image_size=24)
    train_set, augment, split, eval_set, classes = train_vit.load_data(cfg, DIST)
    assert isinstance(train_set, torchvision.datasets.ImageFolder) and split == 'val'
    assert (len(train_set), len(eval_set), classes) == (192, 50, ['class_0', 'class_1', 'class_2'])
    image, _ = train_set[0]
    assert augment(image).shape == eval_set[0][0].shape == (3, 24, 24)


def test_augmentation_depends_on_seed_epoch_and_index_only(image_folder):
    train_set, augment, *_ = train_vit.load_data(config(dataset='imagefolder', data_dir=image_folder), DIST)
    seeded = train_vit.SeededAugmentation(train_set, augment, seed=5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = seeded[(2, 11)][0]
    assert torch.equal(torch.get_rng_state(), state)  # dropout's RNG is left alone
    torch.manual_seed(1)
    assert torch.equal(seeded[(2, 11)][0], first)
    assert not torch.equal(seeded[(3, 11)][0], first)  # a new epoch, a new crop


def test_epochs_are_permutations_and_resume_mid_epoch():
    cfg = config(seed=3, batch_size=4, gradient_accumulation_steps=2, max_iters=9)
    one = DIST
    batches = list(train_vit.EpochBatches(21, cfg, one, start_iter=0))  # 21 // 8 = 2 steps per epoch, 5 dropped
    assert len(batches) == 18 and all(len(b) == 4 for b in batches)
    for epoch in range(4):
        keys = [key for b in batches[4 * epoch:4 * epoch + 4] for key in b]
        assert {e for e, _ in keys} == {epoch} and len({i for _, i in keys}) == 16
    assert [b[0][1] for b in batches[:4]] != [b[0][1] for b in batches[4:8]]  # each epoch its own order
    assert list(train_vit.EpochBatches(21, cfg, one, start_iter=3)) == batches[6:]
    ranks = [list(train_vit.EpochBatches(21, cfg, SimpleNamespace(rank=r, world_size=2), 0)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == batches  # each rank takes its half of every micro-batch


@pytest.mark.slow
def test_it_learns_cifar10(vit, cifar_dir, tmp_path, made_up_cifar):
    rows = vit.train(tmp_path, *cifar10_args(cifar_dir))
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    test_losses = [r['test_loss'] for r in rows if 'test_loss' in r]
    assert len(train_losses) == 20 and len(test_losses) == 3  # evals at 0, 10, 20
    assert np.mean(train_losses[-3:]) < train_losses[0] - 0.3
    assert test_losses[-1] < test_losses[0] - 0.3
    assert {'images_per_s', 'peak_mem_mb', 'elapsed_s'} <= set(rows[0])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 20 and checkpoint['model_args']['attention'] == 'softmax'
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])


@pytest.mark.slow
def test_mean_pooling_and_eval_only(vit, cifar_dir, tmp_path, made_up_cifar):
    vit.train(tmp_path, *cifar10_args(cifar_dir), '--pool=mean', '--max_iters=3')
    vit.main(*cifar10_args(cifar_dir), f'--out_dir={tmp_path}', '--pool=mean', '--init_from=resume', '--eval_only=True',
             '--batch_size=7')
    results = json.load(open(tmp_path / 'eval.json'))
    assert results['iter'] == 3 and results['test']['images'] == 100
    assert read_log(tmp_path)[-1] == results
    assert results['test']['loss'] == pytest.approx(read_log(tmp_path)[-2]['test_loss'], rel=1e-5)


def test_bad_input_is_one_line_error(vit, tmp_path):
    vit.train(tmp_path, '--max_iters=1')
    base = [f'--out_dir={tmp_path}']
    cases = [
        (['--dataset=mnist'], "dataset='mnist'; choose 'cifar10', 'imagefolder' or 'shapes'"),
        ([f'--data_dir={tmp_path / "nowhere"}'], 'nowhere/train not found'),
        (['--pool=max'], "unknown pool 'max'; choose 'cls' or 'mean'"),
        (['--patch_size=5'], 'image_size=32 is not divisible by patch_size=5'),
        (['--attention=flash'], 'choose one of: softmax, linear'),
        (['--batch_size=1000', '--init_from=resume'], '192 training images: fewer than one step'),
        (['--n_layer=3', '--init_from=resume'], 'is a different model: n_layer=2 in the checkpoint, 3 in the config'),
        (['--optimizer=sgd', '--init_from=resume'], 'was trained with AdamW, this run builds SGD'),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=message):
            vit.main(*base, *args)
    with pytest.raises(ConfigError, match='image_size=64: CIFAR-10 images are 32x32'):
        vit.main('--dataset=cifar10', '--image_size=64')


@pytest.mark.slow
def test_an_empty_class_or_a_damaged_image_is_one_line(vit, tmp_path):
    write_image_folder(tmp_path, n_train=64, n_val=16)
    base = [*vit.args, f'--data_dir={tmp_path}', '--max_iters=3']
    (tmp_path / 'train' / 'class_9').mkdir()
    with pytest.raises(ConfigError, match=r'train: Found no valid file for the classes class_9; add images'):
        train_vit.main(base + [f'--out_dir={tmp_path / "a"}'])
    (tmp_path / 'train' / 'class_9').rmdir()
    damaged = sorted((tmp_path / 'train' / 'class_0').iterdir())[0]
    damaged.write_bytes(damaged.read_bytes()[:40])  # a cut-off PNG
    for workers in (0, 2):  # in a DataLoader worker too: the user sees one line
        result = run_script('train_vit.py', *base, f'--num_workers={workers}', f'--out_dir={tmp_path / str(workers)}',
                            timeout=60)
        assert result.returncode == 1 and result.stderr.count('\n') == 1, result.stderr
        assert result.stderr.startswith(f'error: cannot read image {damaged} ('), result.stderr
