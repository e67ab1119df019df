"""
train_lra.py on tiny ListOps (written by prepare_lra.py's generator) and tiny retrieval pairs (from an archive in
LRA's format): every registered bidirectional variant learns (the check shown to fail for attention blind to the
tokens) and a causal-only one is refused naming the others, padding is masked (outputs equal those of the unpadded
documents), the two towers share their encoder and meet in [u, v, u * v, u - v], eval.json scores every example,
LRA's schedule, the configs and sweeps, report.py's LRA table, and bad input as one line. (What every trainer does
the same way, Ctrl-C and resume among it, is in test_trainers.py.)
"""
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import attention
import prepare_lra
import report
import sweep
import train_lra
import training
from attention import ATTENTION
from conftest import read_log
from test_attention import SoftplusAttention
from test_prepare_lra import lra_release, unpack
from train_lra import LRAClassifier, LRAConfig
from training import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BIDIRECTIONAL = [v for v in ATTENTION if ATTENTION[v].supports_bidirectional and not ATTENTION[v].needs_patch_grid]
@pytest.fixture(scope='module')
def retrieval(tmp_path_factory):
    folder = tmp_path_factory.mktemp('retrieval')
    members = {name: data for name, data in lra_release()[0].items() if 'tsv_data' in name}
    prepare_lra.main(['retrieval', f'--src={unpack(members, folder / "release")}', f'--data_dir={folder / "data"}'])
    return str(folder / 'data')


@pytest.fixture(scope='module')
def sixteen(tmp_path_factory):
    """16 ListOps expressions: one batch, which a model memorises in a few steps only if its class token reads the
    expression, through attention"""
    folder = tmp_path_factory.mktemp('sixteen')
    prepare_lra.main(['listops', f'--data_dir={folder}', '--examples=16,16,16', '--min_length=8', '--max_length=48',
                      '--seed=1'])
    return str(folder)


def memorises(lra, out_dir, data_dir, variant):
    """True if the training loss of 30 steps on the 16 expressions falls from chance (log 10) to below 1.4; a model
    blind to the tokens stays at the entropy of the 16 labels, 1.84."""
    rows = lra.train(out_dir, f'--data_dir={data_dir}', f'--attention={variant}', '--max_iters=30',
                     '--lr_decay_iters=30', '--eval_interval=30')
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    assert len(train_losses) == 30 and all(math.isfinite(loss) for loss in train_losses)
    assert train_losses[0] > 2.2
    return np.mean(train_losses[-3:]) < 1.4


@pytest.mark.slow
@pytest.mark.parametrize('variant', BIDIRECTIONAL)
def test_every_bidirectional_variant_learns_listops(variant, lra, sixteen, tmp_path):
    assert memorises(lra, tmp_path, sixteen, variant)
    rows = read_log(tmp_path)
    assert [r['iter'] for r in rows if 'val_acc' in r] == [0, 30]
    assert {'tokens_per_s', 'peak_mem_mb', 'elapsed_s', 'grad_norm'} <= set(rows[1])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 30 and checkpoint['model_args']['attention'] == variant
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])


@pytest.mark.slow
def test_the_training_check_fails_for_attention_blind_to_the_tokens(lra, sixteen, tmp_path, monkeypatch):
    class Blind(attention.SoftmaxAttention):
        def attend(self, q, k, v, pad_mask):
            return torch.zeros_like(v)

    monkeypatch.setitem(ATTENTION, 'blind', Blind)
    assert not memorises(lra, tmp_path, sixteen, 'blind')


@pytest.mark.slow
def test_a_causal_only_variant_is_refused_naming_those_that_are_not(lra, tmp_path, monkeypatch):
    class CausalOnly(SoftplusAttention):
        supports_bidirectional = False

    monkeypatch.setitem(ATTENTION, 'causal_only', CausalOnly)
    monkeypatch.setitem(ATTENTION, 'softplus', SoftplusAttention)  # registered at run time: accepted, no other edit
    accepted = ', '.join(name for name, cls in ATTENTION.items() if cls.supports_bidirectional and not cls.needs_patch_grid)
    with pytest.raises(ConfigError, match=re.escape(f"attention='causal_only' is causal only and LRA encodes both "
                                                    f"directions; choose one of: {accepted}")):
        lra.train(tmp_path / 'a', '--attention=causal_only')
    assert not (tmp_path / 'a').exists()
    rows = lra.train(tmp_path / 'b', '--attention=softplus', '--max_iters=3')
    assert len([r for r in rows if 'train_loss' in r]) == 3


def tiny_model(variant, pool='cls', padded=True, documents=1, seq_len=40, position='sinusoidal'):
    torch.manual_seed(0)
    config = LRAConfig(attention=variant, n_embd=24, n_head=2, n_layer=2, vocab_size=16, num_classes=5,
                       seq_len=seq_len, documents=documents, padded=padded, pool=pool, position=position,
                       chunk_size=4, local_window=8, performer_features=16)
    return LRAClassifier(config).double().eval()


def documents(lengths, seq_len=40, seed=0):
    """(len(lengths), seq_len) model ids: random tokens 1..15, then padding"""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 16, (len(lengths), seq_len), generator=generator)
    return torch.where(torch.arange(seq_len) < torch.tensor(lengths)[:, None], ids, train_lra.PAD)


@pytest.mark.parametrize('variant', BIDIRECTIONAL)
@pytest.mark.parametrize('pool', ['cls', 'mean'])
def test_padding_changes_nothing(variant, pool):
    """A document padded to seq_len is classified as the same document alone, unpadded (float64): the blocks get the
    padding mask and pooling skips the padding. Without the mask (padded=False) the outputs differ."""
    model = tiny_model(variant, pool)
    ids = documents([40, 23, 3])  # the last one short enough for the class token to see padding through local's window
    with torch.no_grad():
        logits, _ = model(ids[:, None])
        for row, length in enumerate([40, 23, 3]):
            alone, _ = model(ids[row:row + 1, None, :length])
            torch.testing.assert_close(logits[row:row + 1], alone, rtol=1e-10, atol=1e-10)
        unmasked = tiny_model(variant, pool, padded=False)
        assert not torch.allclose(unmasked(ids[:, None])[0][2], logits[2], atol=1e-6)


def test_two_towers_share_the_encoder_and_meet_in_lra_features():
    model = tiny_model('linear', documents=2, position='learned')
    ids = torch.stack([documents([40, 12], seed=1), documents([30, 40], seed=2)], dim=1)  # (B=2, D=2, T)
    with torch.no_grad():
        logits, _ = model(ids)
        u, v = model.encode(ids[:, 0]), model.encode(ids[:, 1])
        torch.testing.assert_close(logits, model.head(torch.cat([u, v, u * v, u - v], dim=-1)))
        swapped, _ = model(ids.flip(1))
    assert not torch.allclose(logits, swapped)  # u - v: the order of the documents is seen
    assert [type(layer).__name__ for layer in model.head] == ['Linear', 'ReLU', 'Linear', 'ReLU', 'Linear']
    assert model.head[0].in_features == 4 * 24 and model.head[2].out_features == 4 * 24 // 2


@pytest.mark.slow
def test_retrieval_trains_and_evaluates_end_to_end(lra, retrieval, tmp_path):
    recipe = ['--attention=linear', '--batch_size=4', '--max_iters=2', '--eval_interval=1', '--n_embd=16']  # 2 x 4,000
    rows = lra.train(tmp_path, f'--data_dir={retrieval}', *recipe)
    assert [r['iter'] for r in rows if 'val_acc' in r] == [0, 1, 2]
    lra.main(f'--data_dir={retrieval}', f'--out_dir={tmp_path}', *recipe, '--init_from=resume', '--eval_only=True')
    results = json.loads((tmp_path / 'eval.json').read_text())
    assert results['val']['examples'] == results['test']['examples'] == 5
    config = json.loads((tmp_path / 'config.json').read_text())['config']
    assert config['n_params'] > 0 and config['attention_params'] == 2 * 4 * 16 * 16


@pytest.mark.slow
def test_eval_only_scores_every_example(lra, tmp_path):
    rows = lra.train(tmp_path, '--max_iters=6', '--eval_interval=6', '--eval_iters=100')  # val: all 48
    lra.main(f'--out_dir={tmp_path}', '--init_from=resume', '--eval_only=True', '--batch_size=7')
    results = json.loads((tmp_path / 'eval.json').read_text())
    assert set(results) == {'iter', 'val', 'test'} and results['iter'] == 6
    assert set(results['test']) == {'accuracy', 'loss', 'examples'}
    assert (results['val']['examples'], results['test']['examples']) == (48, 40)
    assert results['val']['loss'] == pytest.approx(rows[-1]['val_loss'], rel=1e-5)  # other batches, same examples
    assert results['val']['accuracy'] == rows[-1]['val_acc']
    assert read_log(tmp_path)[-1] == results


@pytest.mark.slow
def test_report_reads_lra_runs(lra, tmp_path, capsys):
    for variant in ('softmax', 'linear'):
        args = [f'--out_dir={tmp_path / variant}', f'--attention={variant}', '--max_iters=2']
        lra.main(*args)
        lra.main(*args, '--init_from=resume', '--eval_only=True')
    capsys.readouterr()
    report.main([str(tmp_path)])
    table = capsys.readouterr().out
    assert table.startswith('Long Range Arena: top-1 accuracy. Best first by val accuracy % (higher is better)')
    assert '| attention | params | attn params | n | val accuracy % | test accuracy % | Δ val accuracy % |' in table
    accuracy = json.loads((tmp_path / 'linear' / 'eval.json').read_text())['test']['accuracy']
    assert f'| {100 * accuracy:.2f} |' in table


def test_epochs_are_permutations_and_ranks_split_each_batch():
    cfg = SimpleNamespace(seed=3, batch_size=4, gradient_accumulation_steps=2)
    one = SimpleNamespace(rank=0, world_size=1)
    steps = [[train_lra.train_examples(it, m, 21, cfg, one) for m in range(2)] for it in range(6)]
    for epoch in range(3):  # 21 // 8 = 2 steps per epoch, 5 examples left out
        seen = np.concatenate([batch for step in steps[2 * epoch:2 * epoch + 2] for batch in step])
        assert len(set(seen.tolist())) == 16
    assert not np.array_equal(steps[0][0], steps[2][0])  # each epoch its own order
    halves = [train_lra.train_examples(3, 1, 21, cfg, SimpleNamespace(rank=r, world_size=2)) for r in (0, 1)]
    assert np.array_equal(np.concatenate(halves), steps[3][1])


def test_lra_schedule():
    cfg = SimpleNamespace(**{**train_lra.DEFAULTS, 'learning_rate': 0.05, 'warmup_iters': 1000})
    lr = [train_lra.get_lr(it, cfg) for it in range(5000)]
    assert lr[0] == pytest.approx(0.05 * 1e-3 / math.sqrt(1000))
    assert max(lr) == lr[999] == pytest.approx(0.05 / math.sqrt(1000))  # step 1000: the end of the warmup
    assert lr[3999] == pytest.approx(0.05 / math.sqrt(4000))
    cosine = SimpleNamespace(**{**vars(cfg), 'lr_schedule': 'cosine', 'learning_rate': 1e-3, 'lr_decay_iters': 5000})
    assert train_lra.get_lr(3000, cosine) == training.get_lr(3000, 1e-3, 0.0, 1000, 5000)


def test_bad_input_is_one_line_error(lra, tmp_path):
    lra.train(tmp_path, '--max_iters=1')
    base = [f'--out_dir={tmp_path}']
    cases = [
        (['--pool=max'], "unknown pool 'max'; choose 'cls' or 'mean'"),
        (['--position=rotary'], "unknown position 'rotary'; choose 'sinusoidal' or 'learned'"),
        (['--lr_schedule=linear'], "lr_schedule='linear'; choose 'rsqrt'"),
        (['--attention=flash'], 'choose one of: softmax, linear'),
        ([f'--data_dir={tmp_path / "nowhere" / "listops"}'], r'meta.json not found: run `python prepare_lra.py '
                                                              r'listops --data_dir='),
        ([f'--data_dir={tmp_path / "my_task"}'], r'meta.json not found: run `python prepare_lra.py listops '
                                                  r'--data_dir=.*my_task` \(or another task: listops, text, '),
        (['--batch_size=512', '--init_from=resume'], '256 training examples: fewer than one step'),
        (['--n_layer=3', '--init_from=resume'], 'is a different model: n_layer=2 in the checkpoint, 3 in the config'),
        (['--n_embd=31'], 'n_embd=31 is not divisible by n_head=2'),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=message):
            lra.main(*base, *args)


@pytest.mark.parametrize('damage, message', [
    (lambda d: (d / 'val.labels.bin').write_bytes(b'\x01' * 3), 'val.labels.bin holds 3 bytes, not the 48'),
    (lambda d: (d / 'test.labels.bin').write_bytes(b'\x0c' * 40), 'holds class 12, beyond num_classes 10'),
    (lambda d: (d / 'train.bin').write_bytes(b'\x20' * (d / 'train.bin').stat().st_size), 'holds token 32, beyond '
                                                                                           'vocab_size 15'),
    (lambda d: (d / 'test.index.bin').unlink(), 'test.index.bin not found; run `python prepare_lra.py listops '
                                                '--data_dir='),
    (lambda d: (d / 'meta.json').write_text('{"vocab_size": 15}'), 'is not from prepare_lra.py'),
])
def test_a_damaged_data_folder_is_one_line(lra, listops, tmp_path, damage, message):
    folder = tmp_path / 'listops'
    folder.mkdir()
    for path in Path(listops).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    damage(folder)
    with pytest.raises(ConfigError, match=message):
        lra.train(tmp_path / 'out', f'--data_dir={folder}')
    assert not (tmp_path / 'out').exists()


def test_configs_follow_the_trainer():
    """every configs/lra file and every variant's config apply to train_lra.py; each task reads its own folder"""
    for path in sorted((ROOT / 'configs' / 'lra').glob('*.py')):
        config = training.apply_overrides(train_lra.DEFAULTS, [str(path)])
        if path.stem in prepare_lra.TASKS:
            assert config['data_dir'] == f'data/lra/{path.stem}'
    assert sorted(path.stem for path in (ROOT / 'configs' / 'lra').glob('*.py')) == sorted(
        [*prepare_lra.TASKS, 'listops_cpu'])
    for name in ATTENTION:
        assert training.apply_overrides(train_lra.DEFAULTS, [str(ROOT / 'configs' / f'{name}.py')])['attention'] == name


@pytest.mark.slow
def test_sweeps_cover_the_bidirectional_variants(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path, variants in (('sweeps/lra.py', BIDIRECTIONAL), ('sweeps/listops_cpu.py', BIDIRECTIONAL)):
        settings = training.apply_overrides(sweep.DEFAULTS, [path])
        runs = sweep.plan_runs(SimpleNamespace(**settings), path)
        assert sorted({run.name.split(',')[0] for run in runs}) == sorted(f'attention={v}' for v in variants)
        assert all(run.args[0].startswith('configs/lra/') for run in runs)
