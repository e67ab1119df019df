"""
Time and peak memory of each attention variant against sequence length.

    python bench.py                                                # every variant, fwd / fwdbwd / decode
    python bench.py --variants=softmax,linear --seq_lens=1024,4096 --modes=fwdbwd --out=bench_results/a.json
    python bench.py --seq_lens=1024,2048,4096,8192,16384 --plot=bench_results/cpu.png --check_floors=True
    python bench.py --model=gpt --n_layer=6 --seq_lens=256,1024    # training steps of train_gpt.py's model
    python bench.py --model=gpt --n_layer=4 --variants=softmax,gated_deltanet --layer_attention='gated_deltanet*3,softmax'
    python bench.py --replot=bench_results/cpu.json --plot=bench_results/cpu.png   # a JSON's exponents and figure
    python bench.py --device=cuda --kernel=fla --n_head=16 --batch_tokens=32768 --seq_lens=1024,4096,16384 \
        --modes=fwdbwd,decode --out=bench_results/gpu_fla.json                  # training's size, fla's kernels

Layer benchmark (default): one attention layer from build_attention, its qkv and output projections
included, on x of shape (batch_size, T, n_head * head_dim), in dtype (module and input cast to it).
    fwd     forward under torch.no_grad (inference)
    fwdbwd  forward, then backward of a fixed random output gradient (parameter and input gradients)
    decode  one step(x_t, state) under no_grad, from a state prefilled with T tokens: per-token cost at
            context T. Every timed step starts from the same prefilled state.
Model benchmark (--model=gpt): forward + backward + AdamW step of attention.TransformerLM, causal (the model
train_gpt.py trains), with block_size = T, autocast to dtype on GPU; reports tokens/s, and MFU only for softmax
on GPU when --peak_tflops gives the device's peak (flops per token 6 N + 12 L T C, N = parameters but the
position embedding: nanoGPT's estimate from PaLM).
Variant knobs: every LayerConfig field that bench does not set itself (STRUCTURAL_FIELDS) is an option of both
benchmarks with LayerConfig's default, e.g. --chunk_size=64, --local_window=128, --performer_features=128;
a field added to LayerConfig becomes one with no change here. --kernel ('auto', 'torch', 'fla') picks the linear
family's kernels; each record's `kernel` is the one its variant ran ('auto' resolved: attention.resolve_kernel).
--layer_attention=PATTERN (--model=gpt) times a hybrid stack as one more row, named by its pattern (each layer's
attention: attention.layer_configs). --batch_tokens=N sets the batch at each T to N / T sequences (the same tokens
per call at every T, as training holds them), in place of --batch_size.

Time: the cases of one mode are built and warmed up (`warmup` untimed calls each), then timed together in
`repeats` interleaved rounds: in each round the cases take turns, one call each (synchronised on GPU), until
each has spent about min_time / repeats seconds in the round (at least one call). The median of a case's
calls is reported, their min, interquartile range and count recorded. Interleaving matters on shared or
throttling machines: their speed swings by tens of percent over seconds, and cases timed one after the
other would inherit different swings; taking turns, every case sees the same ones, so the ratios between
cases (a variant against softmax at one T, one T against another for a variant) hold while absolute times
drift. A variant that refuses the case while it is built (ValueError: a mode it does not define; decode
with causal=False) is recorded 'unsupported'; running out of memory is recorded 'oom' and the sweep goes on.
Every case of a mode is held at once (its layer, inputs, decode state) while that mode is timed.

CPU allocator: with glibc, the timing process (malloc=reuse, the default) serves every allocation from its
heap and keeps freed memory for the next call, as PyTorch's caching allocator does on GPU. glibc's own
policy maps each buffer above a threshold (up to 32 MB) afresh and faults it in page by page on every
call, so time would jump where a variant's buffers cross that size rather than with the work it does.
--malloc=default times glibc's own policy; the JSON's env records which applied.

Peak memory (MB = 2^20 bytes) counts what the measured call allocates on top of what existed when it
began, taken after warm-up: activations, tensors saved for backward, gradients, temporaries, and (decode)
the new cache or state. Not counted: the interpreter, torch and its lazy initialisation, the parameters,
the inputs, the prefilled decode state, and (gpt) AdamW's moments.
    GPU  torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before:
         tensors only (no CUDA context, no allocator cache).
    CPU  each case's memory is measured in a fresh subprocess (this file, --_case=JSON), which runs with
         MALLOC_MMAP_THRESHOLD_=65536 so that glibc hands every freed buffer >= 64 KiB back to the kernel
         (otherwise the measured call would silently reuse memory the warm-up left resident). Right before
         the measured call the kernel's resident-memory high-water mark is reset (writing 5 to
         /proc/self/clear_refs; Linux only, elsewhere no memory is reported), and peak = VmHWM after the
         call - VmRSS before it. Resident pages of any kind count (oneDNN scratch too), so it is a little
         above a tensors-only count. A subprocess killed by the kernel (out of memory) is recorded 'oom'.
         Times come from the main process, with its own allocator setting (above).
CPU timings move with whatever else the machine runs; run on an idle machine for numbers you report. On
cores shared with other work, --threads=1 keeps one busy core from stalling every parallel op (each waits
for all its threads), which otherwise turns a 1 ms op into tens of ms.
"""
import ctypes
import io
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import numpy as np
import torch

from attention import (ATTENTION, KVState, LayerConfig, LMConfig, RecurrentAttention, TransformerLM, attention_pattern,
                       build_attention, layer_configs, resolve_kernel)
from training import (ConfigError, apply_overrides, check_out_dir, git_commit, resolve_device, resolve_dtype,
                      write_atomic)

# LayerConfig fields bench sets itself (attention, n_embd, n_head, causal, block_size: from the variant, the head
# shape, --causal and T), holds fixed (dropout 0) or leaves at LayerConfig's default (bias, norm, mlp_ratio; no patch
# grid, which vicinity and sra refuse in one line: bench times token sequences, not images).
# Every other field is a knob of the variants (chunk size, window, features, ...): a bench option of the same
# name and default, passed through to LayerConfig (LMConfig for --model=gpt).
STRUCTURAL_FIELDS = ('attention', 'n_embd', 'n_head', 'causal', 'block_size', 'dropout',
                     'bias', 'norm', 'mlp_ratio', 'patch_grid_width', 'class_tokens')
LAYER_KNOBS = tuple(f.name for f in fields(LayerConfig) if f.name not in STRUCTURAL_FIELDS)

DEFAULTS = dict(
    model='layer',             # 'layer': one attention layer; 'gpt': training steps of train_gpt.py's model
    variants='',               # comma-separated names from attention.ATTENTION; '' = all
    seq_lens='',               # comma-separated; '' = 256 .. 16384 on GPU, 256 .. 8192 on CPU (powers of 2)
    modes='fwd,fwdbwd,decode',  # layer benchmark only
    batch_size=1,
    batch_tokens=0,            # > 0: the batch at each T is batch_tokens / T sequences (replaces batch_size)
    n_head=8,
    head_dim=64,               # n_embd = n_head * head_dim
    dtype='auto',              # 'auto' = bfloat16 on GPU (float16 where unsupported), float32 on CPU
    causal=True,
    device='auto',             # 'auto' = cuda if available, else cpu
    threads=0,                 # torch.set_num_threads; 0 = torch's default (one per core)
    malloc='reuse',            # CPU timing with glibc: 'reuse' freed memory (see the docstring) or glibc's 'default'
    **{name: getattr(LayerConfig(), name) for name in LAYER_KNOBS},  # as LayerConfig: chunk_size, ...
    warmup=2,                  # untimed calls first
    repeats=5,                 # timed calls: at least this many ...
    min_time=1.0,              # ... and at least this many seconds of them (cheap cases get many repeats)
    n_layer=6,                 # gpt only
    vocab_size=256,            # gpt only
    peak_tflops=0.0,           # gpt only: the device's peak for MFU; 0 = no MFU
    out='',                    # JSON file: {"env": ..., "results": [one record per case]}
    csv='',                    # CSV file: the same records
    plot='',                   # PNG file: time and memory against T, log-log, with fitted exponents
    fit_from=0,                # fit exponents over T >= fit_from only
    replot='',                 # a bench.py JSON: draw its --plot again from the file, without benchmarking
    check_floors=False,        # print the floors below with PASS / FAIL
    compile=False,             # torch.compile the layer's forward (or the model); decode steps stay eager
)
LIST_EXAMPLES = dict(variants='softmax,linear', seq_lens='1024,4096', modes='fwd,fwdbwd')  # for error messages
CASE_KEYS = ('batch_size', 'n_head', 'head_dim', 'dtype', 'device', 'threads', 'causal', *LAYER_KNOBS,
             'warmup', 'repeats', 'min_time', 'n_layer', 'vocab_size', 'peak_tflops', 'compile')  # config -> each case
FLOORS = dict(
    # fwdbwd time / softmax's at T <= limit: {T: limit} per variant; a variant's own row replaces 'default'.
    # The plain kernels (a feature map of D or 2D features) hold 0.5 at T=4096; the variants whose papers add
    # projections or gates, or wide feature maps, have their own rows at 4096: performer (256 random features per
    # head, bound by its feature map and kernel matmuls), rfa (2 x 128 features and a gate), gla (a low-rank gate
    # and 16-token chunks for its per-channel decay), deltanet and gated_deltanet (a triangular solve per chunk and
    # a loop over chunks), based (153 features). Every variant is at most 0.3 at T=16384.
    fwdbwd_vs_softmax={'default': {4096: 0.5, 16384: 0.3},
                       'performer': {4096: 0.8, 16384: 0.3},
                       'rfa': {4096: 0.85, 16384: 0.3},
                       'gla': {4096: 0.65, 16384: 0.3},
                       'deltanet': {4096: 0.65, 16384: 0.3},
                       'gated_deltanet': {4096: 0.7, 16384: 0.3},
                       'based': {4096: 0.6, 16384: 0.3}},
    time_exponent=1.2, memory_exponent=1.1,  # fitted over fit_range, fwd and fwdbwd
    decode_growth=(1024, 16384, 1.2),        # decode time at the longer context / at the shorter
    # softmax's decoding reads its whole KV cache each token, so on a CPU it is bound by memory bandwidth: at T its
    # decode time is judged against the time to read that cache once (decode records' cache_read_ms), not against
    # another variant's
    decode_vs_cache_read=(16384, 2.0),
    fit_range=(1024, 16384))


def linear_family():
    """The variants the floors apply to: the causal ones built on attention.RecurrentAttention, read from the
    registry when called (so a class registered at run time counts too)."""
    return [name for name, cls in ATTENTION.items() if issubclass(cls, RecurrentAttention) and cls.supports_causal]


def vs_softmax_floors(variant):
    """{T: most fwdbwd time / softmax's at T} for a variant: its own row of the table, else the default."""
    table = FLOORS['fwdbwd_vs_softmax']
    return table.get(variant, table['default'])

# ----------------------------------------------------------------------------------------------
# one case


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def proc_status_mb(field):
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith(field + ':'))
    return int(line.split()[1]) / 1024  # kB -> MB


def measure_peak_mb(fn, device):
    """Runs fn() once; returns the most memory it held at once beyond what was allocated before (MB)."""
    synchronize(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not os.path.exists('/proc/self/clear_refs'):
        fn()
        return None
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # VmHWM := VmRSS
    before = proc_status_mb('VmRSS')
    fn()
    return proc_status_mb('VmHWM') - before


def reuse_freed_memory():
    """glibc only: serve every allocation from the heap (no mmap) and never trim freed memory back to the
    kernel, so that repeated calls reuse their buffers, as PyTorch's caching allocator does on GPU.
    Returns whether it applied (False without glibc, e.g. on macOS)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def layer_call(case, device, dtype):
    """The call to time for a layer case: builds the layer and inputs, returns a no-argument function."""
    B, T, H = case['batch_size'], case['seq_len'], case['n_head']
    C = H * case['head_dim']
    config = LayerConfig(attention=case['variant'], n_embd=C, n_head=H, causal=case['causal'], block_size=T + 1,
                         **{name: case[name] for name in LAYER_KNOBS})
    layer = compiled(build_attention(config).to(device, dtype), case)
    x = torch.randn(B, T, C, device=device, dtype=dtype)
    if case['mode'] == 'fwd':
        return torch.no_grad()(lambda: layer(x))
    if case['mode'] == 'fwdbwd':
        x.requires_grad_()
        dy = torch.randn_like(x)

        def forward_backward():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).backward(dy)
        return forward_backward
    with torch.no_grad():
        _, state = layer.step(x)  # prefill the context
    token = torch.randn(B, 1, C, device=device, dtype=dtype)
    step = torch.no_grad()(lambda: layer.step(token, state))
    if isinstance(state, KVState):  # what bounds its time: reading the cache's filled prefix once
        keys, values = state.cache.k[:, :, :state.length], state.cache.v[:, :, :state.length]
        step.read_cache = torch.no_grad()(lambda: (keys.sum(), values.sum()))
    return step


def compiled(module, case):
    """torch.compile(module) for --compile=True (static shapes: each case has its own), else the module."""
    return torch.compile(module, dynamic=False) if case['compile'] else module


def gpt_call(case, device, dtype):
    """The call to time for --model=gpt: one training step (forward, backward, AdamW)."""
    T = case['seq_len']
    config = LMConfig(vocab_size=case['vocab_size'], block_size=T, n_layer=case['n_layer'], n_head=case['n_head'],
                      n_embd=case['n_head'] * case['head_dim'], dropout=0.0, attention=case['variant'],
                      **{name: case[name] for name in LAYER_KNOBS})
    model = TransformerLM(config).to(device)  # train_gpt.py's GPT: this trunk, causal
    train = compiled(model, case)
    case['n_params'] = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # as nanoGPT's MFU
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.randint(case['vocab_size'], (case['batch_size'], T + 1), device=device)
    ctx = nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)

    def train_step():
        with ctx:
            logits = train(data[:, :-1])  # (B, T, vocab)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step


def oom_record(case, error):
    """The record of a case that ran out of memory; any other error propagates."""
    text = str(error)
    if not (isinstance(error, (torch.OutOfMemoryError, MemoryError)) or 'out of memory' in text
            or "can't allocate memory" in text):
        raise error
    return dict(case, status='oom', error=text.splitlines()[0])


def timed_ms(call, device):
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return 1000 * (time.perf_counter() - start)


def prepare(case, measure_memory):
    """Builds a case's call and warms it up -> (call, record). call is None when the variant refuses the case
    (status 'unsupported') or it ran out of memory ('oom'). Measures peak memory here if measure_memory."""
    case = dict(case)  # gpt_call adds n_params
    device, dtype = torch.device(case['device']), getattr(torch, case['dtype'])
    if case['threads']:
        torch.set_num_threads(case['threads'])
    torch.manual_seed(0)
    try:
        call = (gpt_call if case['mode'] == 'train' else layer_call)(case, device, dtype)
    except ValueError as error:  # the variant refuses this mode
        return None, dict(case, status='unsupported', error=str(error))
    record = dict(case, status='ok')
    try:
        for _ in range(case['warmup']):
            call()
        if measure_memory:
            record['peak_mem_mb'] = measure_peak_mb(call, device)
        if hasattr(call, 'read_cache'):
            record['cache_read_ms'] = float(np.median([timed_ms(call.read_cache, device)
                                                       for _ in range(max(case['repeats'], 5))]))
    except (RuntimeError, MemoryError) as error:
        return None, oom_record(case, error)
    return call, record


def time_cases(cases, memory=None):
    """Times cases in interleaved rounds -> one record per case. In each of `repeats` rounds the cases take
    turns, one call each, until each has spent about min_time / repeats seconds this round (at least one
    call). Slow swings in machine speed, large on shared cores, so fall on every case alike, and ratios
    between cases hold even while absolute times drift. Peak memory is measured here unless `memory` gives
    each case's record from a memory subprocess (a case that failed there is not timed)."""
    calls, records = {}, []
    for i, case in enumerate(cases):
        if memory and memory[i]['status'] != 'ok':
            records.append(memory[i])
            continue
        call, record = prepare(case, measure_memory=not memory)
        if memory:
            record['peak_mem_mb'] = memory[i]['peak_mem_mb']
        records.append(record)
        if call:
            calls[i] = call
    times = {i: [] for i in calls}
    devices = {i: torch.device(cases[i]['device']) for i in calls}
    rounds = cases[0]['repeats'] if cases else 0  # one sweep's cases share repeats and min_time
    budget_ms = 1000 * cases[0]['min_time'] / rounds if cases else 0.0
    for round_ in range(rounds):
        spent = {}
        while turn := [i for i in calls if i not in spent or spent[i] < budget_ms]:
            for i in turn:
                try:
                    elapsed = timed_ms(calls[i], devices[i])
                except (RuntimeError, MemoryError) as error:
                    records[i] = oom_record(cases[i], error)
                    del calls[i]
                    continue
                times[i].append(elapsed)
                spent[i] = spent.get(i, 0.0) + elapsed
        print(f'  round {round_ + 1}/{rounds} done', flush=True)
    for i in calls:
        records[i].update(summarise(records[i], times[i]))
    return records


def summarise(case, times):
    """Median, min and interquartile range of the timed calls, and tokens/s and MFU for training steps."""
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    summary = dict(time_ms=median, time_min_ms=min(times), time_iqr_ms=q3 - q1, calls=len(times))
    if case['mode'] == 'train':
        summary['tokens_per_s'] = case['batch_size'] * case['seq_len'] / (median / 1000)
        if case['device'].startswith('cuda') and case['variant'] == 'softmax' and case['peak_tflops'] > 0:
            n_embd = case['n_head'] * case['head_dim']
            flops_per_token = 6 * case['n_params'] + 12 * case['n_layer'] * case['seq_len'] * n_embd
            summary['mfu'] = flops_per_token * summary['tokens_per_s'] / (case['peak_tflops'] * 1e12)
    return summary


def memory_in_subprocess(case):
    """CPU: the case's record with its peak memory, measured in a fresh subprocess (see the docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--_case=' + json.dumps(case)],
                          stdout=subprocess.PIPE, text=True, env=env, timeout=3600)  # one case, however slow
    if proc.returncode < 0:  # killed by a signal: the kernel's out-of-memory killer
        return dict(case, status='oom', error=f'killed by signal {-proc.returncode}')
    if proc.returncode:
        raise RuntimeError(f"case {case['variant']} {case['mode']} T={case['seq_len']} failed; traceback above")
    return json.loads(proc.stdout.splitlines()[-1])

# ----------------------------------------------------------------------------------------------
# the sweep and its reports


def resolve(config):
    """Fills in the 'auto' / '' defaults and checks names; returns a new config with lists."""
    config = dict(config)
    config['device'] = resolve_device(config['device'])
    config['dtype'] = resolve_dtype(config['device'], config['dtype'])
    gpu = config['device'].startswith('cuda')
    config['variants'] = split_list(config, 'variants') if config['variants'] else list(ATTENTION)
    config['seq_lens'] = ([int(t) if t.isdigit() and int(t) > 0 else bad_list(config, 'seq_lens')
                           for t in split_list(config, 'seq_lens')] if config['seq_lens'] else
                          [2**i for i in range(8, 15 if gpu else 14)])
    for name in config['variants']:
        if name not in ATTENTION:
            raise ConfigError(f"unknown variant '{name}'; choose from: {', '.join(ATTENTION)}")
    if config['layer_attention']:  # a hybrid stack: one more row, named by its pattern
        if config['model'] != 'gpt':
            raise ConfigError(f"layer_attention={config['layer_attention']!r} is a stack's pattern: bench it with "
                              "--model=gpt")
        try:
            layer_configs(LayerConfig(layer_attention=config['layer_attention']), config['n_layer'])
        except ValueError as error:
            raise ConfigError(str(error)) from None
        config['variants'] = [name for name in config['variants'] if name != config['layer_attention']] + [
            config['layer_attention']]
    for mode in split_list(config, 'modes'):
        if mode not in ('fwd', 'fwdbwd', 'decode'):
            raise ConfigError(f"unknown mode '{mode}'; choose from: fwd, fwdbwd, decode")
    config['modes'] = ['train'] if config['model'] == 'gpt' else split_list(config, 'modes')
    if config['batch_tokens'] and not all(0 < T <= config['batch_tokens'] for T in config['seq_lens']):
        raise ConfigError(f"batch_tokens={config['batch_tokens']}: must be at least every T in seq_lens "
                          f"({max(config['seq_lens'])}), or 0 to use batch_size")
    try:  # per row, the kernel it runs ('auto' resolved over the row's variants: a hybrid's pattern), in each case
        config['kernels'] = {name: resolve_kernel(config['kernel'],
                                                  attention_pattern(LayerConfig(layer_attention=name)),
                                                  config['causal'], config['device'])
                             for name in config['variants']}
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config['repeats'] < 1:
        raise ConfigError(f"repeats={config['repeats']}; time at least one round")
    if config['malloc'] not in ('reuse', 'default'):
        raise ConfigError(f"malloc={config['malloc']!r}; choose 'reuse' or 'default'")
    if config['model'] not in ('layer', 'gpt'):
        raise ConfigError(f"model={config['model']!r}; choose 'layer' or 'gpt'")
    check_output_paths(config)
    return config


def split_list(config, key):
    """A comma-separated option as a list; an empty item (a stray or doubled comma) is a ConfigError."""
    items = config[key].split(',')
    return items if all(items) else bad_list(config, key)


def bad_list(config, key):
    raise ConfigError(f"{key}={config[key]!r}: expected comma-separated "
                      f"{'positive integers' if key == 'seq_lens' else 'names'} without spaces or empty items, "
                      f"e.g. --{key}={LIST_EXAMPLES[key]}")


def check_output_paths(config):
    """Before any timing: every output path can be written (not a folder, no file where a folder must be) and the
    plot's extension is a format matplotlib writes, so a finished sweep is never lost to a bad path."""
    for key in ('out', 'csv', 'plot'):
        path = config[key]
        if not path:
            continue
        if os.path.isdir(path):
            example = os.path.join(path, 'bench.' + key)
            raise ConfigError(f"{key}={path!r} is a folder; give a file name, e.g. {example}")
        check_out_dir(os.path.dirname(path) or '.')
    if config['plot']:
        from matplotlib.figure import Figure
        formats = Figure().canvas.get_supported_filetypes()
        if os.path.splitext(config['plot'])[1].lstrip('.').lower() not in formats:
            raise ConfigError(f"plot={config['plot']!r}: matplotlib writes {', '.join(sorted(formats))}; end the "
                              "name with one of them, e.g. .png")


def cell(record):
    """The table cells of one record: time and memory, plus tokens/s and MFU for training steps."""
    if record['status'] != 'ok':
        cells = [record['status'], '']
    else:
        memory = record['peak_mem_mb']
        cells = [f"{record['time_ms']:.2f}", '-' if memory is None else f'{memory:.1f}']
    if record['mode'] == 'train':
        cells += [f"{record['tokens_per_s']:.0f}" if 'tokens_per_s' in record else '',
                  f"{100 * record['mfu']:.1f}%" if 'mfu' in record else '-']
    return ''.join(f'{c:>12}' for c in cells)


def sweep(config, subprocess_memory=None, mode_done=lambda records: None):
    """Runs every case, mode by mode (the cases of one mode timed together, interleaved), then prints one table
    row per (T, variant); returns the records in that order. Peak memory: in one subprocess per case on CPU
    (subprocess_memory=None), else in this process. mode_done(records so far) runs as each mode finishes."""
    if subprocess_memory is None:
        subprocess_memory = config['device'] == 'cpu'
    cases = [dict({k: config[k] for k in CASE_KEYS}, variant=variant, mode=mode, seq_len=T,
                  kernel=config['kernels'][variant], layer_attention=variant if variant == config['layer_attention'] else '',
                  batch_size=config['batch_tokens'] // T if config['batch_tokens'] else config['batch_size'])
             for T in config['seq_lens'] for variant in config['variants'] for mode in config['modes']]
    records = [None] * len(cases)
    for mode in config['modes']:
        group = [i for i, case in enumerate(cases) if case['mode'] == mode]
        print(f'{mode}: timing {len(group)} cases in {config["repeats"]} interleaved rounds', flush=True)
        memory = [memory_in_subprocess(cases[i]) for i in group] if subprocess_memory else None
        for i, record in zip(group, time_cases([cases[i] for i in group], memory)):
            records[i] = record
        mode_done([record for record in records if record is not None])
    header = ''.join(f'{mode + " ms":>12}{mode + " MB":>12}' for mode in config['modes'])
    if config['model'] == 'gpt':
        header += f'{"tokens/s":>12}{"MFU":>12}'
    width = max(16, *(len(name) + 2 for name in config['variants']))  # a hybrid's pattern is a long name
    print(f"\n{'variant':<{width}}{'kernel':>7}{'T':>7}" + header)
    n_modes = len(config['modes'])
    for start in range(0, len(records), n_modes):
        row = records[start:start + n_modes]
        print(f"{row[0]['variant']:<{width}}{row[0]['kernel']:>7}{row[0]['seq_len']:>7}" +
              ''.join(cell(r) for r in row))
    return records


def fit_exponent(records, variant, mode, key, low=0, high=float('inf')):
    """Least-squares slope of log(key) against log(T) over the variant's ok points with low <= T <= high."""
    points = [(r['seq_len'], r[key]) for r in records if r['variant'] == variant and r['mode'] == mode
              and r['status'] == 'ok' and low <= r['seq_len'] <= high and r[key] and r[key] > 0]
    if len(points) < 2:
        return None
    return float(np.polyfit(*np.log(np.array(points)).T, 1)[0])


def check_floors(records):
    """Prints each floor of the linear family (linear_family()) whose records are present, as a measured ratio
    or exponent against its limit; returns the lines as (name, value, limit)."""
    find = {(r['variant'], r['mode'], r['seq_len']): r for r in records if r['status'] == 'ok'}
    T_short, T_long, max_growth = FLOORS['decode_growth']
    low, high = FLOORS['fit_range']
    print(f'\nfloors (linear family; exponents fitted over T = {low} .. {high})')
    lines = []
    for variant in (v for v in linear_family() if any(r['variant'] == v for r in records)):
        for T, max_ratio in sorted(vs_softmax_floors(variant).items()):
            ours, softmax = find.get((variant, 'fwdbwd', T)), find.get(('softmax', 'fwdbwd', T))
            if ours and softmax:
                lines.append((f'{variant} fwdbwd time / softmax at T={T}',
                              ours['time_ms'] / softmax['time_ms'], max_ratio))
        for mode in ('fwd', 'fwdbwd'):
            for what, key in (('time', 'time_ms'), ('memory', 'peak_mem_mb')):
                exponent = fit_exponent(records, variant, mode, key, low, high)
                if exponent is not None:
                    lines.append((f'{variant} {mode} {what} exponent', exponent, FLOORS[what + '_exponent']))
        short, long = find.get((variant, 'decode', T_short)), find.get((variant, 'decode', T_long))
        if short and long:
            lines.append((f'{variant} decode time at T={T_long} / T={T_short}',
                          long['time_ms'] / short['time_ms'], max_growth))
    T_read, max_read_ratio = FLOORS['decode_vs_cache_read']
    for record in (r for r in records if r['status'] == 'ok' and r['mode'] == 'decode' and r['seq_len'] == T_read
                   and r.get('cache_read_ms')):
        lines.append((f"{record['variant']} decode time / reading its cache at T={T_read}",
                      record['time_ms'] / record['cache_read_ms'], max_read_ratio))
    for name, value, limit in lines:
        print(f"{name:<48}{value:>7.3f}  (<= {limit})  {'PASS' if value <= limit else 'FAIL'}")
    return lines


CPU_MEMORY_RESOLUTION_MB = 1.0  # CPU peaks count resident pages (see the docstring); GPU peaks count tensor bytes


def resolved_records(records, variant, mode, key):
    """The variant's ok records of mode whose key (time_ms or peak_mem_mb) is measured: CPU memory under
    CPU_MEMORY_RESOLUTION_MB is below what counting resident pages resolves, and left out."""
    floor = CPU_MEMORY_RESOLUTION_MB if key == 'peak_mem_mb' else 0
    return [r for r in records if r['variant'] == variant and r['mode'] == mode and r['status'] == 'ok' and
            r[key] is not None and r[key] > 0 and (r['device'] != 'cpu' or r[key] >= floor)]


def print_exponents(records, fit_from):
    """Per variant and mode, the exponent of T in time and in peak memory: the least-squares slope of log(value)
    against log(T) over T >= fit_from (1: linear in T, 2: quadratic, 0: flat, as decoding from a fixed-size state)."""
    modes = list(dict.fromkeys(r['mode'] for r in records))
    variants = list(dict.fromkeys(r['variant'] for r in records))
    width = max(16, *(len(name) + 2 for name in variants))
    print(f"\nexponents of T (slope of log value against log T, T >= {fit_from}; '-': fewer than two points)")
    print(f"{'variant':<{width}}" + ''.join(f'{mode + " time":>14}{mode + " MB":>12}' for mode in modes))
    for variant in variants:
        cells = []
        for mode in modes:
            for key, cell_width in (('time_ms', 14), ('peak_mem_mb', 12)):
                exponent = fit_exponent(resolved_records(records, variant, mode, key), variant, mode, key, fit_from)
                cells.append(f"{'-' if exponent is None else f'{exponent:.2f}':>{cell_width}}")
        print(f'{variant:<{width}}' + ''.join(cells))


def plot(records, path, fit_from):
    """Time per mode (top row) and peak memory per mode (bottom row) against T, log-log, one line per variant. CPU
    memory under CPU_MEMORY_RESOLUTION_MB is not drawn, and its panel says so."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    modes = list(dict.fromkeys(r['mode'] for r in records))
    fig, axes = plt.subplots(2, len(modes), figsize=(5.5 * len(modes), 9), squeeze=False)
    for column, mode in enumerate(modes):
        for row, (key, label) in enumerate((('time_ms', 'time (ms)'), ('peak_mem_mb', 'peak memory (MB)'))):
            ax = axes[row, column]
            floor = CPU_MEMORY_RESOLUTION_MB if key == 'peak_mem_mb' else 0
            hidden = False
            for index, variant in enumerate(dict.fromkeys(r['variant'] for r in records)):
                style = dict(color=f'C{index % 10}', linestyle=('-', '--', ':')[index // 10 % 3])  # 10 colours
                resolved = resolved_records(records, variant, mode, key)
                hidden |= any(r['device'] == 'cpu' and r['status'] == 'ok' and r[key] is not None and r[key] < floor
                              for r in records if r['variant'] == variant and r['mode'] == mode)
                if resolved:
                    exponent = fit_exponent(resolved, variant, mode, key, fit_from)
                    slope = '' if exponent is None else f' (T^{exponent:.2f})'
                    ax.plot([r['seq_len'] for r in resolved], [r[key] for r in resolved], marker='o',
                            label=variant + slope, **style)
            ax.set(xscale='log', yscale='log', xlabel='sequence length T', ylabel=label, title=f'{mode}: {label}')
            ax.grid(True, which='both', alpha=0.3)
            if hidden:
                ax.text(0.5, 0.5, f"{'values' if ax.lines else 'every value'} under {floor:g} MB not drawn:\nbelow "
                        "the resolution of counting resident pages", transform=ax.transAxes, ha='center',
                        va='center', fontsize=9, color='dimgrey')
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(config):
    """--replot=FILE.json with --plot=FILE.png: the figure of a bench JSON already written, without timing again."""
    if not config['plot']:
        raise ConfigError(f"--replot={config['replot']} redraws the figure of a bench JSON: give --plot=FILE.png too")
    check_output_paths(config)
    from training import read_json  # here, not at the top: only replotting reads a JSON back
    data = read_json(config['replot'])
    if not isinstance(data, dict) or not isinstance(data.get('results'), list):
        raise ConfigError(f"{config['replot']} is not a bench.py JSON (an object with a 'results' list)")
    print_exponents(data['results'], config['fit_from'])
    plot(data['results'], config['plot'], config['fit_from'])


def environment(config):
    cpu = platform.processor()
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    gpu = config['device'].startswith('cuda')
    commit, dirty = git_commit()
    return dict(device=config['device'], device_name=torch.cuda.get_device_name(config['device']) if gpu else cpu,
                cpu=cpu, cpu_count=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), dtype=config['dtype'], git_commit=commit, git_dirty=dirty,
                command=[sys.executable] + sys.argv, time=time.strftime('%Y-%m-%dT%H:%M:%S'),
                load_average=load_average())  # other work on the machine skews timings


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none (Windows)."""
    return os.getloadavg() if hasattr(os, 'getloadavg') else None


def write_outputs(config, env, records):
    """The JSON and CSV files, each written atomically: called as each mode finishes, so a sweep stopped later
    keeps what it measured."""
    if config['out']:
        write_atomic(config['out'], lambda f: f.write(json.dumps({'env': env, 'results': records}, indent=1).encode()))
    if config['csv']:
        import csv
        columns = list(dict.fromkeys(key for record in records for key in record))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(records)
        write_atomic(config['csv'], lambda f: f.write(text.getvalue().encode()))


def main(argv):
    if argv and argv[0].startswith('--_case='):  # a subprocess measuring one case's memory (memory_in_subprocess)
        print(json.dumps(prepare(json.loads(argv[0].partition('=')[2]), measure_memory=True)[1]))
        return
    config = apply_overrides(DEFAULTS, argv)
    if config['replot']:
        return replot(config)
    config = resolve(config)
    if config['threads']:
        torch.set_num_threads(config['threads'])
    env = environment(config)  # before the sweep: the code and machine state it starts with
    reuse = config['device'] == 'cpu' and config['malloc'] == 'reuse' and reuse_freed_memory()
    env['malloc'] = 'reuse' if reuse else 'default'
    if config['device'] == 'cpu' and config['malloc'] == 'reuse' and not reuse:
        print("note: no glibc here (macOS, Windows): CPU timing uses the system allocator's own policy")
    if config['device'] == 'cpu' and not os.path.exists('/proc/self/clear_refs'):
        print("note: no /proc/self/clear_refs here (not Linux): CPU peak memory is not measured (reported as None)")
    for path in (config['out'], config['csv'], config['plot']):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    records = sweep(config, mode_done=lambda records: write_outputs(config, env, records))
    env['load_average_end'] = load_average()
    write_outputs(config, env, records)
    print_exponents(records, config['fit_from'])
    if config['check_floors']:
        check_floors(records)
    if config['plot']:
        plot(records, config['plot'], config['fit_from'])


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as error:
        sys.exit(f'error: {error}')
