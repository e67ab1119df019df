"""bench.py: the sweep runs end to end, records what happened to every case, and measures memory honestly."""
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time

import pytest
import torch

import attention
import bench
from training import ConfigError, apply_overrides

REQUIRED = ('variant', 'mode', 'seq_len', 'batch_size', 'n_head', 'head_dim', 'dtype', 'device', 'causal',
            'time_ms', 'peak_mem_mb', 'status')
TINY = ['--n_head=2', '--head_dim=8', '--warmup=1', '--repeats=1', '--min_time=0', '--chunk_size=8', '--local_window=8',
        '--performer_features=8', '--device=cpu']


def tiny_config(*argv):
    return bench.resolve(bench.apply_overrides(bench.DEFAULTS, TINY + list(argv)))


def one_case(config, variant, mode, seq_len=16):
    return dict(variant=variant, mode=mode, seq_len=seq_len, **{k: config[k] for k in bench.CASE_KEYS})


@pytest.mark.slow
def test_end_to_end_json_csv_png(tmp_path):
    # as run from the shell: memory in one subprocess per case, time in the main process with its malloc setting
    out, csv, png = tmp_path / 'r.json', tmp_path / 'r.csv', tmp_path / 'r.png'
    run = subprocess.run([sys.executable, 'bench.py', *TINY, '--variants=softmax,linear', '--seq_lens=16,32',
                          '--modes=fwdbwd', f'--out={out}', f'--csv={csv}', f'--plot={png}'],
                         capture_output=True, text=True, cwd=os.path.dirname(bench.__file__), timeout=300)
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



@pytest.mark.parametrize('variant', ['softmax', 'local'])
def test_decode_steps_write_into_the_prefilled_cache(variant, monkeypatch):
    """Every timed decode step continues the same prefilled state and drops what it returns, so it writes into that
    state's cache in place: no cache is allocated or copied per step (a copy of the whole cache would be timed as
    the variant's decoding cost). A caller that keeps each step's state gets a copy per step, which this sees."""
    call = bench.layer_call(one_case(tiny_config(), variant, 'decode', seq_len=12), torch.device('cpu'), torch.float32)
    made = []
    allocate = attention.KVCache.__init__
    monkeypatch.setattr(attention.KVCache, '__init__', lambda cache, *args: made.append(1) or allocate(cache, *args))
    for _ in range(3):
        call()
    assert made == []
    kept = [call() for _ in range(3)]
    assert len(made) == 2 and len(kept) == 3  # the first step still wrote in place

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
    assert 2 <= slow <= 2 * 3 and fast > slow  # a busy machine stretches sleeps: only bounds that always hold
    assert records[0]['time_ms'] >= 20 and records[0]['time_ms'] > records[1]['time_ms'] >= 1


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


FLOOR_SEQ_LENS = (1024, 2048, 4096, 8192, 16384)  # every T that bench.FLOORS names


def floor_records(variants, seq_lens=FLOOR_SEQ_LENS):
    """Synthetic 'ok' records on which every floor of `variants` passes: softmax's fwdbwd time grows as T^2, each
    variant's fwdbwd time and memory as T (0.24x softmax's time at T=4096, 0.06x at 16384), its decode time is
    flat. No fwd records."""
    records = []
    for T in seq_lens:
        case = dict(seq_len=T, status='ok')
        records.append(dict(case, variant='softmax', mode='fwdbwd', time_ms=T**2 / 1e6, peak_mem_mb=T / 100))
        for variant in variants:
            records.append(dict(case, variant=variant, mode='fwdbwd', time_ms=T / 1e3, peak_mem_mb=T / 100))
            records.append(dict(case, variant=variant, mode='decode', time_ms=1.0, peak_mem_mb=0.0))
    return records


def set_vs_softmax(records, variant, T, ratio):
    """Sets the variant's fwdbwd time at T to `ratio` times softmax's."""
    find = {(r['variant'], r['mode'], r['seq_len']): r for r in records}
    find[variant, 'fwdbwd', T]['time_ms'] = ratio * find['softmax', 'fwdbwd', T]['time_ms']


def floor_lines(records):
    """bench.check_floors(records) as {name: (value, limit)}."""
    return {name: (value, limit) for name, value, limit in bench.check_floors(records)}


def floor_names(variant):
    """The names of the floors check_floors checks for a linear-family variant on floor_records([variant])."""
    T_short, T_long, _ = bench.FLOORS['decode_growth']
    return ({f'{variant} fwdbwd time / softmax at T={T}' for T in bench.vs_softmax_floors(variant)}
            | {f'{variant} fwdbwd time exponent', f'{variant} fwdbwd memory exponent',
               f'{variant} decode time at T={T_long} / T={T_short}'})


def assert_family_includes(name):
    """`name` (registered in attention.ATTENTION) is in bench's linear family, and check_floors checks each of its
    floors (fwdbwd time against softmax at every T of its row, fwdbwd exponents, decode growth) on synthetic
    records, all passing there."""
    assert name in bench.linear_family()
    lines = floor_lines(floor_records([name]))
    assert set(lines) == floor_names(name)
    assert all(value <= limit for value, limit in lines.values())


def assert_family_excludes(name):
    """`name` is not in bench's linear family: check_floors reports nothing for it."""
    assert name not in bench.linear_family()
    assert floor_lines(floor_records([name])) == {}


class ThrowawayKernel(attention.LinearAttention):  # a KernelAttention, causal
    pass


class ThrowawayBidirectionalKernel(attention.LinearAttention):
    supports_causal = False


class ThrowawaySoftmax(attention.SoftmaxAttention):
    pass


def test_linear_family_is_read_from_the_registry(monkeypatch):
    for name in ('linear', 'performer', 'cosformer', 'retention', 'norm_linear'):
        assert_family_includes(name)
    for name in ('softmax', 'local'):
        assert_family_excludes(name)
    monkeypatch.setitem(attention.ATTENTION, 'throwaway', ThrowawayKernel)  # registered after bench was imported
    monkeypatch.setitem(attention.ATTENTION, 'throwaway_bidirectional', ThrowawayBidirectionalKernel)
    monkeypatch.setitem(attention.ATTENTION, 'throwaway_softmax', ThrowawaySoftmax)
    assert_family_includes('throwaway')
    assert_family_excludes('throwaway_bidirectional')
    assert_family_excludes('throwaway_softmax')
    records = floor_records(['throwaway'])
    set_vs_softmax(records, 'throwaway', 4096, 0.6)  # the default floor, 0.5, applies to it
    assert floor_lines(records)['throwaway fwdbwd time / softmax at T=4096'] == (pytest.approx(0.6), 0.5)


def test_vs_softmax_floors():
    """The plain kernels hold 0.5x softmax at T=4096; the variants whose papers add projections, gates or wide
    feature maps have their own rows; every variant is at most 0.3x at 16384."""
    own = {'performer': 0.8, 'rfa': 0.85, 'gla': 0.65, 'deltanet': 0.65, 'gated_deltanet': 0.7, 'based': 0.6}
    for name in bench.linear_family():
        assert bench.vs_softmax_floors(name) == {4096: own.get(name, 0.5), 16384: 0.3}, name


@pytest.mark.parametrize('variant', ['performer', 'linear'])
def test_vs_softmax_floors_flip_at_their_limits(variant, capsys):
    for T, limit in bench.vs_softmax_floors(variant).items():
        name = f'{variant} fwdbwd time / softmax at T={T}'
        for ratio, verdict in ((0.99 * limit, 'PASS'), (1.01 * limit, 'FAIL')):
            records = floor_records([variant])
            set_vs_softmax(records, variant, T, ratio)
            assert floor_lines(records)[name] == (pytest.approx(ratio), limit)
            assert re.search(rf'^{re.escape(name)} .* \(<= {limit}\)  {verdict}$', capsys.readouterr().out, re.M)
    # one line per (variant, T) the records hold: none for a T without records
    lines = floor_lines(floor_records([variant], seq_lens=(1024, 2048, 4096)))
    assert [name for name in lines if 'softmax at' in name] == [f'{variant} fwdbwd time / softmax at T=4096']


def test_fit_and_floors():
    records = floor_records(['linear', 'performer'])
    assert bench.fit_exponent(records, 'softmax', 'fwdbwd', 'time_ms') == pytest.approx(2.0)
    assert bench.fit_exponent(records, 'linear', 'fwdbwd', 'time_ms', 2048) == pytest.approx(1.0)
    assert bench.fit_exponent(records, 'linear', 'decode', 'peak_mem_mb') is None  # no positive points
    lines = floor_lines(records)
    assert set(lines) == floor_names('linear') | floor_names('performer')
    assert len(lines) == 5 + 5 and all(value <= limit for value, limit in lines.values())
    decode = {r['seq_len']: r for r in records if r['variant'] == 'linear' and r['mode'] == 'decode'}
    decode[16384]['time_ms'] = 100.0
    failed = [name for name, (value, limit) in floor_lines(records).items() if value > limit]
    assert failed == ['linear decode time at T=16384 / T=1024']  # 100x slower at 16384 than at 1024


def test_exponents_are_printed_per_variant_and_mode(capsys):
    records = [dict(r, device='cpu') for r in floor_records(['linear'], seq_lens=[1024, 4096, 16384])]
    bench.print_exponents(records, fit_from=0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ['variant', 'fwdbwd', 'time', 'fwdbwd', 'MB', 'decode', 'time', 'decode', 'MB']
    assert lines[3].split() == ['softmax', '2.00', '1.00', '-', '-']  # no decode records: fewer than two points
    assert lines[4].split() == ['linear', '1.00', '1.00', '0.00', '-']  # decode memory 0: below resolution


STRUCTURAL = {'attention', 'n_embd', 'n_head', 'causal', 'block_size', 'dropout', 'bias', 'norm', 'mlp_ratio',
              'patch_grid_width', 'class_tokens'}


def test_layer_config_knobs_are_options():
    # derived, not typed: every LayerConfig field but the structural ones is an option, with LayerConfig's default
    assert set(bench.STRUCTURAL_FIELDS) == STRUCTURAL
    knobs = [f.name for f in dataclasses.fields(attention.LayerConfig) if f.name not in STRUCTURAL]
    assert list(bench.LAYER_KNOBS) == knobs and set(knobs) <= set(bench.CASE_KEYS)
    assert {k: bench.DEFAULTS[k] for k in knobs} == {k: getattr(attention.LayerConfig(), k) for k in knobs}
    assert {'chunk_size': 64, 'local_window': 128, 'performer_features': 256}.items() <= bench.DEFAULTS.items()
    assert bench.apply_overrides(bench.DEFAULTS, ['--performer_features=128'])['performer_features'] == 128
    with pytest.raises(ConfigError, match='int'):
        bench.apply_overrides(bench.DEFAULTS, ['--performer_features=many'])


@pytest.mark.parametrize('model', ['layer', 'gpt'])
def test_knobs_reach_the_built_layer(model, monkeypatch):
    built = []  # (config, module) for every layer or model bench builds

    def recording(build):
        return lambda config: built.append((config, build(config))) or built[-1][1]
    monkeypatch.setattr(bench, 'build_attention', recording(attention.build_attention))
    monkeypatch.setattr(bench, 'TransformerLM', recording(attention.TransformerLM))
    config = tiny_config('--performer_features=12', f'--model={model}', '--n_layer=1')
    case = one_case(config, 'performer', 'train' if model == 'gpt' else 'fwd')
    (bench.gpt_call if model == 'gpt' else bench.layer_call)(case, torch.device('cpu'), torch.float32)
    (layer_config, built_), = built
    assert all(getattr(layer_config, k) == config[k] for k in bench.LAYER_KNOBS)  # TINY's 8s, not the defaults
    layer = built_.blocks[0].attn if model == 'gpt' else built_
    assert layer.n_features == 12 and layer.projection.shape == (12, config['head_dim'])


def test_gpt_training_step():
    pytest.importorskip('train_gpt')
    record = run_case(one_case(tiny_config('--model=gpt', '--n_layer=1'), 'linear', 'train'))
    assert record['status'] == 'ok' and record['tokens_per_s'] > 0 and 'mfu' not in record  # no MFU on CPU


@pytest.mark.parametrize('argv, message', [
    (['--seq_lens=1024,,4096'], "seq_lens='1024,,4096': expected comma-separated positive integers"),
    (['--seq_lens=1k'], "seq_lens='1k': expected comma-separated positive integers"),
    (['--seq_lens=0'], "seq_lens='0': expected comma-separated positive integers"),
    (['--variants=softmax,'], "variants='softmax,': expected comma-separated names"),
    (['--modes=fwd, decode'], "unknown mode ' decode'"),
    (['--device=tpu'], "device='tpu': choose 'auto', 'cpu'"),
    (['--head_dim=0'], 'head_dim=0: must be at least 1'),
    (['--plot=curves.jpeg2000'], "plot='curves.jpeg2000': matplotlib writes"),
])
def test_malformed_options_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        bench.resolve(apply_overrides(bench.DEFAULTS, argv))


def test_output_paths_are_checked_before_timing(tmp_path):
    (tmp_path / 'file').write_text('x')
    for argv in ([f'--out={tmp_path}'], [f'--csv={tmp_path / "file" / "b.csv"}']):
        with pytest.raises(ConfigError, match='is a folder|is a file, not a folder'):
            bench.resolve(apply_overrides(bench.DEFAULTS, argv))


@pytest.mark.slow
def test_results_are_written_as_each_mode_finishes(tmp_path, monkeypatch):
    """A sweep stopped in its last mode keeps the modes it finished, in the JSON and the CSV."""
    real = bench.time_cases

    def stop_in_decode(cases, memory=None):
        if cases[0]['mode'] == 'decode':
            raise KeyboardInterrupt
        return real(cases, memory)
    monkeypatch.setattr(bench, 'time_cases', stop_in_decode)
    out, csv = tmp_path / 'r.json', tmp_path / 'r.csv'
    with pytest.raises(KeyboardInterrupt):
        bench.main(['--variants=softmax,linear', '--seq_lens=16', '--repeats=1', '--min_time=0.01', '--warmup=1',
                    '--device=cpu', f'--out={out}', f'--csv={csv}'])
    modes = [record['mode'] for record in json.load(open(out))['results']]
    assert sorted(set(modes)) == ['fwd', 'fwdbwd'] and len(modes) == 4
    assert len(csv.read_text().splitlines()) == 5


@pytest.mark.slow
def test_compiled_layers_are_timed():
    config = tiny_config('--compile=True')
    call, record = bench.prepare(one_case(config, 'linear', 'fwdbwd'), measure_memory=False)
    assert record['status'] == 'ok' and record['compile']
    call()
