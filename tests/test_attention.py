"""
The correctness protocol of ../shared/DESIGN.md, run on every class in ATTENTION: a variant added to the
registry is covered with no edit here. Comparisons run in float64 so that only real differences show.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attention
from attention import ATTENTION, LayerConfig, build_attention

VARIANTS = list(ATTENTION)
CAUSAL = [v for v in VARIANTS if ATTENTION[v].supports_causal]
BIDIRECTIONAL = [v for v in VARIANTS if ATTENTION[v].supports_bidirectional]
MODES = [(v, True) for v in CAUSAL] + [(v, False) for v in BIDIRECTIONAL]
LINEAR_FAMILY = [v for v in CAUSAL if issubclass(ATTENTION[v], attention.KernelAttention)]


def make(name, causal, n_embd=30, n_head=2, seed=0, **knobs):
    """A small float64 layer. head dim 15: odd; chunk 8 and window 6 so T = 37 crosses several of each."""
    knobs = dict(chunk_size=8, local_window=6, performer_features=20, block_size=64) | knobs
    torch.manual_seed(seed)
    config = LayerConfig(attention=name, n_embd=n_embd, n_head=n_head, causal=causal, **knobs)
    return build_attention(config).double()


def inputs(B, T, C, seed=1):
    return torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def padding(lengths, T):
    """(B, T) bool, True past each sequence's length."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def grads(module, x, pad_mask, reference, keep):
    """Output and gradients of x and every parameter, for a loss that only reads positions in keep."""
    module.zero_grad()
    x = x.clone().requires_grad_()
    y = module(x, pad_mask, reference=reference)
    (y * keep[..., None] * torch.linspace(-1, 1, y.size(-1), dtype=y.dtype)).sum().backward()
    named = {'x': x.grad} | {name: p.grad.clone() for name, p in module.named_parameters()}
    return y * keep[..., None], named


@pytest.mark.parametrize('name,causal', MODES)
@pytest.mark.parametrize('B,T', [(1, 1), (2, 37), (1, 64)])
def test_fast_path_equals_reference(name, causal, B, T):
    module = make(name, causal)
    x = inputs(B, T, 30)
    pad_mask = None if causal or B == 1 else padding([T, T - 9], T)
    keep = torch.ones(B, T, dtype=torch.bool) if pad_mask is None else ~pad_mask
    y_fast, g_fast = grads(module, x, pad_mask, False, keep)
    y_ref, g_ref = grads(module, x, pad_mask, True, keep)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-9, atol=1e-10)
    assert g_fast.keys() == g_ref.keys()
    for key in g_fast:
        torch.testing.assert_close(g_fast[key], g_ref[key], rtol=1e-9, atol=1e-10, msg=f"gradient of {key}")


@pytest.mark.parametrize('name,causal', MODES)
def test_attend_gradients_of_q_k_v(name, causal):
    """The attend step alone: gradients of q, k and v directly (not only through the projection)."""
    module = make(name, causal)
    q, k, v = (inputs(2, 29, 15, seed=s).view(2, 29, 1, 15).expand(2, 29, 2, 15).transpose(1, 2).contiguous()
               for s in (1, 2, 3))
    results = []
    for attend in (module.attend, module.attend_reference):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        y = attend(*leaves, None)
        (y * y.detach().sin()).sum().backward()
        results.append([y] + [t.grad for t in leaves])
    for fast, ref, what in zip(*results, ('y', 'q', 'k', 'v')):
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10, msg=what)


@pytest.mark.parametrize('name', CAUSAL)
@pytest.mark.parametrize('prefill', [0, 1, 13])
def test_recurrent_equals_parallel(name, prefill):
    """Token-by-token decoding (after an optional parallel prefill) reproduces the parallel forward."""
    module = make(name, True)
    x = inputs(2, 30, 30)
    with torch.no_grad():
        expected = module(x)
        outputs, state = [], None
        if prefill:
            y, state = module.step(x[:, :prefill], state)
            outputs.append(y)
        for t in range(prefill, x.size(1)):
            y, state = module.step(x[:, t:t + 1], state)
            outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name', CAUSAL)
def test_decoding_in_uneven_pieces(name):
    module = make(name, True)
    x = inputs(1, 40, 30)
    with torch.no_grad():
        expected = module(x)
        outputs, state, start = [], None, 0
        for size in (5, 1, 11, 2, 21):
            y, state = module.step(x[:, start:start + size], state)
            outputs.append(y)
            start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_linear_family_state_has_fixed_size(name):
    module = make(name, True)
    with torch.no_grad():
        _, short = module.step(inputs(1, 10, 30), None)
        _, long = module.step(inputs(1, 300, 30), None)
    sizes = lambda state: {key: tuple(v.shape) for key, v in state.items() if torch.is_tensor(v)}
    assert sizes(short) == sizes(long)


@pytest.mark.parametrize('name', CAUSAL)
@pytest.mark.parametrize('t', [0, 8, 20, 36])
def test_no_leakage_from_the_future(name, t):
    module = make(name, True)
    x = inputs(2, 37, 30)
    changed = x.clone()
    changed[:, t] += 5 * torch.randn(2, 30, dtype=torch.float64)
    with torch.no_grad():
        y, y_changed = module(x), module(changed)
    torch.testing.assert_close(y_changed[:, :t], y[:, :t], rtol=0, atol=1e-12)
    assert not torch.allclose(y_changed[:, t], y[:, t])  # the test can see a change where there is one


@pytest.mark.parametrize('name', BIDIRECTIONAL)
def test_padding_is_ignored(name):
    """Bidirectional: outputs at real positions do not depend on what sits at padded positions."""
    module = make(name, False)
    x = inputs(2, 33, 30)
    pad_mask = padding([33, 21], 33)
    changed = x.clone()
    changed[pad_mask] = 100 * torch.randn(int(pad_mask.sum()), 30, dtype=torch.float64)
    with torch.no_grad():
        y, y_changed = module(x, pad_mask), module(changed, pad_mask)
    torch.testing.assert_close(y_changed[~pad_mask], y[~pad_mask], rtol=1e-9, atol=1e-10)
    unpadded = module(x[1:, :21])  # the padded sequence gives what it gives alone
    torch.testing.assert_close(y[1:, :21], unpadded, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name', BIDIRECTIONAL)
def test_bidirectional_sees_both_sides(name):
    module = make(name, False)
    x = inputs(1, 20, 30)
    changed = x.clone()
    changed[:, 12] += 5
    with torch.no_grad():
        assert not torch.allclose(module(changed)[:, 10], module(x)[:, 10])


@pytest.mark.parametrize('name,causal', MODES)
def test_deterministic(name, causal):
    a, b = make(name, causal, seed=3), make(name, causal, seed=3)
    x = inputs(2, 20, 30)
    for (key, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), key
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert torch.equal(a(x), a(x))


def test_performer_projection_changes_only_when_asked():
    module = make('performer', True)
    before = module.projection.clone()
    with torch.no_grad():
        module(inputs(1, 10, 30))
    module.train()
    module(inputs(1, 10, 30)).sum().backward()
    assert torch.equal(module.projection, before)
    assert 'projection' in module.state_dict()
    module.redraw_projection()
    assert not torch.equal(module.projection, before)


def test_performer_approximates_softmax():
    """FAVOR+ is an unbiased estimator of softmax attention: with many features it comes close."""
    performer = make('performer', False, n_embd=16, n_head=1, performer_features=4096)
    softmax = make('softmax', False, n_embd=16, n_head=1)
    q, k, v = (0.5 * inputs(1, 32, 16, seed=s)[:, None] for s in (1, 2, 3))
    error = (performer.attend(q, k, v, None) - softmax.attend(q, k, v, None)).abs().mean()
    assert error < 0.05 * v.abs().mean()


@pytest.mark.parametrize('causal', [True, False])
def test_performer_stabiliser_survives_long_keys(causal):
    """With |q|, |k| large, exp(w.x - |x|^2/2) underflows to 0 in fp32 for every feature; the
    stabilised fast path still matches the float64 reference."""
    module = make('performer', causal)

    def long_vectors(seed):  # norm 16 after performer's D^(-1/4) scaling
        x = inputs(1, 40, 15, seed=seed)[:, None].expand(1, 2, 40, 15)
        return x / x.norm(dim=-1, keepdim=True) * 16 * 15 ** 0.25

    q, k, v = long_vectors(1), long_vectors(2), inputs(1, 40, 15, seed=3)[:, None].expand(1, 2, 40, 15)
    expected = module.attend_reference(q, k, v, None)
    module.float()
    q, k, v = q.float(), k.float(), v.float()
    assert not torch.isfinite(module.attend_reference(q, k, v, None)).all()  # unstabilised fp32 fails
    torch.testing.assert_close(module.attend(q, k, v, None).double(), expected, rtol=1e-3, atol=1e-4)


class TensorSizes(TorchDispatchMode):
    """Records the largest tensor any op produces, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize('name', LINEAR_FAMILY + ['local'])
@pytest.mark.parametrize('causal', [True, False])
def test_memory_grows_linearly(name, causal):
    """No (T, T) matrix and no (T, F, D) tensor: the largest intermediate doubles when T doubles."""
    largest = {}
    for T in (512, 1024):
        module = make(name, causal, n_embd=16, n_head=2, chunk_size=16, local_window=16, performer_features=16).float()
        x = torch.randn(1, T, 16, requires_grad=True)
        with TensorSizes() as sizes:
            module(x).sum().backward()
        largest[T] = sizes.largest
        assert sizes.largest < T * T // 4, f"a tensor of {sizes.largest} elements at T={T}"
        assert sizes.largest < 2 * T * 8 * 8, "as large as a per-token (F, D) state"
    assert largest[1024] <= 2.1 * largest[512]


def test_unknown_variant_lists_the_registered_names():
    with pytest.raises(ValueError) as error:
        build_attention(LayerConfig(attention='flash_linear'))
    for name in ATTENTION:
        assert name in str(error.value)


def test_a_mode_a_variant_cannot_do_is_refused():
    class BidirectionalOnly(attention.SoftmaxAttention):
        supports_causal = False

    with pytest.raises(ValueError, match='bidirectional only'):
        BidirectionalOnly(LayerConfig(causal=True))
    BidirectionalOnly(LayerConfig(causal=False))


def test_step_and_padding_are_refused_where_undefined():
    with pytest.raises(ValueError, match='causal=False'):
        make('linear', False).step(inputs(1, 4, 30))
    with pytest.raises(ValueError, match='pad_mask'):
        make('linear', True)(inputs(1, 4, 30), padding([3], 4))


def test_extra_parameters_are_the_variants_own():
    """Same projections everywhere: parameter counts differ only by what a variant adds."""
    counts = {name: sum(p.numel() for p in make(name, True).parameters()) for name in VARIANTS}
    base = counts['softmax']
    C = 30
    assert counts['retention'] == base + C * C + 2 * C  # gate and group norm
    assert counts['norm_linear'] == base + C             # output RMSNorm
    for name in ('linear', 'performer', 'cosformer', 'local'):
        assert counts[name] == base


@pytest.mark.parametrize('name,causal', MODES)
def test_block_runs_and_decodes(name, causal):
    config = LayerConfig(attention=name, n_embd=32, n_head=4, causal=causal, chunk_size=8, local_window=6,
                         performer_features=16)
    torch.manual_seed(0)
    block = attention.Block(config).double()
    x = inputs(2, 19, 32)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if causal:
        with torch.no_grad():
            first, state = block.step(x[:, :10])
            second, _ = block.step(x[:, 10:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=1), y.detach(), rtol=1e-9, atol=1e-10)


def test_retention_head_norm_is_group_norm():
    """Retention normalises each head as nn.GroupNorm(n_head, C) would; its fast form must not change that."""
    module = make('retention', True)
    torch.nn.init.normal_(module.group_norm.weight)
    torch.nn.init.normal_(module.group_norm.bias)
    y, x = torch.randn(2, 2, 7, 15, dtype=torch.float64), inputs(2, 7, 30)  # (B, H, T, D) heads, block input
    grouped = module.group_norm(y.transpose(1, 2).reshape(14, 30)).view(2, 7, 30)
    expected = module.proj(torch.nn.functional.silu(module.gate(x)) * grouped)
    torch.testing.assert_close(module.output(y, x), expected, rtol=1e-12, atol=1e-12)
