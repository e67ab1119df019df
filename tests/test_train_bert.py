"""
train_bert.py on a tiny byte corpus: RoBERTa's masking statistics, evaluation masks that depend on the eval seed and
the data alone, it learns bidirectionally, the full-split evaluation scores every masked token once, and bad input is
a one-line error. (What every trainer does the same way, Ctrl-C and resume among it, is in test_trainers.py; every
bidirectional variant learns in test_train_lra.py.)
"""
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_bert
import training
from conftest import read_log
from train_bert import BERT, BERTConfig, IGNORE, mask_tokens
from training import ConfigError

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


def test_evaluation_masks_depend_only_on_the_eval_seed_and_the_data(byte_corpus):
    meta = training.load_meta(byte_corpus)
    cfg = SimpleNamespace(data_dir=byte_corpus, mask_prob=0.15, eval_seed=1234)
    torch.manual_seed(0)
    first = train_bert.masked_split(cfg, meta, 'val')
    torch.manual_seed(1)  # the global RNG (model init, dropout) plays no part
    second = train_bert.masked_split(cfg, meta, 'val')
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = train_bert.masked_split(SimpleNamespace(**{**vars(cfg), 'eval_seed': 99}), meta, 'val')
    assert not torch.equal(first[1], other[1])


@pytest.mark.slow
def test_eval_only_scores_every_masked_token_once_and_the_same_ones_for_every_variant(bert, byte_corpus, tmp_path):
    results = {}
    for variant in ('softmax', 'linear'):
        out_dir = tmp_path / variant
        bert.train(out_dir, f'--attention={variant}', '--max_iters=3')
        bert.main(f'--out_dir={out_dir}', f'--attention={variant}', '--init_from=resume', '--eval_only=True',
                  '--batch_size=3')
        results[variant] = json.load(open(out_dir / 'eval.json'))
        assert read_log(out_dir)[-1] == results[variant]
    checkpoint = torch.load(tmp_path / 'linear' / 'ckpt.pt', weights_only=False)
    model = BERT(BERTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    meta = training.load_meta(byte_corpus)
    cfg = SimpleNamespace(data_dir=byte_corpus, mask_prob=0.15, eval_seed=1234)
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


@pytest.mark.slow
def test_it_learns(bert, tmp_path):
    rows = bert.train(tmp_path)
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    val_losses = [r['val_loss'] for r in rows if 'val_loss' in r]
    assert len(train_losses) == 20 and len(val_losses) == 3  # evals at 0, 10, 20
    assert train_losses[0] == pytest.approx(math.log(257), abs=0.3)  # 256 bytes + the mask token
    assert np.mean(train_losses[-3:]) < train_losses[0] - 2.0
    assert val_losses[-1] < val_losses[0] - 2.0
    assert rows[-1]['val_acc'] > rows[0]['val_acc'] + 0.1
    assert {'tokens_per_s', 'peak_mem_mb', 'elapsed_s'} <= set(rows[0])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 20 and checkpoint['model_args']['attention'] == 'softmax'
    assert checkpoint['model_args']['causal'] is False and checkpoint['model_args']['vocab_size'] == 257
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])


def test_bad_input_is_one_line_error(bert, tmp_path):
    bert.train(tmp_path, '--max_iters=1')
    base = [f'--out_dir={tmp_path}']
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
            bert.main(*base, *args)
