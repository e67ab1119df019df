"""The adapter to flash-linear-attention (kernels.fla_linear_attention, fla_delta_rule) against trev's own kernels,
with fla's pure-PyTorch reference ops (fla.ops.*.naive, kernels.fla_reference_ops) in place of its Triton ops: for
every variant that maps onto fla (RecurrentAttention.fla_ops, read from the registry), the 'fla' path equals the
'torch' path in float64 (outputs and the gradients of x and every parameter, trained in recomputed segments too),
decoding through fla's recurrent ops equals the parallel forward, and each variant calls only the fla ops it names.
fla's references compute in float32, so agreement is to float32's rounding, not float64's. The GPU side (the Triton
ops themselves, in fp32 and bf16) is check_gpu.py --kernel=fla."""
import pytest
import torch

import kernels
from attention import ATTENTION, LayerConfig, RecurrentAttention, build_attention, resolve_kernel

pytest.importorskip('fla', reason="fla-core (flash-linear-attention's ops) is not installed: pip install -r "
                                  "requirements.txt")

MAPPED = [name for name, cls in ATTENTION.items() if issubclass(cls, RecurrentAttention) and cls.supports_causal
          and cls.fla_ops]
B, T, N_EMBD, N_HEAD = 2, 70, 24, 2  # head dim 12: not a power of two, padded to 16 for fla; T > a 64-token chunk
TOLERANCE = 2e-5  # relative RMS difference: fla's references round to float32 (about 1e-7 an operation)


def relative_rms(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def fla_calls(monkeypatch):
    """fla's references as the adapter's ops; returns the list of op names the adapter calls."""
    calls = []

    def spy(name, op):
        def called(**kwargs):
            calls.append(name)
            return op(**kwargs)
        return called
    monkeypatch.setattr(kernels, 'FLA_OPS', {name: spy(name, op) for name, op in kernels.fla_reference_ops().items()})
    return calls


def layer(name, kernel, **knobs):
    torch.manual_seed(0)  # the same parameters for either kernel
    config = LayerConfig(attention=name, n_embd=N_EMBD, n_head=N_HEAD, causal=True, block_size=2 * T, chunk_size=16,
                         kernel=kernel, **knobs)
    return build_attention(config).double()


def outputs_and_gradients(module, x):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype))
    return y, [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize('name', MAPPED)
def test_fla_path_equals_torch_path(name, fla_calls):
    """Outputs and gradients; the fla layer trains in segments of 32 tokens (each recomputed, starting from the
    state the one before left), the torch layer in one pass."""
    x = torch.randn(B, T, N_EMBD, dtype=torch.float64)
    expected, expected_grads = outputs_and_gradients(layer(name, 'torch', recompute_segment=0), x)
    assert not fla_calls
    got, grads = outputs_and_gradients(layer(name, 'fla', recompute_segment=32), x)
    assert relative_rms(got, expected) < TOLERANCE
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert (grad is None) == (expected_grad is None)
        if grad is not None and expected_grad.norm() > 0:
            assert relative_rms(grad, expected_grad) < TOLERANCE
    called = {call.removeprefix('chunk_').removeprefix('fused_recurrent_') for call in fla_calls}
    assert called and called <= set(ATTENTION[name].fla_ops), f"{name} called {called}"


@pytest.mark.parametrize('name', MAPPED)
def test_fla_decoding_equals_the_parallel_forward(name, fla_calls):
    """A prefill of T - 6 tokens (fla's chunk op), then one token at a time (its fused recurrent op)."""
    module = layer(name, 'fla')
    x = torch.randn(B, T, N_EMBD, dtype=torch.float64)
    with torch.no_grad():
        parallel = module(x)
        y, state = module.step(x[:, :T - 6])
        steps = [y]
        for t in range(T - 6, T):
            y, state = module.step(x[:, t:t + 1], state)
            steps.append(y)
    assert relative_rms(torch.cat(steps, dim=1), parallel) < TOLERANCE
    assert any(call.startswith('fused_recurrent_') for call in fla_calls)
    assert any(call.startswith('chunk_') for call in fla_calls)


def kernel_inputs(log_decay_shape):
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, N_HEAD, T, 12, generator=generator, dtype=torch.float64) for _ in range(3))
    state = torch.randn(B, N_HEAD, 12, 12, generator=generator, dtype=torch.float64)
    log_decay = None if log_decay_shape is None else -torch.rand(log_decay_shape, generator=generator,
                                                                 dtype=torch.float64)
    return q, k, v, log_decay, state


@pytest.mark.parametrize('log_decay_shape', [None, (1, N_HEAD, T), (B, N_HEAD, T), (B, N_HEAD, T, 12)],
                         ids=['none', 'per-head', 'per-token', 'per-channel'])
def test_the_adapter_equals_trevs_kernel(log_decay_shape, fla_calls):
    """kernels.fla_linear_attention against chunked_linear_attention, from a given state: output and final state."""
    q, k, v, log_decay, state = kernel_inputs(log_decay_shape)
    expected = kernels.chunked_linear_attention(q, k, v, log_decay, state, chunk_size=16)
    got = kernels.fla_linear_attention(q, k, v, log_decay, state)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape
        assert relative_rms(a, b) < TOLERANCE


def test_the_delta_rule_adapter_equals_trevs_kernel(fla_calls):
    q, k, v, log_decay, state = kernel_inputs((B, N_HEAD, T))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(B, N_HEAD, T, dtype=torch.float64)
    for decay in (None, log_decay):
        expected = kernels.chunked_delta_rule(q, k, v, beta, decay, state, chunk_size=16)
        got = kernels.fla_delta_rule(q, k, v, beta, decay, state)
        for a, b in zip(got, expected, strict=True):
            assert relative_rms(a, b) < TOLERANCE


@pytest.mark.parametrize('broken', ['scale', 'initial_state'])
def test_a_convention_error_fails_the_parity(broken, fla_calls, monkeypatch):
    """The parity checks can fail: the adapter leaving fla's default scale (K^-1/2) in place, or dropping the
    incoming state, is caught."""
    ops = dict(kernels.FLA_OPS)
    monkeypatch.setitem(kernels.FLA_OPS, 'chunk_simple_gla',
                        lambda **kwargs: ops['chunk_simple_gla'](**{**kwargs, broken: None}))
    q, k, v, log_decay, state = kernel_inputs((B, N_HEAD, T))
    expected, _ = kernels.chunked_linear_attention(q, k, v, log_decay, state, chunk_size=16)
    got, _ = kernels.fla_linear_attention(q, k, v, log_decay, state)
    assert relative_rms(got, expected) > 1e-3


def test_the_ones_column_is_the_normaliser(fla_calls):
    """The plain kernels give fla v with its column of ones: dropping the division is caught."""
    x = torch.randn(B, T, N_EMBD, dtype=torch.float64)
    with torch.no_grad():
        expected = layer('linear', 'torch')(x)
        module = layer('linear', 'fla')
        module.finish = lambda y, dtype: y[..., :-1].to(dtype)  # the numerator alone
        assert relative_rms(module(x), expected) > 1e-2


def test_resolve_kernel(fla_calls):
    assert resolve_kernel('torch', ['linear'], True, 'cuda') == 'torch'
    assert resolve_kernel('auto', ['linear'], True, 'cuda') == 'fla'
    assert resolve_kernel('auto', ['linear'], True, 'cpu') == 'torch'
    assert resolve_kernel('fla', ['gla'], True, 'cuda:0') == 'fla'
    assert resolve_kernel('fla', ['softmax'], True, 'cuda') == 'torch'  # no fla op: trev's path, and the record says so
    assert resolve_kernel('fla', ['linear'], False, 'cuda') == 'torch'  # bidirectional: trev's path
    assert resolve_kernel('auto', ['gated_deltanet', 'softmax'], True, 'cuda') == 'fla'  # a hybrid: its recurrent layers
    with pytest.raises(ValueError, match=r"kernel='fla' runs on CUDA, device is cpu"):
        resolve_kernel('fla', ['linear'], True, 'cpu')
    with pytest.raises(ValueError, match=r"kernel='triton': choose one of auto, torch, fla"):
        resolve_kernel('triton', ['linear'], True, 'cuda')


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_fla_without_cuda_is_one_line():
    message = r"^kernel='fla' runs flash-linear-attention's Triton kernels, which need a CUDA device: use [^\n]*$"
    with pytest.raises(ValueError, match=message):
        build_attention(LayerConfig(attention='linear', kernel='fla'))
    with pytest.raises(ValueError, match=message):
        resolve_kernel('fla', ['linear'], True, 'cpu')
    assert resolve_kernel('auto', ['gla'], True, 'cpu') == 'torch'
    assert not build_attention(LayerConfig(attention='gla', kernel='auto')).uses_fla(torch.zeros(1))


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match=r"kernel='cuda': choose one of auto, torch, fla"):
        build_attention(LayerConfig(attention='softmax', kernel='cuda'))

