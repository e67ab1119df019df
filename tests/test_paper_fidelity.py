"""
Conventions where a variant once differed from its paper, each checked against the paper's formula written out here:
gated RFA's normaliser floor, which must not bind where the paper's ratio is well defined (from the first token on,
whatever the gate), and the SiLU the delta-rule papers put on v as well as on q and k. Float64.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from test_attention import inputs, make

FLOOR = 0.1  # LayerConfig.rfa_normaliser_floor


def heads(B, T, seed):
    """(B, 2, T, 15) queries, keys or values, as make()'s layers split them."""
    return inputs(B, T, 30, seed=seed).view(B, T, 2, 15).transpose(1, 2)


def gated_rfa_ratio(module, q, k, v, gate_logit):
    """The paper's gated RFA, no floor: y_t = sum_j s_tj w_tj v_j / sum_j s_tj w_tj, s_tj = phi(q_t) . phi(k_j) (the
    layer's random features), w_tj = (1 - g_j) prod_{j<u<=t} g_u. Also returns the normaliser and the weights' sum."""
    fq, fk = module.features(q, k, 0)
    scores = fq @ fk.transpose(-2, -1)                                     # (B, H, T, T)
    log_g = F.logsigmoid(gate_logit)                                       # (B, H, T)
    decayed = log_g.cumsum(-1)[..., :, None] - log_g.cumsum(-1)[..., None, :]  # sum_{j<u<=t} log g_u
    T = q.size(2)
    weights = (F.logsigmoid(-gate_logit)[..., None, :] + decayed).exp() * torch.ones(T, T).tril()
    normaliser = (scores * weights).sum(-1, keepdim=True)
    return (scores * weights) @ v / normaliser, normaliser, weights.sum(-1, keepdim=True)


def decoded(module, q, k, v, gate_logit, pieces):
    outputs, state, start = [], None, 0
    for size in pieces:
        piece = slice(start, start + size)
        y, state = module.attend_step(q[:, :, piece], k[:, :, piece], v[:, :, piece], state,
                                      gate_logit=gate_logit[..., piece])
        outputs.append(y)
        start += size
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize('g', [0.5, 0.88, 0.99])
def test_gated_rfa_gives_the_first_value_at_any_gate(g):
    """One token: the paper's ratio is s w v_0 / (s w) = v_0 for any g_0, the weight w = 1 - g_0 cancelling. A floor
    on the raw normaliser s (1 - g_0) replaces it once 1 - g_0 is small (y_0 = 0.03 v_0 to 0.06 v_0 at g_0 = 0.99)."""
    module = make('rfa', True, rfa_features=256)
    q, k, v = heads(3, 1, 1), heads(3, 1, 2), heads(3, 1, 3)
    gate_logit = torch.full((3, 2, 1), math.log(g / (1 - g)), dtype=torch.float64)
    fq, fk = module.features(q, k, 0)
    assert ((fq * fk).sum(-1) > FLOOR).all()  # the kernel estimate itself is above the floor: only the weight is small
    with torch.no_grad():
        for y in (module.attend(q, k, v, None, gate_logit=gate_logit),
                  module.attend_reference(q, k, v, None, gate_logit=gate_logit),
                  module.attend_step(q, k, v, None, gate_logit=gate_logit)[0]):
            torch.testing.assert_close(y, v, rtol=0, atol=1e-12)


def test_gated_rfa_with_slow_gates_is_the_papers_ratio():
    """T = 100, gates g_t in [0.95, 0.999] (long memory): the weights sum to 1 - prod g, far below 1 for most of the
    sequence, so the raw normaliser falls below the floor at many positions, while the weighted mean of the kernel
    estimates stays above it. The fast path, the reference and decoding in uneven pieces give the paper's ratio."""
    module = make('rfa', True, rfa_features=256)
    q, k, v = heads(2, 100, 1), heads(2, 100, 2), heads(2, 100, 3)
    gate_logit = 3 + 4 * torch.rand(2, 2, 100, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        expected, normaliser, weight_sum = gated_rfa_ratio(module, q, k, v, gate_logit)
        assert (normaliser / weight_sum > FLOOR).all()
        assert (normaliser < FLOOR).double().mean() > 0.2  # where a floor on the raw normaliser would bind
        for y in (module.attend(q, k, v, None, gate_logit=gate_logit),
                  module.attend_reference(q, k, v, None, gate_logit=gate_logit),
                  decoded(module, q, k, v, gate_logit, (1, 7, 1, 40, 51))):
            torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)


def test_gated_rfa_floor_binds_on_the_weighted_mean():
    """Where the weighted mean of the kernel estimates is below the floor (one random direction, a sharp sigma), the
    normaliser is floor x (1 - prod g), the weights' sum, in the fast path, the reference and decoding alike."""
    module = make('rfa', True, rfa_features=1)
    with torch.no_grad():
        module.sigma.fill_(10.0)
    q, k, v = heads(2, 37, 1), heads(2, 37, 2), heads(2, 37, 3)
    gate_logit = 2 * inputs(2, 37, 2, seed=4).transpose(1, 2)
    with torch.no_grad():
        ratio, normaliser, weight_sum = gated_rfa_ratio(module, q, k, v, gate_logit)
        floored = normaliser < FLOOR * weight_sum
        assert floored.any() and not floored.all()
        expected = ratio * normaliser / torch.maximum(normaliser, FLOOR * weight_sum)
        for y in (module.attend(q, k, v, None, gate_logit=gate_logit),
                  module.attend_reference(q, k, v, None, gate_logit=gate_logit),
                  decoded(module, q, k, v, gate_logit, (5, 1, 31))):
            torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)


def delta_rule_from_the_papers(q, k, v, beta, log_alpha=None):
    """DeltaNet (arXiv:2406.06484) and Gated DeltaNet (arXiv:2412.06464) token by token, written here: q, k, v <-
    SiLU (after the short convolution, when there is one), q and k L2-normalised, no scale on q;
    S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T (S: values x keys), o_t = S_t q_t."""
    silu = lambda x: x / (1 + torch.exp(-x))
    q, k, v = silu(q), silu(k), silu(v)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    B, H, T, D = q.shape
    S = torch.zeros(B, H, D, D, dtype=q.dtype)
    outputs = []
    for t in range(T):
        kt = k[:, :, t, :, None]  # (B, H, D, 1)
        b = beta[:, :, t, None, None]
        alpha = 1.0 if log_alpha is None else log_alpha[:, :, t, None, None].exp()
        S = alpha * S @ (torch.eye(D, dtype=q.dtype) - b * kt @ kt.mT) + b * v[:, :, t, :, None] @ kt.mT
        outputs.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outputs, dim=2)


@pytest.mark.parametrize('name', ['deltanet', 'gated_deltanet'])
def test_delta_rule_variants_put_silu_on_v(name):
    """The attention (before the head norm) is the papers' recurrence with SiLU on q, k and v: the fast path, the
    reference and decoding."""
    module = make(name, True)
    q, k, v = heads(2, 29, 1), heads(2, 29, 2), heads(2, 29, 3)
    with torch.no_grad():
        gates = module.gates(inputs(2, 29, 30, seed=4))
        expected = delta_rule_from_the_papers(q, k, v, **gates)
        outputs, state = [], None
        for piece in (slice(0, 3), slice(3, 4), slice(4, 29)):
            y, state = module.attend_step(q[:, :, piece], k[:, :, piece], v[:, :, piece], state,
                                          **{key: gate[:, :, piece] for key, gate in gates.items()})
            outputs.append(y)
        for y in (module.attend(q, k, v, None, **gates), module.attend_reference(q, k, v, None, **gates),
                  torch.cat(outputs, dim=2)):
            torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
