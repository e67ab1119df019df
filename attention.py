"""
Every attention variant in trev, behind one interface, plus the transformer block they all share.

Interface:
    attn = build_attention(config)            # config.attention names a class in ATTENTION
    y = attn(x, pad_mask=None)                # x, y: (B, T, C); pad_mask: (B, T) bool, True = padding
    y, state = attn.step(x, state=None)       # causal only: continue from state with T >= 1 new tokens; a state
                                              # is never changed, so it can be continued more than once

Inside attention every tensor is laid out (B, H, T, D), as in SDPA. Each variant has
    attend(q, k, v, pad_mask)                 # the fast path, (B, H, T, D) -> (B, H, T, D)
    attend_reference(q, k, v, pad_mask)       # the paper's formula on the (T, T) score matrix, written
                                              # out directly: it shares no helper with the fast path
and causal variants also have
    attend_step(q, k, v, state)               # decoding: the tokens after state -> (y, new_state)
A variant whose gates or step sizes depend on the input (gla, deltanet, gated_deltanet, gated rfa) computes them
from the layer input x in gates(x) -> dict, which forward and step pass to these three methods as keyword arguments
(attend(q, k, v, pad_mask, **gates)): one extension of the interface for every such variant, none for the others.
LayerConfig.short_conv puts a depthwise causal convolution (ShortConvolution) on q, k and v of any variant.
The linear-attention family (KernelAttention) computes its causal forward and its decoding with one
chunkwise method, attend_chunkwise(q, k, v, state) -> (y, new_state): attend runs it from state None and
attend_step delegates to it. In training, a causal sequence longer than LayerConfig.recompute_segment goes through
it segment by segment, each recomputed in backward (SegmentedRecompute): only q, k, v and the gates are kept.
pad_mask is for bidirectional attention only; a causal batch puts its padding at the end.
Under autocast (bfloat16 or float16) the linear family computes its positions, angles, feature exponents, decays,
chunk states and normalisers in float32 (KernelAttention); the projections, softmax attention and, in bfloat16, the
matmuls within a chunk run in the autocast dtype.
tests/test_attention.py checks every registered class against its reference, decoding against the parallel
forward, causality, padding and determinism; tests/test_precision.py checks it under bfloat16 and float16 autocast
against float64, and under torch.compile against eager.

All variants share the q/k/v projection (`qkv`) and the output projection (`proj`); dropout is applied
to the attention output in every variant (no variant drops attention weights), so regularisation is the
same whatever the attention. Parameters a variant adds (retention's gate and group norm, norm_linear's
output norm) are its own and show up in the parameter count.
"""
import math
import weakref
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LayerConfig:
    attention: str = 'softmax'    # a name in ATTENTION
    n_embd: int = 256
    n_head: int = 4
    causal: bool = True
    block_size: int = 256         # longest sequence the model sees (cosformer's M comes from it)
    dropout: float = 0.0
    bias: bool = False            # bias in linear layers and LayerNorm
    norm: str = 'layernorm'       # 'layernorm', 'rmsnorm' or 'scalenorm': the block's norms
    norm_position: str = 'pre'    # 'pre': x + f(norm(x)) (GPT-2); 'post': norm(x + f(x)) (Vaswani et al. 2017)
    mlp_ratio: int = 4
    chunk_size: int = 64          # chunk length of the chunkwise-parallel linear-attention kernel
    local_window: int = 128       # local: keys per query (causal: this token and the w-1 before it)
    performer_features: int = 256 # performer: number of random features m
    performer_redraw_interval: int = 1000  # performer: new random features every this many training steps (0 = never)
    short_conv: int = 0           # every variant: kernel size of a depthwise causal convolution on q, k, v; 0 = off
    rfa_features: int = 128       # rfa: random directions m (each gives a sine and a cosine feature)
    rfa_gate: bool = True         # rfa: gated RFA in causal mode (a learned per-token decay of the state)
    rfa_normaliser_floor: float = 0.1  # rfa: the normaliser is clamped to at least this (its estimate can be <= 0)
    based_feature_dim: int = 16   # based: q and k projected to this many dims before the Taylor feature map
    recompute_segment: int = 1024 # linear family, causal training: longer sequences backpropagate in segments of
                                  # this many tokens, each recomputed (SegmentedRecompute); 0 = never


# ----------------------------------------------------------------------------------------------
# shared kernels


def masked_softmax_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(D)) v over the keys where `allowed` is True (broadcast to (..., Tq, Tk)).
    A row with no allowed key averages over all keys instead of producing NaN (only padding rows)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (..., Tq, Tk)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v


def causal_mask(t_query, t_key, device, offset=0):
    """(t_query, t_key) bool, True where key j may be seen by query i, query i sitting at offset + i."""
    i = torch.arange(t_query, device=device)[:, None] + offset
    j = torch.arange(t_key, device=device)[None, :]
    return j <= i


def cast(x, dtype):
    """x in dtype: x itself where it already is (even a no-op .to() costs a dispatch, a dozen times a decoded token)."""
    return x if x.dtype == dtype else x.to(dtype)


def wide_dtype(x):
    """The dtype of sums over the sequence: x's, but at least float32 (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def full_precision(x):
    """A context with autocast off on x's device: inside it, every op keeps its inputs' dtypes. (Entering an
    autocast context costs more than a small op: none where autocast is off already.)"""
    device = x.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()


def wide_linear(linear, x):
    """linear(x) in float32 at least (float64 stays float64), autocast off: for the small projections that make
    decays and step sizes, whose rounding compounds over the sequence (a bfloat16 logit is 0.4% off)."""
    wide = wide_dtype(x)
    with full_precision(x):
        bias = None if linear.bias is None else cast(linear.bias, wide)
        return F.linear(cast(x, wide), cast(linear.weight, wide), bias)


def chunk_states(kv, log_decay, state, group=16):
    """The recurrence across chunks, with no loop over them: S_0 = state (None: zero), S_{n+1} = a_n S_n + kv_n,
    a_n = exp(log_decay_n) <= 1. kv: (..., N, M), each chunk's contribution; log_decay: (..., N) (leading dims
    broadcast against kv's); state: None or (..., M). Returns the states entering chunks 0 .. N-1, (..., N, M),
    and the state after the last, (..., M).

    Unrolled, S_n = sum_{m<n} exp(sum_{m<t<n} log_decay_t) kv_m + exp(sum_{t<n} log_decay_t) S_0: an (N + 1, N)
    lower-triangular matrix of decays times kv. Each exponent is a sum of log decays <= 0, summed as it is (not as a
    difference of running sums, which would lose precision as they grow), so nothing overflows however strong the
    decay (a factor below float32's range underflows to the 0 it nearly is). Up to G = `group` chunks that matrix
    is applied as it is; beyond, chunks go in groups of G: each group's states from zero (the matrix, its last row
    the group's total), then the states entering the groups (this function on the totals, recursively), added to
    each chunk decayed. Work O(N G M), recursion depth log_G(N), memory O(N M): a few batched ops per level, where a
    loop over chunks would launch a few ops per chunk (on a GPU, launch-bound).
    """
    N = kv.size(-2)
    if N == 1:  # one chunk (a decoding step): the recurrence itself, without the matrix
        starts = torch.zeros_like(kv) if state is None else state[..., None, :]
        final = kv[..., 0, :] if state is None else torch.addcmul(kv[..., 0, :], log_decay.exp(), state)
        return starts, final
    if N <= group:
        below = torch.ones(N + 1, N, dtype=torch.bool, device=kv.device).tril(-1)  # [n, t]: t < n
        terms = log_decay[..., None, :].masked_fill(~below, 0)  # (..., N + 1, N): row n holds log_decay_t, t < n
        after = F.pad(terms.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))  # [n, m]: sum_{m<t<n} log_decay_t
        weights = after.masked_fill(~below, float('-inf')).exp()            # (..., N + 1, N)
        states = weights @ kv  # (..., N + 1, M)
        if state is not None:
            from_start = terms.sum(-1).exp()  # (..., N + 1): exp(sum_{t<n} log_decay_t)
            states = torch.addcmul(states, from_start[..., None], state[..., None, :])
        starts, final = states.split([N, 1], dim=-2)  # split, not two slices: one copy in backward, not two
        return starts, final.squeeze(-2).clone()  # its own memory: a view would keep all the states alive
    P = -(-N // group)
    if P * group > N:  # chunks with nothing in them and no decay, at the end, change nothing
        kv = F.pad(kv, (0, 0, 0, P * group - N))
        log_decay = F.pad(log_decay, (0, P * group - N))
    kv = kv.unflatten(-2, (P, group))                # (..., P, G, M)
    log_decay = log_decay.unflatten(-1, (P, group))  # (..., P, G)
    local, totals = chunk_states(kv, log_decay, None, group)                 # each group from zero
    entering, final = chunk_states(totals, log_decay.sum(-1), state, group)  # (..., P, M)
    into = F.pad(log_decay[..., :-1].cumsum(-1), (1, 0)).exp()              # group start to chunk, (..., P, G)
    # local + into * entering as one batched (G, 1) @ (1, M) product: its backward reduces over G in a matmul
    # rather than materialising the (G, M) product first
    shape = local.shape
    starts = torch.baddbmm(local.reshape(-1, group, shape[-1]), into.expand(shape[:-1]).reshape(-1, group, 1),
                           entering.reshape(-1, 1, shape[-1])).view(shape)
    return starts.flatten(-3, -2)[..., :N, :], final


def chunked_linear_attention(q, k, v, log_decay=None, state=None, chunk_size=64):
    """Causal linear attention, chunkwise-parallel, with an optional decay per token or per token and key channel:
    y_i = sum_{j<=i} sum_f q_if k_jf a_{j+1..i,f} v_j + sum_f q_if a_{1..i,f} S_0[f], a_{j+1..i,f} =
    exp(sum_{t=j+1}^{i} log_decay_tf) (1 without decay; one value for every f with a decay per token), S_0 the
    incoming state: the recurrence S_t = Diag(exp(log_decay_t)) S_{t-1} + k_t^T v_t, y_t = q_t S_t.

    q, k: (B, H, T, F) feature-mapped queries/keys; v: (B, H, T, E); log_decay: None, (B|1, H, T) (per token) or
    (B, H, T, F) (per token and key channel, as GLA's), <= 0; state: None or (B, H, F, E). Returns y (B, H, T, E)
    and the state after the last token (B, H, F, E).
    Within a chunk of C tokens a masked (C, C) matmul; across chunks the states entering each chunk, from
    chunk_states (batched, no loop over chunks), each applied to its chunk's queries. A per-channel decay takes
    chunks of at most CHANNEL_DECAY_CHUNK (16) tokens and log decays of at least MIN_CHANNEL_LOG_DECAY (-8) a token
    (lower ones are raised to it, with no gradient: a channel that keeps exp(-8) = 0.03% of its state a token; see
    chunk_decays).
    Time O(T C (F + E) + T F E + (T / C) G F E) with G = chunk_states' group (16), memory O(T C + (T / C) F E):
    no (T, T), no (T, F, E) and no (C, C, F) tensor. Backward (ChunkwiseLinearAttention) about 1.4x the forward's
    matmuls, as it recomputes the (C, C) scores and the chunk states instead of keeping them: between forward and
    backward only q, k, v (in chunks), log_decay and state are kept.
    Precision: decays, chunk contributions, states, the inter-chunk product and y are computed in float32 (float64
    inputs stay float64) whatever the inputs' dtype or autocast: these are sums over the whole sequence. Only the
    two intra-chunk matmuls (four in backward) run in bfloat16 when v comes in bfloat16 (bfloat16 autocast, or a
    bfloat16 model): bfloat16 has float32's range, while a chunk's sum of positive scores (a normaliser) can pass
    float16's 65504.
    """
    C = min(chunk_size, q.size(2))
    if log_decay is not None and log_decay.dim() == 4:
        C = min(C, CHANNEL_DECAY_CHUNK)
        log_decay = log_decay.clamp_min(MIN_CHANNEL_LOG_DECAY)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, log_decay, state)):
        return ChunkwiseLinearAttention.apply(q, k, v, log_decay, state, C)
    # no gradient wanted (decoding, evaluation): the same forward, without an autograd Function's overhead per call
    return ChunkwiseLinearAttention.attend(*(in_chunks(t, C) for t in (q, k, v)), log_decay, state, q.size(2))


CHANNEL_DECAY_CHUNK = 16      # chunk length of chunked_linear_attention with a decay per key channel
MIN_CHANNEL_LOG_DECAY = -8.0  # ... and the lowest log decay a token it takes: factors up to exp(8 x 8) = 6e27


def in_chunks(x, C):
    """(B, H, T, X) -> (B, H, N, C, X), N = ceil(T / C), contiguous (one copy where x is not), zero-padded at the
    end: zero queries, keys, values and log-decays after the last token change nothing before it."""
    pad = -x.size(2) % C
    return (F.pad(x, (0, 0, 0, pad)) if pad else x).unflatten(2, (-1, C)).contiguous()


class ChunkDecays(NamedTuple):
    """The decay factors of chunks of C tokens (chunk_decays), from b_i = the sum of the log decays from the chunk's
    first token to token i, and b_C over the whole chunk; n: 1 for a decay per token, F for one per key channel."""
    within: torch.Tensor          # what multiplies the (C, C) scores q_i . k_j: exp(b_i - b_j) for j <= i and 0
                                  # above (B|1, H, N, C, C) for a decay per token; the causal (C, C) mask otherwise
    q_within: torch.Tensor        # per channel: exp(b_i - r) and exp(r - b_j) (B, H, N, C, F), r = b at the chunk's
    k_within: torch.Tensor        # middle, which scale q and k before their product; None otherwise
    from_start: torch.Tensor      # exp(b_i) (B|1, H, N, C, n): the incoming state's decay to token i
    to_end: torch.Tensor          # exp(b_C - b_j) (B|1, H, N, C, n): token j's decay to the chunk's end
    chunk_log_decay: torch.Tensor  # b_C: (B|1, H, N) per token, (B, H, N, F) per channel

    @property
    def per_channel(self):
        return self.q_within is not None


def chunk_decays(log_decay, C, N, like):
    """The ChunkDecays of log_decay (None, (B|1, H, T) or (B, H, T, F)) in chunks of C, in like's dtype. Without
    decay: the causal mask, None for the factors and zeros (N,) for chunk_log_decay.
    A decay per channel cannot weigh the scores after the product over channels; the (C, C, F) weights would cost
    C times q's size. Instead, q_i exp(b_i - r) . k_j exp(r - b_j) has the product exp(b_i - b_j) <= 1 in each
    channel, and a reference r in the chunk's middle keeps each factor's exponent within C / 2 log decays: with
    C <= 16 and log decays >= -8 (chunked_linear_attention), at most 64, so no factor overflows (a key's exp(r - b_j)
    for j after i, masked out, included). The kernel's only place that reads log_decay."""
    mask = causal_mask(C, C, like.device)
    if log_decay is None:
        return ChunkDecays(mask, None, None, None, None, like.new_zeros(N))
    if log_decay.dim() == 4:  # per channel
        b = in_chunks(cast(log_decay, like.dtype), C).cumsum(3)  # (B, H, N, C, F)
        r = b[..., (C - 1) // 2, None, :]                          # (B, H, N, 1, F)
        return ChunkDecays(mask, (b - r).exp(), (r - b).exp(), b.exp(), (b[..., -1:, :] - b).exp(), b[..., -1, :])
    b = F.pad(cast(log_decay, like.dtype), (0, N * C - log_decay.size(-1))).unflatten(-1, (N, C)).cumsum(-1)
    within = (b[..., :, None] - b[..., None, :]).masked_fill_(~mask, float('-inf')).exp_()  # (B|1, H, N, C, C)
    return ChunkDecays(within, None, None, b[..., None].exp(), (b[..., -1:] - b)[..., None].exp(), b[..., -1])


def weigh_within(scores, within):
    """scores (B, H, N, C, C) times ChunkDecays.within (the causal mask, or the decay weights), in place."""
    return scores.masked_fill_(~within, 0) if within.dtype == torch.bool else scores.mul_(within)


def scaled(x, factor):
    """x * factor, or x where the factor is None."""
    return x if factor is None else x * factor


def states_across_chunks(kv, chunk_log_decay, state, reverse=False):
    """chunk_states on each chunk's (F, E) contribution kv (B, H, N, F, E) with ChunkDecays.chunk_log_decay (one
    factor per chunk, or one per row f of the state: the F rows as a batch dimension); state None or (B, H, F, E).
    reverse: from the last chunk to the first (backward's recurrence of the states' gradient). Returns the states
    entering each chunk, (B, H, N, F, E) (reverse: leaving it), and the one after the last (reverse: the first)."""
    B, H, N, Fd, E = kv.shape
    per_row = chunk_log_decay.dim() == 4
    if reverse:
        kv, chunk_log_decay = kv.flip(2), chunk_log_decay.flip(-2 if per_row else -1)
    if per_row:
        starts, final = chunk_states(kv.transpose(2, 3).contiguous(), chunk_log_decay.transpose(2, 3), state)
        starts = starts.transpose(2, 3).contiguous()
    else:
        starts, final = chunk_states(kv.flatten(-2), chunk_log_decay, None if state is None else state.flatten(-2))
        starts, final = starts.view(kv.shape), final.view(B, H, Fd, E)
    return starts.flip(2) if reverse else starts, final


class ChunkwiseLinearAttention(torch.autograd.Function):
    """chunked_linear_attention's forward, and its backward written out: nothing but the inputs is kept for
    backward, which recomputes the (C, C) scores (one matmul) and the chunk states (one matmul and chunk_states),
    each when it needs them, so that no (C, C) tensor or per-chunk state outlives the forward and at most two are
    held at once in backward. Autograd on the forward would keep every chunk's scores, states and copies.

    Per chunk (rows i, j; b, W = within, Q = q_within, K = k_within, exp(b) = from_start, exp(b_C - b) = to_end as in
    ChunkDecays; without a decay per channel Q = K = 1), with S_n the state entering chunk n, A = ((Q q) (K k)^T) * W
    and G_n the gradient of the loss with respect to S_n:
        forward   y = A v + (exp(b) q) S_n               S_{n+1} = exp(b_C) S_n + (exp(b_C - b) k)^T v
        backward  G_N = the final state's gradient, G_n = exp(b_C) G_{n+1} + (exp(b) q)^T dy: chunk_states run from
                  the last chunk to the first, G_0 the incoming state's gradient
                  dA = (dy v^T) * W
                  dq = Q (dA (K k)) + exp(b) (dy S_n^T)     dk = K (dA^T (Q q)) + exp(b_C - b) (v G_{n+1}^T)
                  dv = A^T dy + (exp(b_C - b) k) G_{n+1}
                  dL/db_i = q_i dq_i - k_i dk_i (summed over the channels for a decay per token), plus <G_{n+1},
                  S_{n+1}> (its rows f, per channel) at the chunk's last token: every factor exp(b_i - b_j), exp(b_i),
                  exp(b_C - b_j) scales a row of q or k, or a channel of it; r cancels in A, so it has no gradient.
                  dL/dlog_decay_t = the sum of dL/db_i over the chunk's tokens i >= t.
    A decay per token scales whole rows: there, exp(b) and exp(b_C - b) go on the narrower side of each product
    (exp(b) (q S_n) = (exp(b) q) S_n). tests/test_attention.py checks it against autograd on the plain formula in
    float64, and with gradcheck.
    """

    @staticmethod
    def forward(ctx, q, k, v, log_decay, state, C):
        T = q.size(2)
        q, k, v = (in_chunks(t, C) for t in (q, k, v))
        ctx.save_for_backward(q, k, v, log_decay, state)
        ctx.T = T
        return ChunkwiseLinearAttention.attend(q, k, v, log_decay, state, T)

    @staticmethod
    def attend(q, k, v, log_decay, state, T):
        """The forward on q, k, v in chunks (B, H, N, C, .) from in_chunks, in their own dtypes, of which the first T
        tokens are real -> (y (B, H, T, E), the final state (B, H, F, E))."""
        B, H, N, C, Fd = q.shape
        wide = wide_dtype(q)
        low = torch.bfloat16 if v.dtype == torch.bfloat16 else wide  # the intra-chunk matmuls' dtype
        with full_precision(q):
            q, k, v_wide = cast(q, wide), cast(k, wide), cast(v, wide)
            decays = chunk_decays(log_decay, C, N, q)
            if decays.per_channel:
                starts, S = states_across_chunks((k * decays.to_end).transpose(-2, -1) @ v_wide,
                                                 decays.chunk_log_decay, state)
                y = (q * decays.from_start) @ starts  # inter-chunk part, (B, H, N, C, E)
            else:
                starts, S = states_across_chunks(k.transpose(-2, -1) @ scaled(v_wide, decays.to_end),
                                                 decays.chunk_log_decay, state)
                y = q @ starts
                if decays.from_start is not None:
                    y.mul_(decays.from_start)
            del starts, v_wide
            scores = cast(scaled(q, decays.q_within), low) @ cast(scaled(k, decays.k_within), low).transpose(-2, -1)
            y += weigh_within(scores, decays.within) @ cast(v, low)  # intra-chunk part, (B, H, N, C, C) scores
        return y.flatten(2, 3)[:, :, :T], S

    @staticmethod
    def backward(ctx, dy, dS):
        q, k, v, log_decay, state = ctx.saved_tensors
        B, H, N, C, Fd = q.shape
        T = ctx.T
        dtypes = q.dtype, k.dtype, v.dtype
        wide = wide_dtype(q)
        low = torch.bfloat16 if v.dtype == torch.bfloat16 else wide
        with full_precision(q):
            q, k, v, dy = cast(q, wide), cast(k, wide), cast(v, wide), cast(in_chunks(dy, C), wide)
            decays = chunk_decays(log_decay, C, N, q)
            per_channel = decays.per_channel
            # across chunks first, while dk and dv do not exist yet: the states, recomputed, give dq; then G_{n+1}
            # from the reverse recurrence gives dk and dv
            if per_channel:
                q_start, k_end = q * decays.from_start, k * decays.to_end
                starts, S = states_across_chunks(k_end.transpose(-2, -1) @ v, decays.chunk_log_decay, state)
                dq = (dy @ starts.transpose(-2, -1)).mul_(decays.from_start)  # (B, H, N, C, F)
                to_state = q_start.transpose(-2, -1) @ dy  # each chunk's (exp(b) q)^T dy, (B, H, N, F, E)
            else:
                dy_start, v_end = scaled(dy, decays.from_start), scaled(v, decays.to_end)
                starts, S = states_across_chunks(k.transpose(-2, -1) @ v_end, decays.chunk_log_decay, state)
                dq = dy_start @ starts.transpose(-2, -1)
                to_state = q.transpose(-2, -1) @ dy_start
                del dy_start
            after = None  # the states after each chunk, S_{n+1}, for the decay's gradient
            if ctx.needs_input_grad[3]:
                after = torch.cat([starts[:, :, 1:], S[:, :, None]], dim=2)  # (B, H, N, F, E)
            del starts, S
            G, d_state = states_across_chunks(to_state, decays.chunk_log_decay, dS, reverse=True)  # G_{n+1}
            del to_state
            if per_channel:
                dk = (v @ G.transpose(-2, -1)).mul_(decays.to_end)  # (B, H, N, C, F)
                dv = k_end @ G  # (B, H, N, C, E)
            else:
                dk = v_end @ G.transpose(-2, -1)
                dv = scaled(k, decays.to_end) @ G
                del v_end
            # within chunks, the scores recomputed: dv += A^T dy, then dA = (dy v^T) * W gives dq and dk
            q_in, k_in = scaled(q, decays.q_within), scaled(k, decays.k_within)
            q_low, k_low, v_low, dy_low = (cast(t, low) for t in (q_in, k_in, v, dy))
            scores = weigh_within(q_low @ k_low.transpose(-2, -1), decays.within)  # A, (B, H, N, C, C)
            add_matmul(dv, scores.transpose(-2, -1), dy_low)
            del scores
            d_scores = weigh_within(dy_low @ v_low.transpose(-2, -1), decays.within)  # dA
            if per_channel:
                dq.addcmul_(cast(d_scores @ k_low, wide), decays.q_within)
                dk.addcmul_(cast(d_scores.transpose(-2, -1) @ q_low, wide), decays.k_within)
            else:
                add_matmul(dq, d_scores, k_low)
                add_matmul(dk, d_scores.transpose(-2, -1), q_low)
            del d_scores
            d_log_decay = None
            if after is not None:
                d_b = q * dq - k * dk  # (B, H, N, C, F)
                d_end = (G * after).sum(-1)  # (B, H, N, F)
                if not per_channel:
                    d_b, d_end = d_b.sum(-1, keepdim=True), d_end.sum(-1, keepdim=True)
                d_b[..., -1, :] += d_end
                d_log_decay = d_b.flip(3).cumsum(3).flip(3).flatten(2, 3)[:, :, :T]  # (B, H, T, F or 1)
                d_log_decay = (d_log_decay if per_channel else d_log_decay.squeeze(-1)).sum_to_size(log_decay.shape)
        grads = (cast(g.flatten(2, 3)[:, :, :T], dtype) for g, dtype in zip((dq, dk, dv), dtypes))
        return (*grads, d_log_decay, None if state is None else cast(d_state.view(state.shape), state.dtype), None)


def add_matmul(out, a, b):
    """out += a @ b in place for (B, H, N, ., .) tensors: one baddbmm_, no product tensor, where a and b come in
    out's dtype (otherwise, in bfloat16 within chunks, their product is added)."""
    if a.dtype != out.dtype:
        return out.add_(a @ b)
    return out.view(-1, *out.shape[-2:]).baddbmm_(a.flatten(0, 2), b.flatten(0, 2))


def chunked_delta_rule(q, k, v, beta, log_decay=None, state=None, chunk_size=64):
    """The (gated) delta rule, chunkwise: S_t = a_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, y_t = q_t S_t
    (S maps keys to values, (F, E); a_t = exp(log_decay_t), 1 without decay), as in Yang et al. 2024
    (arXiv:2406.06484, arXiv:2412.06464) in the row-vector layout.

    q, k: (B, H, T, F); v: (B, H, T, E); beta, log_decay: (B, H, T); state: None or (B, H, F, E). Returns y
    (B, H, T, E) and the state after the last token.
    Writing S_t = a_t S_{t-1} + k_t^T d_t, the new information d_t = beta_t (v_t - a_t k_t S_{t-1}) of a chunk
    satisfies (I + A) D = diag(beta) V - diag(beta exp(b)) K S_0 with A_ij = beta_i exp(b_i - b_j) k_i . k_j for
    j < i (b: log decay summed from the chunk start, S_0: the state entering the chunk). The UT transform solves
    that unit lower-triangular system once per chunk, all chunks at once: D = U - W S_0 with U = (I + A)^-1 beta V,
    W = (I + A)^-1 beta exp(b) K. Then y_i = exp(b_i) q_i S_0 + sum_{j<=i} exp(b_i - b_j) (q_i . k_j) d_j and
    S_C = exp(b_C) S_0 + sum_j exp(b_C - b_j) k_j^T d_j. Every exponent is <= 0. The state's transition across a
    chunk is a full (F, F) matrix, so the chunks' states follow one another in a loop over chunks (T / C steps of
    two (C, F) x (F, E) products), not over tokens.
    Time O(T C (F + E + C) + T F E), memory O(T (C + F + E) + (T / C) F E), in float32 at least.
    """
    B, H, T, Fd = q.shape
    E = v.size(-1)
    C = min(chunk_size, T)
    pad = -T % C
    wide = wide_dtype(q)
    with full_precision(q):
        q, k, v, beta = (cast(t, wide) for t in (q, k, v, beta))
        log_decay = torch.zeros_like(beta) if log_decay is None else cast(log_decay, wide)
        if pad:  # zero keys, beta = 0 and no decay at the end: no change to the state
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            beta, log_decay = F.pad(beta, (0, pad)), F.pad(log_decay, (0, pad))
        N = (T + pad) // C
        q, k, v = q.view(B, H, N, C, Fd), k.view(B, H, N, C, Fd), v.view(B, H, N, C, E)
        beta = beta.view(B, H, N, C, 1)
        b = log_decay.reshape(B, H, N, C).cumsum(-1)  # (B, H, N, C)
        inside = causal_mask(C, C, q.device)
        decay = (b[..., :, None] - b[..., None, :]).masked_fill(~inside, float('-inf')).exp()  # exp(b_i - b_j), j <= i
        A = (k @ k.transpose(-2, -1)) * decay * beta  # (B, H, N, C, C); only j < i is read (unitriangular)
        U = torch.linalg.solve_triangular(A, beta * v, upper=False, unitriangular=True)  # (B, H, N, C, E)
        W = torch.linalg.solve_triangular(A, beta * b[..., None].exp() * k, upper=False, unitriangular=True)
        chunk_decay = b[..., -1:].exp()                                  # (B, H, N, 1)
        k_to_end = k * (b[..., -1:] - b)[..., None].exp()                # (B, H, N, C, F)
        S = q.new_zeros(B, H, Fd, E) if state is None else cast(state, wide)
        starts, news = [], []
        # unbind, not U[:, :, n]: each index's backward would write its gradient into a zero tensor of U's whole
        # size, N times over (quadratic in T); unbind's backward stacks the N pieces once
        for U_n, W_n, decay_n, k_n in zip(U.unbind(2), W.unbind(2), chunk_decay.unbind(2), k_to_end.unbind(2)):
            starts.append(S)
            new = U_n - W_n @ S  # d_j of chunk n, (B, H, C, E)
            news.append(new)
            S = decay_n[..., None] * S + k_n.transpose(-2, -1) @ new
        starts, news = torch.stack(starts, dim=2), torch.stack(news, dim=2)  # (B, H, N, F, E), (B, H, N, C, E)
        y = (q * b[..., None].exp()) @ starts + ((q @ k.transpose(-2, -1)) * decay) @ news
    return y.reshape(B, H, N * C, E)[:, :, :T], S


class SegmentedRecompute(torch.autograd.Function):
    """Training a causal recurrent layer on a long sequence in segments of S tokens, keeping only its inputs:
    attend(q, k, v, state, **gates) -> (y, state) (a variant's chunkwise form, which continues from any state) runs
    over the segments in order, each from the state the one before left, without autograd; the states entering the
    segments are kept (each (B, H, F, E), small). Backward goes over the segments from the last to the first,
    recomputing each one's forward from its entering state with autograd and backpropagating through it the
    output's gradient and the gradient of the state it left (from the segment after it), which gives the gradient
    of its inputs, of the parameters it used and of its entering state (for the segment before it).
    What this buys: between forward and backward the layer keeps nothing beyond q, k, v and the gates (views of
    tensors that exist anyway) and the segment states, where autograd on the whole sequence keeps the feature maps,
    the values with their column of ones and the kernel's output (for linear attention at T = 16384: 129 MB more
    than softmax attention's SDPA keeps), and the backward's temporaries are one segment's. Cost: one more forward
    of the attention core (not of the projections). Numerically the same computation as the unsegmented one (a
    segment boundary is a chunk boundary when S is a multiple of the chunk size); tests/test_attention.py checks
    outputs and gradients against it in float64.
    q, k, v and every gate are (B, H, T, ...), time in dim 2; params: the tensors attend may use that need a gradient
    (those it does not use get none)."""

    @staticmethod
    def forward(ctx, attend, segment, gate_names, *inputs):
        per_token = inputs[:3 + len(gate_names)]  # q, k, v and the gates; then the parameters
        ctx.attend, ctx.segment, ctx.gate_names = attend, segment, gate_names
        ctx.autocast = autocast_state(per_token[0])
        ctx.save_for_backward(*inputs)
        B, H, T = per_token[0].shape[:3]
        ctx.entering, out, state = [], None, None
        for start in range(0, T, segment):
            ctx.entering.append(state)
            y, state = SegmentedRecompute.run(ctx, per_token, start, state)
            if out is None:  # (B, H, T, E) stored as (B, T, H, E), where merging the heads is a view
                out = y.new_empty(B, T, H, y.size(-1)).transpose(1, 2)
            out[:, :, start:start + segment] = y
        return out

    @staticmethod
    def run(ctx, per_token, start, state):
        q, k, v, *gates = (x[:, :, start:start + ctx.segment] for x in per_token)  # each (B, H, S, ...)
        return ctx.attend(q, k, v, state, **dict(zip(ctx.gate_names, gates)))

    @staticmethod
    def backward(ctx, dy):
        inputs = ctx.saved_tensors
        n_per_token = 3 + len(ctx.gate_names)
        per_token, params = inputs[:n_per_token], inputs[n_per_token:]
        needed = ctx.needs_input_grad[3:3 + n_per_token]
        d_per_token = [torch.zeros_like(x) if need else None for x, need in zip(per_token, needed)]
        d_params = [None] * len(params)
        d_leaving = {}  # the gradient of the state the segment leaves (none for the last segment)
        for index in reversed(range(len(ctx.entering))):
            start = index * ctx.segment
            pieces = [x[:, :, start:start + ctx.segment].detach().requires_grad_(need)
                      for x, need in zip(per_token, needed)]
            entering = ctx.entering[index]
            if entering is not None:  # its float tensors as leaves, for their gradient
                entering = {name: x.detach().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x
                            for name, x in entering.items()}
            with torch.enable_grad(), ctx.autocast:
                y, leaving = SegmentedRecompute.run(ctx, pieces, 0, entering)
            outputs, grads = [y], [dy[:, :, start:start + ctx.segment]]
            for name, grad in d_leaving.items():
                if grad is not None and leaving[name].requires_grad:
                    outputs.append(leaving[name])
                    grads.append(grad)
            state_names = [name for name, x in (entering or {}).items() if torch.is_tensor(x) and x.requires_grad]
            wrt = [x for x in pieces if x.requires_grad] + [entering[name] for name in state_names] + list(params)
            found = iter(torch.autograd.grad(outputs, wrt, grads, allow_unused=True))
            for d_x in d_per_token:
                if d_x is not None:
                    grad = next(found)
                    if grad is not None:
                        d_x[:, :, start:start + ctx.segment] = grad
            d_leaving = {name: next(found) for name in state_names}
            for i, grad in enumerate(found):
                if grad is not None:
                    d_params[i] = grad if d_params[i] is None else d_params[i] + grad
        return None, None, None, *d_per_token, *d_params


def autocast_state(x):
    """A context that restores the autocast in effect now on x's device (on or off, and its dtype)."""
    device = x.device.type
    enabled = torch.is_autocast_enabled(device)
    return torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=enabled)


def attend_in_segments(attend, q, k, v, gates, segment, params):
    """attend(q, k, v, None, **gates)[0], trained through SegmentedRecompute in segments of `segment` tokens."""
    params = [p for p in params if p.requires_grad]
    return SegmentedRecompute.apply(attend, segment, list(gates), q, k, v, *gates.values(), *params)


def append_ones(v):
    """[v, 1]: one matmul then yields both the numerator sum(s_ij v_j) and the normaliser sum(s_ij)."""
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


def exp_stabilised(log_x, dims):
    """exp(log_x - max over dims): the common factor cancels wherever a ratio is taken."""
    return (log_x - log_x.amax(dims, keepdim=True).detach()).exp()


def reference_mask(T, causal, pad_mask, device):
    """(B|1, 1, T, T) bool: which key j each query i may use (causal: j <= i), for the quadratic references."""
    position = torch.arange(T, device=device)
    allowed = position[None, :] <= position[:, None] if causal else torch.ones(T, T, dtype=torch.bool, device=device)
    allowed = allowed[None, None]
    if pad_mask is not None:
        allowed = allowed & ~pad_mask[:, None, None, :]
    return allowed


def rotary(x, offset):
    """Rotary position embedding (Su et al. 2021) on pairs (x_2i, x_2i+1); an odd last channel is left as is.
    x: (B, H, T, D), token t at absolute position offset + t. Positions and angles are float32 at least (in
    bfloat16 no integer above 256 is exact), and so is the result."""
    x = cast(x, wide_dtype(x))
    half = x.size(-1) // 2
    freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=x.dtype) / max(half, 1))
    angle = (torch.arange(x.size(2), device=x.device, dtype=x.dtype) + offset)[:, None] * freq  # (T, half)
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return rotated if 2 * half == x.size(-1) else torch.cat([rotated, x[..., 2 * half:]], dim=-1)


# ----------------------------------------------------------------------------------------------
# the interface


class ShortConvolution(nn.Module):
    """The short convolution of DeltaNet (Yang et al. 2024, arXiv:2406.06484) and Zoology (Arora et al. 2023,
    arXiv:2312.04927): depthwise and causal over time, y_t = sum_{s<K} w_s * h_{t-s} (+ b) per channel, h_t = 0
    before the sequence. On the q, k, v projections of any variant (LayerConfig.short_conv = K), before its own
    feature map; off by default. nn.Conv1d's default initialisation (init_weights leaves convolutions as they are).
    Time O(T K C), memory O(T C); decoding keeps the last K - 1 inputs."""

    def __init__(self, channels, kernel_size, bias):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(self, h, pad_mask=None, history=None):
        """h: (B, T, channels); pad_mask: (B, T), True at padding (zeroed first, so that padding before a token
        reads as the start of the sequence); history: None or (B, K - 1, channels), the inputs before h.
        Returns y (B, T, channels) and the new history."""
        B, T, channels = h.shape
        if pad_mask is not None:
            h = h.masked_fill(pad_mask[..., None], 0)
        if history is None:
            history = h.new_zeros(B, self.kernel_size - 1, channels)
        h = torch.cat([cast(history, h.dtype), h], dim=1)  # (B, K - 1 + T, channels)
        y = self.conv(h.transpose(1, 2)).transpose(1, 2)   # (B, T, channels)
        return y, h[:, h.size(1) - (self.kernel_size - 1):]


class Attention(nn.Module):
    """Base class: projections, head split/merge, mode checks. Subclasses implement the attend methods."""
    supports_causal = True
    supports_bidirectional = True

    def __init__(self, config):
        super().__init__()
        name = type(self).__name__
        if config.causal and not self.supports_causal:
            raise ValueError(f"{name} is bidirectional only: set causal=False or pick another variant")
        if not config.causal and not self.supports_bidirectional:
            accepted = ', '.join(key for key, cls in ATTENTION.items() if cls.supports_bidirectional)
            raise ValueError(f"{name} is causal only (its paper defines no bidirectional form): set causal=True, or "
                             f"for bidirectional attention pick one of: {accepted}")
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.causal = config.causal
        if config.short_conv < 0:
            raise ValueError(f"short_conv={config.short_conv}: the convolution's kernel size must be 0 (off) or more")
        if config.recompute_segment < 0:
            raise ValueError(f"recompute_segment={config.recompute_segment}: use 0 (off) or a number of tokens")
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.short_conv = (ShortConvolution(3 * config.n_embd, config.short_conv, config.bias) if config.short_conv
                           else None)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, pad_mask=None, reference=False):
        """x: (B, T, C); pad_mask: (B, T) bool, True at padding (bidirectional only).
        reference=True runs the naive form of the same formula (for tests)."""
        if pad_mask is not None and self.causal:
            raise ValueError("pad_mask is for bidirectional attention; in causal mode put padding at the end")
        q, k, v, _ = self.split_heads(x, pad_mask)
        attend = self.attend_reference if reference else self.attend
        return self.output(attend(q, k, v, pad_mask, **self.gates(x)), x)

    def step(self, x, state=None):
        """Recurrent decoding: x (B, T, C) are the next T >= 1 tokens after those summarised by state
        (None = start of the sequence). Returns their outputs (B, T, C) and the new state: attend_step's, or with
        the short convolution on {'attention': attend_step's, 'short_conv': the convolution's last kernel - 1 inputs}.
        """
        if not self.causal:
            raise ValueError("step() decodes causally; this layer was built with causal=False")
        convolving = self.short_conv is not None and state is not None
        q, k, v, history = self.split_heads(x, None, state['short_conv'] if convolving else None)
        y, state = self.attend_step(q, k, v, state['attention'] if convolving else state, **self.gates(x))
        return self.output(y, x), state if history is None else {'attention': state, 'short_conv': history}

    def split_heads(self, x, pad_mask=None, history=None):
        """q, k, v (B, H, T, D) from x (B, T, C): the shared projection, then the short convolution where it is on
        (continuing from history, its last inputs). Returns q, k, v and the convolution's new history (None if off)."""
        B, T, C = x.shape
        qkv = self.qkv(x)  # (B, T, 3C)
        if self.short_conv is not None:
            qkv, history = self.short_conv(qkv, pad_mask, history)
        q, k, v = qkv.split(C, dim=2)
        return [t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v)] + [history]

    def gates(self, x):
        """What a variant computes per token from the layer input x (B, T, C) besides q, k, v (data-dependent
        decays, step sizes): a dict of tensors passed to attend, attend_reference and attend_step as keyword
        arguments, so that the fast path, the reference and decoding see the same values. None here."""
        return {}

    def output(self, y, x):
        """(B, H, T, D) attention output -> (B, T, C). x is the layer input (used by gated variants)."""
        B, H, T, D = y.shape
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.dropout(self.proj(y))


class KVCache:
    """Keys and values of decoded tokens, (B, H, capacity, D) each, allocated ahead and written in place: softmax's
    cache of every token (its capacity doubled when a sequence outlives it) and local attention's ring of its window.
    The decoding states of one sequence (KVState) share a cache: a continuation writes into the cache of the state it
    continues when no other live state reads that cache, and into a copy otherwise (copy-on-write), so continuing one
    state twice (branching) gives each continuation its own cache and neither overwrites what the other reads. A
    state's liveness is Python's: a state nothing refers to any more is gone, and its cache's next writer may reuse
    it. Decoding is inference: call step under torch.no_grad (as generate and bench do); training uses forward."""

    def __init__(self, k, v, capacity):
        B, H, _, D = k.shape
        self.k = k.new_empty(B, H, capacity, D)
        self.v = v.new_empty(B, H, capacity, v.size(-1))
        self.readers = weakref.WeakSet()  # the live states that read this cache

    @property
    def capacity(self):
        return self.k.size(2)

    @staticmethod
    def to_write(state, k, v, capacity):
        """The cache into which a continuation of `state` (None: the start of a sequence) writes the new tokens' keys
        and values: the state's own when it has `capacity` slots and `state` is its only live reader, else a new
        cache of `capacity` slots holding a copy of what the state's holds."""
        if state is not None and state.cache.capacity == capacity and len(state.cache.readers) == 1:
            return state.cache
        cache = KVCache(k, v, capacity)
        if state is not None:
            held = min(state.length, state.cache.capacity)  # a ring copied whole keeps each token at its slot
            cache.k[:, :, :held] = state.cache.k[:, :, :held]
            cache.v[:, :, :held] = state.cache.v[:, :, :held]
        return cache


class KVState:
    """The decoding state of softmax or local attention after the first `length` tokens of a sequence: their keys
    and values in `cache` (softmax: token t at slot t; local: the last `window` tokens, token t at slot t % window)."""

    def __init__(self, cache, length):
        self.cache, self.length = cache, length
        cache.readers.add(self)


class SoftmaxAttention(Attention):
    """Scaled dot-product attention. Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.

    y_i = sum_j softmax_j(q_i . k_j / sqrt(D)) v_j over j <= i (causal) or all unpadded j.
    Fast path: F.scaled_dot_product_attention (flash / memory-efficient kernels where available).
    Time O(T^2 D); memory O(T) with a fused kernel, O(T^2) without. Decoding keeps a KV cache (KVCache) allocated
    for block_size tokens, doubled whenever a sequence outlives it, written in place: a token at position t costs
    O(t D) time (attention over the filled prefix) and O(D) new memory, nothing copied.
    """

    def __init__(self, config):
        super().__init__(config)
        self.cache_size = config.block_size  # the KV cache's first allocation, in tokens

    def attend(self, q, k, v, pad_mask):
        if pad_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~pad_mask[:, None, None, :])

    def attend_reference(self, q, k, v, pad_mask):
        return masked_softmax_attention(q, k, v, reference_mask(q.size(2), self.causal, pad_mask, q.device))

    def attend_step(self, q, k, v, state):
        start = 0 if state is None else state.length
        T = q.size(2)
        end = start + T
        capacity = self.cache_size if state is None else state.cache.capacity
        if end > capacity:  # the sequence outlives its cache: doubling keeps the copies O(1) per token on average
            capacity = max(end, 2 * capacity)
        cache = KVCache.to_write(state, k, v, capacity)
        cache.k[:, :, start:end] = k
        cache.v[:, :, start:end] = v
        k, v = cache.k[:, :, :end], cache.v[:, :, :end]  # the filled prefix, (B, H, end, D)
        if T == 1 and q.dtype in (torch.float32, torch.float64):
            # one query: two matrix-vector products, each reading the cache once, take about half SDPA's time on CPU
            # (bench.py decode); half precision keeps SDPA, whose kernels keep the scores in float32
            scores = (k @ q.transpose(-2, -1)).transpose(-2, -1) * q.size(-1) ** -0.5  # (B, H, 1, end)
            y = torch.softmax(scores, dim=-1) @ v
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, end, q.device, offset=start))
        return y, KVState(cache, end)


class LocalAttention(Attention):
    """Sliding-window softmax attention. Child et al. 2019 (arXiv:1904.10509) and Beltagy et al. 2020,
    "Longformer" (arXiv:2004.05150).

    Softmax attention restricted to a window of w = local_window keys: causal, keys i-w+1 .. i;
    bidirectional, keys i-r .. i+r with r = w // 2 (2r + 1 keys).
    Fast path: queries in blocks of w attend to their own and neighbouring key blocks (2w causal, 3w
    bidirectional keys). Time O(T w D), memory O(T w). Decoding keeps the last w keys and values in a
    ring (KVCache, token t at slot t % w), written in place: a token costs O(w D) whatever its position.
    """

    def __init__(self, config):
        super().__init__(config)
        self.window = config.local_window

    def allowed(self, distance, key_valid):
        """distance = i - j; key_valid says the key is a real token. Returns which keys each query uses."""
        if self.causal:
            inside = (distance >= 0) & (distance < self.window)
        else:
            inside = distance.abs() <= self.window // 2
        return inside & key_valid

    def attend(self, q, k, v, pad_mask):
        B, H, T, D = q.shape
        w = self.window
        before, after = (1, 0) if self.causal else (1, 1)  # neighbouring key blocks each query block sees
        pad = -T % w
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if pad_mask is None else ~pad_mask
        valid = F.pad(valid, (before * w, pad + after * w))                      # (B, (N + before + after) w)
        q = F.pad(q, (0, 0, 0, pad))
        k, v = (F.pad(t, (0, 0, before * w, pad + after * w)) for t in (k, v))
        N = (T + pad) // w
        q = q.view(B, H, N, w, D)
        neighbours = before + 1 + after
        key_blocks = [k.view(B, H, N + neighbours - 1, w, D)[:, :, s:s + N] for s in range(neighbours)]
        value_blocks = [v.view(B, H, N + neighbours - 1, w, D)[:, :, s:s + N] for s in range(neighbours)]
        keys = torch.cat(key_blocks, dim=3)      # (B, H, N, neighbours * w, D)
        values = torch.cat(value_blocks, dim=3)
        valid = valid.view(B, N + neighbours - 1, w)
        key_valid = torch.cat([valid[:, s:s + N] for s in range(neighbours)], dim=2)  # (B, N, neighbours w)
        distance = torch.arange(w, device=q.device)[:, None] + before * w - torch.arange(neighbours * w, device=q.device)
        allowed = self.allowed(distance, key_valid[:, None, :, None, :])  # (B, 1, N, w, neighbours w)
        y = masked_softmax_attention(q, keys, values, allowed)  # (B, H, N, w, D)
        return y.reshape(B, H, N * w, D)[:, :, :T]

    def attend_reference(self, q, k, v, pad_mask):
        """softmax_j(q_i . k_j / sqrt(D)) over the window, on the (T, T) matrix; nothing from the fast path."""
        T = q.size(2)
        position = torch.arange(T, device=q.device)
        distance = position[:, None] - position[None, :]  # i - j, (T, T)
        if self.causal:
            inside = (distance >= 0) & (distance < self.window)
        else:
            inside = distance.abs() <= self.window // 2
        allowed = inside[None, None] if pad_mask is None else inside & ~pad_mask[:, None, None, :]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
        # a padded query with no key in its window averages over all keys rather than giving NaN
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) @ v

    def attend_step(self, q, k, v, state):
        w = self.window
        start = 0 if state is None else state.length
        T = q.size(2)
        if T == 1:  # in the ring, token `start` replaces token start - w, which no query from here on sees
            cache = KVCache.to_write(state, k, v, w)
            slot = start % w
            cache.k[:, :, slot:slot + 1] = k
            cache.v[:, :, slot:slot + 1] = v
            held = min(start + 1, w)  # every held key is in the window: no mask (softmax ignores the slots' order)
            y = F.scaled_dot_product_attention(q, cache.k[:, :, :held], cache.v[:, :, :held])
            return y, KVState(cache, start + 1)
        # T > 1: the held keys a new query can see (the last w - 1), in order, then the new ones. Written in place,
        # the new tokens would overwrite keys the continued state still needs: their last w go into a new ring.
        if state is not None:
            slots = torch.arange(max(0, start - w + 1), start, device=q.device) % w
            k = torch.cat([state.cache.k.index_select(2, slots), k], dim=2)
            v = torch.cat([state.cache.v.index_select(2, slots), v], dim=2)
        cached = k.size(2) - T
        if T <= w:  # the new queries against held and new keys, O(T (w + T))
            position = torch.arange(cached + T, device=q.device)
            y = masked_softmax_attention(q, k, v, self.allowed(position[cached:, None] - position, True))
        else:  # a long prefill: the blocked path, with zero queries standing in for the held tokens
            y = self.attend(F.pad(q, (0, 0, cached, 0)), k, v, None)[:, :, cached:]
        end = start + T
        kept = min(w, end)
        cache = KVCache(k, v, w)
        slots = torch.arange(end - kept, end, device=q.device) % w
        cache.k.index_copy_(2, slots, k[:, :, -kept:])
        cache.v.index_copy_(2, slots, v[:, :, -kept:])
        return y, KVState(cache, end)


class KernelAttention(Attention):
    """The linear-attention family: y_i = sum_j s_ij v_j [/ (sum_j s_ij + eps)], s_ij = phi(q_i) . phi(k_j) a_ij,
    where a_ij is 1 or a decay gamma^|i-j|. Subclasses choose the feature map (`features`), whether to
    normalise (`normalise`, with `eps` added to the normaliser) and an optional per-head log-decay, and
    write s_ij once more, straight from the paper, in `reference_scores` (or in `allowed_scores`, where s_ij
    depends on which keys query i may use) for attend_reference.

    Causal: attend_chunkwise (chunked_linear_attention) for training and decoding alike, time
    O(T C (F + D) + T F D), memory O(T C + (T / C) F D); decoding keeps a fixed (F, D) state per head:
    O(F D) per token whatever the position. Training on T > recompute_segment = S tokens goes segment by segment
    (SegmentedRecompute): memory kept for backward O(T D) (q, k, v) + O((T / S) F D), temporaries O(S C + S F),
    time one more forward of the attention core.
    Bidirectional: phi(Q) (phi(K)^T V), time O(T F D), memory O(T (F + D) + F D); with decay, a causal
    pass plus an anti-causal pass.
    Reference: the (T, T) matrix s, time O(T^2 (F + D)), memory O(T^2).
    Precision: features (positions, angles, exponents) are computed from q and k in float32 (float64 stays
    float64) with autocast off, and every sum over the sequence stays there (chunked_linear_attention); the output
    returns to the input's dtype.
    """
    normalise = True
    eps = 1e-6

    def __init__(self, config):
        super().__init__(config)
        self.chunk_size = config.chunk_size
        self.recompute_segment = config.recompute_segment

    def features(self, q, k, offset):
        """(B, H, T, D) queries/keys of tokens at positions offset, offset + 1, ... -> (B, H, T, F) features."""
        raise NotImplementedError

    def log_decay(self, like):
        """None (no decay) or (1, H, 1) log gamma_h <= 0, in like's dtype and on its device."""
        return None

    def reference_scores(self, q, k):
        """(B, H, T, D) queries/keys -> (B, H, T, T) s_ij for every pair i, j (unmasked), from the paper's
        formula, sharing nothing with `features`."""
        raise NotImplementedError

    def values(self, v):
        return append_ones(v) if self.normalise else v

    def divide(self, numerator, normaliser):
        """The normalised output from its two sums, sum_j s_ij v_j and sum_j s_ij: numerator / (normaliser + eps)."""
        return numerator / (normaliser + self.eps)

    def finish(self, y, dtype):
        """y = [numerator, normaliser] (values' extra column) -> divide(numerator, normaliser) when normalising, in
        y's precision, then back to dtype (the input's)."""
        return cast(self.divide(y[..., :-1], y[..., -1:]) if self.normalise else y, dtype)

    def wide_features(self, q, k, offset):
        """features(q, k, offset) in float32 at least and with autocast off, whatever q's dtype or the autocast."""
        with full_precision(q):
            return self.features(cast(q, wide_dtype(q)), cast(k, wide_dtype(k)), offset)

    def attend(self, q, k, v, pad_mask, **gates):
        if self.causal:
            if torch.is_grad_enabled() and 0 < self.recompute_segment < q.size(2):
                return attend_in_segments(self.attend_chunkwise, q, k, v, gates, self.recompute_segment,
                                          self.parameters())
            return self.attend_chunkwise(q, k, v, None, **gates)[0]
        return self.bidirectional(*self.wide_features(q, k, 0), v, pad_mask)

    def bidirectional(self, fq, fk, v, pad_mask):
        dtype = v.dtype
        if pad_mask is not None:
            fk = fk.masked_fill(pad_mask[:, None, :, None], 0)  # a zero key adds nothing to any sum
        v = self.values(v)
        log_decay = self.log_decay(fq)
        if log_decay is None:
            with full_precision(fq):  # the (F, E) sum and the normaliser run over all T tokens
                v = cast(v, wide_dtype(fq))
                return self.finish(fq @ (fk.transpose(-2, -1) @ v), dtype)
        log_decay = log_decay.expand(1, -1, fq.size(2))
        forward, _ = chunked_linear_attention(fq, fk, v, log_decay, chunk_size=self.chunk_size)  # j <= i
        backward, _ = chunked_linear_attention(fq.flip(2), fk.flip(2), v.flip(2), log_decay, chunk_size=self.chunk_size)
        diagonal = (fq * fk).sum(-1, keepdim=True) * v  # j = i, counted by both passes
        return self.finish(forward + backward.flip(2) - diagonal, dtype)

    def attend_chunkwise(self, q, k, v, state):
        """Causal, chunkwise-parallel: the T >= 1 tokens after `state` (None = the start) -> (y, new state).
        The causal forward is this from state None; decoding continues from any state."""
        offset = 0 if state is None else state['offset']
        fq, fk = self.wide_features(q, k, offset)
        log_decay = self.log_decay(fq)
        if log_decay is not None:
            log_decay = log_decay.expand(1, -1, q.size(2))
        y, kv = chunked_linear_attention(fq, fk, self.values(v), log_decay,
                                         None if state is None else state['kv'], self.chunk_size)
        return self.finish(y, v.dtype), {'kv': kv, 'offset': offset + q.size(2)}

    def attend_step(self, q, k, v, state, **gates):
        return self.attend_chunkwise(q, k, v, state, **gates)

    def attend_reference(self, q, k, v, pad_mask):
        """y_i = sum_j s_ij v_j [/ (sum_j s_ij + eps)] over the allowed j, on the (T, T) matrix."""
        scores = self.allowed_scores(q, k, reference_mask(q.size(2), self.causal, pad_mask, q.device))
        y = scores @ v
        return self.divide(y, scores.sum(-1, keepdim=True)) if self.normalise else y

    def allowed_scores(self, q, k, allowed):
        """(B, H, T, T) s_ij where query i may use key j (`allowed`, (B|1, 1, T, T) bool), 0 elsewhere."""
        return self.reference_scores(q, k).masked_fill(~allowed, 0)


class LinearAttention(KernelAttention):
    """Linear transformer. Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236.

    phi(x) = elu(x) + 1; y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps), S_i = sum_j phi(k_j) v_j^T,
    z_i = sum_j phi(k_j), over j <= i (causal) or all j. F = D. Complexity as KernelAttention.
    """

    def features(self, q, k, offset):
        return F.elu(q) + 1, F.elu(k) + 1

    def reference_scores(self, q, k):
        return (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # s_ij = phi(q_i) . phi(k_j)


class NormLinearAttention(KernelAttention):
    """TransNormer's NormAttention. Qin et al. 2022, "The Devil in Linear Transformer", arXiv:2210.10340.

    O = RMSNorm(phi(Q) (phi(K)^T V)) with phi(x) = elu(x) + 1: linear attention without the denominator
    (whose unbounded gradients the paper blames for instability), the output normalised instead.
    The RMSNorm over the C channels is this variant's extra parameters. Complexity as KernelAttention.
    """
    normalise = False

    def __init__(self, config):
        super().__init__(config)
        self.out_norm = nn.RMSNorm(config.n_embd)

    def features(self, q, k, offset):
        return F.elu(q) + 1, F.elu(k) + 1

    def reference_scores(self, q, k):
        return (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # s_ij = phi(q_i) . phi(k_j)

    def output(self, y, x):
        B, H, T, D = y.shape
        y = self.out_norm(y.transpose(1, 2).reshape(B, T, H * D))
        return self.dropout(self.proj(y))


class CosformerAttention(KernelAttention):
    """cosFormer. Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention", arXiv:2202.08791.

    s_ij = relu(q_i) . relu(k_j) cos(pi/2 (i - j) / M), normalised by sum_j s_ij. The cosine splits,
    cos(a - b) = cos a cos b + sin a sin b, so s_ij is a dot product of 2D features
    [relu(x_t) cos(pi t / 2M), relu(x_t) sin(pi t / 2M)] and stays linear. M = block_size (not T), so a
    token's output does not depend on the sequence length and decoding matches the parallel form.
    F = 2D. Complexity as KernelAttention.
    """

    def __init__(self, config):
        super().__init__(config)
        self.max_len = config.block_size

    def features(self, q, k, offset):
        position = torch.arange(q.size(2), device=q.device, dtype=wide_dtype(q)) + offset  # exact up to 2^24
        angle = (math.pi / 2 * position / self.max_len)[:, None]  # (T, 1)
        cos, sin = angle.cos(), angle.sin()
        q, k = F.relu(q), F.relu(k)
        return torch.cat([q * cos, q * sin], dim=-1), torch.cat([k * cos, k * sin], dim=-1)

    def reference_scores(self, q, k):
        """s_ij = relu(q_i) . relu(k_j) cos(pi/2 (i - j) / M), the cosine taken of i - j whole."""
        position = torch.arange(q.size(2), device=q.device, dtype=q.dtype)
        reweighting = torch.cos(math.pi / 2 * (position[:, None] - position[None, :]) / self.max_len)  # (T, T)
        return (F.relu(q) @ F.relu(k).transpose(-2, -1)) * reweighting


class GatedGroupNormOutput(KernelAttention):
    """The output of RetNet and GLA: proj(swish(x W_G) * GroupNorm_h(heads)), a group (LayerNorm with a per-channel
    affine) per head. The gate W_G (C x C) and the group norm (2C) are the subclass's extra parameters."""

    def __init__(self, config):
        super().__init__(config)
        self.gate = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.group_norm = nn.GroupNorm(config.n_head, config.n_embd)

    def output(self, y, x):
        B, H, T, D = y.shape
        # GroupNorm with a group per head = LayerNorm over each head's D channels + per-channel affine;
        # layer_norm in the (B, H, T, D) layout is the same arithmetic, about twice as fast on CPU
        norm = self.group_norm
        y = F.layer_norm(y, (D,), eps=norm.eps) * norm.weight.view(H, 1, D) + norm.bias.view(H, 1, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.dropout(self.proj(F.silu(self.gate(x)) * y))


class Retention(GatedGroupNormOutput):
    """RetNet multi-scale retention. Sun et al. 2023, "Retentive Network", arXiv:2307.08621.

    Retention(X) = (Q K^T / sqrt(D) * Dm) V with rotary (xPos-style) positions on Q and K and the decay
    mask Dm_ij = gamma_h^(i-j) for j <= i (bidirectional: gamma_h^|i-j|), gamma_h = 1 - 2^(-5-h) per head.
    MSR(X) = (swish(X W_G) * GroupNorm_h(heads)) W_O; the gate W_G and the group norm are this variant's
    extra parameters. No normaliser: the group norm makes each head's output scale-free.
    Complexity as KernelAttention (F = D), the decay folded into the chunks.
    """
    normalise = False

    def features(self, q, k, offset):
        return rotary(q, offset), rotary(k, offset) / math.sqrt(q.size(-1))

    def log_gamma(self, dtype, device):
        """(H,) log gamma_h, gamma_h = 1 - 2^(-5-h), made in dtype each call: no buffer that module.bfloat16() could
        round (bfloat16 puts log gamma_2 0.4% off, and gamma_2^330 = 0.075 1% off)."""
        h = torch.arange(self.n_head, device=device, dtype=dtype)
        return torch.log1p(-torch.exp2(-5 - h))

    def log_decay(self, like):
        return self.log_gamma(like.dtype, like.device)[None, :, None]

    def reference_scores(self, q, k):
        """The paper's complex form: channel pairs (x_2i, x_2i+1) are complex numbers, Q_n = q_n e^{i n theta},
        K_m = k_m e^{i m theta}, theta_i = 10000^(-i / half); s_nm = Re(Q_n conj(K_m)) / sqrt(D) gamma^|n - m|
        = Re(q_n conj(k_m) e^{i (n - m) theta}) / sqrt(D) gamma^|n - m|. An odd last channel adds q . k."""
        B, H, T, D = q.shape
        half = D // 2
        as_complex = lambda x: torch.view_as_complex(x[..., :2 * half].reshape(B, H, T, half, 2).contiguous())
        theta = 10000.0 ** (-torch.arange(half, device=q.device, dtype=q.dtype) / max(half, 1))
        position = torch.arange(T, device=q.device, dtype=q.dtype)
        relative = position[:, None] - position[None, :]  # n - m, (T, T)
        phase = torch.exp(1j * relative[..., None] * theta)  # e^{i (n - m) theta}, (T, T, half)
        rotated = torch.einsum('bhni,bhmi,nmi->bhnm', as_complex(q), as_complex(k).conj(), phase).real
        unrotated = q[..., 2 * half:] @ k[..., 2 * half:].transpose(-2, -1)  # (B, H, T, T), zero if D is even
        decay = (self.log_gamma(q.dtype, q.device)[:, None, None] * relative.abs()).exp()  # gamma_h^|n - m|, (H, T, T)
        return (rotated + unrotated) / math.sqrt(D) * decay


class PerformerAttention(KernelAttention):
    """Performer, FAVOR+. Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794.

    exp(q . k / sqrt(D)) ~= phi(q) . phi(k) with positive random features
    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), x = q / D^(1/4), W: (m, D) orthogonal Gaussian rows (blocks
    of a QR factor, rows rescaled to chi-distributed norms). Normalised like softmax. F = m.
    W is drawn at construction from torch's RNG and kept as a buffer (saved in checkpoints); in training it is
    redrawn every `performer_redraw_interval` steps, as the paper trains (redraw_random_features, called by each
    trainer), and `redraw_projection()` draws a new one on request: nothing else changes it.
    Stabiliser, as in the authors' code (google-research/performer, softmax_kernel_transformation): each feature
    vector is divided by a common factor, then `feature_floor` (their numerical_stabilizer, 1e-6) is added to
    every feature. Queries use their own max. Keys use the running max M_t over keys 0..t (so no future token
    leaks in): a larger max arriving at step t rescales the state by exp(M_{t-1} - M_t), which is exactly a
    data-dependent decay <= 1 and goes through the same chunked kernel (attend_chunkwise, for the causal forward
    and decoding alike). The factors alone would cancel between numerator and normaliser, but in float32 every
    product phi(q)_f phi(k)_f can underflow when q and k are long and point apart (|W x| ~ 30 spans e^60), and
    the normaliser with it: 0 / 0 forward, 1 / normaliser^2 backward. The floor keeps the normaliser >= 1e-6,
    at the price of a bias the size of the floor; attend_reference writes the same floored features out.
    Complexity as KernelAttention with F = m.
    """
    eps = 0.0  # the floor keeps the normaliser >= feature_floor
    feature_floor = 1e-6

    def __init__(self, config):
        super().__init__(config)
        self.n_features = config.performer_features
        self.redraw_interval = config.performer_redraw_interval
        self.register_buffer('projection', torch.empty(self.n_features, self.head_dim))
        self.redraw_projection()

    @torch.no_grad()
    def redraw_projection(self, generator=None):
        """A new W from generator (None: torch's global RNG)."""
        D, m = self.head_dim, self.n_features
        blocks = [torch.linalg.qr(torch.randn(D, D, generator=generator))[0].T for _ in range(-(-m // D))]
        rows = torch.cat(blocks)[:m]                                             # orthogonal within each block
        norms = torch.randn(m, D, generator=generator).norm(dim=1, keepdim=True)  # chi(D), as for Gaussian rows
        self.projection.copy_(rows * norms)

    def project(self, x):
        """(W x, |x|^2 / 2) with x scaled by D^(-1/4): (B, H, T, m) and (B, H, T, 1). log(phi(x) sqrt(m)) = W x - |x|^2 / 2.
        In float32 at least, autocast off: these are exponents, and a bfloat16 W x (|W x| ~ 5) errs by ~1% in exp."""
        with full_precision(x):
            x = cast(x, wide_dtype(x)) * self.head_dim ** -0.25
            return x @ cast(self.projection, x.dtype).T, (x * x).sum(-1, keepdim=True) / 2

    def query_features(self, q):
        # |q|^2 / 2 and 1 / sqrt(m) are common to a query's features: the stabiliser's factor absorbs them
        return exp_stabilised(self.project(q)[0], -1) + self.feature_floor

    def allowed_scores(self, q, k, allowed):
        """s_ij for the allowed pairs, the stabilised features written out on (T, T, m), nothing from the fast path:
        x = q_i / D^(1/4), y = k_j / D^(1/4), b_j = W y - |y|^2 / 2 = log(phi(y) sqrt(m)) (the paper's phi), a_i = W x
        (log(phi(x) sqrt(m)) but for -|x|^2 / 2, common to the row), M_i = max of b_j' over the keys j' query i may use;
        s_ij = sum_f (exp(a_if - max_f a_i) + floor) (exp(b_jf - M_i) + floor exp(M_j - M_i)); the maxima are
        constants to the gradient, as in the fast path."""
        x, y = q / self.head_dim ** 0.25, k / self.head_dim ** 0.25
        a = x @ self.projection.T                                       # (B, H, T, m)
        b = y @ self.projection.T - (y * y).sum(-1, keepdim=True) / 2   # (B, H, T, m)
        fq = torch.exp(a - a.amax(-1, keepdim=True).detach()) + self.feature_floor
        M = b.detach().amax(-1)[..., None, :].masked_fill(~allowed, float('-inf')).amax(-1)  # (B, H, T): row i's
        fk = torch.exp(b[..., None, :, :] - M[..., :, None, None])      # (B, H, T_i, T_j, m)
        fk = fk + self.feature_floor * torch.exp(M[..., None, :] - M[..., :, None])[..., None]
        return (fq[..., :, None, :] * fk).sum(-1).masked_fill(~allowed, 0)

    def attend(self, q, k, v, pad_mask):
        if self.causal:
            return super().attend(q, k, v, pad_mask)
        wk, half_norm = self.project(k)
        log_k = wk - half_norm
        if pad_mask is not None:  # padded keys must not set the stabiliser
            log_k = log_k.masked_fill(pad_mask[:, None, :, None], float('-inf'))
        fk = exp_stabilised(log_k, (-2, -1)) + self.feature_floor  # bidirectional: one max over all keys
        return self.bidirectional(self.query_features(q), fk, v, pad_mask)

    def attend_chunkwise(self, q, k, v, state):
        wk, half_norm = self.project(k)
        key_max = (wk.amax(-1, keepdim=True) - half_norm).squeeze(-1).detach()  # largest log-feature, (B, H, T)
        previous = key_max[..., :1] if state is None else state['key_max']
        running = torch.maximum(key_max.cummax(-1).values, previous)      # max over keys 0..t
        log_decay = torch.diff(running, dim=-1, prepend=previous).neg()   # running_{t-1} - running_t <= 0
        # + (-shift) rather than - shift: a subtraction's backward would negate the whole (T, m) gradient
        fk = (wk + -(half_norm + running[..., None])).exp() + self.feature_floor
        y, kv = chunked_linear_attention(self.query_features(q), fk, append_ones(v), log_decay,
                                         None if state is None else state['kv'], self.chunk_size)
        return self.finish(y, v.dtype), {'kv': kv, 'key_max': running[..., -1:].clone()}


class GatedLinearAttention(GatedGroupNormOutput):
    """GLA. Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training",
    arXiv:2312.06635.

    S_t = Diag(alpha_t) S_{t-1} + k_t^T v_t, y_t = q_t S_t / sqrt(D): a data-dependent decay per key channel,
    alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/16) (the paper's low-rank gate, rank 16, and temperature 16, which keeps
    alpha_t near 1), then the paper's output: proj(swish(x W_r) * GroupNorm_h(heads)). No normaliser, no feature map.
    The paper halves the key dimension; here q, k, v keep the shared projections (F = D). Extra parameters: the
    gate (C x 16, 16 x C, C), the output gate (C x C) and the group norm (2C). Causal only (the paper defines no
    bidirectional form). One addition: log alpha_t >= -8 (MIN_CHANNEL_LOG_DECAY; alpha_t >= 3.4e-4, a gate logit
    below -128), which keeps the chunked kernel's factors within float32 (chunk_decays).
    Causal: chunked_linear_attention with a decay per key channel, in chunks of 16: time O(T 16 D + T D^2),
    memory O(T 16 + (T / 16) D^2); decoding keeps a (D, D) state per head. Reference: the recurrence, one token at a
    time.
    """
    supports_bidirectional = False
    normalise = False
    gate_rank = 16
    gate_temperature = 16

    def __init__(self, config):
        super().__init__(config)
        self.decay_down = nn.Linear(config.n_embd, self.gate_rank, bias=False)
        self.decay_up = nn.Linear(self.gate_rank, config.n_embd, bias=True)

    def gates(self, x):
        B, T, C = x.shape
        logits = wide_linear(self.decay_up, wide_linear(self.decay_down, x))  # (B, T, C)
        log_alpha = F.logsigmoid(logits) / self.gate_temperature
        return {'log_alpha': log_alpha.view(B, T, self.n_head, self.head_dim).transpose(1, 2)}  # (B, H, T, D)

    def features(self, q, k, offset):
        return q / math.sqrt(q.size(-1)), k

    def attend_chunkwise(self, q, k, v, state, log_alpha):
        fq, fk = self.wide_features(q, k, 0)
        y, kv = chunked_linear_attention(fq, fk, v, log_alpha, None if state is None else state['kv'],
                                         self.chunk_size)
        return cast(y, v.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask, log_alpha):
        """The paper's recurrence token by token: S_t = Diag(alpha_t) S_{t-1} + k_t^T v_t, y_t = q_t S_t / sqrt(D),
        with log alpha_t >= MIN_CHANNEL_LOG_DECAY."""
        B, H, T, D = q.shape
        alpha = log_alpha.clamp_min(MIN_CHANNEL_LOG_DECAY).exp()
        S = q.new_zeros(B, H, D, v.size(-1))
        outputs = []
        for t in range(T):
            S = alpha[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
            outputs.append((q[:, :, t, None, :] @ S).squeeze(-2) / D ** 0.5)
        return torch.stack(outputs, dim=2)


class DeltaNet(KernelAttention):
    """DeltaNet. Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
    arXiv:2406.06484.

    S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, y_t = S_t q_t (the paper's column layout: S maps keys
    to values), with the paper's feature map q, k <- L2Norm(SiLU(q)), L2Norm(SiLU(k)), beta_t = sigmoid(x_t W_beta)
    per head, and an RMSNorm over each head's output. Extra parameters: W_beta (C x H) and the norm's D weights.
    The paper's short convolution is trev's short_conv axis (off by default; the paper's 4: --short_conv=4).
    Causal only (the paper defines no bidirectional form).
    Causal: chunked_delta_rule (the UT transform, a triangular solve per chunk), time O(T C (C + D) + T D^2),
    memory O(T (C + D) + (T / C) D^2); decoding keeps a (D, D) state per head. Reference: the recurrence, one
    token at a time.
    """
    supports_bidirectional = False
    normalise = False

    def __init__(self, config):
        super().__init__(config)
        self.beta = nn.Linear(config.n_embd, config.n_head, bias=False)
        self.head_norm = nn.RMSNorm(self.head_dim, eps=1e-5)  # a fixed eps (fla's): torch's default is the dtype's

    def gates(self, x):
        return {'beta': torch.sigmoid(wide_linear(self.beta, x)).transpose(1, 2)}  # (B, H, T)

    def features(self, q, k, offset):
        return F.normalize(F.silu(q), dim=-1), F.normalize(F.silu(k), dim=-1)

    def attend_chunkwise(self, q, k, v, state, beta, log_alpha=None):
        fq, fk = self.wide_features(q, k, 0)
        y, kv = chunked_delta_rule(fq, fk, v, beta, log_alpha, None if state is None else state['kv'], self.chunk_size)
        return cast(y, v.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask, beta, log_alpha=None):
        """The paper's recurrence token by token, in its layout: S (E, D), S_t = S_{t-1} alpha_t (I - beta_t k k^T)
        + beta_t v k^T, y_t = S_t q_t (alpha_t = 1 for DeltaNet)."""
        B, H, T, D = q.shape
        unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        q, k = unit(q * torch.sigmoid(q)), unit(k * torch.sigmoid(k))
        S = q.new_zeros(B, H, v.size(-1), D)
        identity = torch.eye(D, dtype=q.dtype, device=q.device)
        outputs = []
        for t in range(T):
            kt, bt = k[:, :, t, :, None], beta[:, :, t, None, None]  # (B, H, D, 1), (B, H, 1, 1)
            alpha = 1 if log_alpha is None else log_alpha[:, :, t, None, None].exp()
            S = (S @ (alpha * (identity - bt * kt @ kt.transpose(-2, -1)))
                 + bt * v[:, :, t, :, None] @ kt.transpose(-2, -1))
            outputs.append((S @ q[:, :, t, :, None]).squeeze(-1))
        return torch.stack(outputs, dim=2)

    def output(self, y, x):
        B, H, T, D = y.shape
        y = self.head_norm(y).transpose(1, 2).reshape(B, T, H * D)
        return self.dropout(self.proj(self.output_gate(y, x)))

    def output_gate(self, y, x):
        return y


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet. Yang et al. 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
    arXiv:2412.06464.

    S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T: DeltaNet (feature map, beta, per-head RMSNorm)
    with the paper's data-dependent decay, Mamba2's parameterisation alpha_t = exp(-exp(A_h) softplus(x_t W_alpha +
    dt_h)), A_h = log of U(0, 16) and dt_h = softplus^-1 of a log-uniform step in [0.001, 0.1] at initialisation
    (`log_decay_rate`, `step_bias`), and the paper's output gate: proj(swish(x W_g) * RMSNorm_h(heads)). Extra
    parameters: W_beta, W_alpha (C x H each), A and dt (H each), the norm's D weights and W_g (C x C). Causal only.
    Complexity as DeltaNet.
    """

    def __init__(self, config):
        super().__init__(config)
        H = config.n_head
        self.alpha = nn.Linear(config.n_embd, H, bias=False)
        self.log_decay_rate = nn.Parameter(torch.empty(H).uniform_(0, 16).clamp_min(1e-4).log())
        step = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.step_bias = nn.Parameter(step + torch.log(-torch.expm1(-step)))  # softplus(step_bias) = step
        self.gate = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def gates(self, x):
        step = wide_linear(self.alpha, x)  # (B, T, H)
        step = F.softplus(step + cast(self.step_bias, step.dtype))
        log_alpha = -cast(self.log_decay_rate, step.dtype).exp() * step
        return super().gates(x) | {'log_alpha': log_alpha.transpose(1, 2)}  # (B, H, T)

    def output_gate(self, y, x):
        return F.silu(self.gate(x)) * y


class RandomFeatureAttention(KernelAttention):
    """RFA. Peng et al. 2021, "Random Feature Attention", arXiv:2103.02143.

    exp(x . y / sigma^2) is approximated with random Fourier features phi(x) = [sin(W x), cos(W x)] / sqrt(m),
    W: (m, D) standard Gaussian rows (m = rfa_features), on l2-normalised queries and keys scaled per channel by
    a learned sigma (the paper's learned variance; sigma = 1 at initialisation): E[phi(x) . phi(y)] =
    exp(-|sigma (x - y)|^2 / 2). Normalised: y_t = phi(q_t) S_t / max(phi(q_t) z_t, rfa_normaliser_floor).
    Causal, gated (the paper's gated RFA, rfa_gate=True): S_t = g_t S_{t-1} + (1 - g_t) phi(k_t)^T v_t, z_t likewise,
    g_t = sigmoid(x_t w_g + b_g) per head: a per-token decay g_t and keys weighted by 1 - g_t in the shared kernel.
    Bidirectional, or rfa_gate=False: the ungated form (the paper's gate is a recency bias over the past).
    W is drawn once at construction and kept as a buffer (the paper redraws it during training). The features
    can be negative, so the normaliser's estimate can come near 0 or below it although the kernel is positive (the
    reason Performer's features are positive); dividing by it then blows the output and its gradient up, and
    training stalls at the unigram loss. The authors' released code clamps the normaliser from below; so does
    trev, at rfa_normaliser_floor (0.1 of a kernel value of 1: the gated normaliser is a weighted mean of kernel
    values, which are >= exp(-2 sigma^2) on unit vectors).
    Extra parameters: sigma (C), the gate (C x H + H) when gated. F = 2m. Complexity as KernelAttention.
    """

    def __init__(self, config):
        super().__init__(config)
        if config.rfa_features < 1:
            raise ValueError(f"rfa_features={config.rfa_features}: rfa needs at least one random feature")
        if not config.rfa_normaliser_floor > 0:
            raise ValueError(f"rfa_normaliser_floor={config.rfa_normaliser_floor}: must be > 0 (the paper's kernel "
                             f"is positive; 0.1 by default)")
        self.n_features = config.rfa_features
        self.normaliser_floor = config.rfa_normaliser_floor
        self.register_buffer('projection', torch.randn(self.n_features, self.head_dim))
        self.sigma = nn.Parameter(torch.ones(config.n_embd))  # (H x D), one dim: a scale, so no weight decay
        self.gate = nn.Linear(config.n_embd, config.n_head) if config.rfa_gate and config.causal else None

    def gates(self, x):
        return {} if self.gate is None else {'gate_logit': wide_linear(self.gate, x).transpose(1, 2)}  # (B, H, T)

    def features(self, q, k, offset):
        def phi(x):
            sigma = cast(self.sigma, x.dtype).view(self.n_head, 1, self.head_dim)
            wx = (F.normalize(x, dim=-1) * sigma) @ cast(self.projection, x.dtype).T  # (B, H, T, m)
            return torch.cat([wx.sin(), wx.cos()], dim=-1) / math.sqrt(self.n_features)
        return phi(q), phi(k)

    def attend_chunkwise(self, q, k, v, state, gate_logit=None):
        fq, fk = self.wide_features(q, k, 0)
        log_decay = None
        if gate_logit is not None:  # S_t = g_t S_{t-1} + (1 - g_t) phi(k_t)^T v_t
            gate_logit = cast(gate_logit, fq.dtype)
            log_decay, fk = F.logsigmoid(gate_logit), fk * torch.sigmoid(-gate_logit)[..., None]
        y, kv = chunked_linear_attention(fq, fk, self.values(v), log_decay, None if state is None else state['kv'],
                                         self.chunk_size)
        return self.finish(y, v.dtype), {'kv': kv}

    def divide(self, numerator, normaliser):
        return numerator / normaliser.clamp_min(self.normaliser_floor)

    def reference_scores(self, q, k):
        """s_ij = (1/m) sum_r cos(w_r . (x_i - y_j)): the random-feature kernel estimate written on differences,
        x, y = sigma * l2-normalised q, k."""
        sigma = self.sigma.view(self.n_head, 1, self.head_dim)
        x = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12) * sigma
        y = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12) * sigma
        difference = x[..., :, None, :] - y[..., None, :, :]  # (B, H, T, T, D)
        return torch.cos(difference @ self.projection.T).mean(-1)

    def attend_reference(self, q, k, v, pad_mask, gate_logit=None):
        """Ungated: the (T, T) form. Gated: the paper's recurrence token by token, with reference_scores' kernel:
        y_t = sum_{j<=t} s_tj w_tj v_j / sum_{j<=t} s_tj w_tj, w_tj = (1 - g_j) prod_{j<u<=t} g_u."""
        if gate_logit is None:
            return super().attend_reference(q, k, v, pad_mask)
        scores = self.reference_scores(q, k)  # (B, H, T, T)
        g = torch.sigmoid(gate_logit)         # (B, H, T)
        weight = g.new_zeros(g.shape[:2] + (0,))
        outputs = []
        for t in range(q.size(2)):  # w_tj for j <= t: the earlier weights decayed by g_t, then 1 - g_t for j = t
            weight = torch.cat([weight * g[..., t, None], 1 - g[..., t, None]], dim=-1)
            s = scores[:, :, t, :t + 1] * weight
            outputs.append(self.divide((s[..., None] * v[:, :, :t + 1]).sum(-2), s.sum(-1, keepdim=True)))
        return torch.stack(outputs, dim=2)


class BasedAttention(KernelAttention):
    """Based's linear attention. Arora et al. 2024, "Simple linear attention language models balance the
    recall-throughput tradeoff", arXiv:2402.18668.

    q and k are projected per head to d' = based_feature_dim (16 in the paper) and mapped with the second-order
    Taylor expansion of exp(q . k / sqrt(d')): the paper's phi(x) = [1, x / d'^(1/4), vec(x x^T) / (sqrt(2) sqrt(d'))]
    gives phi(q) . phi(k) = 1 + s + s^2 / 2 with s = q . k / sqrt(d') (always > 0). Normalised like softmax. Based
    pairs this layer with sliding-window attention in its architecture; here it is the attention layer alone.
    vec(x x^T) holds each product x_a x_b (a != b) twice; trev keeps x_a^2 and, once, each x_a x_b with a < b, times
    sqrt(2) (all / sqrt(2 d')): the same kernel value exactly, as (q . k)^2 = sum_a q_a^2 k_a^2 + 2 sum_{a<b} q_a q_b
    k_a k_b, with F = 1 + d' + d' (d' + 1) / 2 features (153 for d' = 16) instead of the paper's 1 + d' + d'^2 (273),
    and the kernel's time and state in proportion.
    Extra parameters: the projections (H x D x d', for q and for k: 2 C d'). Complexity as KernelAttention.
    """

    def __init__(self, config):
        super().__init__(config)
        if config.based_feature_dim < 1:
            raise ValueError(f"based_feature_dim={config.based_feature_dim}: must be at least 1 (the paper's is 16)")
        shape = (config.n_head, self.head_dim, config.based_feature_dim)
        self.query_projection = nn.Parameter(torch.randn(shape) / math.sqrt(self.head_dim))
        self.key_projection = nn.Parameter(torch.randn(shape) / math.sqrt(self.head_dim))
        rows, columns = torch.triu_indices(config.based_feature_dim, config.based_feature_dim, offset=1)
        self.register_buffer('above_diagonal', rows * config.based_feature_dim + columns, persistent=False)  # in vec

    def features(self, q, k, offset):
        def taylor(x):  # (B, H, T, d') -> (B, H, T, 1 + d' + d' (d' + 1) / 2)
            d = x.size(-1)
            products = (x[..., :, None] * x[..., None, :]).flatten(-2)  # vec(x x^T), (B, H, T, d'^2)
            above = products.index_select(-1, self.above_diagonal) / math.sqrt(d)  # x_a x_b sqrt(2) / sqrt(2 d')
            return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, x * x / math.sqrt(2 * d), above], dim=-1)
        return (taylor(q @ cast(self.query_projection, q.dtype)),
                taylor(k @ cast(self.key_projection, k.dtype)))

    def reference_scores(self, q, k):
        """s_ij = 1 + a + a^2 / 2, a = (q_i P_q) . (k_j P_k) / sqrt(d')."""
        d = self.key_projection.size(-1)
        a = (q @ self.query_projection) @ (k @ self.key_projection).transpose(-2, -1) / d ** 0.5
        return 1 + a + a * a / 2


class HedgehogAttention(KernelAttention):
    """Hedgehog. Zhang et al. 2024, "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax
    Mimicry", arXiv:2402.04347.

    A learned feature map per head, phi(x) = [softmax(x W + b), softmax(-(x W + b))] over the D channels (F = 2D),
    W initialised to the identity and b to 0, on queries and keys alike; normalised like softmax. The paper also
    trains the map to mimic softmax attention with a distillation loss; here it learns from the task's loss alone,
    like every other parameter. Extra parameters: W (H x D x D) and b (C). Complexity as KernelAttention.
    """

    def __init__(self, config):
        super().__init__(config)
        self.feature_weight = nn.Parameter(torch.eye(self.head_dim).repeat(config.n_head, 1, 1))  # (H, D, D)
        self.feature_bias = nn.Parameter(torch.zeros(config.n_embd))  # (H x D), one dim: a bias, so no weight decay

    def features(self, q, k, offset):
        def phi(x):
            z = x @ cast(self.feature_weight, x.dtype) + cast(self.feature_bias, x.dtype).view(self.n_head, 1, -1)
            return torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1)
        return phi(q), phi(k)

    def reference_scores(self, q, k):
        """s_ij = sum_f e^{a_if} e^{c_jf} / (sum_f e^{a_if} sum_f e^{c_jf}) + the same with -a, -c; a = q W + b,
        c = k W + b."""
        bias = self.feature_bias.view(self.n_head, 1, self.head_dim)
        a = q @ self.feature_weight + bias
        c = k @ self.feature_weight + bias
        def kernel(a, c):
            normaliser = a.exp().sum(-1)[..., :, None] * c.exp().sum(-1)[..., None, :]  # (B, H, T, T)
            return (a.exp() @ c.exp().transpose(-2, -1)) / normaliser
        return kernel(a, c) + kernel(-a, -c)


ATTENTION = {
    'softmax': SoftmaxAttention,
    'linear': LinearAttention,
    'performer': PerformerAttention,
    'cosformer': CosformerAttention,
    'retention': Retention,
    'norm_linear': NormLinearAttention,
    'local': LocalAttention,
    'gla': GatedLinearAttention,
    'deltanet': DeltaNet,
    'gated_deltanet': GatedDeltaNet,
    'rfa': RandomFeatureAttention,
    'based': BasedAttention,
    'hedgehog': HedgehogAttention,
}


def redraw_random_features(model, step, seed):
    """Redraw the random features of every layer in model that has them (Performer: `redraw_interval` > 0) at a step
    that is a positive multiple of its interval; call once per training step, before its forward. The draw comes from
    a generator seeded by (seed, step, the layer's name), so every DDP rank draws the same features and a resumed run
    draws exactly those of an uninterrupted one (the current features are in the checkpoint)."""
    for name, module in model.named_modules():
        interval = getattr(module, 'redraw_interval', 0)
        if interval and step > 0 and step % interval == 0:
            key = zlib.crc32(f'{seed}/{step}/{name}'.encode())
            module.redraw_projection(torch.Generator().manual_seed(key))


def build_attention(config):
    if config.attention not in ATTENTION:
        raise ValueError(f"unknown attention '{config.attention}'; choose one of: {', '.join(ATTENTION)}")
    return ATTENTION[config.attention](config)


# ----------------------------------------------------------------------------------------------
# the block every trainer builds its model from


class ScaleNorm(nn.Module):
    """ScaleNorm. Nguyen & Salazar 2019, "Transformers without Tears", arXiv:1910.05895: g x / max(|x|_2, eps), the
    l2-normalised vector times one learned scalar g, initialised to sqrt(C) (so the output starts with unit RMS, as
    LayerNorm's and RMSNorm's do)."""

    def __init__(self, n_embd, eps=1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(math.sqrt(n_embd)))
        self.eps = eps

    def forward(self, x):
        return self.scale * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)


NORMS = {'layernorm': lambda config: nn.LayerNorm(config.n_embd, bias=config.bias),
         'rmsnorm': lambda config: nn.RMSNorm(config.n_embd),
         'scalenorm': lambda config: ScaleNorm(config.n_embd)}


def make_norm(config):
    if config.norm not in NORMS:
        raise ValueError(f"unknown norm '{config.norm}'; choose one of: {', '.join(NORMS)}")
    return NORMS[config.norm](config)


def make_final_norm(config):
    """The norm after the last block: pre-norm blocks leave the residual stream unnormalised, post-norm blocks
    end on a norm already (Vaswani et al. have none after the last layer), so there it is the identity."""
    return make_norm(config) if config.norm_position == 'pre' else nn.Identity()


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Transformer block. Pre-norm (norm_position='pre'): x + attn(norm(x)), then x + mlp(norm(x)).
    Post-norm ('post', Vaswani et al. 2017): norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, config):
        super().__init__()
        if config.norm_position not in ('pre', 'post'):
            raise ValueError(f"unknown norm_position '{config.norm_position}'; choose 'pre' or 'post'")
        self.pre_norm = config.norm_position == 'pre'
        self.norm_attn = make_norm(config)
        self.attn = build_attention(config)
        self.norm_mlp = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, pad_mask=None):
        x = self.add(x, lambda h: self.attn(h, pad_mask), self.norm_attn)
        return self.add(x, self.mlp, self.norm_mlp)

    def step(self, x, state=None):
        """Decoding: as forward, for the next T tokens after `state`; returns (y, new state)."""
        if self.pre_norm:
            y, state = self.attn.step(self.norm_attn(x), state)
            x = x + y
        else:
            y, state = self.attn.step(x, state)
            x = self.norm_attn(x + y)
        return self.add(x, self.mlp, self.norm_mlp), state

    def add(self, x, sublayer, norm):
        """The residual connection around sublayer, with its norm before (pre-norm) or after the sum (post-norm)."""
        return x + sublayer(norm(x)) if self.pre_norm else norm(x + sublayer(x))


@dataclass
class LMConfig(LayerConfig):
    """The block's LayerConfig (attention, n_embd, n_head, causal, block_size, ...) plus a language model's own
    fields: the trunk of train_gpt.py's GPT (causal) and train_bert.py's BERT (bidirectional)."""
    vocab_size: int = 256
    n_layer: int = 12


class TransformerLM(nn.Module):
    """Token + learned position embedding, n_layer Blocks (causal or not, as config says), final norm (pre-norm),
    LM head tied to the embedding. forward(idx) -> logits; train_gpt.py's GPT and train_bert.py's BERT add their
    loss."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = make_final_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        init_weights(self, config.n_layer)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied embedding counts once

    def hidden(self, idx):
        """idx: (B, T) token ids, T <= block_size -> the final norm's output (B, T, C), ready for lm_head."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens, block_size is {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, idx):
        """idx: (B, T) token ids -> logits (B, T, vocab_size)."""
        return self.lm_head(self.hidden(idx))



def init_weights(model, n_layer, also=()):
    """GPT-2's initialisation, the same in every trainer: weights of Linear and Embedding layers (and the
    parameters named in `also`) ~ N(0, 0.02), residual projections (names ending in proj.weight) ~
    N(0, 0.02 / sqrt(2 n_layer)), Linear biases 0; everything else (norms, convolutions) keeps its default.
    Each tensor is drawn from its own generator, seeded by torch's seed and the parameter's name, so the
    parameters two variants share start identical: what one variant adds (retention's gate, performer's
    random features) shifts no other parameter's initial value."""
    normal = set(also)
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            normal.add(f'{module_name}.weight')
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight comes once, under its first name
            if name in normal:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith('proj.weight') else 0.02
                generator = torch.Generator().manual_seed(torch.initial_seed() + zlib.crc32(name.encode()))
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
