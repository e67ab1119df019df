"""check_gpu.py --kernel=fla: its dry run on the CPU (fla's reference ops for parity, trev's kernels for the bench),
its option refused in one line, and the floors it judges fla's bench by."""
import json
import os
import subprocess
import sys

import pytest

import check_gpu
from training import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ConfigError, match=r"kernel='torch': '' \(the checks of trev's paths\) or 'fla'"):
        check_gpu.parse(['--device=cpu', '--kernel=torch'])


def bench_records(ratio_4096, ratio_16384, decode_ratio):
    records = []
    for T, ratio in ((4096, ratio_4096), (16384, ratio_16384)):
        records += [dict(variant='softmax', kernel='torch', mode='fwdbwd', seq_len=T, status='ok', time_ms=10.0),
                    dict(variant='gla', kernel='fla', mode='fwdbwd', seq_len=T, status='ok', time_ms=10.0 * ratio),
                    dict(variant='softmax', kernel='torch', mode='decode', seq_len=T, status='ok', time_ms=1.0),
                    dict(variant='gla', kernel='fla', mode='decode', seq_len=T, status='ok', time_ms=decode_ratio)]
    return records


def test_fla_floors():
    lines = {name: (value, limit) for name, value, limit in check_gpu.fla_floors(bench_records(1.2, 0.4, 0.5))}
    assert lines == {'gla fwdbwd / softmax at T=16384': (pytest.approx(0.4), 0.5),
                     'gla fwdbwd / softmax at T=4096': (pytest.approx(1.2), 1.5),
                     'gla decode / softmax at T=16384': (pytest.approx(0.5), 1.0)}
    failing = check_gpu.fla_floors(bench_records(1.6, 0.6, 1.1))
    assert all(value > limit for _, value, limit in failing) and len(failing) == 3


@pytest.mark.slow
def test_dry_run(tmp_path):
    out = tmp_path / 'check.json'
    run = subprocess.run([sys.executable, 'check_gpu.py', '--device=cpu', '--kernel=fla', '--variants=softmax,gla',
                          f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert list(report['checks']) == ['parity', 'bench']
    parity = report['checks']['parity']
    assert parity['status'] == 'PASS' and set(parity['details']) == {'gla'}
    assert report['checks']['bench']['status'] == 'PASS'
