"""bench.py's options for the GPU bench of fla's kernels (--kernel, recorded per case with 'auto' resolved;
--batch_tokens, the same tokens per call at every T) and the decode floor of a KV cache, judged against reading it."""
import pytest
import torch

import bench
import kernels
from training import ConfigError

TINY = ['--n_head=2', '--head_dim=8', '--warmup=1', '--repeats=1', '--min_time=0', '--chunk_size=8',
        '--performer_features=8', '--device=cpu']


def sweep(*argv):
    return bench.sweep(bench.resolve(bench.apply_overrides(bench.DEFAULTS, TINY + list(argv))),
                       subprocess_memory=False)


def test_batch_tokens_hold_the_tokens_per_call():
    records = sweep('--variants=linear', '--modes=fwd', '--seq_lens=16,32', '--batch_tokens=64')
    assert [(r['seq_len'], r['batch_size']) for r in records] == [(16, 4), (32, 2)]
    with pytest.raises(ConfigError, match=r"batch_tokens=16: must be at least every T in seq_lens \(32\)"):
        sweep('--seq_lens=16,32', '--batch_tokens=16')


def test_each_record_says_which_kernel_ran(monkeypatch):
    records = sweep('--variants=softmax,gla', '--modes=fwd', '--seq_lens=16')
    assert [r['kernel'] for r in records] == ['torch', 'torch']  # 'auto' on a CPU: trev's kernels
    monkeypatch.setattr(kernels, 'FLA_OPS', {})  # fla counts as loadable; only the device check is left
    with pytest.raises(ConfigError, match=r"^kernel='fla' runs on CUDA, device is cpu: use kernel='auto' or 'torch'$"):
        sweep('--variants=gla', '--kernel=fla')


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_fla_without_cuda_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^kernel='fla' runs flash-linear-attention's Triton kernels, which need a "
                                          r"CUDA device: use [^\n]*$"):
        sweep('--variants=gla', '--kernel=fla')


def test_softmax_decoding_records_its_cache_read():
    records = sweep('--variants=softmax,linear', '--modes=decode', '--seq_lens=64')
    softmax, linear = records
    assert softmax['cache_read_ms'] > 0 and 'cache_read_ms' not in linear


def decode_records(decode_ms, read_ms):
    T, _ = bench.FLOORS['decode_vs_cache_read']
    return [dict(variant='softmax', mode='decode', seq_len=T, status='ok', time_ms=decode_ms, cache_read_ms=read_ms),
            dict(variant='softmax', mode='decode', seq_len=1024, status='ok', time_ms=0.1, cache_read_ms=0.01)]


def test_softmax_decoding_is_judged_against_reading_its_cache():
    T, limit = bench.FLOORS['decode_vs_cache_read']
    name = f'softmax decode time / reading its cache at T={T}'
    lines = {line[0]: line[1:] for line in bench.check_floors(decode_records(1.5, 1.0))}
    assert lines == {name: (pytest.approx(1.5), limit)}  # only at T, whatever other lengths were timed
    value, limit = {line[0]: line[1:] for line in bench.check_floors(decode_records(3.0, 1.0))}[name]
    assert value > limit  # a decode step that reads its cache three times over fails
