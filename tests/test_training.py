"""training.py: config overrides, run folder, checkpoint wrappers, schedule, RNG capture."""
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist

import training
from training import ConfigError

DEFAULTS = {'n_layer': 12, 'learning_rate': 6e-4, 'compile': False, 'attention': 'softmax'}


def test_overrides_from_files_then_flags(tmp_path):
    first, second = tmp_path / 'a.py', tmp_path / 'b.py'
    first.write_text("import math  # modules and _names are not config\n_x = 2\nn_layer = 4\nattention = 'linear'\n")
    second.write_text("n_layer = n_layer * 2  # files see the values so far\n")
    config = training.apply_overrides(DEFAULTS, [str(first), str(second), '--learning_rate=1', '--compile=True',
                                                 '--attention=local'])
    assert config == {'n_layer': 8, 'learning_rate': 1.0, 'compile': True, 'attention': 'local'}
    assert type(config['learning_rate']) is float  # an int may stand for a float
    assert DEFAULTS['n_layer'] == 12  # the defaults are not touched


def test_string_keys_take_the_text_as_is():
    assert training.apply_overrides({'start': 'x'}, ['--start=123'])['start'] == '123'


@pytest.mark.parametrize('argv, words', [
    (['--n_layr=4'], ["unknown key 'n_layr'", 'valid keys: n_layer, learning_rate']),
    (['--n_layer=4.5'], ['n_layer=4.5 has type float', 'expected int']),
    (['--n_layer=True'], ['has type bool', 'expected int']),
    (['--compile=1'], ['has type int', 'expected bool']),
    (['--n_layer'], ['expected --key=value']),
    (['missing.py'], ['config file missing.py not found']),
])
def test_bad_overrides_are_one_line_errors(argv, words):
    with pytest.raises(ConfigError) as e:
        training.apply_overrides(DEFAULTS, argv)
    assert '\n' not in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_config_file_may_only_assign_existing_keys(tmp_path):
    path = tmp_path / 'bad.py'
    path.write_text("n_layers = 4\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'n_layers'"):
        training.apply_overrides(DEFAULTS, [str(path)])


def test_lr_schedule():
    lr = lambda it: training.get_lr(it, learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    assert lr(0) == pytest.approx(1 / 11) and lr(9) == pytest.approx(10 / 11)  # linear warmup
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # half-way through the cosine: the mean of max and min
    assert lr(110) == lr(1000) == pytest.approx(0.1)
    assert all(lr(i) >= lr(i + 1) for i in range(10, 200))


def checkpoint(x):
    """A checkpoint with every key a trev trainer writes."""
    return {key: None for key in training.CHECKPOINT_KEYS} | {'model': {'x': x}}


def test_atomic_save_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    training.save_checkpoint(path, checkpoint(torch.arange(3)))
    training.save_checkpoint(path, checkpoint(torch.arange(4)))
    assert os.listdir(tmp_path) == ['ckpt.pt']
    assert training.load_checkpoint(path)['model']['x'].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize('content, message', [
    (None, 'no checkpoint at'),
    (b'', 'is not a readable checkpoint'),
    ('cut', 'is not a readable checkpoint'),
    ('foreign', 'is not a trev checkpoint (missing optimizer, optimizer_class'),
])
def test_damaged_or_foreign_checkpoint_is_one_line(tmp_path, content, message):
    path = tmp_path / 'ckpt.pt'
    if content == 'cut':
        training.save_checkpoint(str(path), checkpoint(torch.arange(10_000)))
        path.write_bytes(path.read_bytes()[:5000])
    elif content == 'foreign':
        torch.save({'model': {}, 'epoch': 3}, path)  # someone else's training script
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        training.load_checkpoint(str(path))
    assert '\n' not in str(error.value)


def test_state_dict_has_no_wrapper_prefixes(tmp_path):
    model = torch.nn.Linear(2, 3)
    compiled = torch.compile(model, backend='eager')  # wraps without compiling until called
    assert list(compiled.state_dict()) == ['_orig_mod.weight', '_orig_mod.bias']
    store = torch_dist.FileStore(str(tmp_path / 'store'), 1)
    torch_dist.init_process_group('gloo', store=store, rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(compiled)
        assert training.unwrap(wrapped) is model
        assert list(training.model_state(wrapped)) == ['weight', 'bias']
    finally:
        torch_dist.destroy_process_group()


def test_log_keeps_rows_before_the_resume_point(tmp_path):
    log = training.Log(tmp_path, keep_before=0)
    for it in range(5):
        log.write({'iter': it, 'train_loss': float(it)})
    training.Log(tmp_path, keep_before=3).write({'iter': 3, 'train_loss': -1.0})
    rows = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['iter'] for r in rows] == [0, 1, 2, 3] and rows[-1]['train_loss'] == -1.0
    training.Log(tmp_path, keep_before=0)
    assert open(tmp_path / 'log.jsonl').read() == ''


def test_write_config_records_the_environment(tmp_path):
    training.write_config(tmp_path, {'n_layer': 2})
    record = json.load(open(tmp_path / 'config.json'))
    assert record['config'] == {'n_layer': 2} and record['torch'] == torch.__version__
    assert 'git_commit' in record and record['command']


def test_git_dirty_means_changed_code_not_new_runs(tmp_path):
    """A sweep's run folders and prepared data are new files in the checkout: they leave a run clean. A change to a
    tracked file does not, except under results/ and bench_results/, where sweeps and benchmarks replace committed
    results (a second bench command after a first that rewrote its JSON is still clean)."""
    shutil.copy(training.__file__, tmp_path / 'training.py')
    (tmp_path / 'results' / 'old_run').mkdir(parents=True)
    (tmp_path / 'results' / 'old_run' / 'eval.json').write_text('{}')
    (tmp_path / 'bench_results').mkdir()
    (tmp_path / 'bench_results' / 'cpu.json').write_text('{}')
    git = lambda *args: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=tmp_path,
                                       check=True, capture_output=True, timeout=60)
    git('init', '-q')
    git('add', '.')
    git('commit', '-q', '-m', 'code')
    spec = importlib.util.spec_from_file_location('training_copy', tmp_path / 'training.py')
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    commit, dirty = copy.git_commit()
    assert len(commit) == 40 and dirty is False
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'train.bin').write_bytes(b'abc')  # new files: data, a run folder
    (tmp_path / 'results' / 'new_run').mkdir()
    os.remove(tmp_path / 'results' / 'old_run' / 'eval.json')  # a committed run being redone
    (tmp_path / 'bench_results' / 'cpu.json').write_text('{"results": []}')  # a benchmark re-measured
    assert copy.git_commit() == (commit, False)
    with open(tmp_path / 'training.py', 'a') as f:
        f.write('# an edit\n')
    assert copy.git_commit() == (commit, True)


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(0)
    dist = training.setup_distributed('cpu')
    states = training.rng_states([generator])
    draw = lambda: (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=generator))
    first = draw()
    training.restore_rng_states(states, [generator], dist)
    second = draw()
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_resolve_dtype():
    assert training.resolve_dtype('cpu', 'auto') == 'float32'
    with pytest.raises(ConfigError, match='needs a GPU'):
        training.resolve_dtype('cpu', 'bfloat16')
    with pytest.raises(ConfigError, match="dtype='fp8'"):
        training.resolve_dtype('cpu', 'fp8')


def test_stop_signal_sets_a_flag_instead_of_raising():
    import signal
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN where the suite runs in the background
    with training.StopSignal() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # repeats are ignored too
        assert stop.requested()
    assert signal.getsignal(signal.SIGINT) is before


def test_build_optimizer_choices_and_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    choices = {'adamw': torch.optim.AdamW, 'sgd': torch.optim.SGD, 'adafactor': torch.optim.Adafactor}
    assert tuple(choices) == training.OPTIMIZERS
    for name, cls in choices.items():
        optimizer = training.build_optimizer(name, model, 0.1, 0.5, (0.8, 0.99), 'cpu')
        assert type(optimizer) is cls
        decayed, plain = optimizer.param_groups
        assert decayed['weight_decay'] == 0.5 and [p.dim() for p in decayed['params']] == [2]
        assert plain['weight_decay'] == 0.0 and [p.dim() for p in plain['params']] == [1, 1, 1]
    sgd = training.build_optimizer('sgd', model, 0.1, 0.5, (0.8, 0.99), 'cpu').param_groups[0]
    assert sgd['momentum'] == 0.8 and sgd['nesterov']
    with pytest.raises(ConfigError, match="optimizer='lion'; choose one of: adamw, sgd, adafactor"):
        training.build_optimizer('lion', model, 0.1, 0.5, (0.8, 0.99), 'cpu')


def test_check_resume_names_what_differs():
    optimizer = training.build_optimizer('adamw', torch.nn.Linear(2, 2), 0.1, 0.0, (0.9, 0.99), 'cpu')
    checkpoint = {'model_args': {'n_layer': 2, 'attention': 'linear', 'dropout': 0.1}, 'optimizer_class': 'AdamW'}
    training.check_resume(checkpoint, {'n_layer': 2, 'attention': 'linear', 'dropout': 0.0}, optimizer, 'c.pt')
    with pytest.raises(ConfigError, match="c.pt is a different model: attention='linear' in the checkpoint, 'local'"):
        training.check_resume(checkpoint, {'n_layer': 2, 'attention': 'local', 'dropout': 0.1}, optimizer, 'c.pt')
    with pytest.raises(ConfigError, match="chunk_size=None in the checkpoint, 8 in the config"):  # a new knob,
        training.check_resume(checkpoint, {'n_layer': 2, 'attention': 'linear', 'chunk_size': 8}, optimizer, 'c.pt',
                              {'chunk_size': 64})  # set to another value than the one the model had without it
    training.check_resume(checkpoint, {'n_layer': 2, 'attention': 'linear', 'chunk_size': 64, 'kernel': 'fla'},
                          optimizer, 'c.pt', {'chunk_size': 64})  # at its default; and the kernel may change
    with pytest.raises(ConfigError, match='c.pt was trained with SGD, this run builds AdamW'):
        training.check_resume(checkpoint | {'optimizer_class': 'SGD'}, checkpoint['model_args'], optimizer, 'c.pt')


def test_peak_memory_without_resource_module(monkeypatch):
    """resource is POSIX-only: without it (Windows) a CPU run logs no peak memory instead of failing to start."""
    assert training.peak_memory_mb('cpu') > 0
    monkeypatch.setitem(sys.modules, 'resource', None)  # import resource now raises ImportError
    assert training.peak_memory_mb('cpu') is None
    assert training.format_row({'iter': 3, 'train_loss': 1.0, 'grad_norm': 0.01234, 'peak_mem_mb': None}) == \
        'iter 3: train_loss 1.0000, grad_norm 0.0123'


def test_stop_signal_under_ddp_is_agreed_on_only_when_asked():
    """Under DDP the flag travels through an all-reduce, a host sync: only when agree_now (the loops' log steps),
    and False otherwise, so that every rank stops at the same step."""
    torch_dist.init_process_group('gloo', store=torch_dist.HashStore(), rank=0, world_size=1)
    try:
        with training.StopSignal() as stop:
            stop.flag = True
            assert not stop.requested('cpu', agree_now=False)
            assert stop.requested('cpu', agree_now=True)
    finally:
        torch_dist.destroy_process_group()


def test_a_kill_during_the_log_rewrite_leaves_the_log_whole(tmp_path, monkeypatch):
    """Resume cuts log.jsonl at the checkpoint; a kill during that rewrite used to leave an empty log."""
    log = training.Log(tmp_path, keep_before=0)
    for it in range(5):
        log.write({'iter': it, 'train_loss': float(it)})
    before = (tmp_path / 'log.jsonl').read_bytes()

    def killed(source, target):
        raise KeyboardInterrupt  # the process dies after writing the temp file, before publishing it
    monkeypatch.setattr(os, 'replace', killed)
    with pytest.raises(KeyboardInterrupt):
        training.Log(tmp_path, keep_before=3)
    assert (tmp_path / 'log.jsonl').read_bytes() == before


def test_run_files_reach_the_disk_before_they_are_published(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: (events.append('fsync'), real_fsync(fd))[1])
    monkeypatch.setattr(os, 'replace', lambda a, b: (events.append('replace'), real_replace(a, b))[1])
    training.save_checkpoint(str(tmp_path / 'ckpt.pt'), checkpoint(torch.arange(3)))
    training.write_config(tmp_path, {'n_layer': 2})
    training.Log(tmp_path, keep_before=0)
    assert events == ['fsync', 'replace'] * 3


def test_a_cut_off_last_log_line_is_dropped_and_a_bad_line_elsewhere_refused(tmp_path, capsys):
    path = tmp_path / 'log.jsonl'
    path.write_text('{"iter": 0, "train_loss": 1.0}\n{"iter": 1, "train_loss": 0.9}\n{"iter": 2, "tra')
    training.Log(tmp_path, keep_before=5)
    assert [json.loads(line)['iter'] for line in path.read_text().splitlines()] == [0, 1]
    assert 'dropping a cut-off last line' in capsys.readouterr().out
    path.write_text('{"iter": 0}\ngarbage\n{"iter": 2}\n')
    with pytest.raises(ConfigError, match='log.jsonl line 2 is not a log row'):
        training.Log(tmp_path, keep_before=5)


def test_config_keeps_every_segment_of_a_run(tmp_path):
    training.write_config(tmp_path, {'batch_size': 16}, start_iter=0)
    training.write_config(tmp_path, {'batch_size': 32}, start_iter=100)
    training.write_config(tmp_path, {'batch_size': 64}, start_iter=100)  # the same resume, tried again
    record = json.load(open(tmp_path / 'config.json'))
    assert record['config'] == {'batch_size': 64}
    assert [(s['start_iter'], s['config']['batch_size']) for s in record['segments']] == [(0, 16), (100, 64)]
    training.write_config(tmp_path, {'batch_size': 8}, start_iter=0)  # a fresh run starts a new history
    assert len(json.load(open(tmp_path / 'config.json'))['segments']) == 1


@pytest.mark.parametrize('make, message', [
    (lambda root: (root / 'file').write_text('x') and root / 'file', 'is a file, not a folder'),
    (lambda root: (root / 'file').write_text('x') and root / 'file' / 'run', 'is a file, not a folder'),
    (lambda root: root / 'new' / 'run', None),
])
def test_out_dir_must_be_able_to_be_a_folder(tmp_path, make, message):
    out_dir = str(make(tmp_path))
    if message is None:
        training.check_out_dir(out_dir)
    else:
        with pytest.raises(ConfigError, match=message):
            training.check_out_dir(out_dir)


@pytest.mark.parametrize('argv, message', [
    (['--n_layer=0'], 'n_layer=0: must be at least 1'),
    (['--learning_rate=-0.1'], 'learning_rate=-0.1: must not be negative'),
    (['--beta2=1.5'], 'beta2=1.5: must be in [0, 1)'),
    (['--mask_prob=0'], 'mask_prob=0.0: must be between 0 and 1'),
    (['--temperature=0'], 'temperature=0.0: must be at least 0.001'),
    (['--temperature=1e-300'], 'temperature=1e-300: must be at least 0.001'),  # logits / 1e-300 overflow
    (['--learning_rate=1e999'], 'learning_rate=inf: must be a finite number'),
    (['--max_iters=0'], 'max_iters=0: must be at least 1'),  # a run that can never be evaluated or resumed
])
def test_values_out_of_range_are_refused(argv, message):
    defaults = {'n_layer': 2, 'learning_rate': 0.1, 'beta2': 0.99, 'mask_prob': 0.15, 'temperature': 0.8,
                'max_iters': 10}
    with pytest.raises(ConfigError, match=re.escape(message)):
        training.apply_overrides(defaults, argv)


@pytest.mark.parametrize('text, message', [
    ('n_layer = (\n', 'line 1: SyntaxError'),
    ('n_layer = 2\nn_layer = depth * 2\n', "line 2: NameError: name 'depth' is not defined"),
])
def test_a_broken_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / 'broken.py'
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f'config file {path} {message}')) as error:
        training.apply_overrides(DEFAULTS, [str(path)])
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('device, message', [
    ('cuda', 'torch sees no CUDA GPU'), ('cuda:3', 'torch sees no CUDA GPU'), ('gpu', "choose 'auto', 'cpu'"),
    ('cpu:0', "choose 'auto', 'cpu'"),
])
def test_device_names_are_checked(device, message):
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    with pytest.raises(ConfigError, match=re.escape(message)):
        training.resolve_device(device)


GPT_MODEL = '''
"""A trainer."""
n_layer = 12  # a config default
IGNORE = -100


class GPT:
    """The model."""

    def forward(self, x):
        return x * 2  # doubled


def build_model(model_args):
    return GPT()


def train(cfg):
    return cfg
'''


@pytest.mark.parametrize('edit, same', [
    (lambda text: text.replace('"""The model."""', '"""The model, described otherwise."""'), True),
    (lambda text: text.replace('  # doubled', '  # twice x').replace('n_layer = 12', 'n_layer = 6'), True),
    (lambda text: text.replace('return cfg', 'return None'), True),  # the loop is not model code
    (lambda text: text.replace('return x * 2', 'return x * 3'), False),
    (lambda text: text.replace('return GPT()', 'return GPT() if IGNORE else None'), False),
    (lambda text: text.replace('IGNORE = -100', 'IGNORE = -1') + 'def uses():\n    return IGNORE\n', True),
])
def test_code_fingerprint_hashes_the_model_code_alone(tmp_path, edit, same):
    """build_model and what it uses: docstrings, comments, config defaults and the training loop do not count."""
    (tmp_path / 'a.py').write_text(GPT_MODEL)
    (tmp_path / 'b.py').write_text(edit(GPT_MODEL))
    assert (training.code_fingerprint(tmp_path / 'a.py') == training.code_fingerprint(tmp_path / 'b.py')) == same


def test_code_fingerprint_of_a_file_that_is_no_trainer_is_one_line(tmp_path):
    (tmp_path / 'plain.py').write_text('x = 1\n')
    with pytest.raises(ConfigError, match=r"plain.py has no build_model\(model_args\): not a trev trainer"):
        training.code_fingerprint(tmp_path / 'plain.py')
    with pytest.raises(ConfigError, match=r"cannot read the model code of .*missing.py: .*No such file"):
        training.code_fingerprint(tmp_path / 'missing.py')
    (tmp_path / 'broken.py').write_text('def build_model(:\n')
    with pytest.raises(ConfigError, match=r"cannot read the model code of .*broken.py: invalid syntax"):
        training.code_fingerprint(tmp_path / 'broken.py')
