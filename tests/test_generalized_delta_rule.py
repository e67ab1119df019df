"""
kernels.chunked_generalized_delta_rule, the kernel of kda and rwkv7, against its token-by-token loop (outputs, final
state and every gradient, in float64; finite and close in float32 with strong decays), and the two layers against
flash-linear-attention's naive references (fla.ops.kda.naive, fla.ops.generalized_delta_rule.dplr.naive) where
fla-core is installed; those compute in float32 whatever their inputs, hence their looser tolerance. Checks the
registry protocol (test_attention.py) does not make: references that catch a wrong fast path, the extra parameters.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attention
import kernels
from attention import ATTENTION
from test_attention import inputs, make, registry_checks


def generalized_loop(q, k, v, log_decay, read, write, state):
    """S_t = (Diag(exp(log_decay_t)) + write_t^T read_t) S_{t-1} + k_t^T v_t, y_t = q_t S_t, one token at a time, with
    log decays below kernels.MIN_CHANNEL_LOG_DECAY raised to it."""
    decay = log_decay.clamp_min(kernels.MIN_CHANNEL_LOG_DECAY).exp()
    S, outputs = state, []
    for t in range(q.size(2)):
        read_back = read[:, :, t, None, :] @ S  # (B, H, 1, E)
        written = write[:, :, t, :, None] * read_back + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, F, E)
        S = decay[:, :, t, :, None] * S + written
        outputs.append((q[:, :, t, None, :] @ S).squeeze(-2))
    return torch.stack(outputs, dim=2), S


def random_inputs(T, decay_scale=3.0, seed=0, B=2, H=3, Fd=5, E=4, dtype=torch.float64):
    """q, k, v, log_decay (mostly mild, a few strong), read, write (a transition near a contraction: unit reads,
    writes up to half the read's length, as the layers make them) and a state."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, Fd, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, E, generator=g, dtype=dtype)
    log_decay = -decay_scale * torch.rand(B, H, T, Fd, generator=g, dtype=dtype) ** 3
    read = F.normalize(torch.randn(B, H, T, Fd, generator=g, dtype=dtype), dim=-1)
    write = -0.5 * torch.rand(B, H, T, 1, generator=g, dtype=dtype) * read
    state = torch.randn(B, H, Fd, E, generator=g, dtype=dtype)
    return q, k, v, log_decay, read, write, state


def mismatches(T, chunk_size, incoming_state, decay_scale=3.0):
    """The kernel against the loop in float64: y, the final state, and the gradients of every input for a loss that
    reads both. Returns the names of what differs."""
    q, k, v, log_decay, read, write, state = random_inputs(T, decay_scale)
    g = torch.Generator().manual_seed(1)
    y_weight = torch.randn(v.shape, generator=g, dtype=torch.float64)
    state_weight = torch.randn(state.shape, generator=g, dtype=torch.float64)
    results = []
    for run in ('kernel', 'loop'):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, log_decay, read, write, state)]
        start = leaves[6] if incoming_state else None
        if run == 'kernel':
            y, final = kernels.chunked_generalized_delta_rule(*leaves[:6], start, chunk_size=chunk_size)
        else:
            y, final = generalized_loop(*leaves[:6], leaves[6] if incoming_state else torch.zeros_like(state))
        ((y * y_weight).sum() + (final * state_weight).sum()).backward()
        results.append([y, final] + [t.grad for t in leaves])
    names = ('y', 'final state', 'q', 'k', 'v', 'log_decay', 'read', 'write', 'incoming state')
    return [name for name, a, b in zip(names, *results)
            if not (a is None and b is None) and not torch.allclose(a, b, rtol=1e-9, atol=1e-10)]


@pytest.mark.parametrize('chunk_size,T', [(16, 50), (8, 37), (7, 23), (64, 16), (64, 1)])
@pytest.mark.parametrize('incoming_state', [False, True])
def test_kernel_and_its_gradients_equal_the_loop(chunk_size, T, incoming_state):
    """Chunks of 16 (the most a per-channel decay takes: 64 means 16), 8 and 7, a padded last chunk, one token."""
    assert mismatches(T, chunk_size, incoming_state) == []


def test_kernel_raises_log_decays_below_its_floor():
    """-1000 a token counts as the floor (-8): no overflow or NaN, and no gradient there, as for a clamp."""
    q, k, v, log_decay, read, write, state = random_inputs(40)
    log_decay[..., ::3, :] = -1000.0
    expected, S = generalized_loop(q, k, v, log_decay, read, write, state)
    log_decay.requires_grad_()
    y, final = kernels.chunked_generalized_delta_rule(q, k, v, log_decay, read, write, state, chunk_size=16)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, S, rtol=1e-10, atol=1e-10)
    y.sum().backward()
    assert (log_decay.grad[..., ::3, :] == 0).all() and log_decay.grad.abs().sum() > 0


def test_kernel_is_safe_in_float32_with_strong_decays():
    """Log decays uniform down to the floor over 4096 tokens: float32 finite and as close to the float64 loop as
    float32 allows, its gradients finite; the factors from the chunk's start, exp(-b), would overflow."""
    q, k, v, _, read, write, state = random_inputs(4096, B=1, H=2, Fd=6, E=6)
    log_decay = kernels.MIN_CHANNEL_LOG_DECAY * torch.rand(q.shape, generator=torch.Generator().manual_seed(2),
                                                           dtype=torch.float64)
    expected, S = generalized_loop(q, k, v, log_decay, read, write, state)
    narrow = [t.float().requires_grad_() for t in (q, k, v, log_decay, read, write, state)]
    y, final = kernels.chunked_generalized_delta_rule(*narrow)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.double(), S, rtol=1e-4, atol=1e-4)
    (y.square().sum() + final.square().sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in narrow)
    assert not torch.isfinite((-log_decay.float()[..., :16, :].cumsum(2)).exp() * 1e10).all()


def test_kernel_passes_gradcheck():
    leaves = [t[:1, :2, :11, :3].clone().requires_grad_() for t in random_inputs(11)[:6]]
    state = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    leaves[2] = torch.randn(1, 2, 11, 4, dtype=torch.float64, requires_grad=True)
    kernel = lambda *args: kernels.chunked_generalized_delta_rule(*args, chunk_size=4)
    assert torch.autograd.gradcheck(kernel, (*leaves, state))


# ----------------------------------------------------------------------------------------------
# the layers against flash-linear-attention's naive references


def fla(module):
    """An fla reference module, or a skip that says why."""
    return pytest.importorskip(module, reason='fla-core is not installed (pip install fla-core)')


pytestmark = pytest.mark.filterwarnings('ignore:Triton is not supported')


def layer_inputs(name, T=37):
    """A float64 layer and its attend's inputs: q, k, v (B, H, T, D) and the gates from a layer input."""
    module = make(name, True)
    q, k, v = (inputs(2, T, 30, seed=s).view(2, T, 2, 15).transpose(1, 2) for s in (1, 2, 3))
    with torch.no_grad():
        gates = module.gates(inputs(2, T, 30, seed=4))
    return module, q, k, v, gates


def test_kda_equals_fla_naive_recurrent_kda():
    """The layer's attend (feature maps, scale, decay floor) against fla's naive_recurrent_kda on the same q, k, v,
    gates: fla takes q and k as they enter the recurrence (its chunk_kda l2-normalises them in the kernel with
    use_qk_l2norm_in_kernel, as Kimi Linear calls it), the log decay g per channel and the scale 1 / sqrt(D) by
    default; its [B, T, H, D] layout."""
    naive = fla('fla.ops.kda.naive')
    module, q, k, v, gates = layer_inputs('kda')
    with torch.no_grad():
        y = module.attend(q, k, v, None, **gates)
    to_fla = lambda t: t.transpose(1, 2)  # (B, H, T, ...) -> (B, T, H, ...)
    unit = lambda x: F.normalize(F.silu(x), dim=-1)
    g = gates['log_alpha'].clamp_min(kernels.MIN_CHANNEL_LOG_DECAY)
    expected, _ = naive.naive_recurrent_kda(to_fla(unit(q)), to_fla(unit(k)), to_fla(F.silu(v)), to_fla(g),
                                            to_fla(gates['beta']))
    torch.testing.assert_close(y, expected.transpose(1, 2).double(), rtol=1e-4, atol=1e-5)


def test_kda_decay_is_flas_kda_gate():
    """log alpha = -exp(A) softplus(x W_down W_up + dt): fla's naive_kda_gate with A_log = log A, dt_bias = dt."""
    gate = fla('fla.ops.kda.gate')
    module = make('kda', True)
    x = inputs(2, 9, 30)
    with torch.no_grad():
        log_alpha = module.gates(x)['log_alpha']  # (B, H, T, D)
        logits = module.decay_up(module.decay_down(x)).view(2, 9, 2, 15)
        expected = gate.naive_kda_gate(logits, module.log_decay_rate, module.step_bias, output_dtype=torch.float64)
    torch.testing.assert_close(log_alpha, expected.transpose(1, 2), rtol=1e-6, atol=1e-7)


def test_rwkv7_equals_fla_dplr_recurrence():
    """The layer's attend against fla's dplr_recurrence, the op fla's chunk_rwkv7 runs, called as fla's RWKV-7
    layer calls it: a = -kappa, b = kappa * a (the learning rate), the log decay gk, then the group norm and the bonus
    term (r . (rho * ktilde)) v. dplr_recurrence scales q by 1 / sqrt(D) (chunk_rwkv7 by 1): q goes in times
    sqrt(D)."""
    naive = fla('fla.ops.generalized_delta_rule.dplr.naive')
    module, q, k, v, gates = layer_inputs('rwkv7')
    with torch.no_grad():
        y = module.attend(q, k, v, None, **gates)
        rate = gates['learning_rate']
        kappa = F.normalize(k * module.removal_key_scale.view(2, 1, 15), dim=-1)
        ktilde = k * (1 + (rate - 1) * module.replacement_key_mix.view(2, 1, 15))
        arguments = (q * math.sqrt(15), ktilde, v, -kappa, kappa * rate, gates['log_decay'])
        wkv, _ = naive.dplr_recurrence(*(t.float() for t in arguments))  # its alpha must come in float32
        bonus = (q * module.bonus_scale.view(2, 1, 15) * ktilde).sum(-1, keepdim=True) * v
        expected = module.group_norm(wkv.double()) + bonus
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the references catch a wrong fast path; the extra parameters


class KDAReadingTheUndecayedState(attention.KimiDeltaAttention):
    """The delta correction read from S_{t-1} before its decay (read = k_t, not alpha_t k_t)."""

    def attend_chunkwise(self, q, k, v, state, beta, log_alpha):
        fq, fk = self.wide_features(q, k, 0)
        key = beta[..., None] * fk
        y, kv = kernels.chunked_generalized_delta_rule(fq, key, F.silu(v), log_alpha, fk, -key,
                                                       None if state is None else state['kv'], self.chunk_size)
        return y, {'kv': kv}


class RWKV7WithoutTheLearningRate(attention.RWKV7Attention):
    """RWKV-7 whose removal ignores the in-context learning rate (a_t = 1 in the transition only)."""

    def attend_chunkwise(self, q, k, v, state, log_decay, learning_rate):
        removal = F.normalize(k * self.per_head(self.removal_key_scale, k), dim=-1)
        replacement = k * (1 + (learning_rate - 1) * self.per_head(self.replacement_key_mix, k))
        wkv, kv = kernels.chunked_generalized_delta_rule(q, replacement, v, log_decay, removal, -removal,
                                                         None if state is None else state['kv'], self.chunk_size)
        bonus = (q * self.per_head(self.bonus_scale, q) * replacement).sum(-1, keepdim=True) * v
        return self.group_norm(wkv) + bonus, {'kv': kv}


@pytest.mark.parametrize('cls', [KDAReadingTheUndecayedState, RWKV7WithoutTheLearningRate],
                         ids=lambda cls: cls.__name__)
def test_reference_catches_a_wrong_transition(monkeypatch, cls):
    monkeypatch.setitem(ATTENTION, 'wrong', cls)
    with pytest.raises(AssertionError, match='test_fast_path_equals_reference'):
        registry_checks('wrong')


def test_extra_parameters():
    """At C = 30, H = 2, D = 15: rwkv7's low ranks are 32 (their floor)."""
    count = lambda name: sum(p.numel() for p in make(name, True).parameters())
    base, C, H, D = count('softmax'), 30, 2, 15
    assert count('kda') == base + C * H + (C * D + D * C + C + H) + D + (C * D + D * C)
    assert count('rwkv7') == base + 2 * (C * 32 + 32 * C + C) + 3 * C + 2 * C + (C * 32 + 32 * C)
