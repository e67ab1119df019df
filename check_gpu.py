"""
Verifies trev's CUDA paths on a machine with a GPU, in a few minutes:

    python check_gpu.py                                            # every registered variant
    python check_gpu.py --variants=softmax,linear --seq_lens=1024,4096 --out=gpu_check.json
    python check_gpu.py --kernel=fla --out=bench_results/gpu_fla_check.json  # fla's kernels: parity and bench

Checks, each reported PASS / FAIL / SKIP on one line:
    flash    SoftmaxAttention runs with F.scaled_dot_product_attention restricted to FLASH_ATTENTION
             (torch.nn.attention.sdpa_kernel), under autocast (flash needs 16 bits: it fails with dtype=float32),
             causal and bidirectional, forward and backward, and matches the MATH kernel's output.
    train    every variant (causal where it can be, else bidirectional) takes `train_steps` AdamW steps of a small
             attention.TransformerLM on one batch of block_size `train_block_size`, under autocast in `dtype` as the
             trainers do (training.mixed_precision: 'auto' is bfloat16, or float16 with the GradScaler on a GPU
             without bfloat16): every loss and parameter finite, the last loss below the first.
    layer    one layer per variant (bench.py's shape: batch_size x T x n_head * head_dim), forward + backward under
             autocast at each T in seq_lens: median time of `repeats` calls and peak memory
             (torch.cuda.max_memory_allocated above what was allocated before the call); 'oom' where it does not fit.
    compile  per variant, the forward and backward of a training step of the TransformerLM under torch.compile
             (default backend): its loss equals eager's (relative difference at most 2e-2, autocast rounding) and its
             gradients are finite.
    ddp      with 2 GPUs or more: 2 processes (torch.multiprocessing.spawn, NCCL) take one DistributedDataParallel step
             on different data and end with bitwise identical parameters; with fewer GPUs, a line says it was skipped.
With --kernel=fla, two other checks instead (sized to finish in under 8 minutes on one H100 or H200):
    parity   every variant that maps onto fla's ops (attention.RecurrentAttention.fla_ops), causal, B=2, T=1000 (not a
             multiple of fla's 64-token chunk), 4 heads of 64: the fla path against the torch path (the same
             parameters), outputs and the gradients of x and every parameter, as relative RMS differences. fp32 with
             TF32 off (torch's matmuls, and Triton's fp32 dots: TRITON_F32_DEFAULT=ieee): at most 1e-5; under bf16
             autocast, fla's against the torch path in fp32: the output at most 1e-2, each gradient at most 1e-2 or
             twice the torch path's own bf16 difference (recorded beside it), whichever is larger. Decoding (8 tokens after a prefill, fla's fused recurrent op) against the fla path's
             parallel forward, fp32: at most 1e-5.
    bench    bench.py in a subprocess at training's size (FLA_BENCH: 16 heads of 64, 32k tokens per call, bf16), for
             softmax and the mapped variants at seq_lens, with --kernel=torch, then --kernel=fla, then fla without
             recompute segments at the two longest T; the JSON files go to bench_dir (gpu_torch.json, gpu_fla.json,
             gpu_fla_whole_sequence.json), where report.py makes RESULTS.md's tables of them. Judged on fla's: each
             mapped variant's fwd+bwd time at most 0.5x softmax's at T=16384 and 1.5x at 4096, its decoding at
             T=16384 at most softmax's (FLA_FLOORS).
    --device=cpu --kernel=fla is their dry run: the parity check on fla's own reference ops (kernels.FLA_OPS =
    kernels.fla_reference_ops(), tiny shapes), and bench on trev's kernels only, tiny, into a temporary folder.
The exit status is 1 if any check failed. --out=FILE.json writes every result (a failure with its traceback).
Without a CUDA device it stops at once with a one-line error. --device=cpu runs the same code on the CPU in float32
(flash, peak memory and ddp skipped): a dry run of this script, which measures nothing a GPU does.
"""
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

import kernels
from attention import ATTENTION, LayerConfig, LMConfig, RecurrentAttention, TransformerLM, build_attention
from training import ConfigError, apply_overrides, exit_with, mixed_precision, resolve_dtype, write_json

DEFAULTS = dict(
    device='cuda',             # 'cuda' or 'cuda:N'; 'cpu' is a dry run of this script (see the docstring)
    variants='',               # comma-separated names from attention.ATTENTION; '' = all
    dtype='auto',              # autocast dtype, as the trainers: 'auto' = bfloat16, float16 where unsupported
    seq_lens='1024,4096,16384',  # layer check: the T to time
    batch_size=1,              # layer check: bench.py's shape
    n_head=8,
    head_dim=64,
    warmup=2,                  # layer check: untimed calls first
    repeats=5,                 # layer check: timed calls (the median is reported)
    train_steps=10,            # train check: AdamW steps per variant
    train_block_size=1024,     # train and compile checks: the TransformerLM's sequence length
    compile=True,              # compile check (the slowest: each variant compiles its own step)
    ddp=True,                  # ddp check (needs 2 GPUs)
    kernel='',                 # 'fla': the parity and bench checks of fla's kernels instead of the checks above
    bench_dir='bench_results', # kernel=fla: where bench's JSON files go
    out='',                    # JSON file: every check's results
)
TRAIN_MODEL = dict(n_layer=2, n_embd=128, n_head=4, vocab_size=256, dropout=0.0)  # the TransformerLM of train/compile
GRID = dict(patch_grid_width=16, class_tokens=1)  # vicinity and sra read a token sequence as rows of 16 patches


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def causal_mode(name):
    """Causal where the variant supports it (what train_gpt.py trains), else bidirectional."""
    return ATTENTION[name].supports_causal


# ----------------------------------------------------------------------------------------------
# the checks: each returns (status, summary line, details for the JSON)


def check_flash(device, dtype, cfg):
    if device.type != 'cuda':
        return 'SKIP', 'CUDA only', {}
    from torch.nn.attention import SDPBackend, sdpa_kernel
    B, T, H, D = 2, 1024, cfg['n_head'], cfg['head_dim']
    ctx, _ = mixed_precision(str(device), dtype)
    errors = {}
    for causal in (True, False):
        torch.manual_seed(0)
        layer = build_attention(LayerConfig(n_embd=H * D, n_head=H, causal=causal, block_size=T)).to(device)
        x = torch.randn(B, T, H * D, device=device, requires_grad=True)
        outputs = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
            with sdpa_kernel([backend]):  # raises "No available kernel" where flash cannot run
                with ctx:
                    y = layer(x)
                y.float().square().mean().backward()
            outputs[backend] = y.float()
        flash, math_ = outputs[SDPBackend.FLASH_ATTENTION], outputs[SDPBackend.MATH]
        errors[f'causal={causal}'] = ((flash - math_).norm() / math_.norm()).item()
    worst = max(errors.values())
    status = 'PASS' if worst <= 2e-2 else 'FAIL'
    return status, f"flash kernel runs fwd+bwd, causal and not (B={B} T={T} H={H} D={D}); " \
                   f"relative difference to math {worst:.1e}", {'relative_difference': errors}


def train_model(name, device, cfg):
    torch.manual_seed(0)
    config = LMConfig(attention=name, causal=causal_mode(name), block_size=cfg['train_block_size'], **TRAIN_MODEL,
                      **GRID)
    return TransformerLM(config).to(device)


def batch(device, cfg):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(TRAIN_MODEL['vocab_size'], (4, cfg['train_block_size'] + 1), generator=generator).to(device)


def lm_loss(model, tokens, ctx):
    with ctx:
        logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())


def check_train(device, dtype, cfg):
    ctx, _ = mixed_precision(str(device), dtype)
    tokens, results, failed = batch(device, cfg), {}, []
    for name in cfg['variants']:
        model = train_model(name, device, cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _, scaler = mixed_precision(str(device), dtype)  # a scaler per run: its scale adapts to the run
        losses = []
        for _ in range(cfg['train_steps']):
            loss = lm_loss(model, tokens, ctx)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        finite = all(math.isfinite(x) for x in losses) and all(torch.isfinite(p).all() for p in model.parameters())
        results[name] = {'losses': losses, 'finite': finite, 'learns': losses[-1] < losses[0]}
        if not (finite and losses[-1] < losses[0]):
            failed.append(name)
    line = ', '.join(f"{name} {r['losses'][0]:.2f}->{r['losses'][-1]:.2f}" for name, r in results.items())
    if failed:
        return 'FAIL', f"not finite or not learning: {', '.join(failed)} ({line})", results
    return 'PASS', f"{cfg['train_steps']} steps, T={cfg['train_block_size']}, finite and learning: {line}", results


def layer_case(name, T, device, dtype, cfg):
    """{'ms': median fwd+bwd time, 'mb': peak memory} of one layer at T, or {'oom': message}."""
    B, H, D = cfg['batch_size'], cfg['n_head'], cfg['head_dim']
    ctx, _ = mixed_precision(str(device), dtype)
    torch.manual_seed(0)
    layer = build_attention(LayerConfig(attention=name, n_embd=H * D, n_head=H, causal=causal_mode(name),
                                        block_size=T, **GRID)).to(device)
    x = torch.randn(B, T, H * D, device=device, requires_grad=True)
    dy = torch.randn_like(x)

    def forward_backward():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with ctx:
            y = layer(x)
        y.backward(dy.to(y.dtype))

    try:
        for _ in range(cfg['warmup']):
            forward_backward()
        synchronize(device)
        mb = None
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            forward_backward()
            synchronize(device)
            mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        times = []
        for _ in range(cfg['repeats']):
            synchronize(device)
            start = time.perf_counter()
            forward_backward()
            synchronize(device)
            times.append(1000 * (time.perf_counter() - start))
        return {'ms': sorted(times)[len(times) // 2], 'mb': mb}
    except torch.OutOfMemoryError as error:
        return {'oom': str(error).splitlines()[0]}
    finally:
        del layer, x, dy
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def check_layer(device, dtype, cfg):
    table = {name: {T: layer_case(name, T, device, dtype, cfg) for T in cfg['seq_lens']} for name in cfg['variants']}
    cell = lambda r: 'oom' if 'oom' in r else f"{r['ms']:.2f} ms" + ('' if r['mb'] is None else f" {r['mb']:.0f} MB")
    rows = [f"    {'variant':<14}" + ''.join(f"{f'T={T}':>22}" for T in cfg['seq_lens'])]
    rows += [f"    {name:<14}" + ''.join(f"{cell(table[name][T]):>22}" for T in cfg['seq_lens']) for name in table]
    shape = f"B={cfg['batch_size']} H={cfg['n_head']} D={cfg['head_dim']}"
    return 'PASS', f"fwd+bwd under autocast ({shape}), median of {cfg['repeats']}:\n" + '\n'.join(rows), table


def check_compile(device, dtype, cfg):
    if not cfg['compile']:
        return 'SKIP', 'compile=False', {}
    ctx, _ = mixed_precision(str(device), dtype)
    tokens, results, failed = batch(device, cfg), {}, []
    for name in cfg['variants']:
        torch._dynamo.reset()  # each variant compiles from a clean cache
        with torch.no_grad():
            eager_loss = lm_loss(train_model(name, device, cfg), tokens, ctx).item()
        model = train_model(name, device, cfg)
        compiled = torch.compile(model)
        start = time.perf_counter()
        loss = lm_loss(compiled, tokens, ctx)
        loss.backward()
        seconds = time.perf_counter() - start
        difference = abs(loss.item() - eager_loss) / abs(eager_loss)
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        results[name] = {'loss': loss.item(), 'eager_loss': eager_loss, 'relative_difference': difference,
                         'finite_gradients': finite, 'first_step_s': seconds}
        if not (finite and difference <= 2e-2):
            failed.append(name)
    torch._dynamo.reset()
    line = ', '.join(f"{name} {r['first_step_s']:.0f}s" for name, r in results.items())
    if failed:
        return 'FAIL', f"compiled loss differs from eager or gradients not finite: {', '.join(failed)}", results
    return 'PASS', f"compiled step equals eager (first step, compile included: {line})", results


def ddp_worker(rank, world_size, port, name, dtype, cfg, queue):
    """One process of the ddp check: one DDP step on rank-specific data; rank 0 reports whether every rank ends
    with the same parameters."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    device = torch.device(f'cuda:{rank}')
    torch.cuda.set_device(device)
    torch_dist.init_process_group('nccl', rank=rank, world_size=world_size)
    try:
        model = train_model(name, device, cfg)  # the same initial weights on every rank (same seed)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ctx, scaler = mixed_precision(str(device), dtype)
        tokens = batch(device, cfg).roll(rank, dims=0)  # different data on each rank
        loss = lm_loss(ddp, tokens, ctx)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        torch_dist.all_gather(gathered, flat)
        losses = [torch.zeros((), device=device) for _ in range(world_size)]
        torch_dist.all_gather(losses, loss.detach().float())
        if rank == 0:
            queue.put({'identical_parameters': all(torch.equal(g, gathered[0]) for g in gathered),
                       'losses': [x.item() for x in losses]})
    finally:
        torch_dist.destroy_process_group()


def check_ddp(device, dtype, cfg):
    if not cfg['ddp']:
        return 'SKIP', 'ddp=False', {}
    if device.type != 'cuda' or torch.cuda.device_count() < 2:
        count = torch.cuda.device_count() if device.type == 'cuda' else 0
        return 'SKIP', f"{count} GPU(s): the DDP check needs 2", {}
    import torch.multiprocessing as mp
    with socket.socket() as s:  # a free port for the process group
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    queue = mp.get_context('spawn').SimpleQueue()
    name = cfg['variants'][0]
    mp.spawn(ddp_worker, args=(2, port, name, dtype, cfg, queue), nprocs=2, join=True)
    result = queue.get()
    finite = all(math.isfinite(x) for x in result['losses'])
    status = 'PASS' if result['identical_parameters'] and finite else 'FAIL'
    return status, f"2 processes, NCCL, one step of {name}: losses {result['losses'][0]:.3f} / " \
                   f"{result['losses'][1]:.3f}, parameters identical: {result['identical_parameters']}", result


CHECKS = {'flash': check_flash, 'train': check_train, 'layer': check_layer, 'compile': check_compile,
          'ddp': check_ddp}


# ----------------------------------------------------------------------------------------------
# kernel=fla: flash-linear-attention's kernels behind trev's layers

PARITY = dict(cuda=dict(batch=2, seq_len=1000, n_head=4, head_dim=64), cpu=dict(batch=1, seq_len=100, n_head=2,
                                                                                 head_dim=16))
PARITY_LIMITS = dict(fp32=1e-5, bf16=1e-2, decode=1e-5)
FLA_BENCH = ['--n_head=16', '--head_dim=64', '--batch_tokens=32768', '--modes=fwdbwd,decode', '--warmup=1',
             '--repeats=3', '--min_time=0.3']
FLA_FLOORS = {'fwdbwd_vs_softmax': {16384: 0.5, 4096: 1.5}, 'decode_vs_softmax': {16384: 1.0}}


def fla_variants(cfg):
    return [name for name in cfg['variants'] if issubclass(ATTENTION[name], RecurrentAttention)
            and ATTENTION[name].supports_causal and ATTENTION[name].fla_ops]


def relative_rms(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def parity_run(name, kernel, device, shape, autocast_dtype=None):
    """(output, [grad of x, grads of the parameters]) of one layer of `name` with `kernel` on the fixed input."""
    torch.manual_seed(0)
    H, D = shape['n_head'], shape['head_dim']
    layer = build_attention(LayerConfig(attention=name, n_embd=H * D, n_head=H, causal=True,
                                        block_size=shape['seq_len'], kernel=kernel)).to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape['batch'], shape['seq_len'], H * D, generator=generator).to(device).requires_grad_()
    dy = torch.randn(x.shape, generator=generator).to(device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        y = layer(x)
    y.float().backward(dy)
    return y.detach().float(), [x.grad] + [p.grad for p in layer.parameters() if p.grad is not None], layer, x


def differences(run, reference):
    """Relative RMS differences of the output, then of each nonzero gradient, of two parity_run results."""
    (y, grads), (y_ref, grads_ref) = run[:2], reference[:2]
    return [relative_rms(y, y_ref)] + [relative_rms(g, r) for g, r in zip(grads, grads_ref, strict=True)
                                       if r.norm() > 0]


def check_parity(device, dtype, cfg):
    names = fla_variants(cfg)
    if not names:
        return 'SKIP', 'no variant among --variants maps onto fla', {}
    shape = PARITY['cuda' if device.type == 'cuda' else 'cpu']
    results, failed = {}, []
    for name in names:
        fp32_torch = parity_run(name, 'torch', device, shape)
        fp32_fla = parity_run(name, 'fla', device, shape)
        bf16_fla = parity_run(name, 'fla', device, shape, torch.bfloat16)
        bf16_torch = parity_run(name, 'torch', device, shape, torch.bfloat16)
        layer, x = fp32_fla[2], fp32_fla[3]
        with torch.no_grad():
            prefix = shape['seq_len'] - 8
            y, state = layer.step(x[:, :prefix])
            steps = [y]
            for t in range(prefix, shape['seq_len']):
                y, state = layer.step(x[:, t:t + 1], state)
                steps.append(y)
        fla_bf16, torch_bf16 = differences(bf16_fla, fp32_torch), differences(bf16_torch, fp32_torch)
        result = {'fp32': max(differences(fp32_fla, fp32_torch)),
                  # bf16: the output within the limit; a gradient within the limit or twice the torch path's own
                  # bf16 difference (a small gradient's rounding under bf16 autocast is the layer's, not fla's)
                  'bf16': max(fla / max(PARITY_LIMITS['bf16'], 2 * own) * PARITY_LIMITS['bf16']
                              for fla, own in zip(fla_bf16, [0.0] + torch_bf16[1:], strict=True)),
                  'decode': relative_rms(torch.cat(steps, dim=1), fp32_fla[0]),
                  'bf16_differences': fla_bf16, 'bf16_torch_path_differences': torch_bf16}
        results[name] = result
        if any(result[key] > limit for key, limit in PARITY_LIMITS.items()):
            failed.append(name)
    line = ', '.join(f"{name} {r['fp32']:.0e}/{r['bf16']:.0e}/{r['decode']:.0e}" for name, r in results.items())
    limits = '/'.join(f'{limit:.0e}' for limit in PARITY_LIMITS.values())
    status = 'FAIL' if failed else 'PASS'
    return status, (f"fla against torch, fp32 / bf16 / decoding (limits {limits}): {line}" +
                    (f"; over a limit: {', '.join(failed)}" if failed else '')), results


def bench_runs(device, cfg, folder):
    """(file name, bench.py arguments) of each bench run of the check."""
    names = ','.join(['softmax'] + fla_variants(cfg))
    if device.type != 'cuda':  # the dry run: trev's kernels, tiny
        return [('gpu_torch.json', [f'--variants={names}', '--device=cpu', '--kernel=torch', '--n_head=2',
                                    '--head_dim=8', '--batch_tokens=64', '--seq_lens=32,64', '--modes=fwdbwd,decode',
                                    '--warmup=1', '--repeats=1', '--min_time=0', '--performer_features=8'])]
    lengths = ','.join(map(str, cfg['seq_lens']))
    longest = ','.join(map(str, cfg['seq_lens'][-2:]))
    common = [f'--variants={names}', f'--device={device}', *FLA_BENCH]
    return [('gpu_torch.json', common + ['--kernel=torch', f'--seq_lens={lengths}']),
            ('gpu_fla.json', common + ['--kernel=fla', f'--seq_lens={lengths}']),
            ('gpu_fla_whole_sequence.json', common + ['--kernel=fla', '--recompute_segment=0', '--modes=fwdbwd',
                                                      f'--seq_lens={longest}'])]


def fla_floors(records):
    """[(name, value, limit)] of FLA_FLOORS on a bench JSON's records of the fla run."""
    find = {(r['variant'], r['mode'], r['seq_len']): r for r in records if r['status'] == 'ok'}
    lines = []
    for variant in dict.fromkeys(r['variant'] for r in records if r.get('kernel') == 'fla'):
        for (mode, key), limits in (((('fwdbwd', 'fwdbwd_vs_softmax')), FLA_FLOORS['fwdbwd_vs_softmax']),
                                    ((('decode', 'decode_vs_softmax')), FLA_FLOORS['decode_vs_softmax'])):
            for T, limit in limits.items():
                ours, softmax = find.get((variant, mode, T)), find.get(('softmax', mode, T))
                if ours and softmax:
                    lines.append((f'{variant} {mode} / softmax at T={T}', ours['time_ms'] / softmax['time_ms'], limit))
    return lines


def check_bench(device, dtype, cfg):
    folder = cfg['bench_dir'] if device.type == 'cuda' else tempfile.mkdtemp()
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_F32_DEFAULT'}  # fla as it trains
    files = {}
    for file, args in bench_runs(device, cfg, folder):
        path = os.path.join(folder, file)
        run = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bench.py'),
                              *args, f'--out={path}'], env=env, capture_output=True, text=True)
        print(run.stdout[run.stdout.find('\nvariant'):], flush=True)  # bench's table
        if run.returncode:
            return 'FAIL', f"bench.py {' '.join(args)} failed: {run.stderr.strip().splitlines()[-1]}", {}
        files[file] = path
    lines = []
    if 'gpu_fla.json' in files:
        with open(files['gpu_fla.json']) as f:
            lines = fla_floors(json.load(f)['results'])
    failed = [name for name, value, limit in lines if value > limit]
    details = {'files': files, 'floors': [dict(name=n, value=v, limit=l) for n, v, l in lines]}
    summary = f"wrote {', '.join(files.values())}" + ''.join(
        f"\n    {name:<44}{value:>7.3f}  (<= {limit})  {'PASS' if value <= limit else 'FAIL'}" for name, value, limit in lines)
    return 'FAIL' if failed else 'PASS', summary, details


FLA_CHECKS = {'parity': check_parity, 'bench': check_bench}


# ----------------------------------------------------------------------------------------------


def parse(argv):
    cfg = apply_overrides(DEFAULTS, argv)
    device = cfg['device']
    kind, colon, index = device.partition(':')
    if not (device == 'cpu' or (kind == 'cuda' and (not colon or index.isdigit()))):
        raise ConfigError(f"device={device!r}: choose 'cuda', 'cuda:N' or 'cpu' (a dry run)")
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ConfigError("no CUDA device: check_gpu.py verifies the GPU paths; run it on a machine with a GPU")
    cfg['variants'] = cfg['variants'].split(',') if cfg['variants'] else list(ATTENTION)
    unknown = [name for name in cfg['variants'] if name not in ATTENTION]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from: {', '.join(ATTENTION)}")
    lengths = cfg['seq_lens'].split(',')
    if not all(t.isdigit() and int(t) > 0 for t in lengths):
        raise ConfigError(f"seq_lens={cfg['seq_lens']!r}: expected comma-separated lengths, e.g. 1024,4096")
    cfg['seq_lens'] = [int(t) for t in lengths]
    if cfg['train_steps'] < 2 or cfg['train_block_size'] < 2:  # a loss to compare the first with; a next token
        raise ConfigError(f"train_steps={cfg['train_steps']}, train_block_size={cfg['train_block_size']}: both must "
                          "be at least 2")
    if cfg['out']:  # checked before minutes of checks, not after
        folder = os.path.dirname(os.path.abspath(cfg['out']))
        if os.path.isdir(cfg['out']) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ConfigError(f"out={cfg['out']!r}: give a file in an existing folder you can write to")
    cfg['dtype'] = resolve_dtype(device, cfg['dtype'])
    if cfg['kernel'] not in ('', 'fla'):
        raise ConfigError(f"kernel={cfg['kernel']!r}: '' (the checks of trev's paths) or 'fla' (fla's kernels)")
    if cfg['kernel'] == 'fla' and kind == 'cuda' and kernels.fla_unavailable():
        raise ConfigError(kernels.fla_unavailable())
    return cfg


def use_fla(device):
    """kernel=fla: fp32 means fp32 (TF32 off in torch's matmuls and in Triton's fp32 dots, the parity check's
    condition); on the CPU (the dry run) fla's reference ops stand in for its Triton ones. Returns a note or ''."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        os.environ['TRITON_F32_DEFAULT'] = 'ieee'
        return ''
    try:
        kernels.FLA_OPS = kernels.fla_reference_ops()
    except ImportError as error:
        return f"fla-core is not installed ({error}): the parity dry run cannot run"
    return "dry run: fla's reference ops (fla.ops.*.naive) in place of its Triton kernels"


def main(argv):
    cfg = parse(argv)
    device = torch.device(cfg['device'])
    about = (torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (dry run: no GPU figures)')
    print(f"{about}, torch {torch.__version__}, autocast {cfg['dtype']}, variants {', '.join(cfg['variants'])}",
          flush=True)
    report = {'device': about, 'torch': torch.__version__, 'config': cfg, 'checks': {}}
    if cfg['kernel'] == 'fla':
        note = use_fla(device)
        if note:
            print(note, flush=True)
    for check, run in (FLA_CHECKS if cfg['kernel'] == 'fla' else CHECKS).items():
        try:
            status, line, details = run(device, cfg['dtype'], cfg)
        except Exception as error:  # a check that crashes fails; the others still run
            message = str(error).splitlines()[0] if str(error) else ''
            status, line, details = 'FAIL', f"{type(error).__name__}: {message}", {'traceback': traceback.format_exc()}
        report['checks'][check] = {'status': status, 'summary': line, 'details': details}
        print(f"{check:<8} {status:<4}  {line}", flush=True)
    statuses = [c['status'] for c in report['checks'].values()]
    print(f"{statuses.count('PASS')} passed, {statuses.count('FAIL')} failed, {statuses.count('SKIP')} skipped")
    if cfg['out']:
        write_json(cfg['out'], report)
    return 1 if 'FAIL' in statuses else 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except ConfigError as error:
        exit_with(error)
