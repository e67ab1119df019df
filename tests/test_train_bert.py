"""
train_bert.py end to end on a tiny byte corpus: RoBERTa's masking statistics, evaluation masks that depend on the
eval seed and the data alone, every variant trains bidirectionally, resume after Ctrl-C equals an uninterrupted run
bitwise, 2-process DDP equals 1 process, the full-split evaluation scores every masked token once, and bad input is
a one-line error.
"""
import json
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_bert
import training
from attention import ATTENTION
from train_bert import BERT, BERTConfig, IGNORE, mask_tokens
from trainer_checks import (assert_logs_match, assert_redraw_resumes_exactly, interrupt, read_log, run_script,
                            write_byte_corpus)
from training import ConfigError

BIDIRECTIONAL = [v for v in ATTENTION if ATTENTION[v].supports_bidirectional]
# two layers, 32-token windows; chunk 4 and window 8 so a window crosses several chunks / local windows
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=16',
        '--gradient_accumulation_steps=1', '--dropout=0.0', '--learning_rate=0.01', '--min_lr=0.001',
        '--warmup_iters=2', '--lr_decay_iters=20', '--max_iters=20', '--eval_interval=10', '--eval_iters=2',
        '--log_interval=1', '--chunk_size=4', '--local_window=8', '--performer_features=16', '--device=cpu']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return write_byte_corpus(tmp_path_factory.mktemp('data'))


def train(out_dir, data_dir, *args):
    train_bert.main(TINY + [f'--data_dir={data_dir}', f'--out_dir={out_dir}', *args])
    return read_log(out_dir)


def losses(rows):
    """The deterministic part of the log: no timings."""
    return [{k: r[k] for k in ('iter', 'train_loss', 'val_loss', 'val_acc', 'lr') if k in r} for r in rows]


def test_masking_follows_roberta():
    vocab_size = 100
    tokens = torch.randint(vocab_size, (1000, 1000), generator=torch.Generator().manual_seed(0))
    inputs, targets = mask_tokens(tokens, vocab_size, 0.15, torch.Generator().manual_seed(1))
    selected = targets != IGNORE
    assert selected.float().mean().item() == pytest.approx(0.15, abs=0.002)
    assert torch.equal(targets[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])  # only selected tokens change
    picked = inputs[selected]
    masked = (picked == vocab_size).float().mean().item()
    unchanged = (picked == tokens[selected]).float().mean().item()
    replaced = 1 - masked - unchanged
    assert masked == pytest.approx(0.8, abs=0.005)
    # a random token is the original one 1 time in vocab_size
    assert unchanged == pytest.approx(0.1 + 0.1 / vocab_size, abs=0.005)
    assert replaced == pytest.approx(0.1 * (1 - 1 / vocab_size), abs=0.005)
    random_tokens = picked[(picked != vocab_size) & (picked != tokens[selected])]
    assert random_tokens.max().item() < vocab_size  # random replacements come from the original vocabulary
    counts = torch.bincount(random_tokens, minlength=vocab_size).float()
    assert counts.std().item() / counts.mean().item() < 0.1  # roughly uniform
    again = mask_tokens(tokens, vocab_size, 0.15, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


def test_evaluation_masks_depend_only_on_the_eval_seed_and_the_data(data_dir):
    meta = training.load_meta(data_dir)
    cfg = SimpleNamespace(data_dir=data_dir, mask_prob=0.15, eval_seed=1234)
    torch.manual_seed(0)
    first = train_bert.masked_split(cfg, meta, 'val')
    torch.manual_seed(1)  # the global RNG (model init, dropout) plays no part
    second = train_bert.masked_split(cfg, meta, 'val')
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = train_bert.masked_split(SimpleNamespace(**{**vars(cfg), 'eval_seed': 99}), meta, 'val')
    assert not torch.equal(first[1], other[1])


def test_eval_only_scores_every_masked_token_once_and_the_same_ones_for_every_variant(data_dir, tmp_path):
    results = {}
    for variant in ('softmax', 'linear'):
        out_dir = tmp_path / variant
        train(out_dir, data_dir, f'--attention={variant}', '--max_iters=3')
        train_bert.main(TINY + [f'--data_dir={data_dir}', f'--out_dir={out_dir}', f'--attention={variant}',
                                '--init_from=resume', '--eval_only=True', '--batch_size=3'])
        results[variant] = json.load(open(out_dir / 'eval.json'))
        assert read_log(out_dir)[-1] == results[variant]
    checkpoint = torch.load(tmp_path / 'linear' / 'ckpt.pt', weights_only=False)
    model = BERT(BERTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    meta = training.load_meta(data_dir)
    cfg = SimpleNamespace(data_dir=data_dir, mask_prob=0.15, eval_seed=1234)
    for split in ('val', 'test'):
        inputs, targets = train_bert.masked_split(cfg, meta, split)
        nll = correct = 0.0
        for start in range(0, len(inputs), 32):  # independent windows of block_size, the last one shorter
            logits, _ = model(inputs[None, start:start + 32])
            y = targets[start:start + 32]
            logits, y = logits[0][y != IGNORE], y[y != IGNORE]
            nll += F.cross_entropy(logits, y, reduction='sum').item()
            correct += (logits.argmax(-1) == y).sum().item()
        count = (targets != IGNORE).sum().item()
        metrics = results['linear'][split]
        assert metrics['masked_tokens'] == results['softmax'][split]['masked_tokens'] == count
        assert metrics['loss'] == pytest.approx(nll / count, rel=1e-5)
        assert metrics['acc'] == pytest.approx(correct / count)
        assert metrics['ppl'] == pytest.approx(math.exp(metrics['loss']))


@pytest.mark.parametrize('variant', BIDIRECTIONAL)
def test_every_variant_learns(variant, data_dir, tmp_path):
    rows = train(tmp_path, data_dir, f'--attention={variant}')
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    val_losses = [r['val_loss'] for r in rows if 'val_loss' in r]
    assert len(train_losses) == 20 and len(val_losses) == 3  # evals at 0, 10, 20
    assert train_losses[0] == pytest.approx(math.log(257), abs=0.3)  # 256 bytes + the mask token
    assert np.mean(train_losses[-3:]) < train_losses[0] - 2.0
    assert val_losses[-1] < val_losses[0] - 2.0
    assert rows[-1]['val_acc'] > rows[0]['val_acc'] + 0.1
    assert {'tokens_per_s', 'peak_mem_mb', 'elapsed_s'} <= set(rows[0])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 20 and checkpoint['model_args']['attention'] == variant
    assert checkpoint['model_args']['causal'] is False and checkpoint['model_args']['vocab_size'] == 257
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])


def test_ctrl_c_saves_and_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    # dropout and gradient accumulation on, so RNG streams, masks and micro-steps must all resume exactly
    recipe = ['--dropout=0.1', '--gradient_accumulation_steps=2', '--eval_interval=4', '--lr_decay_iters=60']
    stopped = tmp_path / 'stopped'
    k = interrupt('train_bert.py', [*TINY, *recipe, f'--data_dir={data_dir}'], stopped)
    end = f'--max_iters={k + 7}'
    resumed = train(stopped, data_dir, *recipe, end, '--init_from=resume')
    uninterrupted = train(tmp_path / 'uninterrupted', data_dir, *recipe, end)
    assert losses(resumed) == losses(uninterrupted)  # bitwise: same windows, masks, schedule, dropout


def test_performer_redraw_resumes_exactly(data_dir, tmp_path):
    assert_redraw_resumes_exactly(lambda out_dir, *args: train(out_dir, data_dir, *args), losses, tmp_path)


def test_two_processes_match_one(data_dir, tmp_path):
    recipe = ['--gradient_accumulation_steps=2', '--max_iters=4', '--eval_interval=2']
    train(tmp_path / 'one', data_dir, *recipe)
    args = [*TINY, *recipe, f'--data_dir={data_dir}', f'--out_dir={tmp_path / "two"}']
    result = run_script('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_bert.py', *args,
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_logs_match(losses(read_log(tmp_path / 'one')), losses(read_log(tmp_path / 'two')))


def test_each_variant_gets_its_own_run_folder(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for variant in ('softmax', 'linear'):
        train_bert.main(TINY + [f'--data_dir={data_dir}', f'--attention={variant}', '--max_iters=1'])
    data = os.path.basename(data_dir)
    assert sorted(path.name for path in tmp_path.iterdir()) == [f'out-bert-{data}-linear', f'out-bert-{data}-softmax']


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    train(tmp_path, data_dir, '--max_iters=2')
    with pytest.raises(SystemExit) as e:  # an infinite learning rate blows the weights up on the next step
        train(tmp_path, data_dir, '--max_iters=10', '--init_from=resume', '--learning_rate=1e999')
    assert 'non-finite' in str(e.value.code) and 'last good checkpoint (iter 2)' in str(e.value.code)
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=False)['iter_num'] == 2


def test_bad_input_is_one_line_error(data_dir, tmp_path):
    train(tmp_path, data_dir, '--max_iters=1')
    base = TINY + [f'--data_dir={data_dir}', f'--out_dir={tmp_path}']
    cases = [
        (['--mask_prob=1.5'], 'mask_prob=1.5: must be between 0 and 1'),
        (['--attention=flash'], 'choose one of: softmax, linear'),
        ([f'--data_dir={tmp_path / "nowhere"}'], 'train.bin not found: run `python prepare_enwik8.py --src=FILE'),
        (['--block_size=4000'], 'val.bin is shorter than block_size = 4000 tokens'),
        (['--n_layer=3', '--init_from=resume'], 'is a different model: n_layer=2 in the checkpoint, 3 in the config'),
        (['--optimizer=adafactor', '--init_from=resume'], 'was trained with AdamW, this run builds Adafactor'),
        (['--optimizer=lion'], "optimizer='lion'; choose one of: adamw, sgd, adafactor"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            train_bert.main(base + args)
    # the script turns them into one line on stderr, and importing it runs nothing
    result = run_script('train_bert.py', *base, '--n_layr=3', timeout=120)
    assert result.returncode != 0 and result.stderr.count('\n') == 1
    assert result.stderr.startswith("error: --n_layr=3: unknown key 'n_layr'; valid keys: ")
    result = run_script('-c', 'import train_bert', timeout=120)
    assert result.returncode == 0 and not result.stdout and not result.stderr
