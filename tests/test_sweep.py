"""
sweep.py: the commands a dry run prints; a small real sweep stopped midway by Ctrl-C and run again, which resumes
the stopped run and leaves the finished one untouched, as does a dry run's line run again; a failing run and one
past its time stop the sweep; what each run's folder says it still needs; every file in sweeps/ plans (nothing
trains); bad sweep files are one-line errors.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import sweep
import train_bert
import train_gpt
import train_lra
import train_mqar
import train_vit
import training
from attention import ATTENTION
from conftest import ENV, ROOT, read_log, run_script, write_byte_corpus
from training import ConfigError

TIMEOUT_S = 240
# train_gpt.py's tiny recipe (as tests/test_train_gpt.py's) for 120 steps, so that a run lasts long enough
# (about a second) to be stopped part-way; checkpoints every 40 steps
TINY = {'n_layer': 2, 'n_head': 2, 'n_embd': 32, 'block_size': 16, 'batch_size': 8, 'dropout': 0.0,
        'learning_rate': 0.01, 'min_lr': 0.001, 'warmup_iters': 2, 'lr_decay_iters': 120, 'max_iters': 120,
        'eval_interval': 40, 'eval_iters': 2, 'log_interval': 1, 'device': 'cpu'}
TRAINERS = {f'{module.__name__}.py': module for module in (train_gpt, train_bert, train_vit, train_mqar, train_lra)}


def write_sweep(path, **keys):
    path.write_text(''.join(f'{key} = {value!r}\n' for key, value in keys.items()))
    return str(path)


@pytest.fixture
def in_root(monkeypatch):
    """Paths in sweep files are relative to where sweep.py runs: the repository root."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def known_trainers(monkeypatch, in_root):
    """The trainers' DEFAULTS and modes without a subprocess each (tests may import the scripts; sweep.py may not)."""
    monkeypatch.setattr(sweep, 'trainer_defaults', lambda trainer: (
        TRAINERS[trainer].DEFAULTS, TRAINERS[trainer].CAUSAL, getattr(TRAINERS[trainer], 'PATCH_GRID', False)))
    monkeypatch.setattr(sweep, 'trainer_refusal', lambda trainer, named_configs: None)  # tested on its own below


@pytest.mark.slow
def test_dry_run_prints_one_command_per_run(tmp_path, in_root, capsys):
    path = write_sweep(tmp_path / 'grid.py', trainer='train_gpt.py', configs=['configs/cpu_small.py'],
                       overrides={'max_iters': 500}, axes={'attention': ['softmax', 'linear'], 'n_head': [1, 4]},
                       seeds=[1, 2])
    sweep.main([path, '--dry_run=True', '--timeout_hours=2'])
    lines = [shlex.join(['python', 'sweep.py', path, '--timeout_hours=2',
                         f'--only=attention={attention},n_head={n_head},seed={seed}'])
             for seed in (1, 2) for attention in ('softmax', 'linear') for n_head in (1, 4)]
    assert capsys.readouterr().out == '\n'.join(lines) + '\n'


def test_registry_shorthands_and_explicit_runs(tmp_path, known_trainers, capsys):
    causal = [name for name, cls in ATTENTION.items() if cls.supports_causal and not cls.needs_patch_grid]
    for shorthand in ('*causal', '*'):  # '*': every variant the trainer can run
        path = write_sweep(tmp_path / 'all.py', trainer='train_gpt.py', axes={'attention': shorthand}, seeds=[3])
        sweep.main([path, '--dry_run=True'])
        lines = [shlex.join(['python', 'sweep.py', path, f'--only=attention={name},seed=3']) for name in causal]
        assert capsys.readouterr().out == '\n'.join(lines) + '\n'
    images = [name for name, cls in ATTENTION.items() if cls.supports_bidirectional]
    assert {'vicinity', 'sra'} <= set(images)
    assert sweep.axis_values('attention', '*bidirectional', 'x.py', causal=False, patch_grid=True) == images
    assert 'vicinity' not in sweep.axis_values('attention', '*', 'x.py', causal=False, patch_grid=False)
    path = write_sweep(tmp_path / 'runs.py', trainer='train_bert.py', axes={'attention': ['softmax', 'linear']},
                       runs=[{'norm': 'rmsnorm'}, {'norm': 'layernorm', 'bias': True}], seeds=[1],
                       out_dir=str(tmp_path / 'here'))
    runs = sweep.plan_runs(SimpleNamespace(**training.apply_overrides(sweep.DEFAULTS, [path])), path)
    assert [run.name for run in runs] == ['norm=rmsnorm,attention=softmax,seed=1', 'norm=rmsnorm,attention=linear,'
                                          'seed=1', 'norm=layernorm,bias=True,attention=softmax,seed=1',
                                          'norm=layernorm,bias=True,attention=linear,seed=1']
    assert runs[2].args == ['--norm=layernorm', '--bias=True', '--attention=softmax', '--seed=1',
                            f"--out_dir={tmp_path / 'here' / 'norm=layernorm,bias=True,attention=softmax,seed=1'}"]
    assert runs[2].max_iters == train_bert.DEFAULTS['max_iters']


@pytest.mark.slow
def test_sweep_stopped_midway_completes_without_redoing_finished_runs(tmp_path, known_trainers, capsys):
    if os.name == 'nt':
        pytest.skip("sends SIGINT to the sweep, as Ctrl-C in a terminal does; Windows has no such signal")
    data_dir = write_byte_corpus(tmp_path)
    out_dir = tmp_path / 'results'
    path = write_sweep(tmp_path / 'small.py', trainer='train_gpt.py', overrides={**TINY, 'data_dir': data_dir},
                       axes={'attention': ['softmax', 'linear']}, seeds=[1], out_dir=str(out_dir))
    names = ['attention=softmax,seed=1', 'attention=linear,seed=1']
    with open(tmp_path / 'first.txt', 'w') as output:
        # SIGINT as in a terminal, even where this suite runs in the background (which starts children ignoring it)
        process = subprocess.Popen([sys.executable, 'sweep.py', path], cwd=ROOT, env=ENV, stdout=output,
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        second = out_dir / names[1] / 'log.jsonl'
        deadline = time.time() + TIMEOUT_S
        while not second.exists() or len(read_log(second.parent)) < 3:  # the second run is training
            assert process.poll() is None and time.time() < deadline, (tmp_path / 'first.txt').read_text()
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)  # to the sweep alone: it passes it on to the trainer
        _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 130, err
    assert err.strip().endswith(f"continue with: {shlex.join(['python', 'sweep.py', path])}")
    stopped_at = torch.load(out_dir / names[1] / 'ckpt.pt', weights_only=False)['iter_num']
    assert 0 < stopped_at < 120 and not (out_dir / names[1] / 'eval.json').exists()
    finished = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out_dir / names[0]).iterdir()}
    assert {p.name for p in finished} == {'config.json', 'log.jsonl', 'ckpt.pt', 'eval.json'}

    result = run_script('sweep.py', path, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    states = re.findall(r'^\[(\d/2)\] (\S+): (.*)$', result.stdout, flags=re.MULTILINE)
    assert states == [('1/2', names[0], 'skip (finished: eval.json at iter 120)'),
                      ('2/2', names[1], f'resume (ckpt.pt at iter {stopped_at} of 120)')]
    assert '1 skipped (finished), 0 evaluated, 1 resumed, 0 trained' in result.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out_dir / names[0]).iterdir()} == finished
    for name in names:
        assert json.loads((out_dir / name / 'eval.json').read_text())['iter'] == 120
        assert read_log(out_dir / name)[-2]['iter'] == 120  # the last training row, then the evaluation's

    sweep.main([path, '--dry_run=True'])  # a scheduler's job, run again once its run is finished, does nothing
    line = shlex.split(capsys.readouterr().out.splitlines()[0])
    assert line[:2] == ['python', 'sweep.py'] and line[-1] == f'--only={names[0]}'
    result = run_script(*line[1:], timeout=TIMEOUT_S)
    assert result.returncode == 0 and f'[1/2] {names[0]}: skip' in result.stdout and '+ python' not in result.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out_dir / names[0]).iterdir()} == finished


@pytest.fixture
def sigterm_kept():
    """sweep.main turns SIGTERM into Ctrl-C for the process it runs in: this one's is put back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_failing_run_stops_the_sweep_naming_it(tmp_path, known_trainers, sigterm_kept, capfd):
    path = write_sweep(tmp_path / 'fails.py', trainer='train_gpt.py', overrides={'data_dir': str(tmp_path / 'none')},
                       axes={'attention': ['softmax', 'linear']}, seeds=[1], out_dir=str(tmp_path / 'out'))
    run_dir = tmp_path / 'out' / 'attention=softmax,seed=1'
    with pytest.raises(ConfigError) as error:
        sweep.main([path])
    command = shlex.join(['python', 'train_gpt.py', f"--data_dir={tmp_path / 'none'}", '--attention=softmax',
                          '--seed=1', f'--out_dir={run_dir}'])
    assert str(error.value) == (f"run attention=softmax,seed=1 failed (exit 1): {command}; fix it and run the sweep "
                                "again (finished runs are kept)")
    out = capfd.readouterr().out
    assert '[1/2] attention=softmax,seed=1: train' in out and '[2/2]' not in out  # the second run never started


@pytest.mark.slow
@pytest.mark.skipif(os.name == 'nt', reason="Windows has no SIGINT disposition to inherit")
def test_a_trainer_starts_with_ctrl_c_ignored_until_its_loop_takes_it(capfd):
    """A Ctrl-C landing while a trainer imports torch would print a KeyboardInterrupt traceback: the sweep starts it
    with SIGINT ignored, and the trainer's loop (training.StopSignal) takes the signal over once it runs."""
    child = [sys.executable, '-c', 'import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)']
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if this suite is not
    try:
        assert sweep.run_command(child, sweep.Run('probe', '', [], 1), timeout_hours=0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capfd.readouterr().out.splitlines()[-1] == 'True'


@pytest.mark.slow
def test_a_run_past_its_time_is_stopped(tmp_path, known_trainers, sigterm_kept):
    data_dir = write_byte_corpus(tmp_path)
    path = write_sweep(tmp_path / 'slow.py', trainer='train_gpt.py', overrides={**TINY, 'max_iters': 100000,
                       'data_dir': data_dir}, timeout_hours=4 / 3600, out_dir=str(tmp_path / 'out'))
    with pytest.raises(ConfigError, match=r"run seed=1337 ran past timeout_hours=0.0011\d* and was stopped: "
                                          r"python train_gpt.py .*; raise timeout_hours and run the sweep again"):
        sweep.main([path])


def test_a_run_another_sweep_process_holds_is_left_to_it(tmp_path, known_trainers, sigterm_kept, capfd):
    """Two sweep processes on one file (a re-queued --dry_run line) never train one run twice: each leaves the
    runs the other holds."""
    path = write_sweep(tmp_path / 'two.py', trainer='train_gpt.py', overrides={'data_dir': str(tmp_path / 'none')},
                       axes={'attention': ['softmax', 'linear']}, seeds=[1], out_dir=str(tmp_path / 'out'))
    with training.FolderLock(str(tmp_path / 'out' / 'attention=softmax,seed=1'), '', name='.sweep.lock'), \
            training.FolderLock(str(tmp_path / 'out' / 'attention=linear,seed=1'), '', name='.sweep.lock'):
        sweep.main([path])
    out = capfd.readouterr().out
    assert '[1/2] attention=softmax,seed=1: busy (another sweep process is doing it)' in out
    assert '[2/2] attention=linear,seed=1: busy' in out and '+ python' not in out
    assert '0 trained, 2 left to other processes' in out
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').rglob('*.*'))


@pytest.mark.slow
def test_a_setting_the_trainer_itself_refuses_stops_the_sweep_before_any_run(tmp_path, in_root):
    path = write_sweep(tmp_path / 'pairs.py', trainer='train_mqar.py', configs=['configs/mqar/cpu.py'],
                       axes={'num_kv_pairs': [4, 40]}, out_dir=str(tmp_path / 'out'))
    with pytest.raises(ConfigError, match=r"pairs.py: run num_kv_pairs=40,seed=1337: vocab_size=8192 leaves|"
                                          r"pairs.py: run num_kv_pairs=40,seed=1337: block_size=64 has no room"):
        sweep.main([path])
    assert not (tmp_path / 'out').exists()


def fake_run(folder, ckpt_iter=None, eval_iter=None, log=False):
    """A run folder in a given state: a checkpoint at ckpt_iter, eval.json of eval_iter, a log."""
    folder.mkdir()
    if ckpt_iter is not None:
        torch.save({**dict.fromkeys(training.CHECKPOINT_KEYS), 'iter_num': ckpt_iter}, folder / 'ckpt.pt')
    if eval_iter is not None:
        (folder / 'eval.json').write_text(json.dumps({'iter': eval_iter, 'val': {}}))
    if log:
        (folder / 'log.jsonl').write_text('{"iter": 0, "val_loss": 5.0}\n')
    return sweep.Run(folder.name, str(folder), [], 100)


def test_what_a_run_needs_is_read_from_its_folder(tmp_path):
    assert sweep.run_state(fake_run(tmp_path / 'a'))[0] == 'train'
    assert sweep.run_state(fake_run(tmp_path / 'b', log=True)) == (
        'train', 'restart: a log but no ckpt.pt, stopped before its first checkpoint')
    assert sweep.run_state(fake_run(tmp_path / 'c', ckpt_iter=40, log=True))[0] == 'resume'
    assert sweep.run_state(fake_run(tmp_path / 'd', ckpt_iter=100))[0] == 'evaluate'
    assert sweep.run_state(fake_run(tmp_path / 'e', ckpt_iter=100, eval_iter=40))[0] == 'evaluate'
    assert sweep.run_state(fake_run(tmp_path / 'f', ckpt_iter=100, eval_iter=100))[0] == 'skip'
    assert sweep.run_state(fake_run(tmp_path / 'g', eval_iter=100, log=True))[0] == 'skip'  # results, no *.pt
    with pytest.raises(ConfigError, match=r"holds eval.json of iter 40 but no ckpt.pt"):
        sweep.run_state(fake_run(tmp_path / 'h', eval_iter=40, log=True))  # never trained over
    with pytest.raises(ConfigError, match=r"is at iter 120, past max_iters=100"):
        sweep.run_state(fake_run(tmp_path / 'i', ckpt_iter=120))


def sweep_files():
    return sorted(name for name in os.listdir(os.path.join(ROOT, 'sweeps')) if name.endswith('.py'))


@pytest.mark.parametrize('name', sweep_files())
def test_every_sweep_file_plans(name, known_trainers, capsys):
    """Each sweep in sweeps/ is valid for its trainer (dry run only: nothing trains)."""
    path = os.path.join('sweeps', name)
    sweep.main([path, '--dry_run=True'])
    lines = capsys.readouterr().out.splitlines()
    variants = {'causal': sum(cls.supports_causal and not cls.needs_patch_grid for cls in ATTENTION.values()),
                'bidirectional': sum(cls.supports_bidirectional and not cls.needs_patch_grid for cls in ATTENTION.values())}
    expected = {'shakespeare_gpt.py': 3 * variants['causal'], 'shakespeare_bert.py': 3 * variants['bidirectional'],
                'ablation_norm.py': 36, 'ablation_heads.py': 12, 'enwik8.py': 3 * variants['causal'],
                'wikitext103.py': 3 * variants['causal'], 'roberta_wikitext103.py': 3 * variants['bidirectional'],
                'mqar.py': 3 * 3 * 2 * variants['causal'],  # settings x learning rates x seeds
                'mqar_gpu.py': 3 * 4 * variants['causal'], 'mqar_seeds.py': 5 * (13 + 5),  # (variants + 5 wide) x seeds
                'lra.py': variants['bidirectional'], 'listops_cpu.py': 3 * variants['bidirectional'],
                'ablation_block.py': 6 * 2 * 3,  # variants x (both axes off, both on) x seeds
                'hybrid_gpt.py': 3,
                'shapes_vit.py': 3 * sum(cls.supports_bidirectional for cls in ATTENTION.values())}  # with vicinity, sra
    assert len(lines) == expected[name]
    assert all(line.startswith(f'python sweep.py {shlex.quote(path)} --only=') for line in lines)


@pytest.mark.parametrize('keys, message', [
    ({'trainer': 'train_gpt.py', 'axis': {'attention': ['linear']}}, r"unknown key 'axis'; valid keys: trainer,"),
    ({'trainer': 'train_gpt.py', 'seeds': 3}, r"seeds=3 has type int, expected list"),
    ({'trainer': 'train_gpt.py', 'seeds': [1, 1]}, r"seeds = \[1, 1\]; expected a non-empty list of distinct"),
    ({'trainer': 'train_foo.py'}, r"trainer 'train_foo.py' not found"),
    ({'axes': {'attention': ['linear']}}, r"names no trainer"),
    ({'trainer': 'train_gpt.py', 'axes': {'attention': []}}, r"axes\['attention'\] = \[\]; expected a non-empty list"),
    ({'trainer': 'train_gpt.py', 'axes': {'n_head': '*'}}, r"axes\['n_head'\] = '\*'; expected a non-empty list of "
                                                           r"values$"),
    ({'trainer': 'train_gpt.py', 'axes': {'n_head': [[1, 2]]}}, r"axes\['n_head'\] holds \[1, 2\]; expected a num"),
    ({'trainer': 'train_gpt.py', 'axes': {'norm_place': ['pre']}}, r"run norm_place=pre,seed=1337: "
                                                                   r"--norm_place=pre: unknown key"),
    ({'trainer': 'train_gpt.py', 'axes': {'n_head': [0]}}, r"run n_head=0,seed=1337: n_head=0: must be at least 1"),
    ({'trainer': 'train_gpt.py', 'axes': {'attention': ['softmaxx']}}, r"unknown attention 'softmaxx'; choose one of"),
    ({'trainer': 'train_bert.py', 'axes': {'attention': ['linear', 'gla']}}, r"run attention=gla,seed=1337: GatedLinearAttention is causal only"),
    ({'trainer': 'train_gpt.py', 'axes': {'attention': ['rfa'], 'rfa_features': [0]}}, r"rfa_features=0: rfa needs "),
    ({'trainer': 'train_gpt.py', 'overrides': {'seed': 5}}, r"overrides sets 'seed', which the sweep sets itself"),
    ({'trainer': 'train_gpt.py', 'runs': [{'n_head': 2}], 'axes': {'n_head': [1]}}, r"runs\[0\] and axes both set"),
    ({'trainer': 'train_gpt.py', 'axes': {'data_dir': ['a/b', 'a_b']}}, r"two runs share the folder data_dir=a_b"),
    ({'trainer': 'train_gpt.py', 'timeout_hours': 0}, r"timeout_hours = 0.0; must be positive"),
])
def test_bad_sweep_files_are_one_line_errors(keys, message, tmp_path, known_trainers):
    with pytest.raises(ConfigError, match=message):
        sweep.main([write_sweep(tmp_path / 'bad.py', **keys)])


def test_errors_reach_the_user_as_one_line(tmp_path, known_trainers):
    path = write_sweep(tmp_path / 'bad.py', trainer='train_gpt.py', axes={'attention': ['linear']})
    with pytest.raises(ConfigError, match=r"has no run named 'attention=linear'; --dry_run=True lists them"):
        sweep.main([path, '--only=attention=linear'])
    result = run_script('sweep.py', path, '--trainer=train_foo.py', timeout=TIMEOUT_S)
    assert result.returncode == 1 and result.stdout == ''
    assert result.stderr.startswith(f"error: {path}: trainer 'train_foo.py' not found;")
    assert result.stderr.count('\n') == 1


@pytest.mark.slow
def test_a_dry_run_read_in_part_ends_quietly(tmp_path):
    """`sweep.py ... --dry_run=True | head -1`: the reader leaves early, so printing the lines it did not take fails
    (more than a pipe's buffer of them); no traceback follows the line it took."""
    path = write_sweep(tmp_path / 'many.py', trainer='train_gpt.py', runs=[{'data_dir': 'd' * 500}],
                       seeds=list(range(1, 201)))  # 200 lines of 600 bytes: past a 64 KiB pipe buffer
    sweep_run = subprocess.Popen([sys.executable, 'sweep.py', path, '--dry_run=True'], cwd=ROOT, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = sweep_run.stdout.readline()
    sweep_run.stdout.close()  # as head does after its line
    _, errors = sweep_run.communicate(timeout=300)
    assert first.startswith(b'python sweep.py') and errors == b''
