"""
The decayed linear recurrences of issue 29 (mamba2, hgrn2, lightning), beyond the registry protocol that
test_attention.py runs on them: their references catch a fast path with a wrong gate, their output paths (gate and
norm, in the paper's order) against the formulas, lightning's ALiBi slopes against the values TransNormerLLM's code
builds, Mamba-2's initialisation, their extra parameters, and each layer against flash-linear-attention's naive
recurrence of the same op (skipped where fla-core is not installed). trev's side runs in float64; fla's naive ops
cast to float32 whatever they are given, so those comparisons hold to float32's precision.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attention
from attention import ATTENTION
from test_attention import inputs, make, registry_checks

VARIANTS = ['mamba2', 'hgrn2', 'lightning']


# ----------------------------------------------------------------------------------------------
# the references catch a wrong gate


class Mamba2WithoutTheStepOnTheKeys(attention.Mamba2):
    """dt in the decay only: h_t = exp(dt_t A) h_{t-1} + B_t^T x_t."""

    def attend_chunkwise(self, q, k, v, state, step):
        c, b = self.wide_features(q, k, 0)
        x = F.silu(v)
        y, kv = attention.chunked_linear_attention(c, b, x, -self.log_decay_rate.exp()[:, None] * step,
                                                   None if state is None else state['kv'], self.chunk_size)
        return y + self.skip[:, None, None] * x, {'kv': kv}


class Mamba2WithoutTheSkip(attention.Mamba2):
    def attend_chunkwise(self, q, k, v, state, step):
        y, state = super().attend_chunkwise(q, k, v, state, step)
        return y - self.skip[:, None, None] * F.silu(v), state


class HGRN2WithTheForgetGateAsKey(attention.HGRN2):
    """f_t as the key where the paper has 1 - f_t."""

    def attend_chunkwise(self, q, k, v, state):
        log_forget = F.logsigmoid(k).clamp_min(attention.MIN_CHANNEL_LOG_DECAY)
        y, kv = attention.chunked_linear_attention(torch.sigmoid(q), log_forget.exp(), F.silu(v), log_forget,
                                                   None if state is None else state['kv'], self.chunk_size)
        return y, {'kv': kv}


class LightningWithTheSlopesReversed(attention.LightningAttention):
    """The heads' decays in the opposite order."""

    def log_decay(self, like):
        return super().log_decay(like).flip(1)


@pytest.mark.parametrize('cls', [Mamba2WithoutTheStepOnTheKeys, Mamba2WithoutTheSkip, HGRN2WithTheForgetGateAsKey,
                                 LightningWithTheSlopesReversed], ids=lambda cls: cls.__name__)
def test_reference_catches_a_wrong_gate(monkeypatch, cls):
    monkeypatch.setitem(ATTENTION, 'wrong', cls)
    with pytest.raises(AssertionError, match='test_fast_path_equals_reference'):
        registry_checks('wrong')


# ----------------------------------------------------------------------------------------------
# the output paths, written out


def heads_and_input():
    """Heads' outputs y (B, H, T, D) = (2, 2, 7, 15), merged (B, T, C), and a layer input x (B, T, C)."""
    y = inputs(2, 14, 15, seed=5).view(2, 2, 7, 15)
    return y, y.transpose(1, 2).reshape(2, 7, 30), inputs(2, 7, 30)


def test_mamba2_gates_then_normalises_over_all_heads():
    """proj(RMSNorm(y * swish(x W_z)) * w), eps 1e-5, over the C channels: the norm after the gate."""
    module = make('mamba2', True)
    torch.nn.init.normal_(module.gate.norm.weight)
    y, merged, x = heads_and_input()
    z = x @ module.gate.weight.T
    gated = merged * z * torch.sigmoid(z)
    normed = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5) * module.gate.norm.weight
    torch.testing.assert_close(module.output(y, x), module.proj(normed), rtol=1e-12, atol=1e-12)


def test_hgrn2_normalises_over_all_heads():
    """proj(LayerNorm(y)) with the norm over all C channels of a token, not per head."""
    module = make('hgrn2', True, bias=True)
    torch.nn.init.normal_(module.out_norm.weight)
    torch.nn.init.normal_(module.out_norm.bias)
    y, merged, x = heads_and_input()
    centred = merged - merged.mean(-1, keepdim=True)
    normed = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = module.proj(normed * module.out_norm.weight + module.out_norm.bias)
    torch.testing.assert_close(module.output(y, x), expected, rtol=1e-12, atol=1e-12)


def test_lightning_normalises_then_gates():
    """proj((x W_u) * y / rms(y)), the rms over all C channels, no gain, no activation on the gate."""
    module = make('lightning', True)
    y, merged, x = heads_and_input()
    normed = merged / torch.sqrt(merged.pow(2).mean(-1, keepdim=True) + 1e-8)
    expected = module.proj((x @ module.gate.weight.T) * normed)
    torch.testing.assert_close(module.output(y, x), expected, rtol=1e-12, atol=1e-12)
    assert list(module.out_norm.parameters()) == []


# ----------------------------------------------------------------------------------------------
# lightning's decays, Mamba-2's initialisation, the extra parameters


@pytest.mark.parametrize('n_head,exponents', [
    (1, [8]), (2, [4, 8]), (4, [2, 4, 6, 8]), (8, [1, 2, 3, 4, 5, 6, 7, 8]),
    (6, [2, 4, 6, 8, 1, 3]),  # not a power of two: the 4 heads' slopes, then every other one of 8 heads'
    (12, [1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5])])
def test_lightning_decays_are_transnormer_slopes(n_head, exponents):
    """lambda_h = exp(-s_h), s_h = 2^-e_h, the slopes TransNormerLLM's _build_slope_tensor gives its first layer."""
    module = make('lightning', True, n_embd=n_head * 3, n_head=n_head)
    expected = -torch.tensor([2.0 ** -e for e in exponents], dtype=torch.float64)
    torch.testing.assert_close(module.log_decay(torch.zeros((), dtype=torch.float64)).flatten(), expected,
                               rtol=1e-15, atol=0)


def test_mamba2_initialisation():
    """A = -exp(A_log) in [-16, -1], the initial step softplus(dt_bias) in [0.001, 0.1], D = 1; all one-dimensional
    (no weight decay)."""
    module = make('mamba2', True, n_embd=64, n_head=32)
    A = -module.log_decay_rate.exp()
    step = F.softplus(module.step_bias)
    assert ((-16 <= A) & (A <= -1)).all() and A.std() > 1
    assert ((1e-3 <= step) & (step <= 0.1 + 1e-12)).all() and step.max() / step.min() > 5
    assert torch.equal(module.skip, torch.ones(32, dtype=torch.float64))
    assert all(p.dim() == 1 for p in (module.log_decay_rate, module.step_bias, module.skip))


def test_extra_parameters():
    counts = {name: sum(p.numel() for p in make(name, True).parameters()) for name in ['softmax'] + VARIANTS}
    base, C, H = counts['softmax'], 30, 2
    assert counts['mamba2'] == base + C * H + 3 * H + C * C + C  # W_dt, dt_bias, A_log, D, W_z, norm
    assert counts['hgrn2'] == base + C                           # the norm (no bias with bias=False)
    assert counts['lightning'] == base + C * C                   # W_u


# ----------------------------------------------------------------------------------------------
# against flash-linear-attention's naive recurrences


def layer_inputs(name):
    """A float64 layer and its attend inputs: q, k, v (B, H, T, D) = (2, 2, 37, 15) and its gates."""
    module = make(name, True)
    x = inputs(2, 37, 30)
    with torch.no_grad():
        q, k, v, _ = module.split_heads(x)
        return module, q, k, v, module.gates(x)


def fast_path(module, q, k, v, gates):
    """The layer's output and final state, (B, H, T, D) and (B, H, D, D)."""
    with torch.no_grad():
        y, state = module.attend_step(q, k, v, None, **gates)
    return y, state['kv']


def heads_last(*tensors):
    """(B, H, T, ...) -> (B, T, H, ...), fla's layout."""
    return [t.transpose(1, 2) for t in tensors]


def assert_close_to_float32(trev, fla):
    torch.testing.assert_close(fla.double(), trev, rtol=1e-4, atol=1e-5 * trev.abs().max().item())


@pytest.fixture
def simple_gla():
    return pytest.importorskip('fla.ops.simple_gla.naive', reason='fla-core is not installed')


def test_mamba2_matches_fla_simple_gla(simple_gla):
    """SSD is simple GLA with g = dt A, k = dt B, scale 1, plus D x."""
    module, q, k, v, gates = layer_inputs('mamba2')
    y, state = fast_path(module, q, k, v, gates)
    step = gates['step']
    C, B, x = F.silu(q), F.silu(k) * step[..., None], F.silu(v)
    g = -module.log_decay_rate.detach().exp()[:, None] * step  # (B, H, T)
    o, final = simple_gla.naive_recurrent_simple_gla(*heads_last(C, B, x, g), scale=1.0, output_final_state=True)
    assert_close_to_float32(y - module.skip.detach()[:, None, None] * x, o.transpose(1, 2))  # the scan alone
    assert_close_to_float32(state, final)


def test_lightning_matches_fla_simple_gla(simple_gla):
    """Lightning attention is simple GLA with a constant g = log lambda_h, scale 1."""
    module, q, k, v, gates = layer_inputs('lightning')
    y, state = fast_path(module, q, k, v, gates)
    g = module.log_decay(q).expand(2, -1, 37)  # (B, H, T)
    o, final = simple_gla.naive_recurrent_simple_gla(*heads_last(F.silu(q), F.silu(k), v, g), scale=1.0,
                                                     output_final_state=True)
    assert_close_to_float32(y, o.transpose(1, 2))
    assert_close_to_float32(state, final)


def test_hgrn2_matches_fla_hgrn_on_the_expanded_state():
    """HGRN's elementwise recurrence h_t = exp(g_t) h_{t-1} + x_t (fla.ops.hgrn) on the D^2 channels per head of
    x_t = (1 - f_t) (x) i_t with g_t = log f_t repeated over the second factor is HGRN2's state; y_t = o_t H_t."""
    hgrn = pytest.importorskip('fla.ops.hgrn.naive', reason='fla-core is not installed')
    module, q, k, v, gates = layer_inputs('hgrn2')
    y, state = fast_path(module, q, k, v, gates)
    log_f = F.logsigmoid(k).clamp_min(attention.MIN_CHANNEL_LOG_DECAY)  # (B, H, T, D)
    expanded = -torch.expm1(log_f)[..., :, None] * F.silu(v)[..., None, :]  # (B, H, T, D, D)
    g = log_f[..., :, None].expand_as(expanded)
    flat = lambda t: t.permute(0, 2, 1, 3, 4).flatten(2)  # (B, T, H D D)
    h, final = hgrn.naive_recurrent_hgrn(flat(expanded), flat(g), output_final_state=True)
    h = h.view(2, 37, 2, 15, 15).transpose(1, 2)  # (B, H, T, D, D): H_t
    assert_close_to_float32(y, (torch.sigmoid(q)[..., None] * h.double()).sum(-2))
    assert_close_to_float32(state, final.view(2, 2, 15, 15))


def test_hgrn2_matches_fla_gla():
    """fla's HGRN2 layer calls gla with q, k = 1 - f, v = i, gk = log f; naive_recurrent_gla scales q by 1 / sqrt(D),
    which HGRN2's authors do not: q goes in times sqrt(D)."""
    gla = pytest.importorskip('fla.ops.gla.naive', reason='fla-core is not installed')
    module, q, k, v, gates = layer_inputs('hgrn2')
    y, state = fast_path(module, q, k, v, gates)
    log_f = F.logsigmoid(k).clamp_min(attention.MIN_CHANNEL_LOG_DECAY)
    o, final = gla.naive_recurrent_gla(*heads_last(torch.sigmoid(q) * math.sqrt(15), -torch.expm1(log_f), F.silu(v),
                                                   log_f), output_final_state=True)
    assert_close_to_float32(y, o.transpose(1, 2))
    assert_close_to_float32(state, final)
