"""
train_gpt.py on a tiny byte corpus: every causal variant learns, other optimizers resume exactly, decoding equals
the full forward, the full-split evaluation counts every token once, sampling, and bad input is a one-line error.
(What every trainer does the same way, Ctrl-C and resume among it, is in test_trainers.py.)
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_gpt
import training
from attention import ATTENTION
from attention import LMConfig
from conftest import ENV, ROOT, read_log, run_script, write_byte_corpus
from train_gpt import GPT
from training import ConfigError

CAUSAL = [v for v in ATTENTION if ATTENTION[v].supports_causal]
@pytest.mark.slow
@pytest.mark.parametrize('variant', CAUSAL)
def test_every_causal_variant_learns(variant, gpt, tmp_path):
    rows = gpt.train(tmp_path, f'--attention={variant}')
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    val_losses = [r['val_loss'] for r in rows if 'val_loss' in r]
    assert len(train_losses) == 20 and len(val_losses) == 3  # evals at 0, 10, 20
    assert train_losses[0] == pytest.approx(math.log(256), abs=0.3)
    assert np.mean(train_losses[-3:]) < train_losses[0] - 2.0
    assert val_losses[-1] < val_losses[0] - 2.0
    assert {'tokens_per_s', 'peak_mem_mb', 'elapsed_s'} <= set(rows[0])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 20 and checkpoint['model_args']['attention'] == variant
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])
    assert json.load(open(tmp_path / 'config.json'))['config']['attention'] == variant


@pytest.mark.slow
@pytest.mark.parametrize('optimizer', ['sgd', 'adafactor'])
def test_other_optimizers_train_and_resume_exactly(optimizer, gpt, tmp_path):
    recipe = [f'--optimizer={optimizer}', '--learning_rate=0.1', '--eval_interval=3', '--max_iters=6']
    gpt.train(tmp_path / 'stopped', *recipe[:-1], '--max_iters=3')
    resumed = gpt.train(tmp_path / 'stopped', *recipe, '--init_from=resume')
    uninterrupted = gpt.train(tmp_path / 'uninterrupted', *recipe)
    assert gpt.losses(resumed) == gpt.losses(uninterrupted)
    assert gpt.losses(uninterrupted)[-1]['val_loss'] < gpt.losses(uninterrupted)[0]['val_loss']


@pytest.mark.slow
def test_eval_only_covers_every_token_once(gpt, byte_corpus, tmp_path):
    gpt.train(tmp_path, '--max_iters=5')
    gpt.main(f'--out_dir={tmp_path}', '--init_from=resume', '--eval_only=True', '--batch_size=3')
    results = json.load(open(tmp_path / 'eval.json'))
    assert read_log(tmp_path)[-1] == results
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    model = GPT(LMConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    for split in ('val', 'test'):
        data = torch.from_numpy(np.fromfile(os.path.join(byte_corpus, f'{split}.bin'), dtype=np.uint8).astype(np.int64))
        nll = 0.0
        for start in range(0, len(data) - 1, 16):  # independent windows of block_size, the last one shorter
            window = data[start:start + 17]
            logits, _ = model(window[None, :-1])
            nll += F.cross_entropy(logits[0], window[1:], reduction='sum').item()
        metrics = results[split]
        assert metrics['tokens'] == len(data) - 1
        assert metrics['loss'] == pytest.approx(nll / (len(data) - 1), rel=1e-5)
        assert metrics['bpc'] == pytest.approx(metrics['loss'] / math.log(2))


def test_word_level_perplexity_for_tokenized_text():
    meta = {'tokenizer': 'gpt2', 'words': {'val': 50}}
    metrics = train_gpt.split_metrics(2.0, 100, meta, 'val')
    assert metrics['token_ppl'] == pytest.approx(math.exp(2.0))
    assert metrics['word_ppl'] == pytest.approx(math.exp(2.0 * 100 / 50))
    assert 'bpc' not in metrics


@pytest.mark.parametrize('variant', CAUSAL)
def test_generate_by_steps_equals_greedy_full_forward(variant):
    torch.manual_seed(0)
    config = LMConfig(attention=variant, vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=16,
                       chunk_size=4, local_window=4, performer_features=16)
    model = GPT(config).double().eval()
    prompt = torch.randint(50, (1, 5))
    out = model.generate(prompt, max_new_tokens=30, top_k=1)[0]  # runs past block_size: the context slides
    assert out.shape == (35,) and torch.equal(out[:5], prompt[0])
    start = 0  # the documented rule: at block_size, continue from the last block_size // 2 tokens
    for i in range(5, len(out)):
        logits, _ = model(out[None, start:i])
        assert logits[0, -1].argmax().item() == out[i].item(), f"token {i}"
        if i - start == config.block_size:
            start = i + 1 - config.block_size // 2


@pytest.mark.slow
def test_sample_mode_prints_a_continuation(gpt, tmp_path, capsys):
    gpt.train(tmp_path, '--max_iters=3')
    capsys.readouterr()
    train_gpt.main([f'--out_dir={tmp_path}', '--mode=sample', '--start=the cat', '--max_new_tokens=20'])
    text = capsys.readouterr().out
    assert text.startswith('the cat') and len(text.rstrip('\n')) >= 20


def test_sampling_from_another_trainer_s_run_is_one_line(bert, tmp_path):
    bert.train(tmp_path, '--max_iters=1')
    with pytest.raises(ConfigError, match=r"ckpt.pt is another trainer's run \(its settings include eval_seed, mask_prob\): "
                                          r"train_gpt.py reads only its own; give the --out_dir of a train_gpt.py run"):
        train_gpt.main([f'--out_dir={tmp_path}', '--mode=sample'])


@pytest.mark.slow
def test_bad_input_is_one_line_error(gpt, tmp_path):
    """Each case on its own copy of a finished run (a run folder admits one process at a time): refused in one line,
    the copy untouched."""
    gpt.train(tmp_path / 'run', '--max_iters=1')
    cases = [
        (['--n_layr=3'], "unknown key 'n_layr'"),
        (['--n_layer=2.5'], 'expected int'),
        (['--attention=flash'], 'choose one of: softmax, linear'),
        ([f'--data_dir={tmp_path / "nowhere"}'], 'train.bin not found: run `python prepare_enwik8.py --src=FILE'),
        (['--n_layer=3', '--attention=linear', '--init_from=resume'],
         "is a different model: attention='softmax' in the checkpoint, 'linear' in the config; n_layer=2 in the "
         "checkpoint, 3 in the config"),
        (['--optimizer=sgd', '--init_from=resume'], 'was trained with AdamW, this run builds SGD: resume with'),
        ([], '{run} already holds a run ({run}/ckpt.pt): continue it with --init_from=resume'),
        (['--eval_only=True'], '{run} already holds a run'),  # its eval.json is not replaced
    ]
    runs = [shutil.copytree(tmp_path / 'run', tmp_path / f'case{i}') for i in range(len(cases))]
    before = [{path.name: path.read_bytes() for path in run.iterdir()} for run in runs]
    processes = [subprocess.Popen([sys.executable, 'train_gpt.py', *gpt.args, f'--out_dir={run}', *args], cwd=ROOT,
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for run, (args, _) in zip(runs, cases)]  # in parallel: python + torch startup is most of the time
    for process, run, (args, message) in zip(processes, runs, cases):
        _, err = process.communicate(timeout=120)
        assert process.returncode != 0
        assert err.count('\n') == 1 and err.startswith('error: ') and message.format(run=run) in err, (args, err)
    assert before == [{path.name: path.read_bytes() for path in run.iterdir()} for run in runs]  # untouched
    assert training.prepare_command('data/enwik8') == 'python prepare_enwik8.py'
    assert training.prepare_command('data/wikitext103/') == 'python prepare_wikitext103.py'
    assert training.prepare_command('/big/enwik8') == 'python prepare_enwik8.py --data_dir=/big/enwik8'
    with pytest.raises(ConfigError, match="mode='eval'; choose 'train' or 'sample'"):
        train_gpt.main(['--mode=eval'])


def test_shared_parameters_start_identical_across_variants():
    """Only the attention differs: every parameter two variants share has the same initial value, even when
    one variant adds parameters (retention) or draws random features (performer) before later layers."""
    def initial(attention):
        torch.manual_seed(0)
        model = GPT(LMConfig(attention=attention, vocab_size=64, n_layer=3, n_head=2, n_embd=16, block_size=32,
                              performer_features=8))
        return model.state_dict()

    softmax = initial('softmax')
    for variant in ('performer', 'retention'):
        other = initial(variant)
        shared = softmax.keys() & other.keys()
        assert any(name.startswith('blocks.2.') for name in shared)
        for name in shared:
            assert torch.equal(softmax[name], other[name]), name


@pytest.mark.slow
def test_a_resume_that_fails_at_its_first_evaluation_changes_nothing(gpt, tmp_path, monkeypatch):
    gpt.train(tmp_path, '--max_iters=4', '--eval_interval=2')
    before = {name: (tmp_path / name).read_bytes() for name in ('ckpt.pt', 'log.jsonl', 'config.json')}

    def failing(*args):
        raise RuntimeError('the evaluation died')
    monkeypatch.setattr(train_gpt, 'estimate_loss', failing)
    with pytest.raises(RuntimeError):
        gpt.train(tmp_path, '--max_iters=8', '--eval_interval=2', '--init_from=resume', '--batch_size=4')
    assert before == {name: (tmp_path / name).read_bytes() for name in before}
    monkeypatch.undo()
    gpt.train(tmp_path, '--max_iters=8', '--eval_interval=2', '--init_from=resume', '--batch_size=4')
    segments = json.load(open(tmp_path / 'config.json'))['segments']
    assert [(s['start_iter'], s['config']['batch_size']) for s in segments] == [(0, 8), (4, 4)]


@pytest.mark.parametrize('damage, message', [
    (lambda folder: (folder / 'meta.json').write_text('{"vocab_size": 2'), 'meta.json is not readable JSON'),
    (lambda folder: (folder / 'meta.json').write_text('{"dtype": "uint8"}'), 'has no positive integer vocab_size'),
    (lambda folder: (folder / 'val.bin').write_bytes(b'x' * 900), 'val.bin holds 900 bytes, not the 1001'),
    (lambda folder: (folder / 'meta.json').write_text('{"vocab_size": 100}'), 'beyond vocab_size 100'),
])
def test_a_bad_data_folder_is_one_line(gpt, tmp_path, damage, message):
    (tmp_path / 'data').mkdir()
    folder = write_byte_corpus(tmp_path / 'data')
    damage(tmp_path / 'data')
    with pytest.raises(ConfigError, match=re.escape(message)):
        gpt.train(tmp_path / 'out', f'--data_dir={folder}')
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_under_torchrun_bad_input_is_said_first_before_torchrun_s_report(gpt, tmp_path):
    """Rank 0 says it at once; the other ranks wait before saying it, so torchrun usually stops them first, but on
    a loaded machine one may still print the same line: the first line is the error, and no rank says another."""
    torchrun = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_gpt.py']
    result = run_script(*torchrun, *gpt.args, f'--out_dir={tmp_path}', '--n_head=3',
                        timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith('*')
             and 'OMP_NUM_THREADS' not in line]  # torchrun's own banner
    assert result.returncode != 0 and lines[0] == 'error: n_embd=32 is not divisible by n_head=3', result.stderr
    assert {line for line in lines if line.startswith('error:')} == {'error: n_embd=32 is not divisible by n_head=3'}
