"""
The numerics the attention variants share: precision helpers, the chunkwise linear-attention kernel and its
backward, the chunked delta rule and its generalised form with a decay per key channel, training in recomputed
segments, and the adapter that runs the linear-attention kernel and the delta rule through flash-linear-attention's
Triton ops on a GPU. attention.py holds the layers that call them; this file imports torch only (fla is imported on
first use of the adapter, never on the CPU path). tests/test_kernels.py and tests/test_generalized_delta_rule.py
check each kernel against its naive form, tests/test_fla.py the adapter against fla's own reference ops.

One signature family, in attention.py's layout (batch, heads, tokens, channels):
    q, k        (B, H, T, F)  queries and keys, feature-mapped
    v           (B, H, T, E)  values
    log_decay   None (no decay), (B|1, H, T) (one per token) or (B, H, T, F) (one per token and key channel), <= 0:
                the state decays by a_t = exp(log_decay_t) at token t
    state       None (zero: the start of a sequence) or (B, H, F, E): S, mapping keys to values (row layout)
    chunk_size  C, the tokens one matmul covers; T need not be a multiple of it (the last chunk is zero-padded)
Recurrence S_t = Diag(a_t) S_{t-1} + k_t^T v_t (plus each kernel's own term), output y_t = q_t S_t. A kernel returns
(y (B, H, T, E), the state after the last token (B, H, F, E)): a later call continues from that state, which is how
the layers decode. N = ceil(T / C) chunks.
Precision: whatever the inputs' dtype or the autocast, everything summed over the sequence (decays, states,
normalisers) is float32 at least (float64 stays float64) with autocast off, and y comes back in that dtype.
blocked_attention (the last section) serves the softmax-like variants whose weights SDPA cannot compute (sigmoid,
forgetting and stick-breaking attention): every key's weight from its score, queries in blocks recomputed in backward.
"""
import functools
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ----------------------------------------------------------------------------------------------
# precision and masks


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


def autocast_state(x):
    """A context that restores the autocast in effect now on x's device (on or off, and its dtype)."""
    device = x.device.type
    enabled = torch.is_autocast_enabled(device)
    return torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=enabled)


def wide_linear(linear, x):
    """linear(x) in float32 at least, autocast off: for the small projections that make decays and step sizes,
    whose rounding compounds over the sequence (a bfloat16 logit is 0.4% off)."""
    wide = wide_dtype(x)
    with full_precision(x):
        bias = None if linear.bias is None else cast(linear.bias, wide)
        return F.linear(cast(x, wide), cast(linear.weight, wide), bias)


def causal_mask(t_query, t_key, device, offset=0):
    """(t_query, t_key) bool, True where key j may be seen by query i, query i sitting at offset + i."""
    i = torch.arange(t_query, device=device)[:, None] + offset
    j = torch.arange(t_key, device=device)[None, :]
    return j <= i


# ----------------------------------------------------------------------------------------------
# chunkwise linear attention


def chunk_states(kv, log_decay, state, group=16):
    """The recurrence across chunks without a loop over them: S_0 = state (None: zero), S_{n+1} = a_n S_n + kv_n,
    a_n = exp(log_decay_n). kv: (..., N, M), each chunk's contribution; log_decay: (..., N), leading dims broadcast
    against kv's; state: None or (..., M). Returns the states entering chunks 0 .. N-1, (..., N, M), and the state
    after the last, (..., M).

    Unrolled, the states are an (N + 1, N) lower-triangular matrix of decays times kv, each exponent a sum of log
    decays <= 0 summed as it is (a difference of running sums loses precision as they grow), so nothing overflows
    however strong the decay. Up to G = `group` chunks the matrix is applied as it is; beyond, chunks go in groups of
    G: each group's states from zero, the states entering the groups by this function on the groups' totals
    (recursively), added to each chunk decayed. Work O(N G M), depth log_G(N), memory O(N M): a few batched ops per
    level, where a loop would launch a few per chunk.
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
    """Causal linear attention with decay, S_t = Diag(a_t) S_{t-1} + k_t^T v_t, y_t = q_t S_t, chunkwise: within a
    chunk a masked (C, C) matmul, across chunks the states entering each chunk (chunk_states) applied to its queries.
    A decay per key channel takes chunks of at most CHANNEL_DECAY_CHUNK tokens and log decays of at least
    MIN_CHANNEL_LOG_DECAY (lower ones count as it, with no gradient), which keeps its factors finite (chunk_decays).
    Time O(T C (F + E) + T F E), memory O(T C + (T / C) F E): no (T, T), (T, F, E) or (C, C, F) tensor. Backward
    (ChunkwiseLinearAttention) keeps only the inputs and recomputes the rest.
    With v in bfloat16 the intra-chunk matmuls run in bfloat16 (float32's range); the rest in float32 at least,
    as a chunk's sum of positive scores (a normaliser) can pass float16's 65504.
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
    """(B, H, T, X) -> (B, H, N, C, X), contiguous (one copy where x is not), zero-padded at the end: zero queries,
    keys, values and log-decays after the last token change nothing before it."""
    pad = -x.size(2) % C
    return (F.pad(x, (0, 0, 0, pad)) if pad else x).unflatten(2, (-1, C)).contiguous()


class ChunkDecays(NamedTuple):
    """The decay factors of chunks of C tokens, from b_i = the sum of the log decays from the chunk's first token to
    token i, and b_C over the whole chunk; n: 1 for a decay per token, F for one per key channel."""
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
    """The ChunkDecays of log_decay in chunks of C, in like's dtype; without decay the causal mask, None for the
    factors and zeros (N,) for chunk_log_decay. The kernel's only reader of log_decay.
    A decay per channel cannot weigh the scores after the product over channels, and (C, C, F) weights would cost C
    times q's size: instead q_i exp(b_i - r) . k_j exp(r - b_j), whose product is exp(b_i - b_j) <= 1 per channel. The
    reference r in the chunk's middle bounds each exponent by C / 2 log decays, at most 64 with C <= 16 and log decays
    >= -8, so no factor overflows (masked keys after i included)."""
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
    factor per chunk, or one per row f of the state: the F rows as a batch dimension). reverse: from the last chunk to
    the first (backward's recurrence of the states' gradient). Returns the states entering each chunk (reverse:
    leaving it), (B, H, N, F, E), and the one after the last (reverse: the first)."""
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
    """chunked_linear_attention's forward and its backward written out. Only the inputs are kept; backward recomputes
    the (C, C) scores and the chunk states when it needs them, so no (C, C) tensor or per-chunk state outlives the
    forward (autograd on the forward would keep them all), at about 1.4x the forward's matmuls.

    Per chunk, with b, W = within, Q = q_within, K = k_within, exp(b) = from_start, exp(b_C - b) = to_end as in
    ChunkDecays (Q = K = 1 without a decay per channel), S_n the state entering chunk n, A = ((Q q) (K k)^T) * W and
    G_n the loss's gradient with respect to S_n:
        forward   y = A v + (exp(b) q) S_n               S_{n+1} = exp(b_C) S_n + (exp(b_C - b) k)^T v
        backward  G_N = the final state's gradient, G_n = exp(b_C) G_{n+1} + (exp(b) q)^T dy (chunk_states from the
                  last chunk to the first; G_0 is the incoming state's gradient)
                  dA = (dy v^T) * W
                  dq = Q (dA (K k)) + exp(b) (dy S_n^T)     dk = K (dA^T (Q q)) + exp(b_C - b) (v G_{n+1}^T)
                  dv = A^T dy + (exp(b_C - b) k) G_{n+1}
                  dL/db_i = q_i dq_i - k_i dk_i (summed over channels for a decay per token), plus <G_{n+1}, S_{n+1}>
                  at the chunk's last token (each factor scales a row or channel of q or k; r cancels in A)
                  dL/dlog_decay_t = the sum of dL/db_i over the chunk's tokens i >= t.
    A decay per token scales whole rows, so exp(b) and exp(b_C - b) go on the narrower side of each product.
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
        """The forward on q, k, v in chunks (B, H, N, C, .), of which the first T tokens are real -> (y (B, H, T, E),
        the final state (B, H, F, E))."""
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


# ----------------------------------------------------------------------------------------------
# the delta rule


def chunked_delta_rule(q, k, v, beta, log_decay=None, state=None, chunk_size=64):
    """The (gated) delta rule, S_t = a_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, y_t = q_t S_t, chunkwise as
    in Yang et al. 2024 (arXiv:2406.06484, arXiv:2412.06464). beta and log_decay: (B, H, T), one per token.
    Writing S_t = a_t S_{t-1} + k_t^T d_t, a chunk's new information d_t = beta_t (v_t - a_t k_t S_{t-1}) solves
    (I + A) D = diag(beta) V - diag(beta exp(b)) K S_0, A_ij = beta_i exp(b_i - b_j) k_i . k_j for j < i (b: the log
    decay summed from the chunk's start, S_0: the state entering it). The UT transform solves that unit triangular
    system for all chunks at once: D = U - W S_0, U = (I + A)^-1 beta V, W = (I + A)^-1 beta exp(b) K. Then
    y_i = exp(b_i) q_i S_0 + sum_{j<=i} exp(b_i - b_j) (q_i . k_j) d_j and
    S_C = exp(b_C) S_0 + sum_j exp(b_C - b_j) k_j^T d_j, every exponent <= 0. A chunk's state transition is a full (F, F) matrix, so the states follow one another in a
    loop over chunks (T / C steps of two (C, F) x (F, E) products).
    Time O(T C (F + E + C) + T F E), memory O(T (C + F + E) + (T / C) F E).
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


def chunked_generalized_delta_rule(q, k, v, log_decay, read, write, state=None, chunk_size=64):
    """The generalised delta rule with a decay per key channel, S_t = (Diag(a_t) + write_t^T read_t) S_{t-1} +
    k_t^T v_t, y_t = q_t S_t (row layout, a_t = exp(log_decay_t)): the state decays per channel, and read_t S_{t-1}, a
    value read from the state, is written back along write_t. Kimi Delta Attention is read = a_t k_t, write = -beta_t
    k_t and beta_t k_t for the key (S_t = (I - beta_t k_t^T k_t) Diag(a_t) S_{t-1} + beta_t k_t^T v_t); RWKV-7 is
    read = kappa_t, write = -(a_t kappa_t) (its in-context learning rate a_t). q, k, read, write and log_decay:
    (B, H, T, F); fla's generalized_delta_rule.dplr names read `a` (alpha) and write `b` (beta).
    Chunkwise as in Yang et al. 2024 (arXiv:2406.06484), with b_i the log decay summed from the chunk's start to
    token i and b'_i = b_i - log_decay_i (to token i - 1): every token's read of the state it meets,
    u_i = read_i S_{i-1}, solves the unit lower-triangular system (I - A_rw) U = A_rk V + (read exp(b')) S_0, with
    A_rw[i, j] = (read_i exp(b'_i - b_j)) . write_j and A_rk likewise with k_j, for j < i (S_0: the state entering the
    chunk). The triangular solve (all chunks at once) gives U = U_0 + W S_0; the states follow one another in a loop
    over chunks (their transition is a full (F, F) matrix), and
    y_i = (q_i exp(b_i)) S_0 + sum_{j<=i} (q_i exp(b_i - b_j)) . (k_j v_j + write_j u_j),
    S_C = exp(b_C) S_0 + sum_j exp(b_C - b_j) (k_j^T v_j + write_j^T u_j).
    The (C, C) products take the per-channel decay as chunked_linear_attention does (chunk_decays): chunks of at most
    CHANNEL_DECAY_CHUNK tokens, each factor exp(b_i - r), exp(r - b_j) taken from the chunk's middle r, log decays
    raised to MIN_CHANNEL_LOG_DECAY (no gradient below it), so no factor overflows float32. Backward is autograd's.
    Time O(T C (F + E) + T F E), memory O(T (C + F + E) + (T / C) F E), C <= 16.
    """
    B, H, T, Fd = q.shape
    C = min(chunk_size, CHANNEL_DECAY_CHUNK, T)
    wide = wide_dtype(q)
    with full_precision(q):
        log_decay = cast(log_decay, wide).clamp_min(MIN_CHANNEL_LOG_DECAY)
        # zero keys, reads, writes and no decay after the last token change nothing before it
        q, k, v, read, write, log_decay = (in_chunks(cast(t, wide), C) for t in (q, k, v, read, write, log_decay))
        b = log_decay.cumsum(3)                  # (B, H, N, C, F): from the chunk's start to token i
        b_before = b - log_decay                 # ... to token i - 1
        r = b[..., (C - 1) // 2, None, :]        # (B, H, N, 1, F): the chunk's middle
        q_in, read_in = q * (b - r).exp(), read * (b_before - r).exp()
        k_in, write_in = k * (r - b).exp(), write * (r - b).exp()
        up_to = causal_mask(C, C, q.device)      # j <= i
        before = up_to.tril(-1)                  # j < i
        # products above the diagonal can overflow (exp(b_i - b_j) > 1 there): masked_fill, never a multiplication
        read_write = (read_in @ write_in.transpose(-2, -1)).masked_fill(~before, 0)  # A_rw, (B, H, N, C, C)
        read_key = (read_in @ k_in.transpose(-2, -1)).masked_fill(~before, 0)      # A_rk
        query_key = (q_in @ k_in.transpose(-2, -1)).masked_fill(~up_to, 0)         # with j = i
        query_write = (q_in @ write_in.transpose(-2, -1)).masked_fill(~up_to, 0)
        # unitriangular: the solve reads only -A_rw below the diagonal, i.e. the matrix I - A_rw
        U = torch.linalg.solve_triangular(-read_write, read_key @ v, upper=False, unitriangular=True)
        W = torch.linalg.solve_triangular(-read_write, read * b_before.exp(), upper=False, unitriangular=True)
        chunk_decay = b[..., -1, :, None].exp()  # (B, H, N, F, 1)
        to_end = (b[..., -1:, :] - b).exp()      # (B, H, N, C, F)
        k_end, write_end = k * to_end, write * to_end
        S = q.new_zeros(B, H, Fd, v.size(-1)) if state is None else cast(state, wide)
        starts, reads = [], []
        # unbind, not indexing: see chunked_delta_rule
        for U_n, W_n, decay_n, k_n, write_n, v_n in zip(*(t.unbind(2) for t in (U, W, chunk_decay, k_end, write_end,
                                                                                 v))):
            starts.append(S)
            u = U_n + W_n @ S  # u_j = read_j S_{j-1} of the chunk's tokens, (B, H, C, E)
            reads.append(u)
            S = decay_n * S + k_n.transpose(-2, -1) @ v_n + write_n.transpose(-2, -1) @ u
        starts, reads = torch.stack(starts, dim=2), torch.stack(reads, dim=2)  # (B, H, N, F, E), (B, H, N, C, E)
        y = (q * b.exp()) @ starts + query_key @ v + query_write @ reads
    return y.flatten(2, 3)[:, :, :T], S


# ----------------------------------------------------------------------------------------------
# training in recomputed segments


class SegmentedRecompute(torch.autograd.Function):
    """A causal recurrent layer trained on a long sequence in segments of S tokens, keeping only its inputs.
    attend(q, k, v, state, **gates) -> (y, state), a variant's chunkwise form, runs over the segments in order
    without autograd, each from the state the one before left; the states entering the segments are kept (each
    (B, H, F, E), small). Backward goes from the last segment to the first, recomputing each one's forward from its
    entering state with autograd and backpropagating the output's gradient and the gradient of the state it left:
    that gives the gradients of its inputs, of the parameters it used and of its entering state.
    Between forward and backward only q, k, v, the gates and the segment states are kept, where autograd on the whole
    sequence keeps the feature maps, the values with their column of ones and the kernel's output; the backward's
    temporaries are one segment's. Cost: one more forward of the attention core (not of the projections). The same
    computation as one pass (a segment boundary is a chunk boundary when S is a multiple of the chunk size).
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


def attend_in_segments(attend, q, k, v, gates, segment, params):
    """attend(q, k, v, None, **gates)[0], trained through SegmentedRecompute in segments of `segment` tokens."""
    params = [p for p in params if p.requires_grad]
    return SegmentedRecompute.apply(attend, segment, list(gates), q, k, v, *gates.values(), *params)


# ----------------------------------------------------------------------------------------------
# flash-linear-attention's GPU kernels


KERNELS = ('auto', 'torch', 'fla')  # LayerConfig.kernel: 'torch' = the kernels above, 'fla' = the adapter below
FLA_RECURRENT_TOKENS = 64  # a call of at most this many tokens without gradient (decoding) takes fla's fused
                           # recurrent op rather than its chunk op, as fla's own layers choose
FLA_OPS = None  # the adapter's op table (name -> callable); None = fla's Triton ops, loaded on first use. The tests
                # and check_gpu.py's CPU dry run put fla_reference_ops() here


@functools.cache
def triton_fla_ops():
    """fla's Triton ops under the names the adapter calls, or the reason they cannot run here (a one-line str)."""
    if not torch.cuda.is_available():
        return ("kernel='fla' runs flash-linear-attention's Triton kernels, which need a CUDA device: use "
                "kernel='auto' (fla on CUDA where installed, else trev's kernels) or kernel='torch'")
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
        from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except Exception as error:  # ImportError, or a Triton that does not run on this GPU
        return (f"kernel='fla' needs flash-linear-attention (pip install -r requirements-gpu.txt): "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return dict(chunk_linear_attn=chunk_linear_attn, fused_recurrent_linear_attn=fused_recurrent_linear_attn,
                chunk_simple_gla=chunk_simple_gla, fused_recurrent_simple_gla=fused_recurrent_simple_gla,
                chunk_gla=chunk_gla, fused_recurrent_gla=fused_recurrent_gla,
                chunk_gated_delta_rule=chunk_gated_delta_rule,
                fused_recurrent_gated_delta_rule=fused_recurrent_gated_delta_rule)


def fla_reference_ops():
    """fla's own pure-PyTorch references of the same ops (fla.ops.*.naive), under the Triton ops' names: what the
    tests and check_gpu.py's CPU dry run put in FLA_OPS. They compute in float32, token by token or chunk by chunk.
    Where fla has no reference of a chunk op, its recurrent reference stands in (the same recurrence); gla's has no
    scale argument (it applies K^-1/2), so its shim scales q to give `scale`."""
    from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule
    from fla.ops.gla.naive import naive_recurrent_gla
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_recurrent_simple_gla

    def recurrent_gla(q, k, v, gk, scale, initial_state, output_final_state):
        return naive_recurrent_gla(q * (scale * q.size(-1) ** 0.5), k, v, gk, initial_state, output_final_state)
    return dict(chunk_linear_attn=naive_recurrent_linear_attn, fused_recurrent_linear_attn=naive_recurrent_linear_attn,
                chunk_simple_gla=naive_chunk_simple_gla, fused_recurrent_simple_gla=naive_recurrent_simple_gla,
                chunk_gla=recurrent_gla, fused_recurrent_gla=recurrent_gla,
                chunk_gated_delta_rule=naive_chunk_gated_delta_rule,
                fused_recurrent_gated_delta_rule=naive_recurrent_gated_delta_rule)


def fla_unavailable():
    """None where the adapter can run (FLA_OPS is set, or fla's Triton ops load on this machine), else why not."""
    ops = FLA_OPS if FLA_OPS is not None else triton_fla_ops()
    return ops if isinstance(ops, str) else None


def fla_linear_attention(q, k, v, log_decay=None, state=None, chunk_size=64):
    """chunked_linear_attention through fla's ops: the same signature, layout and result. No decay: fla's linear_attn
    (normalize=False: a normaliser is the layer's column of ones in v); a decay per token: simple_gla, its g; a decay
    per key channel: gla, its gk, with log decays clamped at MIN_CHANNEL_LOG_DECAY as chunked_linear_attention
    clamps them. chunk_size is trev's kernel's: fla's ops choose their own."""
    if log_decay is None:
        return run_fla('linear_attn', q, k, v, {'normalize': False}, state)
    if log_decay.dim() == 4:
        return run_fla('gla', q, k, v, {'gk': log_decay.clamp_min(MIN_CHANNEL_LOG_DECAY)}, state)
    return run_fla('simple_gla', q, k, v, {'g': log_decay.expand(q.size(0), -1, -1)}, state)


def fla_delta_rule(q, k, v, beta, log_decay=None, state=None, chunk_size=64):
    """chunked_delta_rule through fla's gated delta rule op (the same signature, layout and result); without a decay
    its g is 0, the delta rule itself (fla's chunk_delta_rule refuses float32, which the parity check needs)."""
    return run_fla('gated_delta_rule', q, k, v,
                   {'g': torch.zeros_like(beta) if log_decay is None else log_decay, 'beta': beta}, state)


def run_fla(name, q, k, v, gates, state):
    """fla's op `name` on trev's q, k (B, H, T, F), v (B, H, T, E), gates (B, H, T[, F]) and state None or (B, H, F, E)
    -> (y (B, H, T, E), the final state (B, H, F, E)), both in q's wide dtype, as trev's kernels return them: its
    chunk form, or its fused recurrent form for at most FLA_RECURRENT_TOKENS tokens without gradient (decoding).
    Every convention that differs from trev's is converted here, in one place:
      layout   fla takes (B, T, H, .) and the state as trev's (B, H, K, V)
      scale    fla multiplies q by `scale` (default K^-1/2); trev's features carry their own scaling: scale = 1
      dtypes   fla's kernels run in bfloat16 or float32: bfloat16 where v is (under bfloat16 autocast, as trev's
               kernel runs its intra-chunk matmuls), float32 otherwise; gates and the state in float32
      widths   F and E zero-padded to a multiple of 16 (fla's 16-bit backward refuses odd widths; zero key channels
               and zero value columns change nothing) and cut off again
    A non-tensor gate (normalize) passes as it is. Autocast is off inside: fla casts nothing itself."""
    ops = FLA_OPS if FLA_OPS is not None else triton_fla_ops()
    if isinstance(ops, str):
        raise ValueError(ops)
    B, H, T, Fd = q.shape
    E = v.size(-1)
    wide = wide_dtype(q)
    compute = torch.bfloat16 if v.dtype == torch.bfloat16 else torch.float32
    recurrent = T <= FLA_RECURRENT_TOKENS and not torch.is_grad_enabled()
    op = ops[('fused_recurrent_' if recurrent else 'chunk_') + name]

    def fla_layout(x, dtype):  # (B, H, T, X) -> (B, T, H, X + pad) or (B, H, T) -> (B, T, H)
        x = cast(x, dtype).transpose(1, 2)
        return (F.pad(x, (0, -x.size(-1) % 16)) if x.dim() == 4 else x).contiguous()
    with full_precision(q):
        gates = {key: fla_layout(x, torch.float32) if torch.is_tensor(x) else x for key, x in gates.items()}
        if state is not None:
            state = F.pad(cast(state, torch.float32), (0, -E % 16, 0, -Fd % 16))  # (B, H, F + pad, E + pad)
        y, final = op(q=fla_layout(q, compute), k=fla_layout(k, compute), v=fla_layout(v, compute), **gates,
                      scale=1.0, initial_state=state, output_final_state=True)
        return cast(y[..., :E].transpose(1, 2), wide), cast(final[:, :, :Fd, :E], wide)
# attention whose weights come from each query's row of scores, in blocks of queries


def blocked_attention(q, k, v, weigh, block_size, causal, offset=0):
    """y_i = sum_j w_ij v_j, where query i's weights over the keys are any function of its row of scores q_i . k_j
    (sigmoid attention, softmax with a forget-gate bias, stick-breaking), without a (T, T) matrix: the queries go in
    blocks of c = block_size, each block's (c, K) scores turned into weights by weigh(scores, first) -> weights of the
    same shape (any dtype), where `first` is the position of the block's first query and the keys are positions
    0 .. K - 1: causal, K = the position after the block's last query (later keys have weight 0 and are left out);
    else every key.
    q (B, H, T, D): queries at positions offset .. offset + T - 1; k (B, H, Tk, D), v (B, H, Tk, E): keys and values
    at positions 0 .. Tk - 1 (causal: Tk = offset + T). Returns (B, H, T, E).
    With autograd on, each block runs under torch.utils.checkpoint: between forward and backward only the inputs are
    kept (the blocks' scores and weights are not), and backward recomputes one block at a time, flash attention's
    trade of one more forward for O(T) memory. Python loops over the T / c blocks, never over tokens.
    Time O(T Tk (D + E)) (causal: half of it), memory O(B H c Tk) for a block's temporaries, O(B H T E) for y.
    The last block goes first: causal, each block's temporaries are then no larger than the previous block's, and
    fit in the memory it freed, where growing ones fragment a heap (glibc without mmap, as bench.py times CPU
    calls: fox's fwdbwd at T = 8192 held 3.8 GB resident in first-to-last order, 1.1 GB in this one).
    """
    blocks = []  # last block first
    for start in reversed(range(0, q.size(2), block_size)):
        query = q[:, :, start:start + block_size]
        first = offset + start
        keys = first + query.size(2) if causal else k.size(2)
        inputs = (weigh, query, k[:, :, :keys], v[:, :, :keys], first)
        if torch.is_grad_enabled():
            blocks.append(checkpoint(weighted_values, *inputs, use_reentrant=False))
        else:
            blocks.append(weighted_values(*inputs))
    return torch.cat(blocks[::-1], dim=2)


def weighted_values(weigh, q, k, v, first):
    """One block of blocked_attention: weigh(q k^T, first) @ v, the weights in v's dtype."""
    return cast(weigh(q @ k.transpose(-2, -1), first), v.dtype) @ v
