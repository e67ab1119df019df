"""What the tests share: one torch thread (the scripts the tests start get OMP_NUM_THREADS=1 through ENV), running a
script, reading a run's log, the small data sets the trainers train on, and each trainer on a tiny recipe.

Every test runs torch on one thread: tiny models gain nothing from threads, a busy machine makes a second thread
wait for a core, and runs compared bitwise across processes must add up in the same order.
`pytest -m "not slow"` skips the end-to-end trainings, subprocesses and torchrun (the edit-test loop); CI runs all.
"""
import json
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from torchvision.datasets.utils import check_integrity

import prepare_lra
import train_bert
import train_gpt
import train_lra
import train_mqar
import train_vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}  # tiny models gain nothing from threads
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
TIMINGS = ('elapsed_s', 'tokens_per_s', 'images_per_s', 'peak_mem_mb')


@pytest.fixture(scope='session', autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_script(*args, **kwargs):
    """python *args in the repository root, on one thread; the CompletedProcess with its text output."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs)


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


# -----------------------------------------------------------------------------------------------
# data


def write_byte_corpus(folder):
    """A byte corpus a tiny model learns in a few steps; split lengths are not multiples of block_size."""
    text = ' '.join(['the cat sat on the mat.', 'a dog ran to the log.'] * 400).encode()
    parts = {'train': text[:15000], 'val': text[15000:15000 + 1001], 'test': text[16001:16001 + 777]}
    for split, part in parts.items():
        (folder / f'{split}.bin').write_bytes(part)
    meta = {'tokenizer': 'bytes', 'vocab_size': 256, 'dtype': 'uint8', 'tokens': {k: len(v) for k, v in parts.items()}}
    (folder / 'meta.json').write_text(json.dumps(meta))
    return str(folder)


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
        pickle.dump({'label_names': CIFAR10_CLASSES, 'num_cases_per_batch': per_batch, 'num_vis': 3072}, f, protocol=2)
    return images, labels


def write_image_folder(root, n_train, n_val, n_classes=3):
    """data_dir/{train,val}/<class>/<i>.png, as ImageFolder reads."""
    for split, n, seed in (('train', n_train, 2), ('val', n_val, 3)):
        images, labels = make_images(n, n_classes, seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            os.makedirs(os.path.join(root, split, f'class_{label}'), exist_ok=True)
            Image.fromarray(image).save(os.path.join(root, split, f'class_{label}', f'{i}.png'))


@pytest.fixture
def made_up_cifar(monkeypatch):
    """torchvision checks the md5 of every CIFAR-10 file against the real ones; our made-up files only need to
    exist. Everything else (download=True finding the files there, unpickling, reshaping) is torchvision's code."""
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda path, md5=None: check_integrity(path))


@pytest.fixture(scope='session')
def byte_corpus(tmp_path_factory):
    return write_byte_corpus(tmp_path_factory.mktemp('bytes'))


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('folder')
    write_image_folder(root, n_train=192, n_val=50)
    return str(root)


@pytest.fixture(scope='session')
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    write_cifar10(root, n_train=640, n_test=100)
    return str(root)


@pytest.fixture(scope='session')
def listops(tmp_path_factory):
    folder = tmp_path_factory.mktemp('listops')
    prepare_lra.main(['listops', f'--data_dir={folder}', '--examples=256,48,40', '--min_length=8',
                      '--max_length=48', '--seed=1'])
    return str(folder)


# -----------------------------------------------------------------------------------------------
# the trainers on tiny recipes: two layers of 32, 20 steps, evals at 0, 10 and 20, a log row every step; chunk 4
# and windows of 4 or 8 so a sequence crosses several chunks and local windows


class Trainer(SimpleNamespace):
    """A trainer script run in-process on a tiny recipe: name ('gpt'), module, script ('train_gpt.py'), args (the
    recipe and its data; later arguments override them)."""

    def main(self, *args):
        self.module.main([*self.args, *args])

    def train(self, out_dir, *args):
        """A run in out_dir; returns its log rows."""
        self.main(f'--out_dir={out_dir}', *args)
        return read_log(out_dir)

    @staticmethod
    def losses(rows):
        """The deterministic part of the log rows: every number but the timings."""
        return [{k: v for k, v in row.items() if k not in TIMINGS and not isinstance(v, dict)} for row in rows]


def trainer(module, *args):
    name = module.__name__.removeprefix('train_')
    common = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--gradient_accumulation_steps=1', '--dropout=0.0',
              '--learning_rate=0.01', '--min_lr=0.001', '--warmup_iters=2', '--lr_decay_iters=20', '--max_iters=20',
              '--eval_interval=10', '--log_interval=1', '--chunk_size=4', '--performer_features=16', '--device=cpu']
    return Trainer(name=name, module=module, script=f'{module.__name__}.py', args=common + list(args))


@pytest.fixture
def gpt(byte_corpus):
    return trainer(train_gpt, '--block_size=16', '--batch_size=8', '--eval_iters=2', '--local_window=4',
                   f'--data_dir={byte_corpus}')


@pytest.fixture
def bert(byte_corpus):
    return trainer(train_bert, '--block_size=32', '--batch_size=16', '--eval_iters=2', '--local_window=8',
                   f'--data_dir={byte_corpus}')


@pytest.fixture
def vit(image_folder):
    """8x8 patches: 16 tokens and the class token."""
    return trainer(train_vit, '--patch_size=8', '--batch_size=32', '--num_workers=0', '--local_window=4',
                   '--dataset=imagefolder', f'--data_dir={image_folder}')


@pytest.fixture
def lra(listops):
    """expressions of up to 47 tokens, LRA's schedule swapped for the cosine one of the other recipes"""
    return trainer(train_lra, '--batch_size=16', '--eval_iters=2', '--local_window=8', '--lr_schedule=cosine',
                   f'--data_dir={listops}')


@pytest.fixture
def mqar():
    """vocabulary 32, 16-token sequences with 2 pairs"""
    return trainer(train_mqar, '--vocab_size=32', '--block_size=16', '--num_kv_pairs=2', '--train_examples=512',
                   '--val_examples=64', '--test_examples=48', '--batch_size=16', '--local_window=4')
