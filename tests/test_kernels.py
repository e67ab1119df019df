"""
The kernels of kernels.py against their naive forms, on shapes and decays the layer tests do not reach: chunk_states
against its recurrence, chunked_linear_attention and its written-out backward against autograd on the (T, T) formula
(and gradcheck), with a decay per token and per key channel, in float64 and, at 16384 tokens, float32; the delta rule
against its token-by-token loop; SegmentedRecompute's backward under autocast. The layers that use them are checked
by test_attention.py.
"""
import math

import pytest
import torch

import kernels


# ----------------------------------------------------------------------------------------------
# chunk_states and the chunkwise kernel


def recurrence(kv, log_decay, state):
    """chunk_states' definition, one chunk at a time: S_0 = state, S_{n+1} = exp(log_decay_n) S_n + kv_n."""
    starts, S = [], state
    for n in range(kv.size(-2)):
        starts.append(S)
        S = log_decay[..., n, None].exp() * S + kv[..., n, :]
    return torch.stack(starts, dim=-2), S


CHUNK_DECAYS = {  # (B|1, H, N) log decays of whole chunks, <= 0
    'none': lambda N, g: torch.zeros(1, 3, N, dtype=torch.float64),
    'retention': lambda N, g: torch.full((1, 3, N), 64 * math.log1p(-2 ** -5), dtype=torch.float64),  # gamma^64
    'jumps': lambda N, g: -60 * (torch.rand(2, 3, N, generator=g, dtype=torch.float64) < 0.1).double(),  # at times
    'strong': lambda N, g: -200 * torch.rand(2, 3, N, generator=g, dtype=torch.float64),  # underflows float32
}


@pytest.mark.parametrize('decay', CHUNK_DECAYS)
@pytest.mark.parametrize('N', [1, 7, 16, 17, 300])
def test_chunk_states_equals_the_recurrence(N, decay):
    """The batched scan against the loop it replaces: one chunk, one group, one group and a chunk (padding), 300
    chunks (three levels of groups); with and without an incoming state. Exact in float64; in float32, as close to
    the float64 recurrence as float32 allows however strong the decay (nothing overflows or turns into nan)."""
    g = torch.Generator().manual_seed(0)
    kv = torch.randn(2, 3, N, 5, generator=g, dtype=torch.float64)
    log_decay = CHUNK_DECAYS[decay](N, g)
    for state in (None, torch.randn(2, 3, 5, generator=g, dtype=torch.float64)):
        expected = recurrence(kv, log_decay, torch.zeros(2, 3, 5, dtype=torch.float64) if state is None else state)
        got = kernels.chunk_states(kv, log_decay, state)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        got = kernels.chunk_states(kv.float(), log_decay.float(), None if state is None else state.float())
        for a, b in zip(got, expected):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def linear_attention_formula(q, k, v, log_decay, state):
    """Causal linear attention with decay on the (T, T) matrix, from its definition, sharing nothing with the chunked
    kernel: with L_if = sum_{t<=i} log_decay_t(f) (a decay per token: the same for every key channel f),
    y_i = sum_{j<=i} sum_f q_if k_jf exp(L_if - L_jf) v_j + sum_f exp(L_if) q_if S_0[f] and the final state
    S[f] = sum_j exp(L_{T-1,f} - L_jf) k_jf v_j + exp(L_{T-1,f}) S_0[f]."""
    T = q.size(2)
    L = (log_decay if log_decay.dim() == 4 else log_decay[..., None]).cumsum(2)  # (B|1, H, T, F|1)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[..., None]
    decay = (L[:, :, :, None] - L[:, :, None, :]).masked_fill(~allowed, float('-inf')).exp()  # (B|1, H, T, T, F|1)
    scores = (q[:, :, :, None, :] * k[:, :, None, :, :] * decay).sum(-1)  # (B, H, T, T)
    y = scores @ v + (q * L.exp()) @ state
    to_end = (L[:, :, -1:] - L).exp()  # (B|1, H, T, F|1)
    return y, (k * to_end).transpose(-2, -1) @ v + L[:, :, -1, :, None].exp() * state


KERNEL_DECAYS = {  # log_decay for B = 2, H = 3, T tokens, F = 5 key channels: None, or <= 0
    'none': lambda T, g: None,
    'per sequence': lambda T, g: -torch.rand(2, 3, T, generator=g, dtype=torch.float64),
    'shared by the batch': lambda T, g: -0.3 * torch.rand(1, 3, T, generator=g, dtype=torch.float64),
    'per key channel': lambda T, g: -torch.rand(2, 3, T, 5, generator=g, dtype=torch.float64),
}


def kernel_mismatches(decay, incoming_state, T=37, chunk_size=8):
    """chunked_linear_attention against linear_attention_formula in float64 (T = 37: the last of the chunks of 8 is
    partial): y, the final state, and the gradients of q, k, v, log_decay and the incoming state of a loss that reads
    both y and the final state. Returns the names of what differs."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, T, 4, generator=g, dtype=torch.float64)
    log_decay = KERNEL_DECAYS[decay](T, g)
    state = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) if incoming_state else None
    y_weight, state_weight = torch.randn(2, 3, T, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    results = []
    for kernel in (kernels.chunked_linear_attention, None):
        leaves = [None if t is None else t.clone().requires_grad_() for t in (q, k, v, log_decay, state)]
        if kernel is None:
            args = leaves[:3] + [torch.zeros(1, 3, T, dtype=torch.float64) if log_decay is None else leaves[3],
                                 torch.zeros(2, 3, 5, 4, dtype=torch.float64) if state is None else leaves[4]]
            y, final = linear_attention_formula(*args)
        else:
            y, final = kernel(*leaves, chunk_size=chunk_size)
        ((y * y_weight).sum() + (final * state_weight).sum()).backward()
        results.append([y, final] + [None if t is None else t.grad for t in leaves])
    names = ('y', 'final state', 'q', 'k', 'v', 'log_decay', 'incoming state')
    return [name for name, a, b in zip(names, *results)
            if a is not None and not torch.allclose(a, b, rtol=1e-9, atol=1e-10)]


@pytest.mark.parametrize('decay', KERNEL_DECAYS)
@pytest.mark.parametrize('incoming_state', [False, True])
def test_chunk_kernel_and_its_gradients_equal_the_formula(decay, incoming_state):
    """ChunkwiseLinearAttention's backward, written out and recomputing, against autograd on the formula."""
    assert kernel_mismatches(decay, incoming_state) == []


def test_chunk_kernel_check_catches_a_backward_that_drops_the_state_gradient(monkeypatch):
    backward = kernels.ChunkwiseLinearAttention.backward
    monkeypatch.setattr(kernels.ChunkwiseLinearAttention, 'backward',
                        staticmethod(lambda ctx, dy, dS: backward(ctx, dy, torch.zeros_like(dS))))
    assert 'log_decay' in kernel_mismatches('per sequence', True)


def test_chunk_kernel_passes_gradcheck():
    """Finite differences against the backward, every input differentiable: T = 11 in chunks of 4, with a decay per
    token and one per key channel, and an incoming state."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 11, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 2, 11, 2, generator=g, dtype=torch.float64, requires_grad=True)
    state = torch.randn(1, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    kernel = lambda *args: kernels.chunked_linear_attention(*args, chunk_size=4)
    for decay_shape in (q.shape[:3], q.shape):  # per token, per token and key channel
        log_decay = (-torch.rand(decay_shape, generator=g, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(kernel, (q, k, v, log_decay, state))


def kept_for_backward(fn, *args):
    """The storages of the tensors autograd keeps for backward while fn(*args) runs."""
    kept = set()

    def pack(t):
        kept.add(t.untyped_storage().data_ptr())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return kept


def test_chunk_kernel_keeps_only_its_inputs_for_backward():
    """No (C, C) scores, per-chunk states or copies live from forward to backward: only q, k, v (contiguous, a whole
    number of chunks: kept as they are), log_decay and the state. Autograd through the formula keeps more."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    log_decay = (-torch.rand(2, 3, 64, generator=g, dtype=torch.float64)).requires_grad_()
    state = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    args = (q, k, v, log_decay, state)
    given = {t.untyped_storage().data_ptr() for t in args}
    assert kept_for_backward(lambda *a: kernels.chunked_linear_attention(*a, chunk_size=8), *args) <= given
    assert not kept_for_backward(linear_attention_formula, *args) <= given


# ----------------------------------------------------------------------------------------------
# a decay per key channel, and the delta rule


def gated_loop(q, k, v, log_decay):
    """S_t = Diag(exp(log_decay_t)) S_{t-1} + k_t^T v_t, y_t = q_t S_t, one token at a time."""
    S = q.new_zeros(q.shape[:2] + (q.size(-1), v.size(-1)))
    outputs = []
    for t in range(q.size(2)):
        S = log_decay[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append((q[:, :, t, None] @ S).squeeze(-2))
    return torch.stack(outputs, dim=2), S


def random_qkv(T, log_decay_scale, seed=0, B=2, H=2, D=5):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    log_decay = -log_decay_scale * torch.rand(B, H, T, D, generator=g, dtype=torch.float64) ** 3  # mostly mild
    return q, k, v, log_decay


@pytest.mark.parametrize('chunk_size,T', [(16, 50), (64, 200), (7, 23), (64, 1)])
def test_per_channel_kernel_equals_the_recurrence(chunk_size, T):
    """Chunks of 16, 16, 7 and 1 tokens (a per-channel decay takes at most 16), a padded last chunk; from a state
    too."""
    q, k, v, log_decay = random_qkv(T, 3.0)
    expected, S = gated_loop(q, k, v, log_decay)
    y, final = kernels.chunked_linear_attention(q, k, v, log_decay, chunk_size=chunk_size)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, S, rtol=1e-10, atol=1e-10)
    if T == 1:
        return
    cut = T // 3
    first, state = kernels.chunked_linear_attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut],
                                                    log_decay[:, :, :cut], chunk_size=chunk_size)
    second, _ = kernels.chunked_linear_attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:],
                                                 log_decay[:, :, cut:], state, chunk_size=chunk_size)
    torch.testing.assert_close(torch.cat([first, second], dim=2), expected, rtol=1e-10, atol=1e-10)


def test_per_channel_kernel_is_safe_in_float32_at_16k():
    """Strong per-channel gates (log decays uniform down to the floor, -8 a token) over 16384 tokens: float32 stays
    finite and as close to the float64 recurrence as float32 allows, its gradients too; splitting the scores as
    (q e^b) . (k e^-b) from the start of a chunk of 64 would overflow."""
    q, k, v, _ = random_qkv(16384, 0.0, B=1, H=1, D=4)
    log_decay = kernels.MIN_CHANNEL_LOG_DECAY * torch.rand(q.shape, generator=torch.Generator().manual_seed(1),
                                                           dtype=torch.float64)
    expected, _ = gated_loop(q, k, v, log_decay)
    inputs = [t.float().requires_grad_() for t in (q, k, v, log_decay)]
    y, _ = kernels.chunked_linear_attention(*inputs)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    y.square().sum().backward()  # and the gradients, against the float64 kernel's (checked against autograd above)
    wide = [t.requires_grad_() for t in (q, k, v, log_decay)]
    kernels.chunked_linear_attention(*wide)[0].square().sum().backward()
    for narrow, exact in zip(inputs, wide):
        assert torch.isfinite(narrow.grad).all()
        torch.testing.assert_close(narrow.grad.double(), exact.grad, rtol=1e-3, atol=1e-3)
    b = log_decay.float()[..., :64, :].cumsum(2)  # within a single chunk of 64
    assert not torch.isfinite((k.float()[..., :64, :] * (-b).exp())).all()


def test_per_channel_kernel_raises_log_decays_below_its_floor():
    """A log decay below MIN_CHANNEL_LOG_DECAY counts as the floor (no overflow, no NaN even at -1000), and its
    gradient is zero there, as for a clamp; the GLA reference applies the same floor."""
    q, k, v, log_decay = random_qkv(40, 3.0)
    strong = log_decay.clone()
    strong[..., ::3, :] = -1000.0
    floored = strong.clamp_min(kernels.MIN_CHANNEL_LOG_DECAY)
    expected, S = gated_loop(q, k, v, floored)
    strong.requires_grad_()
    y, final = kernels.chunked_linear_attention(q, k, v, strong, chunk_size=16)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, S, rtol=1e-10, atol=1e-10)
    y.sum().backward()
    assert (strong.grad[..., ::3, :] == 0).all() and strong.grad.abs().sum() > 0


def delta_loop(q, k, v, beta, log_decay):
    """S_t = a_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t (row layout), y_t = q_t S_t."""
    S = q.new_zeros(q.shape[:2] + (q.size(-1), v.size(-1)))
    outputs = []
    for t in range(q.size(2)):
        kt = k[:, :, t, :, None]
        S = log_decay[:, :, t, None, None].exp() * (S - beta[:, :, t, None, None] * kt @ (kt.transpose(-2, -1) @ S))
        S = S + beta[:, :, t, None, None] * kt * v[:, :, t, None, :]
        outputs.append((q[:, :, t, None] @ S).squeeze(-2))
    return torch.stack(outputs, dim=2)


@pytest.mark.parametrize('dtype,T,scale', [(torch.float64, 100, 1.0), (torch.float32, 4096, 30.0)])
def test_delta_rule_kernel_equals_the_recurrence(dtype, T, scale):
    """Unit keys as the layer feeds it; in float32 with log decays down to -30 a token, finite and close."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, 6, generator=g, dtype=torch.float64) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    beta = torch.rand(1, 2, T, generator=g, dtype=torch.float64)
    log_decay = -scale * torch.rand(1, 2, T, generator=g, dtype=torch.float64) ** 3
    expected = delta_loop(q, k, v, beta, log_decay)
    y, _ = kernels.chunked_delta_rule(*(t.to(dtype) for t in (q, k, v, beta, log_decay)), chunk_size=64)
    assert torch.isfinite(y).all()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(y.double(), expected, rtol=tolerance, atol=tolerance)


# ----------------------------------------------------------------------------------------------
# training in recomputed segments


def test_training_in_segments_recomputes_under_the_forwards_autocast():
    """Backward, run outside the autocast as training loops run it, recomputes each segment under the forward's
    autocast: on a toy recurrence with a bfloat16 matmul, its gradients are those of autograd on the whole sequence
    under the same autocast (recomputed in float32 they would be off by bfloat16's resolution). Compared per token
    (y and q's gradient): W's sums over all tokens, rounded to bfloat16 once or once per segment."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(15, 15, generator=g, requires_grad=True)

    def attend(q, k, v, state):  # y_t = sum_{s<=t} q_s W, the state the running sum
        y = (q @ W).float().cumsum(2) + (0 if state is None else state['sum'][:, :, None])
        return y, {'sum': y[:, :, -1]}
    q, k, v = (torch.randn(2, 3, 50, 15, generator=g, requires_grad=True) for _ in range(3))
    weights = torch.randn(2, 3, 50, 15, generator=g)
    results = []
    for run in (lambda: attend(q, k, v, None)[0], lambda: kernels.attend_in_segments(attend, q, k, v, {}, 16, [W])):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = run()
        q.grad = None
        (y * weights).sum().backward()
        results.append((y, q.grad))
    for whole, segmented in zip(*results):
        torch.testing.assert_close(segmented, whole, rtol=1e-5, atol=1e-5)
