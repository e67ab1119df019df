"""
Right in the precision GPU users train in, and compiled: every class in ATTENTION in each mode it supports, drawn
through test_attention's Selections, so a variant registered at run time is covered (registry_checks(name, globals())
runs this file's checks on it: test_a_variant_registered_at_run_time_is_checked_here).

1. Autocast: a layer with float32 weights under CPU autocast in bfloat16 and in float16 (the arithmetic of GPU
   autocast), against the same layer in float64. T = 2048, one layer of 2 heads of 64: positions past bfloat16's
   exact integers (256), normalisers past float16's 65504. The relative RMSE, rms(y - y64) / rms(y64), is at most
   1e-2 over the whole output and in every window of 256 positions (error that grows with the position shows at the
   end first): test_autocast_matches_float64; the layer cast to that dtype instead of autocast (bench.py on a GPU),
   the same: test_low_precision_model_matches_float64; decoding token by token under autocast, the same:
   test_decoding_under_autocast_matches_float64. At long T in float16 (16384; 4096 for quadratic-time variants):
   finite, and the same bound: test_float16_at_long_lengths_is_finite_and_close. The test_autocast_catches_* tests
   show that a variant with the flaws this guards against (positions in bfloat16, a normaliser summed in float16) fails these checks.
2. Training under float16 autocast with torch.amp.GradScaler: finite losses, parameters that move:
   test_float16_training_with_grad_scaler.
3. torch.compile (inductor, fullgraph, static shapes) equals eager in float32, forward and backward (the input's and
   every parameter's gradient): test_compiled_equals_eager. Inductor builds each layer from scratch, 5 to 20 s on 2
   CPU cores, so each class compiles in one mode (COMPILED): causal where it can, the mode the trainers compile
   most, which runs every kernel the bidirectional forms use (the chunked kernel with and without decay, the
   performer's stabiliser) and more. T = 150 with chunks of 8: 19 chunks, more than one group of chunk_states (16),
   so its recursion and padding are compiled too.
4. check_gpu.py: without a CUDA device it stops with its one-line error, and its dry run on the CPU passes:
   test_check_gpu_refuses_without_cuda, test_check_gpu_dry_run.

CPU autocast runs matmuls in the low precision dtype and keeps other ops in their inputs' dtype, as CUDA autocast does
but for the ops it runs in float32 (norms, exp, log, pow, softmax, ...): CPU autocast is the harsher test.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import attention
from attention import ATTENTION, LayerConfig, LMConfig, TransformerLM, build_attention
from test_attention import CAUSAL, GRID, MODES, Selection, SoftplusAttention, registry_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILED = Selection(lambda name, cls: [(name, cls.supports_causal)])  # one mode per class: see 3. above

# CPU autocast leaves norm_linear's RMSNorm a bfloat16 input and its float32 weight, and torch warns that its fused
# kernel does not apply (GPU autocast runs norms in float32)
pytestmark = pytest.mark.filterwarnings('ignore:Mismatch dtype between input and weight')

LOW_PRECISION = [torch.bfloat16, torch.float16]
DTYPE_IDS = ['bf16', 'fp16']
WINDOW = 256
TOLERANCE = 1e-2
# The delta rule's state is a product of (I - beta k k^T) factors, which carries the rounding of the bfloat16 q, k, v
# through the whole sequence: with only q, k and v rounded to bfloat16 (everything after them in float64) gated
# DeltaNet is already 6.5e-3 from float64 overall, 1.1e-2 in its worst window, while its float32 path is within 1e-6.
# Its limit is set from that input rounding, not from the kernel.
# Differential attention subtracts two softmax maps (lambda near 0.8; the first map is 1.6x the difference in RMS),
# so each map's bfloat16 rounding grows by that cancellation: under bfloat16 autocast its worst window sits at the
# 1e-2 line with either of SDPA's CPU paths (9.8e-3 on the math path, 1.05e-2 on flash), 7.9e-3 overall.
VARIANT_TOLERANCE = {'gated_deltanet': 1.5e-2, 'diff': 1.5e-2}


def layer(name, causal, T):
    """One layer as in the issue's measurements: 2 heads of 64, float32 weights, 64 performer features, M = T for
    cosFormer, LayerConfig's chunk (64) and window (128)."""
    torch.manual_seed(0)
    config = LayerConfig(attention=name, n_embd=128, n_head=2, causal=causal, block_size=T, performer_features=64,
                         **GRID)
    return build_attention(config)


def sequence(T, seed=1):
    return torch.randn(1, T, 128, generator=torch.Generator().manual_seed(seed))


def float64_output(module, x):
    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double())


def relative_errors(y, reference, window):
    """(relative RMSE over the whole output, the largest relative RMSE of a window of `window` positions)."""
    diff = y.double() - reference
    overall = diff.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
    windows = lambda t: t.unflatten(1, (-1, window)).pow(2).mean(dim=(0, 2, 3)).sqrt()  # (T / window,)
    return overall.item(), (windows(diff) / windows(reference)).max().item()


def assert_close_to_float64(y, reference, what, window=WINDOW):
    """what starts with the variant's name, which sets the limit."""
    assert torch.isfinite(y).all(), f"{what}: inf or nan"
    overall, worst = relative_errors(y, reference, window)
    limit = VARIANT_TOLERANCE.get(what.split()[0], TOLERANCE)
    assert overall <= limit and worst <= limit, \
        f"{what}: relative RMSE {overall:.2e} overall, {worst:.2e} in the worst window of {window} (at most {limit})"


@pytest.mark.parametrize('dtype', LOW_PRECISION, ids=DTYPE_IDS)
@pytest.mark.parametrize('name,causal', MODES)
def test_autocast_matches_float64(name, causal, dtype):
    module, x = layer(name, causal, 2048), sequence(2048)
    reference = float64_output(module, x)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        y = module(x)
    assert_close_to_float64(y, reference, f"{name} causal={causal} {dtype}")


@pytest.mark.parametrize('dtype', LOW_PRECISION, ids=DTYPE_IDS)
@pytest.mark.parametrize('name,causal', MODES)
def test_low_precision_model_matches_float64(name, causal, dtype):
    """The layer itself cast to bfloat16 / float16, no autocast (bench.py's setting on a GPU), against float64 with
    the same rounded weights."""
    module, x = layer(name, causal, 2048).to(dtype), sequence(2048).to(dtype)
    reference = float64_output(module, x)
    with torch.no_grad():
        y = module(x)
    assert_close_to_float64(y, reference, f"{name} causal={causal} cast to {dtype}")


@pytest.mark.parametrize('dtype', LOW_PRECISION, ids=DTYPE_IDS)
@pytest.mark.parametrize('name', CAUSAL)
def test_decoding_under_autocast_matches_float64(name, dtype):
    """A prefill of 2040 tokens, then 8 tokens one at a time, all under autocast, against the float64 forward."""
    module, x = layer(name, True, 2048), sequence(2048)
    reference = float64_output(module, x)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        y, state = module.step(x[:, :2040])
        outputs = [y]
        for t in range(2040, 2048):
            y, state = module.step(x[:, t:t + 1], state)
            outputs.append(y)
    y = torch.cat(outputs, dim=1)
    assert_close_to_float64(y, reference, f"{name} prefill and decoding {dtype}")
    assert_close_to_float64(y[:, 2040:], reference[:, 2040:], f"{name} decoding {dtype}", window=8)


@pytest.mark.slow
@pytest.mark.parametrize('name,causal', MODES)
def test_float16_at_long_lengths_is_finite_and_close(name, causal):
    """T = 16384 for the variants whose time is linear in T (the linear family, local) and softmax (SDPA); 4096 for
    the other quadratic ones, whose float64 reference at 16384 would take minutes each on a CPU."""
    linear_time = issubclass(ATTENTION[name], attention.RecurrentAttention) or name in ('softmax', 'local')
    T = 16384 if linear_time else 4096
    module, x = layer(name, causal, T), sequence(T)
    reference = float64_output(module, x)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        y = module(x)
    assert_close_to_float64(y, reference, f"{name} causal={causal} float16 T={T}")


class RetentionWithPositionsInTheInputDtype(attention.Retention):
    """Retention as it was: rotary angles computed in the dtype of q and k (bfloat16 under bfloat16 autocast)."""

    def features(self, q, k, offset):
        return self.rotate(q, offset), self.rotate(k, offset) / q.size(-1) ** 0.5

    def wide_features(self, q, k, offset):  # q and k as autocast made them
        return self.features(q, k, offset)

    @staticmethod
    def rotate(x, offset):
        half = x.size(-1) // 2
        freq = 10000.0 ** (-torch.arange(half, dtype=x.dtype) / half)
        angle = (torch.arange(x.size(2), dtype=x.dtype) + offset)[:, None] * freq
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()], -1).flatten(-2)


class LinearAttentionWithSumsInTheInputDtype(attention.LinearAttention):
    """Bidirectional linear attention with phi(K)^T [V, 1] and its normaliser summed in the input's dtype."""

    def attend(self, q, k, v, pad_mask):
        fq, fk = self.features(q, k, 0)
        return self.finish(fq @ (fk.transpose(-2, -1) @ attention.append_ones(v)), v.dtype)


@pytest.mark.parametrize('cls,causal,dtype', [(RetentionWithPositionsInTheInputDtype, True, torch.bfloat16),
                                              (LinearAttentionWithSumsInTheInputDtype, False, torch.float16)],
                         ids=['retention positions in bf16', 'linear sums in fp16'])
def test_autocast_catches_a_variant_computing_in_low_precision(monkeypatch, cls, causal, dtype):
    monkeypatch.setitem(ATTENTION, 'low_precision', cls)
    with pytest.raises(AssertionError, match='relative RMSE|inf or nan'):
        test_autocast_matches_float64('low_precision', causal, dtype)


@pytest.mark.parametrize('name,causal', MODES)
def test_float16_training_with_grad_scaler(name, causal):
    """A 2-layer TransformerLM, 6 AdamW steps under float16 autocast with loss scaling, as the trainers do on a GPU
    without bfloat16: every loss finite, every parameter finite, and the parameters moved."""
    config = LMConfig(attention=name, causal=causal, n_layer=2, n_embd=64, n_head=2, block_size=256, vocab_size=64,
                      chunk_size=32, local_window=32, performer_features=32, **GRID)
    torch.manual_seed(0)
    model = TransformerLM(config)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler('cpu')
    tokens = torch.randint(64, (4, 257), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(6):
        with torch.autocast('cpu', dtype=torch.float16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, before[key]) for key, p in model.state_dict().items()), "no step was taken"


@pytest.mark.slow
@pytest.mark.parametrize('name,causal', COMPILED)
def test_compiled_equals_eager(name, causal):
    """torch.compile's default backend (inductor), whole graph, static shapes, against eager in float32: the output,
    and the gradients of the input and of every parameter for a loss that weighs each output differently."""
    torch.manual_seed(0)
    config = LayerConfig(attention=name, n_embd=32, n_head=2, causal=causal, block_size=160, chunk_size=8,
                         local_window=6, performer_features=16, **GRID)
    module = build_attention(config)
    x = torch.randn(2, 19, 32, generator=torch.Generator().manual_seed(1))  # 3 chunks, the last one partial: the
    weight = torch.randn(2, 19, 32, generator=torch.Generator().manual_seed(2))  # loops over chunks unroll 3 times

    def run(layer):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        y = layer(leaf)
        (y * weight).sum().backward()
        return {'y': y.detach(), 'x': leaf.grad} | {n: p.grad.clone() for n, p in module.named_parameters()}

    eager = run(module)
    torch._dynamo.reset()  # a fresh cache: no earlier variant's graphs, no recompilation limit reached
    try:
        compiled = run(torch.compile(module, fullgraph=True, dynamic=False))
    finally:
        torch._dynamo.reset()
    assert compiled.keys() == eager.keys()
    for key in eager:
        scale = max(1.0, eager[key].abs().max().item())  # float32 rounding grows with a gradient's largest entries
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5 * scale, msg=f"{key} ({name})")


@pytest.mark.slow
def test_a_variant_registered_at_run_time_is_checked_here(monkeypatch):
    monkeypatch.setitem(ATTENTION, 'throwaway', SoftplusAttention)
    checks = registry_checks('throwaway', globals())
    assert {check.split('(')[0] for check in checks} == {
        'test_autocast_matches_float64', 'test_low_precision_model_matches_float64',
        'test_decoding_under_autocast_matches_float64',
        'test_float16_at_long_lengths_is_finite_and_close', 'test_float16_training_with_grad_scaler',
        'test_compiled_equals_eager'}
    assert "test_autocast_matches_float64(name='throwaway', causal=False, dtype=torch.float16)" in checks


def run_check_gpu(*args, **env):
    return subprocess.run([sys.executable, 'check_gpu.py', *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1', **env))


def test_check_gpu_refuses_without_cuda():
    done = run_check_gpu(CUDA_VISIBLE_DEVICES='')  # no GPU, even on a machine with one
    assert done.returncode == 1
    assert done.stderr == ("error: no CUDA device: check_gpu.py verifies the GPU paths; run it on a machine with "
                           "a GPU\n")
    assert done.stdout == ''


@pytest.mark.slow
def test_check_gpu_dry_run(tmp_path):
    """--device=cpu runs the checks' code on every registered variant, tiny: flash, compile and ddp skip."""
    out = tmp_path / 'check.json'
    done = run_check_gpu('--device=cpu', '--seq_lens=32', '--train_steps=2', '--train_block_size=32',
                         '--compile=False', '--warmup=0', '--repeats=1', '--n_head=2', '--head_dim=16', f'--out={out}')
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert {name: check['status'] for name, check in report['checks'].items()} == {
        'flash': 'SKIP', 'train': 'PASS', 'layer': 'PASS', 'compile': 'SKIP', 'ddp': 'SKIP'}
    assert set(report['checks']['train']['details']) == set(ATTENTION)
    assert '2 passed, 0 failed, 3 skipped' in done.stdout
