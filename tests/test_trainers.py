"""
What every trainer does the same way, checked for each of the five on its tiny recipe (conftest.py): Ctrl-C saves
and a resume equals an uninterrupted run bitwise, performer's redraw resumes exactly, 2 processes equal 1 (training
and eval_only), a non-finite loss stops keeping the last good checkpoint, a run folder per variant, and bad input is
one line on stderr while importing a script runs nothing.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import report
import training
from conftest import ENV, ROOT, read_log, run_script

TRAINERS = ['gpt', 'bert', 'vit', 'lra', 'mqar']
# what a trainer's Ctrl-C recipe adds: ViT resumes mid-epoch (6 steps each) with two DataLoader workers against an
# uninterrupted run with none; LRA crosses epochs (8 steps each) under its own rsqrt schedule
CTRL_C_RECIPE = {'vit': ['--batch_size=16'],
                 'lra': ['--lr_schedule=rsqrt', '--learning_rate=0.05', '--warmup_iters=5']}
RESUME_ARGS = {'vit': ['--num_workers=2']}
# a bad value the script itself refuses, and the start of its one line on stderr
BAD_INPUT = {
    'gpt': ('--n_layer=2.5', "error: --n_layer=2.5: n_layer=2.5 has type float, expected int"),
    'bert': ('--n_layr=3', "error: --n_layr=3: unknown key 'n_layr'; valid keys: "),
    'vit': ('--label_smoothing=high', "error: --label_smoothing=high: label_smoothing='high'"),
    'lra': ('--mlp_ratio=0', 'error: mlp_ratio=0: must be at least 1'),
    'mqar': ('--num_kv_pairs=5', 'error: block_size'),
}
# the folder a run without out_dir writes, by data folder (or MQAR setting) and variant
RUN_FOLDER = {'gpt': 'out-{data}-{variant}', 'bert': 'out-bert-{data}-{variant}', 'vit': 'out-vit-{data}-{variant}',
              'lra': 'out-lra-{data}-{variant}', 'mqar': 'out-mqar-t16-kv2-{variant}'}


@pytest.fixture(params=TRAINERS)
def trainer(request):
    return request.getfixturevalue(request.param)


def interrupt(trainer, args, out_dir, timeout=240):
    """Starts the script with args and out_dir, without an iteration limit, sends Ctrl-C once 6 log rows are
    written, checks that it saved and said how to continue; returns the saved iteration."""
    process = subprocess.Popen([sys.executable, trainer.script, *trainer.args, *args, '--max_iters=100000',
                                f'--out_dir={out_dir}'], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
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


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_equals_an_uninterrupted_run(trainer, tmp_path):
    # dropout and gradient accumulation on, so RNG streams (dropout, masks, crops) and micro-steps must all resume
    recipe = ['--dropout=0.1', '--gradient_accumulation_steps=2', '--eval_interval=4', '--lr_decay_iters=60',
              *CTRL_C_RECIPE.get(trainer.name, [])]
    stopped = tmp_path / 'stopped'
    k = interrupt(trainer, recipe, stopped)
    end = f'--max_iters={k + 10}'
    resumed = trainer.train(stopped, *recipe, end, '--init_from=resume', *RESUME_ARGS.get(trainer.name, []))
    uninterrupted = trainer.train(tmp_path / 'uninterrupted', *recipe, end)
    assert trainer.losses(resumed) == trainer.losses(uninterrupted)  # bitwise: same data, schedule, dropout


@pytest.mark.slow
def test_performer_redraw_resumes_exactly(trainer, tmp_path):
    """Performer redrawing its features every 3 steps: a run stopped at step 3 (a redraw step) and resumed logs
    bitwise what an uninterrupted run logs, and the redraw changes the run from step 3 on (so the check can fail)."""
    recipe = ['--attention=performer', '--performer_redraw_interval=3', '--eval_interval=3']
    trainer.train(tmp_path / 'stopped', *recipe, '--max_iters=3')
    resumed = trainer.losses(trainer.train(tmp_path / 'stopped', *recipe, '--max_iters=7', '--init_from=resume'))
    uninterrupted = trainer.losses(trainer.train(tmp_path / 'uninterrupted', *recipe, '--max_iters=7'))
    assert resumed == uninterrupted
    never = trainer.losses(trainer.train(tmp_path / 'never', *recipe, '--max_iters=7', '--performer_redraw_interval=0'))
    before = lambda rows: [row for row in rows if row['iter'] < 3]
    assert before(never) == before(uninterrupted) and never != uninterrupted


def numbers(results, prefix=''):
    """The numbers of an eval.json, flattened: {'test/loss': ..., ...}."""
    flat = {}
    for key, value in results.items():
        flat.update(numbers(value, f'{prefix}{key}/') if isinstance(value, dict) else {prefix + key: value})
    return flat


@pytest.mark.slow
def test_two_processes_match_one(trainer, tmp_path):
    """Training and eval_only under torchrun with 2 processes agree with 1 process, to float32 reduction-order noise;
    evaluation counts (tokens, images, examples, answers) exactly."""
    recipe = ['--gradient_accumulation_steps=2', '--max_iters=4', '--eval_interval=2',
              *(['--batch_size=16'] if trainer.name == 'vit' else [])]
    trainer.train(tmp_path / 'one', *recipe)
    trainer.main(*recipe, f'--out_dir={tmp_path / "one"}', '--init_from=resume', '--eval_only=True')
    torchrun = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', trainer.script]
    for extra in ([], ['--init_from=resume', '--eval_only=True']):
        result = run_script(*torchrun, *trainer.args, *recipe, f'--out_dir={tmp_path / "two"}', *extra, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (trainer.losses(read_log(tmp_path / run)) for run in ('one', 'two'))
    assert [row.keys() for row in one] == [row.keys() for row in two]
    for a, b in zip(one, two):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)
    eval_one, eval_two = (numbers(json.loads((tmp_path / run / 'eval.json').read_text())) for run in ('one', 'two'))
    assert eval_one.keys() == eval_two.keys()
    for key, value in eval_one.items():
        counted = isinstance(value, int) and not isinstance(value, bool)
        assert value == eval_two[key] if counted else value == pytest.approx(eval_two[key], rel=1e-5), key


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(trainer, tmp_path):
    trainer.train(tmp_path, '--max_iters=2')
    with pytest.raises(SystemExit) as e:  # a huge learning rate blows the weights up within a few steps
        trainer.train(tmp_path, '--max_iters=10', '--init_from=resume', '--learning_rate=1e30')
    assert 'non-finite' in str(e.value.code) and 'last good checkpoint (iter 2)' in str(e.value.code)
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 2
    assert all(torch.isfinite(t).all() for t in checkpoint['model'].values())


@pytest.mark.slow
def test_each_variant_gets_its_own_run_folder(trainer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = ''.join(arg.partition('=')[2] for arg in trainer.args if arg.startswith('--data_dir='))  # mqar: none
    variants = ('softmax', 'local') if trainer.name == 'lra' else ('softmax', 'linear')
    for variant in variants:
        trainer.main(f'--attention={variant}', '--max_iters=1')
    names = [RUN_FOLDER[trainer.name].format(data=os.path.basename(data_dir), variant=v) for v in variants]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)


@pytest.mark.slow
def test_bad_input_is_one_line_and_importing_runs_nothing(trainer, tmp_path):
    argument, message = BAD_INPUT[trainer.name]
    result = run_script(trainer.script, *trainer.args, f'--out_dir={tmp_path}', argument, timeout=120)
    assert result.returncode == 1 and result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # a refused run writes nothing
    module = trainer.script.removesuffix('.py')
    result = run_script('-c', f'import {module}; print("attention" in {module}.DEFAULTS)', timeout=120)
    assert result.returncode == 0 and result.stdout == 'True\n' and not result.stderr


def test_a_run_folder_another_process_holds_is_left_alone(trainer, tmp_path):
    """Two trainers (or a trainer and a sweep) on one out_dir: the second stops at once, in one line, and exits
    EXIT_BUSY; nothing of the first's is touched."""
    out_dir = tmp_path / 'run'
    with training.FolderLock(str(out_dir), 'wait'):
        with pytest.raises(training.FolderBusy, match=r"run is in use by another process \(pid \d+\): wait for it to "
                                                      r"finish, or give another --out_dir"):
            trainer.main(f'--out_dir={out_dir}')
        assert os.listdir(out_dir) == ['.lock']


def test_eval_only_of_a_fresh_model_writes_its_own_folder(trainer, tmp_path):
    """eval_only from scratch scores the initial weights (a chance-level baseline) into a folder made for it."""
    trainer.main(f'--out_dir={tmp_path / "new" / "run"}', '--eval_only=True')
    assert sorted(os.listdir(tmp_path / 'new' / 'run')) == ['eval.json', 'log.jsonl']
    assert json.loads((tmp_path / 'new' / 'run' / 'eval.json').read_text())['iter'] == 0


def test_a_run_records_the_fingerprint_report_recomputes(trainer, tmp_path):
    """config.json's fingerprint is what report.py recomputes from the run's settings and today's code, and a run
    resumed with it is accepted (it is one of the keys a run adds to its settings)."""
    trainer.train(tmp_path, '--max_iters=1')
    trainer.train(tmp_path, '--max_iters=2', '--init_from=resume')
    task = next(task for task in report.TASKS.values() if task.trainer == trainer.script)
    for segment in json.loads((tmp_path / 'config.json').read_text())['segments']:
        assert segment['config']['fingerprint'] == report.run_fingerprint(segment['config'], task)
