"""
Every attention variant in trev, behind one interface, and the transformer block they all share.

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
pad_mask is for bidirectional attention only; a causal batch puts its padding at the end.
With n_kv_head < n_head (LayerConfig.n_kv_head, grouped-query attention; variants with supports_kv_groups), k and v
come to attend and attend_step with n_kv_head heads, query head h reading kv head h // (n_head / n_kv_head), and to
attend_reference one per query head (Attention.reference picks them).

All variants share the q/k/v projection (`qkv`), the optional short convolution on q, k, v (LayerConfig.short_conv)
and the output path (Attention.output): an output norm and gate where a variant has them (set_output), the output
projection (`proj`) and dropout on the attention output (no variant drops attention weights), so regularisation is
the same whatever the attention. Parameters a variant adds (retention's gate and group norm, norm_linear's output
norm, ...) are its own and show up in the parameter count.
The linear family (RecurrentAttention; KernelAttention for those built on a feature map) computes its causal forward
and its decoding with one chunkwise method, attend_chunkwise(q, k, v, state) -> (y, new_state), which calls the
kernels of kernels.py (every numeric the variants share); a causal training sequence longer than
LayerConfig.recompute_segment goes through it in segments, each recomputed in backward. Under autocast the family
computes its positions, angles, feature exponents, decays, chunk states and normalisers in float32; the
projections, softmax attention and, in bfloat16, the matmuls within a chunk run in the autocast dtype.
tests/test_attention.py checks every registered class against its reference, decoding against the parallel
forward, causality, padding and determinism; tests/test_precision.py checks it under bfloat16 and float16 autocast
against float64, and under torch.compile against eager.
"""
import math
import weakref
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import (MIN_CHANNEL_LOG_DECAY, attend_in_segments, cast, causal_mask, chunked_delta_rule,
                     chunked_linear_attention, full_precision, wide_dtype, wide_linear)
from kernels import blocked_attention


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
                                  # this many tokens, each recomputed (kernels.SegmentedRecompute); 0 = never
    # grouped-query attention (GQA, MQA)
    n_kv_head: int = 0            # heads of keys and values, each read by n_head / n_kv_head query heads; 0 = n_head


# ----------------------------------------------------------------------------------------------
# the interface


class Attention(nn.Module):
    """Base class: projections, head split/merge, mode checks, the output path. Subclasses implement the attend
    methods, and set an output norm and gate where they have them (set_output)."""
    supports_causal = True
    supports_bidirectional = True
    supports_kv_groups = False  # n_kv_head < n_head: what the variant keeps per head is built from k and v alone

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
        if config.n_kv_head < 0 or config.n_head % (config.n_kv_head or config.n_head):
            raise ValueError(f"n_kv_head={config.n_kv_head}: must divide n_head={config.n_head} (0 = n_head)")
        if config.n_kv_head not in (0, config.n_head) and not self.supports_kv_groups:
            accepted = ', '.join(key for key, cls in ATTENTION.items() if cls.supports_kv_groups)
            raise ValueError(f"{name} keeps a state per query head (built with per-head parameters), so it cannot "
                             f"share keys and values between heads: set n_kv_head=0 (= n_head), or for "
                             f"n_kv_head < n_head pick one of: {accepted}")
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.group_size = self.n_head // self.n_kv_head  # query heads per key/value head
        self.head_dim = config.n_embd // config.n_head
        self.causal = config.causal
        if config.short_conv < 0:
            raise ValueError(f"short_conv={config.short_conv}: the convolution's kernel size must be 0 (off) or more")
        if config.recompute_segment < 0:
            raise ValueError(f"recompute_segment={config.recompute_segment}: use 0 (off) or a number of tokens")
        kv_width = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.bias)  # 3C without groups
        self.short_conv = (ShortConvolution(self.qkv.out_features, config.short_conv, config.bias) if config.short_conv
                           else None)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.set_output()

    def forward(self, x, pad_mask=None, reference=False):
        """x: (B, T, C); pad_mask: (B, T) bool, True at padding (bidirectional only).
        reference=True runs the naive form of the same formula (for tests)."""
        if pad_mask is not None and self.causal:
            raise ValueError("pad_mask is for bidirectional attention; in causal mode put padding at the end")
        q, k, v, _ = self.split_heads(x, pad_mask)
        attend = self.reference if reference else self.attend
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
        """q (B, H, T, D) and k, v (B, n_kv_head, T, D) from x (B, T, C): the shared projection, then the short
        convolution where it is on (continuing from history, its last inputs). Returns q, k, v and the convolution's
        new history (None if off)."""
        B, T, C = x.shape
        kv_width = self.n_kv_head * self.head_dim
        qkv = self.qkv(x)  # (B, T, C + 2 kv_width)
        if self.short_conv is not None:
            qkv, history = self.short_conv(qkv, pad_mask, history)
        q, k, v = qkv.split([C, kv_width, kv_width], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))
        return q, k, v, history

    def repeat_kv(self, x):
        """(B, n_kv_head, T, D) keys or values -> (B, n_head, T, D), query head h reading kv head h // group_size
        (the grouping of SDPA's enable_gqa); x itself without groups."""
        return x if self.group_size == 1 else x.repeat_interleave(self.group_size, dim=1)

    def reference(self, q, k, v, pad_mask, **gates):
        """What forward(reference=True) runs: attend_reference with each query head given its group's keys and values
        (kv head h // group_size, picked by index here, independently of repeat_kv)."""
        kv_head = torch.arange(self.n_head, device=k.device) // self.group_size
        return self.attend_reference(q, k[:, kv_head], v[:, kv_head], pad_mask, **gates)

    def gates(self, x):
        """What a variant computes per token from the layer input x (B, T, C) besides q, k, v (data-dependent
        decays, step sizes): a dict of tensors passed to attend, attend_reference and attend_step as keyword
        arguments, so that the fast path, the reference and decoding see the same values. None here."""
        return {}

    def set_output(self, norm=None, gate=None):
        """output()'s optional parts, nn.Identity and Ungated where None: norm on the heads' outputs, (B, H, T, D) ->
        (B, H, T, D), and gate(y, x) on the merged heads y (B, T, C), from the layer input x. A variant registers each
        under its own name, the one its checkpoints hold ('group_norm', 'gate', ...), and passes it here: output()
        refers to it without registering it a second time, which would save its parameters twice."""
        object.__setattr__(self, 'output_norm', nn.Identity() if norm is None else norm)
        object.__setattr__(self, 'output_gate', Ungated() if gate is None else gate)

    def output(self, y, x):
        """(B, H, T, D) attention output -> (B, T, C): the output norm, the heads merged, the output gate from the
        layer input x (B, T, C), the projection, dropout."""
        B, H, T, D = y.shape
        y = self.output_norm(y).transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        return self.dropout(self.proj(self.output_gate(y, x)))


class RecurrentAttention(Attention):
    """The linear family's machinery: a fixed-size state, and one chunkwise method for the causal forward and for
    decoding. A subclass defines
        features(q, k, offset)                     # (B, H, T, D) -> (B, H, T, F), tokens at positions offset, ...
        attend_chunkwise(q, k, v, state, **gates)  # the T >= 1 tokens after state (None: the start) -> (y, new state)
        attend_bidirectional(q, k, v, pad_mask)    # where it has a bidirectional form
    Causal: attend runs attend_chunkwise from state None and attend_step continues it, so decoding keeps a fixed
    (F, D) state per head: O(F D) per token whatever the position. Training on T > recompute_segment = S tokens goes
    segment by segment (kernels.SegmentedRecompute): memory kept for backward O(T D) (q, k, v) + O((T / S) F D),
    temporaries O(S C + S F), time one more forward of the attention core.
    Precision: features (positions, angles, exponents) are computed in float32 at least with autocast off
    (wide_features), as are the kernels' sums over the sequence; the output returns to the input's dtype.
    GQA (supports_kv_groups, where the state is built from k and v alone, never with per-head parameters or decays):
    k and v are repeated to the query heads for the kernels, the arithmetic of n_kv_head = n_head, and a decoding
    state is kept once per kv head (n_kv_head / n_head of its size).
    """

    def __init__(self, config):
        super().__init__(config)
        self.chunk_size = config.chunk_size
        self.recompute_segment = config.recompute_segment

    def features(self, q, k, offset):
        """(B, H, T, D) queries/keys of tokens at positions offset, offset + 1, ... -> (B, H, T, F) features."""
        raise NotImplementedError

    def wide_features(self, q, k, offset):
        """features(q, k, offset) in float32 at least and with autocast off, whatever q's dtype or the autocast."""
        with full_precision(q):
            return self.features(cast(q, wide_dtype(q)), cast(k, wide_dtype(k)), offset)

    def attend(self, q, k, v, pad_mask, **gates):
        if not self.causal:
            return self.attend_bidirectional(q, self.repeat_kv(k), self.repeat_kv(v), pad_mask)
        if torch.is_grad_enabled() and 0 < self.recompute_segment < q.size(2):
            return attend_in_segments(self.attend_step, q, k, v, gates, self.recompute_segment, self.parameters())
        return self.attend_step(q, k, v, None, **gates)[0]

    def attend_step(self, q, k, v, state, **gates):
        """attend_chunkwise on k, v of n_kv_head heads, the state kept once per kv head: the causal forward (in
        segments or whole), and decoding."""
        if self.group_size == 1:
            return self.attend_chunkwise(q, k, v, state, **gates)
        # grouped (supports_kv_groups): the query heads of a group share their state, kept once per kv head, given
        # to each query head of the group for the step and taken back from its first
        if state is not None:
            state = {key: self.repeat_kv(x) if torch.is_tensor(x) else x for key, x in state.items()}
        y, state = self.attend_chunkwise(q, self.repeat_kv(k), self.repeat_kv(v), state, **gates)
        return y, {key: x[:, ::self.group_size].clone() if torch.is_tensor(x) else x for key, x in state.items()}


class KernelAttention(RecurrentAttention):
    """The feature-map template of the linear family: y_i = sum_j s_ij v_j [/ (sum_j s_ij + eps)], s_ij =
    phi(q_i) . phi(k_j) a_ij, where a_ij is 1 or a decay gamma^|i-j|. Subclasses choose the feature map (`features`),
    whether to normalise (`normalise`, with `eps` added to the normaliser) and an optional per-head log-decay, and
    write s_ij once more, straight from the paper, in `reference_scores` (or in `allowed_scores`, where s_ij
    depends on which keys query i may use) for attend_reference.

    Causal: chunked_linear_attention, time O(T C (F + D) + T F D), memory O(T C + (T / C) F D), as RecurrentAttention
    runs it (decoding, segments).
    Bidirectional: phi(Q) (phi(K)^T V), time O(T F D), memory O(T (F + D) + F D); with decay, a causal
    pass plus an anti-causal pass.
    Reference: the (T, T) matrix s, time O(T^2 (F + D)), memory O(T^2).
    """
    normalise = True
    eps = 1e-6

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

    def attend_bidirectional(self, q, k, v, pad_mask):
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
        offset = 0 if state is None else state['offset']
        fq, fk = self.wide_features(q, k, offset)
        log_decay = self.log_decay(fq)
        if log_decay is not None:
            log_decay = log_decay.expand(1, -1, q.size(2))
        y, kv = chunked_linear_attention(fq, fk, self.values(v), log_decay,
                                         None if state is None else state['kv'], self.chunk_size)
        return self.finish(y, v.dtype), {'kv': kv, 'offset': offset + q.size(2)}

    def attend_reference(self, q, k, v, pad_mask):
        """y_i = sum_j s_ij v_j [/ (sum_j s_ij + eps)] over the allowed j, on the (T, T) matrix."""
        scores = self.allowed_scores(q, k, reference_mask(q.size(2), self.causal, pad_mask, q.device))
        y = scores @ v
        return self.divide(y, scores.sum(-1, keepdim=True)) if self.normalise else y

    def allowed_scores(self, q, k, allowed):
        """(B, H, T, T) s_ij where query i may use key j (`allowed`, (B|1, 1, T, T) bool), 0 elsewhere."""
        return self.reference_scores(q, k).masked_fill(~allowed, 0)


# ----------------------------------------------------------------------------------------------
# the parts variants share


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


class Ungated(nn.Module):
    """The output gate of a variant without one: y as it is."""

    def forward(self, y, x):
        return y


class SwishGate(nn.Linear):
    """The output gate of RetNet, GLA and Gated DeltaNet: swish(x W_g) * y, from the layer input x (B, T, C), on the
    merged heads y (B, T, C). x W_g is this nn.Linear's forward, C -> C, initialised as any nn.Linear."""

    def forward(self, y, x):
        return F.silu(super().forward(x)) * y


class HeadGroupNorm(nn.GroupNorm):
    """nn.GroupNorm(n_head, C) with a group per head (LayerNorm over each head's D channels, then a per-channel
    affine), on the heads' outputs in their (B, H, T, D) layout: the same arithmetic, about twice as fast on CPU."""

    def forward(self, y):
        H, D = y.size(1), y.size(3)
        return F.layer_norm(y, (D,), eps=self.eps) * self.weight.view(H, 1, D) + self.bias.view(H, 1, D)


class AllHeadsRMSNorm(nn.RMSNorm):
    """nn.RMSNorm(C) over all heads' channels of a token, on the heads' outputs: (B, H, T, D) -> (B, H, T, D)."""

    def forward(self, y):
        B, H, T, D = y.shape
        return super().forward(y.transpose(1, 2).reshape(B, T, H * D)).view(B, T, H, D).transpose(1, 2)


def masked_softmax_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(D)) v over the keys where `allowed` is True (broadcast to (..., Tq, Tk)).
    A row with no allowed key averages over all keys instead of producing NaN (only padding rows)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (..., Tq, Tk)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v


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


def append_ones(v):
    """[v, 1]: one matmul then yields both the numerator sum(s_ij v_j) and the normaliser sum(s_ij)."""
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)


def exp_stabilised(log_x, dims):
    """exp(log_x - max over dims): the common factor cancels wherever a ratio is taken."""
    return (log_x - log_x.amax(dims, keepdim=True).detach()).exp()


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

    @staticmethod
    def extended(state, k, v, first_capacity):
        """The state after `state` (None: the start of a sequence) and the T tokens whose keys and values are k, v
        (B, H, T, D), token t at slot t: a cache of first_capacity tokens at the start, doubled whenever a sequence
        outlives it (the copies stay O(1) per token on average), written in place where KVCache.to_write allows."""
        start = 0 if state is None else state.length
        end = start + k.size(2)
        capacity = first_capacity if state is None else state.cache.capacity
        if end > capacity:
            capacity = max(end, 2 * capacity)
        cache = KVCache.to_write(state, k, v, capacity)
        cache.k[:, :, start:end] = k
        cache.v[:, :, start:end] = v
        return KVState(cache, end)

    @property
    def keys(self):
        """The keys of the state's tokens, (B, H, length, D): a view of the cache (softmax's layout)."""
        return self.cache.k[:, :, :self.length]

    @property
    def values(self):
        return self.cache.v[:, :, :self.length]


# ----------------------------------------------------------------------------------------------
# the variants, in registry order


class SoftmaxAttention(Attention):
    """Scaled dot-product attention. Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.

    y_i = sum_j softmax_j(q_i . k_j / sqrt(D)) v_j over j <= i (causal) or all unpadded j.
    Fast path: F.scaled_dot_product_attention (flash / memory-efficient kernels where available).
    Time O(T^2 D); memory O(T) with a fused kernel, O(T^2) without. Decoding keeps a KV cache (KVCache) allocated
    for block_size tokens, doubled whenever a sequence outlives it, written in place: a token at position t costs
    O(t D) time (attention over the filled prefix) and O(D) new memory, nothing copied.
    GQA / MQA (Ainslie et al. 2023, arXiv:2305.13245; Shazeer 2019, arXiv:1911.02150): with n_kv_head < n_head, a
    group of n_head / n_kv_head query heads reads one head of keys and values (SDPA's enable_gqa), and the cache
    holds n_kv_head heads.
    """
    supports_kv_groups = True

    def __init__(self, config):
        super().__init__(config)
        self.cache_size = config.block_size  # the KV cache's first allocation, in tokens

    def attend(self, q, k, v, pad_mask):
        grouped = self.group_size > 1
        if pad_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=grouped)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~pad_mask[:, None, None, :], enable_gqa=grouped)

    def attend_reference(self, q, k, v, pad_mask):
        return masked_softmax_attention(q, k, v, reference_mask(q.size(2), self.causal, pad_mask, q.device))

    def attend_step(self, q, k, v, state):
        start = 0 if state is None else state.length
        B, H, T, D = q.shape
        state = KVState.extended(state, k, v, self.cache_size)
        end, grouped = state.length, self.group_size > 1
        k, v = state.keys, state.values  # the filled prefix, (B, n_kv_head, end, D)
        if T == 1 and q.dtype in (torch.float32, torch.float64):
            # one query: two matrix-vector products, each reading the cache once, take about half SDPA's time on CPU
            # (bench.py decode); half precision keeps SDPA, whose kernels keep the scores in float32
            q = q.view(B, self.n_kv_head, self.group_size, D)  # a kv head's queries (T = 1), read the cache once
            scores = (k @ q.transpose(-2, -1)).transpose(-2, -1) * D ** -0.5  # (B, n_kv_head, group_size, end)
            y = (torch.softmax(scores, dim=-1) @ v).view(B, H, 1, D)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=grouped)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, end, q.device, offset=start),
                                               enable_gqa=grouped)
        return y, state


class LinearAttention(KernelAttention):
    """Linear transformer. Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236.

    phi(x) = elu(x) + 1; y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps), S_i = sum_j phi(k_j) v_j^T,
    z_i = sum_j phi(k_j), over j <= i (causal) or all j. F = D. Complexity as KernelAttention.
    S and z are built from k and v alone: with n_kv_head < n_head a group of query heads shares them (GQA).
    """
    supports_kv_groups = True

    def features(self, q, k, offset):
        return F.elu(q) + 1, F.elu(k) + 1

    def reference_scores(self, q, k):
        return (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # s_ij = phi(q_i) . phi(k_j)


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
    W is shared by all heads and the running max is the keys', so the state is built from k and v alone: with
    n_kv_head < n_head a group of query heads shares it (GQA).
    """
    supports_kv_groups = True
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

    def attend_bidirectional(self, q, k, v, pad_mask):
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


class CosformerAttention(KernelAttention):
    """cosFormer. Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention", arXiv:2202.08791.

    s_ij = relu(q_i) . relu(k_j) cos(pi/2 (i - j) / M), normalised by sum_j s_ij. The cosine splits,
    cos(a - b) = cos a cos b + sin a sin b, so s_ij is a dot product of 2D features
    [relu(x_t) cos(pi t / 2M), relu(x_t) sin(pi t / 2M)] and stays linear. M = block_size (not T), so a
    token's output does not depend on the sequence length and decoding matches the parallel form.
    F = 2D. Complexity as KernelAttention.
    The state is built from k, v and positions alone: with n_kv_head < n_head a group of query heads shares it (GQA).
    """
    supports_kv_groups = True

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
        self.gate = SwishGate(config.n_embd, config.n_embd, bias=config.bias)
        self.group_norm = HeadGroupNorm(config.n_head, config.n_embd)
        self.set_output(norm=self.group_norm, gate=self.gate)

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


class NormLinearAttention(LinearAttention):
    """TransNormer's NormAttention. Qin et al. 2022, "The Devil in Linear Transformer", arXiv:2210.10340.

    O = RMSNorm(phi(Q) (phi(K)^T V)) with phi(x) = elu(x) + 1: linear attention without the denominator
    (whose unbounded gradients the paper blames for instability), the output normalised instead.
    The RMSNorm over the C channels is this variant's extra parameters. Complexity as KernelAttention.
    """
    normalise = False

    def __init__(self, config):
        super().__init__(config)
        self.out_norm = AllHeadsRMSNorm(config.n_embd)
        self.set_output(norm=self.out_norm)


class LocalAttention(Attention):
    """Sliding-window softmax attention. Child et al. 2019 (arXiv:1904.10509) and Beltagy et al. 2020,
    "Longformer" (arXiv:2004.05150).

    Softmax attention restricted to a window of w = local_window keys: causal, keys i-w+1 .. i;
    bidirectional, keys i-r .. i+r with r = w // 2 (2r + 1 keys).
    Fast path: queries in blocks of w attend to their own and neighbouring key blocks (2w causal, 3w
    bidirectional keys). Time O(T w D), memory O(T w). Decoding keeps the last w keys and values in a
    ring (KVCache, token t at slot t % w), written in place: a token costs O(w D) whatever its position.
    GQA / MQA as softmax's: the ring holds n_kv_head heads.
    """
    supports_kv_groups = True

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
        k, v = self.repeat_kv(k), self.repeat_kv(v)
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
            y = F.scaled_dot_product_attention(q, cache.k[:, :, :held], cache.v[:, :, :held],
                                               enable_gqa=self.group_size > 1)
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
            y = masked_softmax_attention(q, self.repeat_kv(k), self.repeat_kv(v),
                                         self.allowed(position[cached:, None] - position, True))
        else:  # a long prefill: the blocked path, with zero queries standing in for the held tokens
            y = self.attend(F.pad(q, (0, 0, cached, 0)), k, v, None)[:, :, cached:]
        end = start + T
        kept = min(w, end)
        cache = KVCache(k, v, w)
        slots = torch.arange(end - kept, end, device=q.device) % w
        cache.k.index_copy_(2, slots, k[:, :, -kept:])
        cache.v.index_copy_(2, slots, v[:, :, -kept:])
        return y, KVState(cache, end)


class GatedLinearAttention(RecurrentAttention):
    """GLA. Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training",
    arXiv:2312.06635.

    S_t = Diag(alpha_t) S_{t-1} + k_t^T v_t, y_t = q_t S_t / sqrt(D): a data-dependent decay per key channel,
    alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/16) (the paper's low-rank gate, rank 16, and temperature 16, which keeps
    alpha_t near 1), then the paper's output: proj(swish(x W_r) * GroupNorm_h(heads)). No normaliser, no feature map.
    The paper halves the key dimension; here q, k, v keep the shared projections (F = D). Extra parameters: the
    gate (C x 16, 16 x C, C), the output gate (C x C) and the group norm (2C). Causal only (the paper defines no
    bidirectional form). One addition: log alpha_t >= -8 (MIN_CHANNEL_LOG_DECAY; alpha_t >= 3.4e-4, a gate logit
    below -128), which keeps the chunked kernel's factors within float32 (kernels.chunk_decays).
    Causal: chunked_linear_attention with a decay per key channel, in chunks of 16: time O(T 16 D + T D^2),
    memory O(T 16 + (T / 16) D^2); decoding keeps a (D, D) state per head. Reference: the recurrence, one token at a
    time.
    """
    supports_bidirectional = False
    gate_rank = 16
    gate_temperature = 16

    def __init__(self, config):
        super().__init__(config)
        self.gate = SwishGate(config.n_embd, config.n_embd, bias=config.bias)
        self.group_norm = HeadGroupNorm(config.n_head, config.n_embd)
        self.set_output(norm=self.group_norm, gate=self.gate)
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


class DeltaNet(RecurrentAttention):
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

    def __init__(self, config):
        super().__init__(config)
        self.beta = nn.Linear(config.n_embd, config.n_head, bias=False)
        self.head_norm = nn.RMSNorm(self.head_dim, eps=1e-5)  # a fixed eps (fla's): torch's default is the dtype's
        self.set_output(norm=self.head_norm)

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
        self.gate = SwishGate(config.n_embd, config.n_embd, bias=config.bias)
        self.set_output(norm=self.head_norm, gate=self.gate)

    def gates(self, x):
        step = wide_linear(self.alpha, x)  # (B, T, H)
        step = F.softplus(step + cast(self.step_bias, step.dtype))
        log_alpha = -cast(self.log_decay_rate, step.dtype).exp() * step
        return super().gates(x) | {'log_alpha': log_alpha.transpose(1, 2)}  # (B, H, T)


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


class BlockedAttention(Attention):
    """The softmax-like variants whose weights SDPA cannot compute: query i's weight for key j, w_ij, is a function of
    its own row of scores q_i . k_j (and of per-token gates), y_i = sum_j w_ij v_j. A subclass writes the weights of a
    block of queries in weigh(scores, first, ...) and, straight from its paper, attend_reference.
    Fast path: kernels.blocked_attention, queries in blocks of c = chunk_size, each block's (c, T) scores weighed and
    recomputed in backward: time O(T^2 D) (causal: half of it), memory O(T D) kept for backward and O(c T) per batch
    and head for one block's temporaries, never (T, T). Decoding keeps a KV cache as softmax does (KVState.extended,
    block_size tokens at first): a token at position t costs O(t D).
    GQA: k and v are repeated to the query heads for the kernel (the cache holds n_kv_head heads, repeated at each
    step: O(t D) more per token).
    """
    supports_kv_groups = True

    def __init__(self, config):
        super().__init__(config)
        self.chunk_size = config.chunk_size
        self.cache_size = config.block_size  # the KV cache's first allocation, in tokens

    def weigh(self, scores, first, pad_mask=None):
        """scores (B, H, c, K): q_i . k_j of the queries at positions first .. first + c - 1 and the keys 0 .. K - 1
        (causal: K = first + c) -> the weights w_ij (B, H, c, K), in float32 at least; 0 where key j is not allowed
        (after i when causal, padding)."""
        raise NotImplementedError

    def attend(self, q, k, v, pad_mask):
        weigh = lambda scores, first: self.weigh(scores, first, pad_mask)
        return blocked_attention(q, self.repeat_kv(k), self.repeat_kv(v), weigh, self.chunk_size, self.causal)

    def attend_step(self, q, k, v, state):
        start = 0 if state is None else state.length
        state = KVState.extended(state, k, v, self.cache_size)
        keys, values = self.repeat_kv(state.keys), self.repeat_kv(state.values)
        return blocked_attention(q, keys, values, self.weigh, self.chunk_size, True, offset=start), state

    def wide_scores(self, scores):
        """q . k / sqrt(D) in float32 at least: the matmul runs in the autocast dtype, what follows does not."""
        return cast(scores, wide_dtype(scores)) * self.head_dim ** -0.5

    def allowed(self, scores, first, pad_mask):
        """(B|1, 1, c, K) bool: the keys each query of the block may use (causal: j <= i; not padding)."""
        c, K = scores.shape[-2:]
        allowed = causal_mask(c, K, scores.device, offset=first) if self.causal else scores.new_ones(c, K, dtype=bool)
        return allowed if pad_mask is None else allowed & ~pad_mask[:, None, None, :]


class SigmoidAttention(BlockedAttention):
    """Sigmoid attention. Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
    arXiv:2409.04431.

    y_i = sum_j sigmoid(q_i . k_j / sqrt(D) + b) v_j over j <= i (causal) or all unpadded j, with the paper's bias
    b = -log n, n = block_size (the training length; fixed, so that an output does not depend on T and decoding
    matches the parallel form): each weight on its own, no normaliser across keys. The paper pairs it with LayerScale
    and a hybrid norm in its block; here it is the attention layer in trev's block. FlashSigmoid, the paper's kernel,
    is a fused GPU kernel; trev's fast path is BlockedAttention's. Complexity as BlockedAttention.
    """

    def __init__(self, config):
        super().__init__(config)
        self.score_bias = -math.log(config.block_size)

    def weigh(self, scores, first, pad_mask=None):
        weights = torch.sigmoid(self.wide_scores(scores) + self.score_bias)
        return weights.masked_fill(~self.allowed(scores, first, pad_mask), 0)

    def attend_reference(self, q, k, v, pad_mask):
        """The (T, T) matrix of weights 1 / (1 + exp(-(q_i . k_j / sqrt(D) + b))), zero where j is not allowed."""
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) + self.score_bias
        weights = 1 / (1 + torch.exp(-logits))
        return (weights * reference_mask(q.size(2), self.causal, pad_mask, q.device)) @ v


class DifferentialHeadNorm(nn.RMSNorm):
    """The Differential Transformer's per-head norm on (B, H, T, D): RMSNorm over each head's D channels (one weight
    vector for all heads, eps 1e-5, as the authors' code), times the fixed factor 1 - lambda_init."""

    def __init__(self, head_dim, factor):
        super().__init__(head_dim, eps=1e-5)
        self.factor = factor

    def forward(self, y):
        return super().forward(y) * self.factor


class DifferentialAttention(Attention):
    """Differential attention. Ye et al. 2024, "Differential Transformer", arXiv:2410.05258.

    Each head's query and key split in two, [q1, q2] and [k1, k2], of d = D / 2 channels (the paper's heads: D = 2d,
    H = C / 2d, so the projections are the shared ones); the value keeps all D:
    y = (softmax(q1 k1^T / sqrt(d)) - lambda softmax(q2 k2^T / sqrt(d))) v, over j <= i (causal) or all unpadded j,
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (learned vectors of d, N(0, 0.1^2) at initialisation,
    shared by the layer's heads), then the paper's per-head norm, (1 - lambda_init) RMSNorm(y) (DifferentialHeadNorm).
    lambda_init = 0.8 for every layer: the paper's 0.8 - 0.6 exp(-0.3 (l - 1)) needs the layer's depth, which a layer
    does not know; the paper's ablation gives 0.8 for every layer a loss within 0.003 of it. An odd D splits into
    ceil(D / 2) and floor(D / 2) channels, each map scaled by its own width. The paper's model is causal; the
    difference of two softmax maps is defined as well without the mask, and trev allows both.
    Extra parameters: the four lambda vectors (2D) and the norm's D weights.
    Fast path: two SDPA calls (flash or memory-efficient where available). Time O(T^2 D), memory O(T) with a fused
    kernel. Decoding keeps a KV cache as softmax does (KVState.extended); GQA through SDPA's enable_gqa.
    """
    supports_kv_groups = True
    lambda_init = 0.8

    def __init__(self, config):
        super().__init__(config)
        D = self.head_dim
        if D < 2:
            raise ValueError(f"diff splits each head's queries and keys in two: the head dim n_embd / n_head = {D} "
                             f"must be at least 2")
        self.first_half = (D + 1) // 2  # channels of q1 and k1; q2 and k2 have the other D // 2
        self.lambda_q1, self.lambda_k1 = (nn.Parameter(torch.randn(self.first_half) * 0.1) for _ in range(2))
        self.lambda_q2, self.lambda_k2 = (nn.Parameter(torch.randn(D - self.first_half) * 0.1) for _ in range(2))
        self.head_norm = DifferentialHeadNorm(D, 1 - self.lambda_init)
        self.set_output(norm=self.head_norm)
        self.cache_size = config.block_size  # the KV cache's first allocation, in tokens

    def difference_weight(self):
        """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, a 0-dim tensor."""
        return (torch.exp(self.lambda_q1 @ self.lambda_k1) - torch.exp(self.lambda_q2 @ self.lambda_k2)
                + self.lambda_init)

    def differential(self, q, k, v, **mask):
        """The two maps through SDPA (mask: is_causal or attn_mask), each with its own scale."""
        d = self.first_half
        grouped = self.group_size > 1
        first = F.scaled_dot_product_attention(q[..., :d], k[..., :d], v, scale=d ** -0.5, enable_gqa=grouped, **mask)
        second = F.scaled_dot_product_attention(q[..., d:], k[..., d:], v, scale=(q.size(-1) - d) ** -0.5,
                                                enable_gqa=grouped, **mask)
        return first - self.difference_weight() * second

    def attend(self, q, k, v, pad_mask):
        if pad_mask is None:
            return self.differential(q, k, v, is_causal=self.causal)
        return self.differential(q, k, v, attn_mask=~pad_mask[:, None, None, :])

    def attend_step(self, q, k, v, state):
        start = 0 if state is None else state.length
        state = KVState.extended(state, k, v, self.cache_size)
        mask = causal_mask(q.size(2), state.length, q.device, offset=start)
        return self.differential(q, state.keys, state.values, attn_mask=mask), state

    def attend_reference(self, q, k, v, pad_mask):
        """The paper's DiffAttn on the (T, T) maps: (softmax(Q1 K1^T / sqrt(d1)) - lambda softmax(Q2 K2^T / sqrt(d2)))
        V."""
        allowed = reference_mask(q.size(2), self.causal, pad_mask, q.device)
        d = self.first_half
        first = masked_softmax_attention(q[..., :d], k[..., :d], v, allowed)  # scaled by its own width
        second = masked_softmax_attention(q[..., d:], k[..., d:], v, allowed)
        lam = (self.lambda_q1 * self.lambda_k1).sum().exp() - (self.lambda_q2 * self.lambda_k2).sum().exp()
        return first - (lam + self.lambda_init) * second


class ForgettingAttention(BlockedAttention):
    """Forgetting attention (FoX). Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate",
    arXiv:2503.02130.

    y_i = sum_{j<=i} F_ij exp(q_i . k_j / sqrt(D)) v_j / sum_{j<=i} F_ij exp(q_i . k_j / sqrt(D)), F_ij = prod_{l=j+1}^i
    f_l, with a forget gate per head and token f_t = sigmoid(x_t w_f + b_f): softmax of the scores plus the log decay
    c_i - c_j, c_t = sum_{l<=t} log f_l (the cumulative log forget gate, float32 at least). This is the paper's
    forgetting attention in a LLaMA-style block (trev's); FoX (Pro)'s output gate, QK-norm and key shift are not
    included (short_conv is trev's own axis). Causal only (the gate decays the past). Extra parameters: w_f and b_f
    (C x H + H; b_f starts at 0, as every bias in trev).
    fla's naive_forgetting_attn (tests/test_zoo_softmax_like.py, where fla-core is installed) takes g = log f per
    token and query head, and adds the same c_i - c_j: the same convention; it computes in float32 whatever the
    inputs' dtype.
    Fast path: BlockedAttention's, each block's softmax over its rows whole (the block holds all of a row's keys).
    Complexity as BlockedAttention; decoding also keeps c of every token (B, H, t), appended at each step (O(t)).
    """
    supports_bidirectional = False

    def __init__(self, config):
        super().__init__(config)
        self.forget_gate = nn.Linear(config.n_embd, config.n_head, bias=True)

    def gates(self, x):
        return {'log_forget': F.logsigmoid(wide_linear(self.forget_gate, x)).transpose(1, 2)}  # (B, H, T)

    def weigh(self, scores, first, cumulative):
        """softmax_j(q_i . k_j / sqrt(D) + c_i - c_j) over j <= i; cumulative: c of every position up to the block's
        end, (B, H, >= first + c)."""
        c, K = scores.shape[-2:]
        decay = cumulative[..., first:first + c, None] - cumulative[..., None, :K]  # c_i - c_j, (B, H, c, K)
        logits = (self.wide_scores(scores) + decay).masked_fill(~self.allowed(scores, first, None), float('-inf'))
        return torch.softmax(logits, dim=-1)

    def attend(self, q, k, v, pad_mask, log_forget):
        cumulative = cast(log_forget, wide_dtype(log_forget)).cumsum(-1)
        weigh = lambda scores, first: self.weigh(scores, first, cumulative)
        return blocked_attention(q, self.repeat_kv(k), self.repeat_kv(v), weigh, self.chunk_size, True)

    def attend_step(self, q, k, v, state, log_forget):
        """state: {'kv': the KVState, 'cumulative_log_forget': c of every token so far (B, H, t)}."""
        cumulative = cast(log_forget, wide_dtype(log_forget)).cumsum(-1)
        kv = None
        if state is not None:
            kv, before = state['kv'], state['cumulative_log_forget']
            cumulative = torch.cat([before, before[..., -1:] + cumulative], dim=-1)
        start = 0 if kv is None else kv.length
        kv = KVState.extended(kv, k, v, self.cache_size)
        weigh = lambda scores, first: self.weigh(scores, first, cumulative)
        y = blocked_attention(q, self.repeat_kv(kv.keys), self.repeat_kv(kv.values), weigh, self.chunk_size, True,
                              offset=start)
        return y, {'kv': kv, 'cumulative_log_forget': cumulative}

    def attend_reference(self, q, k, v, pad_mask, log_forget):
        """The paper's form: F_ij = exp(sum of log f_l over j < l <= i), summed on a (T, T, T) mask, weights
        F_ij exp(s_ij) normalised over j <= i."""
        T = q.size(2)
        position = torch.arange(T, device=q.device)
        i, j, l = position[:, None, None], position[None, :, None], position[None, None, :]
        between = ((j < l) & (l <= i)).to(log_forget.dtype)                    # (T, T, T): l in (j, i]
        log_decay = torch.einsum('bhl,ijl->bhij', log_forget, between)          # log F_ij, (B, H, T, T)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) + log_decay
        logits = logits - logits.amax(-1, keepdim=True).detach()
        weights = torch.exp(logits) * (position[None, :] <= position[:, None])  # j <= i
        return (weights / weights.sum(-1, keepdim=True)) @ v


class StickBreakingAttention(BlockedAttention):
    """Stick-breaking attention. Tan et al. 2024, "Scaling Stick-Breaking Attention: An Efficient Implementation and
    In-depth Study", arXiv:2410.17980.

    Query i breaks a stick of length 1 over the keys before it, nearest first: beta_ij = sigmoid(q_i . k_j / sqrt(D)),
    A_ij = beta_ij prod_{j<l<i} (1 - beta_il) for j < i, and what is left, 1 - sum_j A_ij = prod_{l<i} (1 - beta_il),
    goes to the query's own value, as the authors' layer does: y_i = sum_{j<i} A_ij v_j + (1 - sum_j A_ij) v_i.
    No position embedding is needed (the order is in the weights); trev's block still adds its own. Causal only.
    Fast path in log space, a block's rows whole: log A_ij = log sigmoid(z_ij) + sum_{j<l<i} log sigmoid(-z_il), the
    sums as suffix sums over the row (flip, cumsum). fla's naive_stickbreaking_attn (attend_current=False, the
    default) returns sum_{j<i} A_ij v_j and the remainder apart; trev adds them as above (tests/test_zoo_softmax_like.py
    checks it against fla where fla-core is installed). Complexity as BlockedAttention.
    """
    supports_bidirectional = False

    def weigh(self, scores, first, pad_mask=None):
        z = self.wide_scores(scores)
        c, K = z.shape[-2:]
        query, key = first + torch.arange(c, device=z.device)[:, None], torch.arange(K, device=z.device)
        earlier = key < query  # (c, K): the keys that break query i's stick
        log_left = F.logsigmoid(-z).masked_fill(~earlier, 0)  # log(1 - beta_il), 0 where l is not before i
        suffix = log_left.flip(-1).cumsum(-1).flip(-1)      # sum_{l >= j} log(1 - beta_il)
        after = F.pad(suffix[..., 1:], (0, 1))              # sum_{l > j}, i.e. j < l < i
        weights = (F.logsigmoid(z) + after).exp().masked_fill(~earlier, 0)
        return torch.where(key == query, suffix[..., :1].exp(), weights)  # the remainder, prod_{l<i} (1 - beta_il)

    def attend_reference(self, q, k, v, pad_mask):
        """The stick broken key by key: for each distance d = 1, 2, ..., every query i takes beta_{i,i-d} of what it has
        left; the remainder stays on v_i."""
        B, H, T, D = q.shape
        beta = 1 / (1 + torch.exp(-(q @ k.transpose(-2, -1)) / math.sqrt(D)))  # (B, H, T, T)
        weights = q.new_zeros(B, H, T, T)
        left = q.new_ones(B, H, T)  # of query i's stick
        position = torch.arange(T, device=q.device)
        for distance in range(1, T):
            i = position[distance:]
            taken = left[..., distance:] * beta[:, :, i, i - distance]
            weights[:, :, i, i - distance] = taken
            left = torch.cat([left[..., :distance], left[..., distance:] - taken], dim=-1)
        weights[:, :, position, position] = left
        return weights @ v


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
    'sigmoid': SigmoidAttention,
    'diff': DifferentialAttention,
    'fox': ForgettingAttention,
    'stickbreaking': StickBreakingAttention,
}


def build_attention(config):
    if config.attention not in ATTENTION:
        raise ValueError(f"unknown attention '{config.attention}'; choose one of: {', '.join(ATTENTION)}")
    return ATTENTION[config.attention](config)


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
