"""bench.py: the sweep runs end to end, records what happened to every case, and measures memory honestly."""
import json
import platform
import subprocess
import sys
import time

import pytest
import torch

import attention
import bench
from training import ConfigError

REQUIRED = ('variant', 'mode', 'seq_len', 'batch_size', 'n_head', 'head_dim', 'dtype', 'device', 'causal',
            'time_ms', 'peak_mem_mb', 'status')
TINY = ['--n_head=2', '--head_dim=8', '--warmup=1', '--repeats=1', '--min_time=0', '--chunk_size=8', '--local_window=8',
        '--performer_features=8', '--device=cpu']


def tiny_config(*argv):
    return bench.resolve(bench.apply_overrides(bench.DEFAULTS, TINY + list(argv)))


def one_case(config, variant, mode, seq_len=16):
    return dict(variant=variant, mode=mode, seq_len=seq_len, **{k: config[k] for k in bench.CASE_KEYS})


def test_end_to_end_json_csv_png(tmp_path):
    # as run from the shell: memory in one subprocess per case, time in the main process with its malloc setting
    out, csv, png = tmp_path / 'r.json', tmp_path / 'r.csv', tmp_path / 'r.png'
    run = subprocess.run([sys.executable, 'bench.py', *TINY, '--variants=softmax,linear', '--seq_lens=16,32',
                          '--modes=fwdbwd', f'--out={out}', f'--csv={csv}', f'--plot={png}'],
                         capture_output=True, text=True, cwd=bench.__file__.rpartition('/')[0])
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert {'device', 'device_name', 'torch', 'threads', 'cpu', 'dtype', 'malloc'} <= set(report['env'])
    assert report['env']['malloc'] == ('reuse' if platform.libc_ver()[0] == 'glibc' else 'default')
    results = report['results']
    order = [(r['seq_len'], r['variant']) for r in results]
    assert order == [(16, 'softmax'), (16, 'linear'), (32, 'softmax'), (32, 'linear')]
    for r in results:
        assert set(REQUIRED) <= set(r) and r['status'] == 'ok' and r['time_ms'] > 0 and r['peak_mem_mb'] >= 0
    assert len(csv.read_text().splitlines()) == 1 + len(results)
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'fwdbwd ms' in run.stdout and 'linear' in run.stdout


def run_case(case):
    return bench.time_cases([case])[0]


@pytest.mark.parametrize('mode', ['fwd', 'fwdbwd', 'decode'])
def test_every_mode_in_process(mode):
    record = run_case(one_case(tiny_config(), 'retention', mode))
    assert record['status'] == 'ok' and record['time_ms'] > 0


def test_decode_without_causal_is_unsupported():
    record = run_case(one_case(tiny_config('--causal=False'), 'linear', 'decode'))
    assert record['status'] == 'unsupported'
    assert run_case(one_case(tiny_config('--causal=False'), 'linear', 'fwd'))['status'] == 'ok'


def test_cases_take_turns(monkeypatch):
    # a slow and a fast case timed together: they alternate, and each spends about min_time / repeats per round
    log = []

    def sleeper(case, device, dtype):
        seconds = 0.02 if case['variant'] == 'softmax' else 0.001
        return lambda: (log.append(case['variant']), time.sleep(seconds))
    monkeypatch.setattr(bench, 'layer_call', sleeper)
    config = tiny_config('--repeats=2', '--min_time=0.08', '--warmup=1')
    records = bench.time_cases([one_case(config, 'softmax', 'fwd'), one_case(config, 'linear', 'fwd')])
    assert log[:8] == ['softmax'] * 2 + ['linear'] * 2 + ['softmax', 'linear'] * 2  # warm-up, memory, then turns
    slow, fast = (r['calls'] for r in records)
    assert 2 * 2 <= slow <= 2 * 3 and fast >= 2 * 15
    assert records[0]['time_ms'] >= 20 > records[1]['time_ms'] >= 1


def test_peak_memory_sees_a_known_allocation():
    n_mb = 64

    def allocate():
        x = torch.ones(n_mb * 2**20 // 4)  # float32, every page written
        return x.sum()
    measured = bench.measure_peak_mb(allocate, torch.device('cpu'))
    assert 0.8 * n_mb <= measured <= 1.2 * n_mb
    assert bench.measure_peak_mb(lambda: None, torch.device('cpu')) < 0.2 * n_mb  # nothing held, nothing counted


class OutOfMemoryAttention(attention.SoftmaxAttention):
    def attend(self, q, k, v, pad_mask):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")


def test_oom_is_recorded_and_the_sweep_goes_on(monkeypatch, capsys):
    monkeypatch.setitem(attention.ATTENTION, 'oom', OutOfMemoryAttention)
    records = bench.sweep(tiny_config('--variants=oom,softmax', '--seq_lens=16', '--modes=fwd'), False)
    assert [(r['variant'], r['status']) for r in records] == [('oom', 'oom'), ('softmax', 'ok')]
    assert 'oom' in capsys.readouterr().out


def test_killed_subprocess_is_oom(monkeypatch):
    monkeypatch.setattr(bench.subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(a, -9, stdout=''))
    assert bench.memory_in_subprocess(one_case(tiny_config(), 'softmax', 'fwd'))['status'] == 'oom'


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match='valid keys'):
        bench.main(['--no_such_key=1'])
    with pytest.raises(ConfigError, match='int'):
        bench.main(['--repeats=many'])
    with pytest.raises(ConfigError, match='softmax'):
        bench.main(['--variants=nope'])


def test_fit_and_floors():
    records = []
    for T in (1024, 2048, 4096, 8192, 16384):
        case = dict(seq_len=T, status='ok')
        records.append(dict(case, variant='softmax', mode='fwdbwd', time_ms=T**2 / 1e6, peak_mem_mb=T / 100))
        records.append(dict(case, variant='linear', mode='fwdbwd', time_ms=T / 1e3, peak_mem_mb=T / 100))
        records.append(dict(case, variant='linear', mode='decode', time_ms=1.0, peak_mem_mb=0.0))
    assert bench.fit_exponent(records, 'softmax', 'fwdbwd', 'time_ms') == pytest.approx(2.0)
    assert bench.fit_exponent(records, 'linear', 'fwdbwd', 'time_ms', 2048) == pytest.approx(1.0)
    assert bench.fit_exponent(records, 'linear', 'decode', 'peak_mem_mb') is None  # no positive points
    lines = bench.check_floors(records)
    assert len(lines) == 4 and all(value <= limit for _, value, limit in lines)
    records[-1]['time_ms'] = 100.0  # decode at 16384 now 100x slower than at 1024
    assert any(value > limit for name, value, limit in bench.check_floors(records) if 'decode' in name)


def test_gpt_training_step():
    pytest.importorskip('train_gpt')
    record = run_case(one_case(tiny_config('--model=gpt', '--n_layer=1'), 'linear', 'train'))
    assert record['status'] == 'ok' and record['tokens_per_s'] > 0 and 'mfu' not in record  # no MFU on CPU
