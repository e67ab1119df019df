"""
The softmax-like variants of 2024-25 (sigmoid, diff, fox, stickbreaking) beyond the registry protocol: the blocked
kernel they share against its naive twin and its memory, fla's references where fla-core is installed, the references
catching a fast path with a deliberate mistake, and the details a generic check cannot see (sigmoid's bias, diff's
lambda and head norm). Float64 unless a test is about memory.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attention
import kernels
from attention import ATTENTION
from test_attention import Selection, inputs, make, modes, registry_checks, test_memory_grows_linearly
from test_kernels import kept_for_backward

BLOCKED = Selection(lambda name, cls: [(name, causal) for causal in modes(cls)]
                    if issubclass(cls, attention.BlockedAttention) else [])


def random(*shape, seed):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# kernels.blocked_attention


def weigh_with_bias(bias, causal):
    """A weigh that softmaxes each row of scores plus a per-position bias (a tensor that needs its gradient), keys
    after the query masked when causal: fox's shape of computation."""
    def weigh(scores, first):
        c, K = scores.shape[-2:]
        logits = scores + bias[..., first:first + c, None] - bias[..., None, :K]
        if causal:
            logits = logits.masked_fill(~kernels.causal_mask(c, K, scores.device, offset=first), float('-inf'))
        return torch.softmax(logits, dim=-1)
    return weigh


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('block_size,offset', [(8, 0), (5, 0), (64, 0), (6, 7)])
def test_blocked_attention_equals_its_naive_twin(causal, block_size, offset):
    """Outputs and gradients (q, k, v and a tensor the weights read) of the blocked form equal the weights applied to
    the whole (T, Tk) matrix at once, for blocks that divide T or not, and queries after an offset (decoding)."""
    T = 23
    Tk = offset + T
    q, k, v = random(2, 3, T, 4, seed=1), random(2, 3, Tk, 4, seed=2), random(2, 3, Tk, 6, seed=3)
    bias = random(2, 3, Tk, seed=4)
    results = []
    for blocked in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        weigh = weigh_with_bias(leaves[3], causal)
        if blocked:
            y = kernels.blocked_attention(*leaves[:3], weigh, block_size, causal, offset)
        else:  # the naive twin: one (T, Tk) matrix of weights, queries at offset ..
            y = weigh(leaves[0] @ leaves[1].transpose(-2, -1), offset) @ leaves[2]
        (y * y.detach().cos()).sum().backward()
        results.append([y] + [t.grad for t in leaves])
    for fast, naive, what in zip(*results, ('y', 'q', 'k', 'v', 'bias')):
        torch.testing.assert_close(fast, naive, rtol=1e-12, atol=1e-12, msg=what)


def test_blocked_attention_keeps_only_its_inputs_for_backward():
    """No block's scores or weights live from forward to backward (each block is recomputed); the naive form keeps
    its (T, T) weights."""
    q, k, v = (random(1, 2, 40, 4, seed=s).requires_grad_() for s in (1, 2, 3))
    weigh = lambda scores, first: torch.sigmoid(scores)
    given = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    assert kept_for_backward(lambda: kernels.blocked_attention(q, k, v, weigh, 8, False)) <= given
    assert not kept_for_backward(lambda: weigh(q @ k.transpose(-2, -1), 0) @ v) <= given


@pytest.mark.parametrize('name,causal', BLOCKED)
def test_blocked_variants_memory_grows_linearly(name, causal):
    """No (T, T) matrix, forward or backward: the largest tensor is a block's (c, T) scores."""
    test_memory_grows_linearly(name, causal)


# ----------------------------------------------------------------------------------------------
# fla's references (fla-core, where installed: its pure-PyTorch ops run on CPU)


def heads_last(x):
    return x.transpose(1, 2)  # (B, H, T, D) <-> (B, T, H, D), fla's layout


@pytest.mark.parametrize('n_head,n_kv_head', [(2, 2), (6, 2)])
def test_fox_matches_fla_naive_forgetting_attention(n_head, n_kv_head):
    """fla's naive_forgetting_attn adds the same c_i - c_j (c: cumulative log forget gate); it computes in float32,
    hence the float32 tolerance."""
    naive = pytest.importorskip('fla.ops.forgetting_attn.naive',
                                reason='fla-core is not installed').naive_forgetting_attn
    module = make('fox', True, n_head=n_head, n_kv_head=n_kv_head)
    D = module.head_dim
    q = random(2, n_head, 37, D, seed=1)
    k, v = random(2, n_kv_head, 37, D, seed=2), random(2, n_kv_head, 37, D, seed=3)
    log_forget = F.logsigmoid(random(2, n_head, 37, seed=4) + 2)
    with torch.no_grad():
        ours = module.attend(q, k, v, None, log_forget=log_forget)
        theirs = naive(heads_last(q), heads_last(k), heads_last(v), heads_last(log_forget), scale=D ** -0.5)
    torch.testing.assert_close(ours, heads_last(theirs).double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('n_head,n_kv_head', [(2, 2), (6, 2)])
def test_stickbreaking_matches_fla_naive_stickbreaking_attention(n_head, n_kv_head):
    """fla's naive_stickbreaking_attn (attend_current=False) returns sum_{j<i} A_ij v_j and the remainder apart; trev's
    output is their sum with the remainder on the query's own value. fla keeps float64 inputs in float64."""
    naive = pytest.importorskip('fla.ops.stickbreaking_attn.naive',
                                reason='fla-core is not installed').naive_stickbreaking_attn
    module = make('stickbreaking', True, n_head=n_head, n_kv_head=n_kv_head)
    D = module.head_dim
    q = random(2, n_head, 37, D, seed=1)
    k, v = random(2, n_kv_head, 37, D, seed=2), random(2, n_kv_head, 37, D, seed=3)
    with torch.no_grad():
        ours = module.attend(q, k, v, None)
        output, remainder = naive(heads_last(q), heads_last(k), heads_last(v), scale=D ** -0.5)
    own_value = module.repeat_kv(v)
    torch.testing.assert_close(ours, heads_last(output) + heads_last(remainder)[..., None] * own_value,
                               rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# the references catch a fast path with a deliberate mistake


class SigmoidWithoutBias(attention.SigmoidAttention):
    def weigh(self, scores, first, pad_mask=None):
        return torch.sigmoid(self.wide_scores(scores)).masked_fill(~self.allowed(scores, first, pad_mask), 0)


class ForgetGateOneTokenLate(attention.ForgettingAttention):
    """Decays by the gates of tokens j .. i - 1 instead of j + 1 .. i."""

    def weigh(self, scores, first, cumulative):
        return super().weigh(scores, first, F.pad(cumulative, (1, 0))[..., :-1])


class StickBreakingWithoutRemainder(attention.StickBreakingAttention):
    def weigh(self, scores, first, pad_mask=None):
        weights = super().weigh(scores, first, pad_mask)
        c, K = weights.shape[-2:]
        return weights.masked_fill(first + torch.arange(c)[:, None] == torch.arange(K), 0)  # nothing on v_i


class StickBreakingFarthestFirst(attention.StickBreakingAttention):
    """Breaks the stick from the first key onwards instead of from the nearest."""

    def weigh(self, scores, first, pad_mask=None):
        z = self.wide_scores(scores)
        c, K = z.shape[-2:]
        query, key = first + torch.arange(c)[:, None], torch.arange(K)
        earlier = key < query
        log_left = F.logsigmoid(-z).masked_fill(~earlier, 0)
        before = log_left.cumsum(-1) - log_left  # sum over l < j
        weights = (F.logsigmoid(z) + before).exp().masked_fill(~earlier, 0)
        return torch.where(key == query, log_left.sum(-1, keepdim=True).exp(), weights)


class DiffWithoutLambdaInit(attention.DifferentialAttention):
    def difference_weight(self):
        return super().difference_weight() - self.lambda_init


@pytest.mark.parametrize('cls', [SigmoidWithoutBias, ForgetGateOneTokenLate, StickBreakingWithoutRemainder,
                                 StickBreakingFarthestFirst, DiffWithoutLambdaInit], ids=lambda cls: cls.__name__)
def test_reference_catches_a_wrong_fast_path(monkeypatch, cls):
    monkeypatch.setitem(ATTENTION, 'wrong', cls)
    with pytest.raises(AssertionError, match='test_fast_path_equals_reference'):
        registry_checks('wrong')


# ----------------------------------------------------------------------------------------------
# what the references share with the fast path: sigmoid's bias, diff's lambda and norm


@pytest.mark.parametrize('causal', [True, False])
def test_sigmoid_bias_is_minus_log_of_the_training_length(causal):
    """b = -log n, n = block_size: with q = k = 0 every allowed weight is sigmoid(b) = 1 / (1 + n)."""
    module = make('sigmoid', causal, block_size=50)
    assert module.score_bias == -math.log(50)
    zero, v = torch.zeros(1, 2, 9, 15, dtype=torch.float64), random(1, 2, 9, 15, seed=1)
    expected = (v.cumsum(2) if causal else v.sum(2, keepdim=True)) / 51  # each allowed key's value, weighed 1 / 51
    torch.testing.assert_close(module.attend(zero, zero, v, None), expected.expand_as(v), rtol=1e-12, atol=1e-12)


def test_diff_lambda_and_head_norm_follow_the_paper():
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + 0.8, the vectors as wide as their halves of q and k (8 and 7 for
    D = 15), and the head norm is 0.2 RMSNorm (eps 1e-5)."""
    module = make('diff', True)
    assert (module.lambda_q1.numel(), module.lambda_q2.numel()) == (8, 7)
    dot = lambda a, b: sum(x * y for x, y in zip(a.tolist(), b.tolist()))
    expected = (math.exp(dot(module.lambda_q1, module.lambda_k1)) - math.exp(dot(module.lambda_q2, module.lambda_k2))
                + 0.8)
    assert abs(module.difference_weight().item() - expected) < 1e-12
    y = random(2, 2, 5, 15, seed=1)
    rms = y.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(module.head_norm(y), 0.2 * y / rms * module.head_norm.weight, rtol=1e-12, atol=1e-12)


def test_diff_refuses_a_head_of_one_channel():
    with pytest.raises(ValueError, match='head dim n_embd / n_head = 1 must be at least 2'):
        make('diff', True, n_embd=2, n_head=2)


def test_extra_parameters_of_the_softmax_like_variants():
    counts = {name: sum(p.numel() for p in make(name, True).parameters())
              for name in ('softmax', 'sigmoid', 'diff', 'fox', 'stickbreaking')}
    base, C, H, D = counts['softmax'], 30, 2, 15
    assert counts['sigmoid'] == counts['stickbreaking'] == base
    assert counts['diff'] == base + 2 * D + D  # the four lambda vectors, the head norm
    assert counts['fox'] == base + C * H + H   # the forget gate
