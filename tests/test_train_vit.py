"""
train_vit.py end to end on small made-up image sets: CIFAR-10 written in torchvision's real on-disk format and an
ImageFolder tree of PNGs, both read through the real torchvision classes; seeded augmentation and epoch order;
every variant trains bidirectionally; resume after Ctrl-C equals an uninterrupted run bitwise (with or without
DataLoader workers); 2-process DDP equals 1 process; bad input is a one-line error.
"""
import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from torchvision.datasets.utils import check_integrity

import train_vit
from attention import ATTENTION
from trainer_checks import assert_logs_match, assert_redraw_resumes_exactly, interrupt, read_log, run_script
from training import ConfigError

BIDIRECTIONAL = [v for v in ATTENTION if ATTENTION[v].supports_bidirectional]
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
# two layers, 8x8 patches (16 tokens + the class token); chunk 4 and window 4 so a sequence crosses several of each
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--patch_size=8', '--batch_size=32', '--num_workers=0',
        '--gradient_accumulation_steps=1', '--dropout=0.0', '--learning_rate=0.01', '--min_lr=0.001',
        '--warmup_iters=2', '--lr_decay_iters=20', '--max_iters=20', '--eval_interval=10', '--log_interval=1',
        '--chunk_size=4', '--local_window=4', '--performer_features=16', '--device=cpu']


def make_images(n, n_classes, seed):
    """(n, 32, 32, 3) uint8 images and their labels: each class is a fixed coarse colour pattern plus noise, so a
    tiny model learns it in a few steps."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(0).normal(size=(n_classes, 2, 2, 3)).repeat(16, axis=1).repeat(16, axis=2)
    labels = rng.integers(n_classes, size=n)
    images = 128 + 60 * patterns[labels] + 20 * rng.normal(size=(n, 32, 32, 3))
    return images.clip(0, 255).astype(np.uint8), labels.tolist()


def write_cifar10(root, n_train, n_test):
    """CIFAR-10 as cifar-10-python.tar.gz unpacks: cifar-10-batches-py/ with pickled data_batch_1..5, test_batch
    and batches.meta; 'data' is (N, 3072) uint8, each row the red, green, blue 32x32 planes. (The real files were
    pickled by Python 2, so their keys load as str under the latin1 encoding torchvision uses.)"""
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    images, labels = make_images(n_train + n_test, 10, seed=1)
    data = images.transpose(0, 3, 1, 2).reshape(-1, 3072)  # (N, 3, 32, 32) planes, flattened
    per_batch = n_train // 5
    batches = {f'data_batch_{i + 1}': slice(i * per_batch, (i + 1) * per_batch) for i in range(5)}
    batches['test_batch'] = slice(n_train, n_train + n_test)
    for name, rows in batches.items():
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({'batch_label': name, 'labels': labels[rows], 'data': data[rows],
                         'filenames': [f'{i}.png' for i in range(rows.start, rows.stop)]}, f, protocol=2)
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        pickle.dump({'label_names': CLASSES, 'num_cases_per_batch': per_batch, 'num_vis': 3072}, f, protocol=2)
    return images, labels


def write_image_folder(root, n_train, n_val, n_classes=3):
    """data_dir/{train,val}/<class>/<i>.png, as ImageFolder reads."""
    for split, n, seed in (('train', n_train, 2), ('val', n_val, 3)):
        images, labels = make_images(n, n_classes, seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            os.makedirs(os.path.join(root, split, f'class_{label}'), exist_ok=True)
            Image.fromarray(image).save(os.path.join(root, split, f'class_{label}', f'{i}.png'))


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    write_cifar10(root, n_train=640, n_test=100)
    return str(root)


@pytest.fixture(scope='module')
def folder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('folder')
    write_image_folder(root, n_train=192, n_val=50)
    return str(root)


@pytest.fixture
def made_up_cifar(monkeypatch):
    """torchvision checks the md5 of every CIFAR-10 file against the real ones; our made-up files only need to
    exist. Everything else (download=True finding the files there, unpickling, reshaping) is torchvision's code."""
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda path, md5=None: check_integrity(path))


def train(out_dir, data_args, *args):
    train_vit.main(TINY + data_args + [f'--out_dir={out_dir}', *args])
    return read_log(out_dir)


def losses(rows):
    """The deterministic part of the log: no timings."""
    return [{k: v for k, v in r.items() if k.endswith(('loss', 'acc')) or k in ('iter', 'lr')} for r in rows]


def config(**overrides):
    return SimpleNamespace(**{**train_vit.DEFAULTS, **overrides})


DIST = SimpleNamespace(rank=0, world_size=1, master=True)


def test_cifar10_in_the_real_format_loads_through_torchvision(made_up_cifar, tmp_path):
    images, labels = write_cifar10(tmp_path, n_train=50, n_test=20)
    train_set, augment, split, eval_set, classes = train_vit.load_data(config(data_dir=str(tmp_path)), DIST)
    assert isinstance(train_set, torchvision.datasets.CIFAR10) and split == 'test'
    assert (len(train_set), len(eval_set), classes) == (50, 20, CLASSES)
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


def test_image_folder_loads_through_torchvision(folder_dir):
    cfg = config(dataset='imagefolder', data_dir=folder_dir, image_size=24)
    train_set, augment, split, eval_set, classes = train_vit.load_data(cfg, DIST)
    assert isinstance(train_set, torchvision.datasets.ImageFolder) and split == 'val'
    assert (len(train_set), len(eval_set), classes) == (192, 50, ['class_0', 'class_1', 'class_2'])
    image, _ = train_set[0]
    assert augment(image).shape == eval_set[0][0].shape == (3, 24, 24)


def test_augmentation_depends_on_seed_epoch_and_index_only(folder_dir):
    train_set, augment, *_ = train_vit.load_data(config(dataset='imagefolder', data_dir=folder_dir), DIST)
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


@pytest.mark.parametrize('variant', BIDIRECTIONAL)
def test_every_variant_learns(variant, cifar_dir, tmp_path, made_up_cifar):
    rows = train(tmp_path, [f'--data_dir={cifar_dir}'], f'--attention={variant}')
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    test_losses = [r['test_loss'] for r in rows if 'test_loss' in r]
    assert len(train_losses) == 20 and len(test_losses) == 3  # evals at 0, 10, 20
    assert np.mean(train_losses[-3:]) < train_losses[0] - 0.3
    assert test_losses[-1] < test_losses[0] - 0.3
    assert {'images_per_s', 'peak_mem_mb', 'elapsed_s'} <= set(rows[0])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 20 and checkpoint['model_args']['attention'] == variant
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])


def test_mean_pooling_and_eval_only(cifar_dir, tmp_path, made_up_cifar):
    train(tmp_path, [f'--data_dir={cifar_dir}'], '--pool=mean', '--max_iters=3')
    train_vit.main(TINY + [f'--data_dir={cifar_dir}', f'--out_dir={tmp_path}', '--pool=mean', '--init_from=resume',
                           '--eval_only=True', '--batch_size=7'])
    results = json.load(open(tmp_path / 'eval.json'))
    assert results['iter'] == 3 and results['test']['images'] == 100
    assert read_log(tmp_path)[-1] == results
    assert results['test']['loss'] == pytest.approx(read_log(tmp_path)[-2]['test_loss'], rel=1e-5)


def test_ctrl_c_saves_and_resume_equals_an_uninterrupted_run(folder_dir, tmp_path):
    # dropout, gradient accumulation, label smoothing and a resume mid-epoch; the resumed half loads with two
    # DataLoader workers, the uninterrupted run with none: the data must not depend on them
    data = ['--dataset=imagefolder', f'--data_dir={folder_dir}']
    recipe = data + ['--dropout=0.1', '--batch_size=16', '--gradient_accumulation_steps=2', '--eval_interval=4',
                     '--lr_decay_iters=60']
    stopped = tmp_path / 'stopped'
    k = interrupt('train_vit.py', [*TINY, *recipe], stopped)
    end = f'--max_iters={k + 7}'  # 6 steps per epoch: the resumed run starts mid-epoch and crosses into the next
    resumed = train(stopped, [], *recipe, end, '--init_from=resume', '--num_workers=2')
    uninterrupted = train(tmp_path / 'uninterrupted', [], *recipe, end)
    assert losses(resumed) == losses(uninterrupted)  # bitwise: same images, crops, flips, schedule, dropout


def test_performer_redraw_resumes_exactly(folder_dir, tmp_path):
    assert_redraw_resumes_exactly(lambda out_dir, *args: train(out_dir, ['--dataset=imagefolder', f'--data_dir={folder_dir}'], *args), losses, tmp_path)


def test_two_processes_match_one(folder_dir, tmp_path):
    recipe = ['--dataset=imagefolder', f'--data_dir={folder_dir}', '--gradient_accumulation_steps=2',
              '--batch_size=16', '--max_iters=4', '--eval_interval=2']
    train(tmp_path / 'one', [], *recipe)
    result = run_script('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_vit.py', *TINY,
                        *recipe, f'--out_dir={tmp_path / "two"}', timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_logs_match(losses(read_log(tmp_path / 'one')), losses(read_log(tmp_path / 'two')))


def test_each_variant_gets_its_own_run_folder(folder_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for variant in ('softmax', 'linear'):
        train_vit.main(TINY + ['--dataset=imagefolder', f'--data_dir={folder_dir}', f'--attention={variant}',
                               '--max_iters=1'])
    data = os.path.basename(folder_dir)
    assert sorted(path.name for path in tmp_path.iterdir()) == [f'out-vit-{data}-linear', f'out-vit-{data}-softmax']


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(folder_dir, tmp_path):
    data = ['--dataset=imagefolder', f'--data_dir={folder_dir}']
    train(tmp_path, data, '--max_iters=2')
    with pytest.raises(SystemExit) as e:  # an infinite learning rate blows the weights up on the next step
        train(tmp_path, data, '--max_iters=10', '--init_from=resume', '--learning_rate=1e999')
    assert 'non-finite' in str(e.value.code) and 'last good checkpoint (iter 2)' in str(e.value.code)
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=False)['iter_num'] == 2


def test_bad_input_is_one_line_error(folder_dir, tmp_path):
    data = ['--dataset=imagefolder', f'--data_dir={folder_dir}']
    train(tmp_path, data, '--max_iters=1')
    base = TINY + data + [f'--out_dir={tmp_path}']
    cases = [
        (['--dataset=mnist'], "dataset='mnist'; choose 'cifar10' or 'imagefolder'"),
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
            train_vit.main(base + args)
    with pytest.raises(ConfigError, match='image_size=64: CIFAR-10 images are 32x32'):
        train_vit.main(TINY + ['--image_size=64'])
    # the script turns them into one line on stderr, and importing it runs nothing
    result = run_script('train_vit.py', *base, '--label_smoothing=high', timeout=120)
    assert result.returncode != 0 and result.stderr.count('\n') == 1
    assert result.stderr.startswith("error: --label_smoothing=high: label_smoothing='high'")
    result = run_script('-c', 'import train_vit', timeout=120)
    assert result.returncode == 0 and not result.stdout and not result.stderr


def test_an_empty_class_or_a_damaged_image_is_one_line(tmp_path):
    write_image_folder(tmp_path, n_train=64, n_val=16)
    base = TINY + ['--dataset=imagefolder', f'--data_dir={tmp_path}', '--max_iters=3']
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
