"""What the trainer tests (test_train_gpt, test_train_bert, test_train_vit) share: running a script, reading its
log, a byte corpus, and the checks every trainer must pass the same way (Ctrl-C then resume, 2 processes = 1)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}  # tiny models gain nothing from threads


def run_script(*args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs)


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def write_byte_corpus(folder):
    """A byte corpus a tiny model learns in a few steps; split lengths are not multiples of block_size."""
    text = ' '.join(['the cat sat on the mat.', 'a dog ran to the log.'] * 400).encode()
    parts = {'train': text[:15000], 'val': text[15000:15000 + 1001], 'test': text[16001:16001 + 777]}
    for split, part in parts.items():
        (folder / f'{split}.bin').write_bytes(part)
    meta = {'tokenizer': 'bytes', 'vocab_size': 256, 'dtype': 'uint8', 'tokens': {k: len(v) for k, v in parts.items()}}
    (folder / 'meta.json').write_text(json.dumps(meta))
    return str(folder)


def interrupt(script, args, out_dir, timeout=240):
    """Starts `script args --out_dir=out_dir` without an iteration limit, sends Ctrl-C once 6 log rows are written,
    checks that it saved and said how to continue; returns the saved iteration."""
    process = subprocess.Popen([sys.executable, script, *args, '--max_iters=100000', f'--out_dir={out_dir}'],
                               cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not (out_dir / 'log.jsonl').exists() or len(read_log(out_dir)) < 6:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert 'continue with --init_from=resume' in out
    saved = torch.load(out_dir / 'ckpt.pt', weights_only=False)['iter_num']
    assert 6 <= saved < 100000
    return saved


def assert_logs_match(one, two):
    """Two runs' deterministic log rows agree to float32 reduction-order noise (e.g. 1 process against 2)."""
    assert [r.keys() for r in one] == [r.keys() for r in two]
    for a, b in zip(one, two):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)


def assert_redraw_resumes_exactly(train, losses, tmp_path):
    """Performer redrawing its features every 3 steps: a run stopped at step 3 (a redraw step) and resumed logs
    bitwise what an uninterrupted run logs, and the redraw changes the run from step 3 on (so the check can fail).
    train(out_dir, *args) runs the trainer and returns its log rows; losses(rows) keeps their deterministic part."""
    recipe = ['--attention=performer', '--performer_redraw_interval=3', '--eval_interval=3']
    train(tmp_path / 'stopped', *recipe, '--max_iters=3')
    resumed = losses(train(tmp_path / 'stopped', *recipe, '--max_iters=7', '--init_from=resume'))
    uninterrupted = losses(train(tmp_path / 'uninterrupted', *recipe, '--max_iters=7'))
    assert resumed == uninterrupted
    never = losses(train(tmp_path / 'never', *recipe, '--max_iters=7', '--performer_redraw_interval=0'))
    before = lambda rows: [row for row in rows if row['iter'] < 3]
    assert before(never) == before(uninterrupted) and never != uninterrupted
