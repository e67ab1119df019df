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
The linear-attention family (KernelAttention) computes its causal forward and its decoding with one
chunkwise method, attend_chunkwise(q, k, v, state) -> (y, new_state): attend runs it from state None and
attend_step delegates to it.
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
    norm: str = 'layernorm'       # 'layernorm' or 'rmsnorm', for the block's pre-norms
    mlp_ratio: int = 4
    chunk_size: int = 64          # chunk length of the chunkwise-parallel linear-attention kernel
    local_window: int = 128       # local: keys per query (causal: this token and the w-1 before it)
    performer_features: int = 256 # performer: number of random features m


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
        return starts, final.squeeze(-2)
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
    """Causal linear attention, chunkwise-parallel: y_i = sum_{j<=i} (q_i . k_j) a_{j+1..i} v_j + q_i S_0 a_{1..i},
    where a_{j+1..i} = exp(sum_{t=j+1}^{i} log_decay_t) (1 without decay) and S_0 is the incoming state.

    q, k: (B, H, T, F) feature-mapped queries/keys; v: (B, H, T, E); log_decay: None or (B|1, H, T), <= 0;
    state: None or (B, H, F, E). Returns y (B, H, T, E) and the state after the last token (B, H, F, E).
    Within a chunk of C tokens a masked (C, C) matmul; across chunks the states entering each chunk, from
    chunk_states (batched, no loop over chunks), each applied to its chunk's queries.
    Time O(T C (F + E) + T F E + (T / C) G F E) with G = chunk_states' group (16), memory O(T C + (T / C) F E):
    no (T, T) and no (T, F, E) tensor. Backward (ChunkwiseLinearAttention) about 1.4x the forward's matmuls, as
    it recomputes the (C, C) scores and the chunk states instead of keeping them: between forward and backward
    only q, k, v (in chunks), log_decay and state are kept.
    Precision: decays, chunk contributions, states, the inter-chunk product and y are computed in float32 (float64
    inputs stay float64) whatever the inputs' dtype or autocast: these are sums over the whole sequence. Only the
    two intra-chunk matmuls (four in backward) run in bfloat16 when v comes in bfloat16 (bfloat16 autocast, or a
    bfloat16 model): bfloat16 has float32's range, while a chunk's sum of positive scores (a normaliser) can pass
    float16's 65504.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, log_decay, state)):
        return ChunkwiseLinearAttention.apply(q, k, v, log_decay, state, chunk_size)
    # no gradient wanted (decoding, evaluation): the same forward, without an autograd Function's overhead per call
    C = min(chunk_size, q.size(2))
    return ChunkwiseLinearAttention.attend(*(in_chunks(t, C) for t in (q, k, v)), log_decay, state, q.size(2))


def in_chunks(x, C):
    """(B, H, T, X) -> (B, H, N, C, X), N = ceil(T / C), contiguous (one copy where x is not), zero-padded at the
    end: zero queries, keys, values and log-decays after the last token change nothing before it."""
    pad = -x.size(2) % C
    return (F.pad(x, (0, 0, 0, pad)) if pad else x).unflatten(2, (-1, C)).contiguous()


def chunk_decays(log_decay, C, N, like):
    """Each chunk's decay factors, with b_i = sum of log_decay from the chunk's first token to token i and b_C over
    the whole chunk: (within, from_start, to_end, chunk_log_decay) = (exp(b_i - b_j) for j <= i and 0 above the
    diagonal (B|1, H, N, C, C), exp(b_i) (B|1, H, N, C, 1), exp(b_C - b_j) (B|1, H, N, C, 1), b_C (B|1, H, N)), in
    like's dtype. Without decay: (the (C, C) causal mask, None, None, zeros (N,)). The kernel's only place that
    reads log_decay: a per-channel decay would change these factors (then scaling the F side: q, k, state rows)."""
    mask = causal_mask(C, C, like.device)
    if log_decay is None:
        return mask, None, None, like.new_zeros(N)
    b = F.pad(cast(log_decay, like.dtype), (0, N * C - log_decay.size(-1))).unflatten(-1, (N, C)).cumsum(-1)
    within = (b[..., :, None] - b[..., None, :]).masked_fill_(~mask, float('-inf')).exp_()  # (B|1, H, N, C, C)
    return within, b[..., None].exp(), (b[..., -1:] - b)[..., None].exp(), b[..., -1]


def weigh_within(scores, within):
    """scores (B, H, N, C, C) times chunk_decays' `within` (the causal mask, or the decay weights), in place."""
    return scores.masked_fill_(~within, 0) if within.dtype == torch.bool else scores.mul_(within)


class ChunkwiseLinearAttention(torch.autograd.Function):
    """chunked_linear_attention's forward, and its backward written out: nothing but the inputs is kept for
    backward, which recomputes the (C, C) scores (one matmul) and the chunk states (one matmul and chunk_states),
    each when it needs them, so that no (C, C) tensor or per-chunk state outlives the forward and at most two are
    held at once in backward. Autograd on the forward would keep every chunk's scores, states and copies.

    Per chunk (rows i, j; b, within W, from_start exp(b), to_end exp(b_C - b) as in chunk_decays), with S_n the
    state entering chunk n, A = (q k^T) * W and G_n the gradient of the loss with respect to S_n:
        forward   y = A v + exp(b) * (q S_n)              S_{n+1} = exp(b_C) S_n + k^T (exp(b_C - b) * v)
        backward  G_N = the final state's gradient, G_n = exp(b_C) G_{n+1} + q^T (exp(b) * dy): chunk_states run from
                  the last chunk to the first, G_0 the incoming state's gradient
                  dA = (dy v^T) * W
                  dq = dA k + exp(b) * (dy S_n^T)          dk = dA^T q + (exp(b_C - b) * v) G_{n+1}^T
                  dv = A^T dy + (exp(b_C - b) * k) G_{n+1}
                  dL/db_i = sum_f (q * dq - k * dk)_if, plus <G_{n+1}, S_{n+1}> at the chunk's last token (every
                  factor exp(b_i - b_j), exp(b_i), exp(b_C - b_j) scales a row of q or k); dL/dlog_decay_t = the
                  sum of dL/db_i over the chunk's tokens i >= t.
    tests/test_attention.py checks it against autograd on the plain formula in float64, and with gradcheck.
    """

    @staticmethod
    def forward(ctx, q, k, v, log_decay, state, chunk_size):
        T = q.size(2)
        C = min(chunk_size, T)
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
            q, k = cast(q, wide), cast(k, wide)
            within, from_start, to_end, chunk_log_decay = chunk_decays(log_decay, C, N, q)
            v_end = cast(v, wide) if to_end is None else cast(v, wide) * to_end
            starts, S = ChunkwiseLinearAttention.states(k, v_end, chunk_log_decay, state)
            del v_end
            y = q @ starts  # inter-chunk part, (B, H, N, C, E)
            del starts
            if from_start is not None:
                y.mul_(from_start)
            scores = weigh_within(cast(q, low) @ cast(k, low).transpose(-2, -1), within)  # (B, H, N, C, C)
            y += scores @ cast(v, low)  # intra-chunk part
        return y.flatten(2, 3)[:, :, :T], S.view(B, H, Fd, -1)

    @staticmethod
    def states(k, v_to_end, chunk_log_decay, state):
        """The states entering each chunk (B, H, N, F, E) and after the last (B, H, F E), from the chunks' keys and
        their values decayed to the chunk's end (B, H, N, C, .), in k's dtype."""
        chunk_kv = k.transpose(-2, -1) @ v_to_end  # each chunk's contribution to the state, (B, H, N, F, E)
        starts, S = chunk_states(chunk_kv.flatten(-2), chunk_log_decay,
                                 None if state is None else cast(state, k.dtype).flatten(-2))
        return starts.view(chunk_kv.shape), S

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
            within, from_start, to_end, chunk_log_decay = chunk_decays(log_decay, C, N, q)
            # across chunks first, while dk and dv do not exist yet: the states, recomputed, give dq; then G_{n+1}
            # from the reverse recurrence gives dk and dv
            dy_start = dy if from_start is None else dy * from_start  # exp(b) * dy
            v_end = v if to_end is None else v * to_end
            starts, S = ChunkwiseLinearAttention.states(k, v_end, chunk_log_decay, state)
            dq = dy_start @ starts.transpose(-2, -1)  # (B, H, N, C, F)
            after = None  # the states after each chunk, S_{n+1}, for the decay's gradient
            if ctx.needs_input_grad[3]:
                after = torch.cat([starts[:, :, 1:], S.view(B, H, 1, Fd, -1)], dim=2)  # (B, H, N, F, E)
            del starts, S
            # each chunk's q^T (exp(b) dy), (B, H, N, F E), from the last chunk to the first
            to_state = (q.transpose(-2, -1) @ dy_start).flatten(-2).flip(-2)
            del dy_start
            reverse, d_state = chunk_states(to_state, chunk_log_decay.flip(-1), dS.flatten(-2))
            del to_state
            G = reverse.flip(-2).view(B, H, N, Fd, -1)  # G_{n+1}: the gradient of the state after each chunk
            del reverse
            dk = v_end @ G.transpose(-2, -1)  # (B, H, N, C, F)
            del v_end
            dv = (k if to_end is None else k * to_end) @ G  # (B, H, N, C, E)
            # within chunks, the scores recomputed: dv += A^T dy, then dA = (dy v^T) * W gives dq and dk
            q_low, k_low, v_low, dy_low = (cast(t, low) for t in (q, k, v, dy))
            scores = weigh_within(q_low @ k_low.transpose(-2, -1), within)  # A, (B, H, N, C, C)
            add_matmul(dv, scores.transpose(-2, -1), dy_low)
            del scores
            d_scores = weigh_within(dy_low @ v_low.transpose(-2, -1), within)  # dA
            add_matmul(dq, d_scores, k_low)
            add_matmul(dk, d_scores.transpose(-2, -1), q_low)
            del d_scores
            d_log_decay = None
            if after is not None:
                d_b = (q * dq).sum(-1) - (k * dk).sum(-1)  # (B, H, N, C)
                d_b[..., -1] += (G * after).sum((-2, -1))
                d_log_decay = d_b.flip(-1).cumsum(-1).flip(-1).flatten(2)[..., :T].sum_to_size(log_decay.shape)
        grads = (cast(g.flatten(2, 3)[:, :, :T], dtype) for g, dtype in zip((dq, dk, dv), dtypes))
        return (*grads, d_log_decay, None if state is None else cast(d_state.view(state.shape), state.dtype), None)


def add_matmul(out, a, b):
    """out += a @ b in place for (B, H, N, ., .) tensors: one baddbmm_, no product tensor, where a and b come in
    out's dtype (otherwise, in bfloat16 within chunks, their product is added)."""
    if a.dtype != out.dtype:
        return out.add_(a @ b)
    return out.view(-1, *out.shape[-2:]).baddbmm_(a.flatten(0, 2), b.flatten(0, 2))


def append_ones(v):
    """[v, 1]: one matmul then yields both the numerator sum(s_ij v_j) and the normaliser sum(s_ij)."""
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


def split_normaliser(y, eps):
    """y = [numerator, normaliser] from append_ones -> numerator / (normaliser + eps)."""
    return y[..., :-1] / (y[..., -1:] + eps)


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
            raise ValueError(f"{name} is causal only: set causal=True or pick another variant")
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.causal = config.causal
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, pad_mask=None, reference=False):
        """x: (B, T, C); pad_mask: (B, T) bool, True at padding (bidirectional only).
        reference=True runs the naive form of the same formula (for tests)."""
        if pad_mask is not None and self.causal:
            raise ValueError("pad_mask is for bidirectional attention; in causal mode put padding at the end")
        q, k, v = self.split_heads(x)
        attend = self.attend_reference if reference else self.attend
        return self.output(attend(q, k, v, pad_mask), x)

    def step(self, x, state=None):
        """Recurrent decoding: x (B, T, C) are the next T >= 1 tokens after those summarised by state
        (None = start of the sequence). Returns their outputs (B, T, C) and the new state."""
        if not self.causal:
            raise ValueError("step() decodes causally; this layer was built with causal=False")
        q, k, v = self.split_heads(x)
        y, state = self.attend_step(q, k, v, state)
        return self.output(y, x), state

    def split_heads(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return [t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v)]  # (B, H, T, D)

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
    O(t D) time (SDPA over the filled prefix) and O(D) new memory, nothing copied.
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
        if T == 1:
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
    write s_ij once more, straight from the paper, in `reference_scores` for attend_reference.

    Causal: attend_chunkwise (chunked_linear_attention) for training and decoding alike, time
    O(T C (F + D) + T F D), memory O(T C + (T / C) F D); decoding keeps a fixed (F, D) state per head:
    O(F D) per token whatever the position.
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

    def finish(self, y, dtype):
        """Numerator / normaliser (when normalising), in y's precision, then back to dtype (the input's)."""
        return cast(split_normaliser(y, self.eps) if self.normalise else y, dtype)

    def wide_features(self, q, k, offset):
        """features(q, k, offset) in float32 at least and with autocast off, whatever q's dtype or the autocast."""
        with full_precision(q):
            return self.features(cast(q, wide_dtype(q)), cast(k, wide_dtype(k)), offset)

    def attend(self, q, k, v, pad_mask):
        if self.causal:
            return self.attend_chunkwise(q, k, v, None)[0]
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

    def attend_step(self, q, k, v, state):
        return self.attend_chunkwise(q, k, v, state)

    def attend_reference(self, q, k, v, pad_mask):
        """y_i = sum_j s_ij v_j [/ (sum_j s_ij + eps)] over the allowed j, on the (T, T) matrix."""
        allowed = reference_mask(q.size(2), self.causal, pad_mask, q.device)
        scores = self.reference_scores(q, k).masked_fill(~allowed, 0)  # (B, H, T, T)
        y = scores @ v
        return y / (scores.sum(-1, keepdim=True) + self.eps) if self.normalise else y


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


class Retention(KernelAttention):
    """RetNet multi-scale retention. Sun et al. 2023, "Retentive Network", arXiv:2307.08621.

    Retention(X) = (Q K^T / sqrt(D) * Dm) V with rotary (xPos-style) positions on Q and K and the decay
    mask Dm_ij = gamma_h^(i-j) for j <= i (bidirectional: gamma_h^|i-j|), gamma_h = 1 - 2^(-5-h) per head.
    MSR(X) = (swish(X W_G) * GroupNorm_h(heads)) W_O; the gate W_G and the group norm are this variant's
    extra parameters. No normaliser: the group norm makes each head's output scale-free.
    Complexity as KernelAttention (F = D), the decay folded into the chunks.
    """
    normalise = False

    def __init__(self, config):
        super().__init__(config)
        self.gate = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.group_norm = nn.GroupNorm(config.n_head, config.n_embd)

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

    def output(self, y, x):
        B, H, T, D = y.shape
        # GroupNorm with a group per head = LayerNorm over each head's D channels + per-channel affine;
        # layer_norm in the (B, H, T, D) layout is the same arithmetic, about twice as fast on CPU
        norm = self.group_norm
        y = F.layer_norm(y, (D,), eps=norm.eps) * norm.weight.view(H, 1, D) + norm.bias.view(H, 1, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.dropout(self.proj(F.silu(self.gate(x)) * y))


class PerformerAttention(KernelAttention):
    """Performer, FAVOR+. Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794.

    exp(q . k / sqrt(D)) ~= phi(q) . phi(k) with positive random features
    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), x = q / D^(1/4), W: (m, D) orthogonal Gaussian rows (blocks
    of a QR factor, rows rescaled to chi-distributed norms). Normalised like softmax. F = m.
    W is drawn once at construction from torch's RNG and kept as a buffer (saved in checkpoints);
    `redraw_projection()` draws a new one, and nothing else ever does.
    Stabiliser: each feature vector is divided by a common factor, which cancels between numerator and
    normaliser. Queries use their own max. Keys use the running max up to their position (so no future
    token leaks in): a larger max arriving at step t rescales the state by exp(max_{t-1} - max_t), which
    is exactly a data-dependent decay <= 1 and goes through the same chunked kernel (attend_chunkwise, for
    the causal forward and decoding alike).
    Complexity as KernelAttention with F = m.
    """
    eps = 0.0  # features are positive, the normaliser never vanishes

    def __init__(self, config):
        super().__init__(config)
        self.n_features = config.performer_features
        self.register_buffer('projection', torch.empty(self.n_features, self.head_dim))
        self.redraw_projection()

    @torch.no_grad()
    def redraw_projection(self):
        D = self.head_dim
        blocks = [torch.linalg.qr(torch.randn(D, D))[0].T for _ in range(-(-self.n_features // D))]
        rows = torch.cat(blocks)[:self.n_features]                       # orthogonal within each block
        norms = torch.randn(self.n_features, D).norm(dim=1, keepdim=True)  # chi(D), as for Gaussian rows
        self.projection.copy_(rows * norms)

    def project(self, x):
        """(W x, |x|^2 / 2) with x scaled by D^(-1/4): (B, H, T, m) and (B, H, T, 1). log(phi(x) sqrt(m)) = W x - |x|^2 / 2.
        In float32 at least, autocast off: these are exponents, and a bfloat16 W x (|W x| ~ 5) errs by ~1% in exp."""
        with full_precision(x):
            x = cast(x, wide_dtype(x)) * self.head_dim ** -0.25
            return x @ cast(self.projection, x.dtype).T, (x * x).sum(-1, keepdim=True) / 2

    def query_features(self, q):
        return exp_stabilised(self.project(q)[0], -1)  # |q|^2 / 2 is common to a query's features: cancels too

    def reference_scores(self, q, k):
        """s_ij = phi(q_i) . phi(k_j), phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), x scaled by D^(-1/4): no stabiliser."""
        def phi(x):
            x = x / self.head_dim ** 0.25
            return torch.exp(x @ self.projection.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(self.n_features)
        return phi(q) @ phi(k).transpose(-2, -1)

    def attend(self, q, k, v, pad_mask):
        if self.causal:
            return self.attend_chunkwise(q, k, v, None)[0]
        wk, half_norm = self.project(k)
        log_k = wk - half_norm
        if pad_mask is not None:  # padded keys must not set the stabiliser
            log_k = log_k.masked_fill(pad_mask[:, None, :, None], float('-inf'))
        fk = exp_stabilised(log_k, (-2, -1))  # bidirectional: one max over all keys is fine
        return self.bidirectional(self.query_features(q), fk, v, pad_mask)

    def attend_chunkwise(self, q, k, v, state):
        wk, half_norm = self.project(k)
        key_max = (wk.amax(-1, keepdim=True) - half_norm).squeeze(-1).detach()  # largest log-feature, (B, H, T)
        previous = key_max[..., :1] if state is None else state['key_max']
        running = torch.maximum(key_max.cummax(-1).values, previous)      # max over keys 0..t
        log_decay = torch.diff(running, dim=-1, prepend=previous).neg()   # running_{t-1} - running_t <= 0
        # + (-shift) rather than - shift: a subtraction's backward would negate the whole (T, m) gradient
        fk = (wk + -(half_norm + running[..., None])).exp()
        y, kv = chunked_linear_attention(self.query_features(q), fk, append_ones(v), log_decay,
                                         None if state is None else state['kv'], self.chunk_size)
        return self.finish(y, v.dtype), {'kv': kv, 'key_max': running[..., -1:]}


ATTENTION = {
    'softmax': SoftmaxAttention,
    'linear': LinearAttention,
    'performer': PerformerAttention,
    'cosformer': CosformerAttention,
    'retention': Retention,
    'norm_linear': NormLinearAttention,
    'local': LocalAttention,
}


def build_attention(config):
    if config.attention not in ATTENTION:
        raise ValueError(f"unknown attention '{config.attention}'; choose one of: {', '.join(ATTENTION)}")
    return ATTENTION[config.attention](config)


# ----------------------------------------------------------------------------------------------
# the block every trainer builds its model from


def make_norm(config):
    if config.norm == 'layernorm':
        return nn.LayerNorm(config.n_embd, bias=config.bias)
    if config.norm == 'rmsnorm':
        return nn.RMSNorm(config.n_embd)
    raise ValueError(f"unknown norm '{config.norm}'; choose 'layernorm' or 'rmsnorm'")


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
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.norm_attn = make_norm(config)
        self.attn = build_attention(config)
        self.norm_mlp = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, pad_mask=None):
        x = x + self.attn(self.norm_attn(x), pad_mask)
        return x + self.mlp(self.norm_mlp(x))

    def step(self, x, state=None):
        """Decoding: as forward, for the next T tokens after `state`; returns (y, new state)."""
        y, state = self.attn.step(self.norm_attn(x), state)
        x = x + y
        return x + self.mlp(self.norm_mlp(x)), state


@dataclass
class LMConfig(LayerConfig):
    """The block's LayerConfig (attention, n_embd, n_head, causal, block_size, ...) plus a language model's own
    fields: the trunk of train_gpt.py's GPT (causal) and train_bert.py's BERT (bidirectional)."""
    vocab_size: int = 256
    n_layer: int = 12


class TransformerLM(nn.Module):
    """Token + learned position embedding, n_layer pre-norm Blocks (causal or not, as config says), final norm,
    LM head tied to the embedding. forward(idx) -> logits; train_gpt.py's GPT and train_bert.py's BERT add their
    loss."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = make_norm(config)
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
