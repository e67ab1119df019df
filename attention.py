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
and the output path (Attention.output): a norm of the heads' outputs and an output gate, the output projection
(`proj`) and dropout on the attention output (no variant drops attention weights), so regularisation is the same
whatever the attention. The norm and the gate are block-level axes every variant takes (LayerConfig.head_norm,
output_gate); by default each variant has its paper's (retention's gate and group norm, norm_linear's output norm,
none for softmax), declared in its paper_output. Parameters a variant adds are its own and show up in the parameter
count.
The linear family (RecurrentAttention; KernelAttention for those built on a feature map) computes its causal forward
and its decoding with one chunkwise method, attend_chunkwise(q, k, v, state) -> (y, new_state), which calls the
kernels of kernels.py (every numeric the variants share); a causal sequence longer than
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
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import (KERNELS, MIN_CHANNEL_LOG_DECAY, attend_in_segments, blocked_attention, cast, causal_mask,
                     chunk_states, chunked_delta_rule, chunked_generalized_delta_rule, chunked_linear_attention,
                     fla_delta_rule, fla_linear_attention, fla_unavailable, full_precision, in_chunks, wide_dtype,
                     wide_linear)


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
    rfa_normaliser_floor: float = 0.1  # rfa: the normaliser's weighted mean is kept >= this (its estimate can be <= 0)
    based_feature_dim: int = 16   # based: q and k projected to this many dims before the Taylor feature map
    recompute_segment: int = 1024 # linear family, causal: longer sequences run in segments of this many tokens,
                                  # each recomputed in backward (kernels.SegmentedRecompute); 0 = never
    # block-level axes of every variant: output()'s parts ('' = the variant's paper's, Attention.paper_output)
    output_gate: str = ''         # 'none' or 'swish': y * swish(x W_g), x the layer input (RetNet, GLA, Gated DeltaNet)
    head_norm: str = ''           # 'none', 'rmsnorm' (per head, DeltaNet's) or 'groupnorm' (per head, RetNet's, GLA's):
                                  # a norm of each head's output before the projection
    # Long Range Arena's efficient transformers: linformer, nystrom, synthesizer, fnet
    linformer_k: int = 256        # linformer: keys and values projected along the sequence to this many
    nystrom_landmarks: int = 64   # nystrom: landmarks, the means of this many segments of the queries and of the keys
    synthesizer_mode: str = 'dense'  # synthesizer: 'dense' (weights from each token alone) or 'random' (learned)
    # aft, bigbird, vicinity, sra
    aft_window: int = 0           # aft: s, the window of AFT-local's learned position biases; 0 = AFT-simple
    bigbird_block: int = 16       # bigbird: tokens per block (window, global and random attention go by blocks)
    bigbird_global: int = 1       # bigbird: the first this many blocks are global (attend to and from every token)
    bigbird_random: int = 3       # bigbird: random key blocks per query block (bidirectional only)
    sra_ratio: int = 2            # sra: keys and values from the patch grid reduced R x R (PVT's reduction ratio R)
    patch_grid_width: int = 0     # vicinity, sra: patches per image row; set by train_vit.py, not a knob (0: the
                                  # sequence is not an image, and vicinity and sra refuse it)
    class_tokens: int = 0         # vicinity, sra: tokens before the patches (ViT's class token); set by train_vit.py
    # GPU kernels
    kernel: str = 'auto'          # linear family, causal: 'torch' (trev's kernels), 'fla' (flash-linear-attention's
                                  # Triton ops, CUDA) or 'auto' (fla on CUDA where it is installed, else torch)
    # grouped-query attention (GQA, MQA)
    n_kv_head: int = 0            # heads of keys and values, each read by n_head / n_kv_head query heads; 0 = n_head
    # hybrid stacks
    layer_attention: str = ''     # each layer's attention, e.g. 'gated_deltanet*3,softmax' (names, each *count),
                                  # repeated to n_layer; '' = `attention` in every layer (layer_configs)


# ----------------------------------------------------------------------------------------------
# the interface


class Attention(nn.Module):
    """Base class: projections, head split/merge, mode checks, the output path. Subclasses implement the attend
    methods. output()'s norm and gate (OUTPUT_PARTS) are axes of every variant, LayerConfig.head_norm and output_gate,
    '' meaning the variant's paper's: a part an axis adds is built here, registered under its slot's name
    (output_norm, output_gate); a variant builds its paper's own where its __init__ always has (paper_part, so torch's
    RNG draws in the same order) under the names its checkpoints hold, and passes them to set_output."""
    supports_causal = True
    supports_bidirectional = True
    paper_output = {}  # the output parts of the variant's paper, axis -> kind, e.g. {'output_gate': 'swish'}; else none
    needs_patch_grid = False  # True where the layer reads an image's 2D grid of patches (only train_vit.py has one)
    supports_short_conv = True  # False where q, k, v do not come from the token sequence the convolution runs along
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
        if config.short_conv and not self.supports_short_conv:
            raise ValueError(f"short_conv={config.short_conv}: {name}'s keys do not come from the token sequence the "
                             f"convolution runs along; set short_conv=0")
        if config.recompute_segment < 0:
            raise ValueError(f"recompute_segment={config.recompute_segment}: use 0 (off) or a number of tokens")
        if config.kernel not in KERNELS:
            raise ValueError(f"kernel={config.kernel!r}: choose one of {', '.join(KERNELS)}")
        if config.kernel == 'fla' and fla_unavailable():
            raise ValueError(fla_unavailable())
        kv_width = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.bias)  # 3C without groups
        self.short_conv = (ShortConvolution(self.qkv.out_features, config.short_conv, config.bias) if config.short_conv
                           else None)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.output_kinds = {}
        for axis, kinds in OUTPUT_PARTS.items():
            chosen = getattr(config, axis)
            if chosen and chosen not in kinds:
                raise ValueError(f"{axis}='{chosen}': choose '' (the variant's own) or one of: {', '.join(kinds)}")
            self.output_kinds[axis] = chosen or self.paper_output.get(axis, 'none')
        object.__setattr__(self, 'output_norm', nn.Identity())
        object.__setattr__(self, 'output_gate', Ungated())
        for axis, slot in (('head_norm', 'output_norm'), ('output_gate', 'output_gate')):
            if not self.keeps_paper(axis) and self.output_kinds[axis] != 'none':
                setattr(self, slot, OUTPUT_PARTS[axis][self.output_kinds[axis]](config))

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

    def keeps_paper(self, axis):
        """Whether the output part on axis ('head_norm', 'output_gate') is the variant's paper's (or none in both)."""
        return self.output_kinds[axis] == self.paper_output.get(axis, 'none')

    def paper_part(self, axis, config):
        """The variant's own output part on axis, its paper_output kind, built now; None where the axis replaces it."""
        return OUTPUT_PARTS[axis][self.output_kinds[axis]](config) if self.keeps_paper(axis) else None

    def set_output(self, norm=None, gate=None):
        """Points output()'s parts at the variant's own: norm on the heads' outputs, (B, H, T, D) -> (B, H, T, D), and
        gate(y, x) on the merged heads y (B, T, C), from the layer input x; None leaves a part as it is (nn.Identity,
        Ungated, or what an axis added). A variant registers each under its own name, the one its checkpoints hold
        ('group_norm', 'gate', ...), and passes it here: output() refers to it without registering it a second time,
        which would save its parameters twice."""
        for axis, slot, part in (('head_norm', 'output_norm', norm), ('output_gate', 'output_gate', gate)):
            if part is None:
                continue
            if not (axis in self.paper_output and self.keeps_paper(axis)):  # the axes could not remove or replace it
                raise TypeError(f"{type(self).__name__}: an own {axis} must be its paper_output['{axis}'], built only "
                                f"where keeps_paper('{axis}') (paper_part)")
            object.__setattr__(self, slot, part)

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
    (F, D) state per head: O(F D) per token whatever the position. A call on T > recompute_segment = S tokens goes
    segment by segment, temporaries O(S C + S F): without autograd one segment after the other (attend_step), in
    training through kernels.SegmentedRecompute: memory kept for backward O(T D) (q, k, v) + O((T / S) F D), time one
    more forward of the attention core.
    Precision: features (positions, angles, exponents) are computed in float32 at least with autocast off
    (wide_features), as are the kernels' sums over the sequence; the output returns to the input's dtype.
    Kernels: attend_chunkwise calls linear_attention or delta_rule, which run trev's kernels or, where this layer
    runs fla (uses_fla: LayerConfig.kernel), their fla twins (kernels.fla_linear_attention, fla_delta_rule): fla's
    Triton op of the same math for training, its fused recurrent op for decoding. `fla_ops` names the fla ops a
    variant's causal path can take; a variant without any (empty) always runs trev's kernels.
    GQA (supports_kv_groups, where the state is built from k and v alone, never with per-head parameters or decays):
    k and v are repeated to the query heads for the kernels, the arithmetic of n_kv_head = n_head, and a decoding
    state is kept once per kv head (n_kv_head / n_head of its size).
    """
    fla_ops = ()

    def __init__(self, config):
        super().__init__(config)
        self.chunk_size = config.chunk_size
        self.recompute_segment = config.recompute_segment
        self.kernel = config.kernel if self.fla_ops and self.causal else 'torch'

    def uses_fla(self, x):
        """Whether this layer runs fla's ops on tensors like x: kernel 'fla', or 'auto' with x on CUDA where fla's
        ops load."""
        return self.kernel == 'fla' or (self.kernel == 'auto' and x.is_cuda and fla_unavailable() is None)

    def linear_attention(self, q, k, v, log_decay=None, state=None):
        """kernels.chunked_linear_attention(q, k, v, log_decay, state, chunk_size), or its fla twin (uses_fla)."""
        kernel = fla_linear_attention if self.uses_fla(q) else chunked_linear_attention
        return kernel(q, k, v, log_decay, state, self.chunk_size)

    def delta_rule(self, q, k, v, beta, log_decay=None, state=None):
        """kernels.chunked_delta_rule(q, k, v, beta, log_decay, state, chunk_size), or its fla twin (uses_fla)."""
        kernel = fla_delta_rule if self.uses_fla(q) else chunked_delta_rule
        return kernel(q, k, v, beta, log_decay, state, self.chunk_size)

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
        """The causal forward (in segments or whole) and decoding: the tokens after state -> (y, new state). Without
        autograd, more than recompute_segment tokens (an evaluation, a long prompt) go segment by segment, each from
        the state the one before left, so the temporaries are one segment's."""
        segment, T = self.recompute_segment, q.size(2)
        if torch.is_grad_enabled() or not 0 < segment < T:
            return self.attend_grouped(q, k, v, state, **gates)
        ys = []
        for start in range(0, T, segment):  # q, k, v and each gate: (B, H, T, ...) -> (B, H, segment, ...)
            q_part, k_part, v_part, *gate_parts = (x[:, :, start:start + segment] for x in (q, k, v, *gates.values()))
            y, state = self.attend_grouped(q_part, k_part, v_part, state, **dict(zip(gates, gate_parts)))
            ys.append(y)
        return torch.cat(ys, dim=2), state

    def attend_grouped(self, q, k, v, state, **gates):
        """attend_chunkwise on k, v of n_kv_head heads, the state kept once per kv head."""
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
    fla (kernel='fla'): fla's linear_attn op without decay, simple_gla with one, on the same features and values
    (the normaliser is their column of ones: fla's own normalisation adds 1e-10, not the variant's eps).
    """
    normalise = True
    eps = 1e-6
    fla_ops = ('linear_attn', 'simple_gla')

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
        y, kv = self.linear_attention(fq, fk, self.values(v), log_decay, None if state is None else state['kv'])
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


class HeadRMSNorm(nn.RMSNorm):
    """RMSNorm over each head's D channels, one weight vector shared by the heads, eps 1e-5 (fla's; torch's default is
    the dtype's): the norm of DeltaNet and Gated DeltaNet, on the heads' outputs (B, H, T, D) -> (B, H, T, D)."""

    def __init__(self, head_dim):
        super().__init__(head_dim, eps=1e-5)


class AllHeadsRMSNorm(nn.RMSNorm):
    """nn.RMSNorm(C) over all heads' channels of a token, on the heads' outputs: (B, H, T, D) -> (B, H, T, D)."""

    def forward(self, y):
        B, H, T, D = y.shape
        return super().forward(y.transpose(1, 2).reshape(B, T, H * D)).view(B, T, H, D).transpose(1, 2)


OUTPUT_PARTS = {  # output()'s parts, each an axis of every variant (LayerConfig.head_norm, output_gate): kind -> built
    'head_norm': {'none': lambda config: None,
                  'rmsnorm': lambda config: HeadRMSNorm(config.n_embd // config.n_head),
                  'groupnorm': lambda config: HeadGroupNorm(config.n_head, config.n_embd)},
    'output_gate': {'none': lambda config: None,
                    'swish': lambda config: SwishGate(config.n_embd, config.n_embd, bias=config.bias)},
}


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
    fla: linear_attn, v with its column of ones.
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
    fla: simple_gla, the stabiliser's rescaling as its per-token log decay g, v with its column of ones.
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
        y, kv = self.linear_attention(self.query_features(q), fk, append_ones(v), log_decay,
                                      None if state is None else state['kv'])
        return self.finish(y, v.dtype), {'kv': kv, 'key_max': running[..., -1:].clone()}


class CosformerAttention(KernelAttention):
    """cosFormer. Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention", arXiv:2202.08791.

    s_ij = relu(q_i) . relu(k_j) cos(pi/2 (i - j) / M), normalised by sum_j s_ij. The cosine splits,
    cos(a - b) = cos a cos b + sin a sin b, so s_ij is a dot product of 2D features
    [relu(x_t) cos(pi t / 2M), relu(x_t) sin(pi t / 2M)] and stays linear. M = block_size (not T), so a
    token's output does not depend on the sequence length and decoding matches the parallel form.
    F = 2D. Complexity as KernelAttention.
    fla: linear_attn on the 2D features, v with its column of ones.
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
    fla: simple_gla with g = log gamma_h at every token (the rotated, scaled features as q and k; scale 1).
    """
    normalise = False
    paper_output = {'output_gate': 'swish', 'head_norm': 'groupnorm'}

    def __init__(self, config):
        super().__init__(config)
        self.gate = self.paper_part('output_gate', config)
        self.group_norm = self.paper_part('head_norm', config)
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
    fla: linear_attn without a normaliser.
    """
    normalise = False
    paper_output = {'head_norm': 'rmsnorm over all heads'}

    def __init__(self, config):
        super().__init__(config)
        self.out_norm = AllHeadsRMSNorm(config.n_embd) if self.keeps_paper('head_norm') else None
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
    fla: gla (chunk_gla, fused_recurrent_gla), gk = log alpha_t clamped as above, q / sqrt(D) given with scale 1.
    """
    supports_bidirectional = False
    fla_ops = ('gla',)
    gate_rank = 16
    gate_temperature = 16
    paper_output = {'output_gate': 'swish', 'head_norm': 'groupnorm'}

    def __init__(self, config):
        super().__init__(config)
        self.gate = self.paper_part('output_gate', config)
        self.group_norm = self.paper_part('head_norm', config)
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
        y, kv = self.linear_attention(fq, fk, v, log_alpha, None if state is None else state['kv'])
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
    to values), with the authors' maps q, k, v <- L2Norm(SiLU(q)), L2Norm(SiLU(k)), SiLU(v) (after the short
    convolution where it is on), beta_t = sigmoid(x_t W_beta) per head, and an RMSNorm over each head's output. No
    scale on q, as the papers write it (q is unit-length; fla's kernels default to D^-1/2 on q unless given a scale).
    Extra parameters: W_beta (C x H) and the norm's D weights.
    The paper's short convolution is trev's short_conv axis (off by default; the paper's 4: --short_conv=4).
    Causal only (the paper defines no bidirectional form).
    Causal: chunked_delta_rule (the UT transform, a triangular solve per chunk), time O(T C (C + D) + T D^2),
    memory O(T (C + D) + (T / C) D^2); decoding keeps a (D, D) state per head. Reference: the recurrence, one
    token at a time.
    fla: the gated delta rule op with g = 0 (fla's chunk_delta_rule refuses float32), on trev's l2-normalised
    features (no in-kernel l2 norm), scale 1, beta as a (B, T, H) tensor; fla's state is the transpose of the paper's
    (K, V), as trev's.
    """
    supports_bidirectional = False
    paper_output = {'head_norm': 'rmsnorm'}
    fla_ops = ('gated_delta_rule',)

    def __init__(self, config):
        super().__init__(config)
        self.beta = nn.Linear(config.n_embd, config.n_head, bias=False)
        self.head_norm = self.paper_part('head_norm', config)
        self.set_output(norm=self.head_norm)

    def gates(self, x):
        return {'beta': torch.sigmoid(wide_linear(self.beta, x)).transpose(1, 2)}  # (B, H, T)

    def features(self, q, k, offset):
        return F.normalize(F.silu(q), dim=-1), F.normalize(F.silu(k), dim=-1)

    def attend_chunkwise(self, q, k, v, state, beta, log_alpha=None):
        fq, fk = self.wide_features(q, k, 0)
        values = F.silu(cast(v, fq.dtype))  # in float32 at least, as q's and k's maps
        y, kv = self.delta_rule(fq, fk, values, beta, log_alpha, None if state is None else state['kv'])
        return cast(y, v.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask, beta, log_alpha=None):
        """The paper's recurrence token by token, in its layout: S (E, D), S_t = S_{t-1} alpha_t (I - beta_t k k^T)
        + beta_t v k^T, y_t = S_t q_t (alpha_t = 1 for DeltaNet), on q, k, v <- unit(SiLU(q)), unit(SiLU(k)),
        SiLU(v)."""
        B, H, T, D = q.shape
        unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        q, k, v = unit(q * torch.sigmoid(q)), unit(k * torch.sigmoid(k)), v * torch.sigmoid(v)
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


def initial_step_bias(n):
    """(n,) b with softplus(b) log-uniform in [0.001, 0.1]: the initial step of Mamba, Gated DeltaNet and KDA (per
    head or per channel), drawn from torch's RNG."""
    step = torch.exp(torch.rand(n) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    return step + torch.log(-torch.expm1(-step))  # softplus^-1(step)


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet. Yang et al. 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
    arXiv:2412.06464.

    S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T: DeltaNet (SiLU on q, k and v, no q scale, beta,
    per-head RMSNorm) with the paper's data-dependent decay, Mamba2's parameterisation alpha_t = exp(-exp(A_h)
    softplus(x_t W_alpha + dt_h)), A_h = log of U(0, 16) and dt_h = softplus^-1 of a log-uniform step in [0.001, 0.1]
    at initialisation (`log_decay_rate`, `step_bias`), and the paper's output gate: proj(swish(x W_g) *
    RMSNorm_h(heads)). Extra parameters: W_beta, W_alpha (C x H each), A and dt (H each), the norm's D weights and W_g
    (C x C). Causal only. Complexity as DeltaNet. fla: the gated delta rule op, g = log alpha_t, otherwise as
    DeltaNet.
    """
    paper_output = {'output_gate': 'swish', 'head_norm': 'rmsnorm'}

    def __init__(self, config):
        super().__init__(config)
        H = config.n_head
        self.alpha = nn.Linear(config.n_embd, H, bias=False)
        self.log_decay_rate = nn.Parameter(torch.empty(H).uniform_(0, 16).clamp_min(1e-4).log())
        self.step_bias = nn.Parameter(initial_step_bias(H))  # softplus(step_bias) = the initial step
        self.gate = self.paper_part('output_gate', config)
        self.set_output(gate=self.gate)

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
    exp(-|sigma (x - y)|^2 / 2). Normalised: y_t = phi(q_t) S_t / max(phi(q_t) z_t, rfa_normaliser_floor W_t).
    Causal, gated (the paper's gated RFA, rfa_gate=True): S_t = g_t S_{t-1} + (1 - g_t) phi(k_t)^T v_t, z_t likewise,
    g_t = sigmoid(x_t w_g + b_g) per head: a per-token decay g_t and keys weighted by 1 - g_t in the shared kernel.
    Bidirectional, or rfa_gate=False: the ungated form (the paper's gate is a recency bias over the past).
    W is drawn once at construction and kept as a buffer (the paper redraws it during training).
    The floor: the features can be negative, so the normaliser's estimate can come near 0 or below it although the
    kernel is positive (the reason Performer's features are positive); dividing by it then blows the output and its
    gradient up, and training stalls at the unigram loss. Gated, phi(q_t) z_t sums kernel estimates with weights
    w_tj = (1 - g_j) prod_{j<u<=t} g_u, which add up to W_t = 1 - prod_{u<=t} g_u, not to 1: far below 1 early in a
    sequence whose gates are near 1, where the paper's ratio is still exact (y_0 = v_0 for any g_0). So the floor
    bounds their weighted mean, phi(q_t) z_t / W_t, which an exact kernel keeps above exp(-2 sigma^2) = 0.135 at
    sigma = 1: it binds where the estimate is poor, never because of the weighting. W_t = -expm1(sum_{u<=t} log g_u),
    the log-decays summed from the start of the sequence and carried in the decoding state. Ungated, W_t = 1: the
    weights are 1 and the normaliser a sum of t + 1 >= 1 estimates (every unpadded key, bidirectional), which a
    constant floor bounds no more tightly than its mean would be. The authors' released code (haopeng-uw/RFA,
    incremental_rfa) clamps the raw gated normaliser at a constant, so that its floor too binds early in a sequence.
    Extra parameters: sigma (C), the gate (C x H + H) when gated. F = 2m. Complexity as KernelAttention.
    fla: simple_gla with g = log g_t (gated), linear_attn (ungated), v with its column of ones.
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
        kv = None if state is None else state['kv']
        if gate_logit is None:
            y, kv = self.linear_attention(fq, fk, self.values(v), None, kv)
            return self.finish(y, v.dtype), {'kv': kv}
        # S_t = g_t S_{t-1} + (1 - g_t) phi(k_t)^T v_t; log prod_{u<=t} g_u, from the start of the sequence, gives the
        # weights' sum W_t = 1 - prod_{u<=t} g_u (expm1: exact where W_t is small)
        gate_logit = cast(gate_logit, fq.dtype)
        log_decay = F.logsigmoid(gate_logit)
        log_kept = log_decay.cumsum(-1) + (0 if state is None else state['log_kept'])  # log prod g, (B, H, T)
        y, kv = self.linear_attention(fq, fk * torch.sigmoid(-gate_logit)[..., None], self.values(v), log_decay, kv)
        y = self.divide(y[..., :-1], y[..., -1:], -torch.expm1(log_kept)[..., None])
        return cast(y, v.dtype), {'kv': kv, 'log_kept': log_kept[..., -1:].clone()}

    def divide(self, numerator, normaliser, weight_sum=1):
        """numerator / max(normaliser, floor x the sum of the normaliser's weights): a floor on their weighted mean."""
        return numerator / torch.clamp(normaliser, min=self.normaliser_floor * weight_sum)

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
        y_t = sum_{j<=t} s_tj w_tj v_j / max(sum_{j<=t} s_tj w_tj, floor sum_{j<=t} w_tj),
        w_tj = (1 - g_j) prod_{j<u<=t} g_u."""
        if gate_logit is None:
            return super().attend_reference(q, k, v, pad_mask)
        scores = self.reference_scores(q, k)  # (B, H, T, T)
        g = torch.sigmoid(gate_logit)         # (B, H, T)
        weight = g.new_zeros(g.shape[:2] + (0,))
        outputs = []
        for t in range(q.size(2)):  # w_tj for j <= t: the earlier weights decayed by g_t, then 1 - g_t for j = t
            weight = torch.cat([weight * g[..., t, None], 1 - g[..., t, None]], dim=-1)
            s = scores[:, :, t, :t + 1] * weight
            outputs.append(self.divide((s[..., None] * v[:, :, :t + 1]).sum(-2), s.sum(-1, keepdim=True),
                                       weight.sum(-1, keepdim=True)))
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
    fla: linear_attn on the F features (zero-padded to a multiple of 16), v with its column of ones.
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
    fla: linear_attn on the 2D features, v with its column of ones.
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


class GatedRMSNorm(SwishGate):
    """Mamba-2's output gate and norm, the norm after the gate (mamba_ssm's RMSNormGated): RMSNorm(swish(x W_z) * y)
    over all C channels of the merged heads y (B, T, C), from the layer input x; SwishGate's x W_z (C -> C), then an
    nn.RMSNorm with its C weights and Mamba-2's eps 1e-5."""

    def __init__(self, n_embd, bias):
        super().__init__(n_embd, n_embd, bias=bias)
        self.norm = nn.RMSNorm(n_embd, eps=1e-5)

    def forward(self, y, x):
        return self.norm(super().forward(y, x))


class Mamba2(RecurrentAttention):
    """Mamba-2's SSD layer. Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
    Structured State Space Duality", arXiv:2405.21060.

    The selective state space model with a scalar decay per head and token, in attention's names (C = q, B = k,
    X = v), per head: h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t, y_t = C_t h_t + D x_t, h_t: (D, D), where
    x, B, C = SiLU(v, k, q) (the paper's activation after its convolution), dt_t = softplus(x_t W_dt + dt_bias) the
    input-dependent step, A = -exp(A_log) with A_log = log U(1, 16) and softplus(dt_bias) log-uniform in
    [0.001, 0.1] at initialisation (initial_step_bias), D = 1 (the skip); no scale. Output, the paper's:
    proj(RMSNorm(y * swish(x W_z))), the norm over all heads' channels (GatedRMSNorm).
    Extra parameters: W_dt (C x H), dt_bias, A_log, D (H each), W_z (C x C), the norm's C weights.
    Of the paper's block, the layer keeps the convolution (as trev's short_conv axis on q, k, v, before the SiLU:
    off by default, the paper's 4 with --short_conv=4), the SiLU, the step, A, D, the gate and the norm; its
    in-projection is the shared qkv plus W_dt and W_z, its out-projection the shared proj. The shared block supplies
    the pre-norm and residual, and an MLP, which Mamba-2's stack of mixers does not have. The paper shares B and C
    across the heads (one group, a state of N = 64 to 128) and expands the width twice; here each head has its own
    B and C of D channels (N = D, the multi-head pattern the paper discusses) and the width stays C, the
    projections every variant has.
    Causal only (the paper defines no bidirectional form). Causal: chunked_linear_attention with a decay per token
    (SSD's chunked algorithm: a masked (C, C) product within chunks, the state across them), time
    O(T C D + T D^2), memory O(T C + (T / C) D^2); decoding keeps a (D, D) state per head. Reference: the
    recurrence, one token at a time.
    fla: fla.ops.simple_gla is the same scan with g = dt A, k = dt B and scale 1 (its default is 1 / sqrt(D), which
    SSD does not have), D x added outside it; tests/test_zoo_decayed.py checks the layer against its naive recurrence.
    """
    supports_bidirectional = False
    paper_output = {'output_gate': 'rmsnorm of y * swish(x W_z), over all heads'}

    def __init__(self, config):
        super().__init__(config)
        H = config.n_head
        self.step_projection = nn.Linear(config.n_embd, H, bias=False)             # W_dt
        self.step_bias = nn.Parameter(initial_step_bias(H))                       # dt_bias
        self.log_decay_rate = nn.Parameter(torch.empty(H).uniform_(1, 16).log())  # A_log: A = -exp(A_log)
        self.skip = nn.Parameter(torch.ones(H))                                   # D
        self.gate = GatedRMSNorm(config.n_embd, config.bias) if self.keeps_paper('output_gate') else None
        self.set_output(gate=self.gate)

    def gates(self, x):
        step = wide_linear(self.step_projection, x)  # (B, T, H)
        return {'step': F.softplus(step + cast(self.step_bias, step.dtype)).transpose(1, 2)}  # dt, (B, H, T)

    def features(self, q, k, offset):
        return F.silu(q), F.silu(k)  # C, B

    def attend_chunkwise(self, q, k, v, state, step):
        c, b = self.wide_features(q, k, 0)
        x = F.silu(v)  # in v's dtype: under bfloat16 the kernel's matmuls within a chunk take it as it is
        log_decay = -cast(self.log_decay_rate, step.dtype).exp()[:, None] * step  # dt A, (B, H, T)
        y, kv = chunked_linear_attention(c, b * step[..., None], x, log_decay, None if state is None else state['kv'],
                                         self.chunk_size)
        y = y + cast(self.skip, y.dtype)[:, None, None] * x
        return cast(y, v.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask, step):
        """The SSD recurrence token by token: h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t, y_t = C_t h_t + D x_t, with
        C, B, x = z sigmoid(z) of q, k, v."""
        batch, H, T, N = q.shape
        C, B, x = (z * torch.sigmoid(z) for z in (q, k, v))
        A = -torch.exp(self.log_decay_rate)[:, None, None]  # (H, 1, 1)
        h = q.new_zeros(batch, H, N, v.size(-1))
        outputs = []
        for t in range(T):
            dt = step[:, :, t, None, None]  # (B, H, 1, 1)
            h = torch.exp(dt * A) * h + dt * B[:, :, t, :, None] * x[:, :, t, None, :]
            outputs.append((C[:, :, t, None, :] @ h).squeeze(-2) + self.skip[:, None] * x[:, :, t])
        return torch.stack(outputs, dim=2)


class AllHeadsLayerNorm(nn.LayerNorm):
    """nn.LayerNorm(C) over all heads' channels of a token, on the heads' outputs: (B, H, T, D) -> (B, H, T, D)."""

    def forward(self, y):
        B, H, T, D = y.shape
        return super().forward(y.transpose(1, 2).reshape(B, T, H * D)).view(B, T, H, D).transpose(1, 2)


class HGRN2(RecurrentAttention):
    """HGRN2. Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion", arXiv:2404.07904.

    HGRN's gated linear recurrence with its state expanded by an outer product, per head and channel:
    H_t = Diag(f_t) H_{t-1} + (1 - f_t)^T i_t, y_t = o_t H_t, H_t: (D, D), with the forget gate f_t = sigmoid(x_t W_f),
    the input i_t = SiLU(x_t W_i) and the output gate o_t = sigmoid(x_t W_o): linear attention with a decay per key
    channel, o as the query, 1 - f as the key, i as the value, no scale. Output proj(LayerNorm(heads)), the norm over
    all heads' channels. As the authors' code (hgru2-pytorch's Hgru2_1d) computes it; the shared q, k, v projections
    are W_o, W_f, W_i (the key 1 - f needs no projection of its own), and the head dimension D is HGRN2's expand
    ratio. Extra parameters: the norm's C weights (and C biases with bias=True).
    HGRN's lower bound on f is learned per layer and grows with depth from 0 in the first layer; trev builds every
    layer from one LayerConfig, so each has the first layer's (none). One addition: log f_t >= -8
    (MIN_CHANNEL_LOG_DECAY; f_t >= 3.4e-4, and 1 - f_t from that f), which keeps the chunked kernel's factors within
    float32. Of the paper's block, the layer is the token mixer; the shared block supplies the pre-norm, residuals and
    the MLP in place of its GLU. No short convolution in the authors' layer (trev's short_conv axis adds one).
    Causal only (the paper defines no bidirectional form). Causal: chunked_linear_attention with a decay per key
    channel, in chunks of 16: time O(T 16 D + T D^2), memory O(T 16 + (T / 16) D^2); decoding keeps a (D, D) state
    per head. Reference: HGRN's elementwise recurrence on the D^2 entries of the expanded state, one token at a time.
    fla: fla.ops.hgrn's recurrence on the D^2 channels of (1 - f) (x) i with decay f is this state, and fla.ops.gla
    (the op fla's HGRN2 layer calls) this scan given scale 1; tests/test_zoo_decayed.py checks the layer against both
    naive recurrences. fla's HGRN2 layer differs from the authors' code: SiLU on the query, no activation on the
    input, the query scaled by 1 / sqrt(D) (gla's default), RMSNorm.
    """
    supports_bidirectional = False
    paper_output = {'head_norm': 'layernorm over all heads'}

    def __init__(self, config):
        super().__init__(config)
        self.out_norm = AllHeadsLayerNorm(config.n_embd, bias=config.bias) if self.keeps_paper('head_norm') else None
        self.set_output(norm=self.out_norm)

    def attend_chunkwise(self, q, k, v, state):
        q, k = cast(q, wide_dtype(q)), cast(k, wide_dtype(k))
        log_forget = F.logsigmoid(k).clamp_min(MIN_CHANNEL_LOG_DECAY)  # log f_t, (B, H, T, D)
        y, kv = chunked_linear_attention(torch.sigmoid(q), -torch.expm1(log_forget), F.silu(v), log_forget,
                                         None if state is None else state['kv'], self.chunk_size)
        return cast(y, v.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask):
        """The recurrence token by token, the state's D^2 entries each a gated average: H_t[a, b] = f_t[a] H_{t-1}[a, b]
        + (1 - f_t[a]) i_t[b], y_t[b] = sum_a o_t[a] H_t[a, b]; f_t >= exp(MIN_CHANNEL_LOG_DECAY)."""
        batch, H, T, D = q.shape
        f = torch.sigmoid(k).clamp_min(math.exp(MIN_CHANNEL_LOG_DECAY))
        i, o = v * torch.sigmoid(v), torch.sigmoid(q)
        state = q.new_zeros(batch, H, D, v.size(-1))
        outputs = []
        for t in range(T):
            forget = f[:, :, t, :, None]  # (B, H, D, 1)
            state = forget * state + (1 - forget) * i[:, :, t, None, :]
            outputs.append((o[:, :, t, :, None] * state).sum(-2))
        return torch.stack(outputs, dim=2)


def alibi_slopes(n_head, dtype, device):
    """(n_head,) ALiBi's head slopes (Press et al. 2022, arXiv:2108.12409), as TransNormerLLM builds them: for the
    largest power of two P <= n_head, 2^(-8 h / P), h = 1 .. P, then 2^(-8 h / 2P) for odd h = 1, 3, ... for the
    n_head - P heads left."""
    P = 2 ** int(math.log2(n_head))
    slopes = [2 ** (-8 * h / P) for h in range(1, P + 1)] + [2 ** (-8 * h / (2 * P)) for h in range(1, 2 * P, 2)]
    return torch.tensor(slopes[:n_head], dtype=dtype, device=device)


class LinearGate(nn.Linear):
    """TransNormerLLM's output gate: (x W_u) * y, no activation, from the layer input x (B, T, C), on the merged heads
    y (B, T, C). x W_u is this nn.Linear's forward, C -> C."""

    def forward(self, y, x):
        return super().forward(x) * y


class LightningAttention(KernelAttention):
    """TransNormerLLM's attention, as Lightning Attention computes it. Qin et al. 2023, "TransNormerLLM: A Faster and
    Better Large Language Model with Improved TransNormer", arXiv:2307.14995; Qin et al. 2024, "Lightning
    Attention-2", arXiv:2401.04658.

    y_i = sum_{j<=i} lambda_h^(i-j) (phi(q_i) . phi(k_j)) v_j, phi = SiLU: linear attention with a fixed decay per
    head, no scale and no denominator; then the paper's gated output, proj(u * SRMSNorm(heads)) with u = x W_u (no
    activation) and SRMSNorm(z) = z / rms(z) over all heads' channels, no gain (the norm before the gate, as the
    authors' code). lambda_h = exp(-s_h), s_h ALiBi's slopes (alibi_slopes; 2^(-8 h / H) for H a power of two).
    TransNormerLLM scales layer l's slopes by 1 - l / (L - 1) (from 1 in the first layer to about 0 in the last) and
    puts LRPE on the first layer alone; trev builds every layer from one LayerConfig, so each has the first layer's
    decays and none has LRPE. SRMSNorm is AllHeadsRMSNorm without a gain, its eps (1e-8) under the root rather than
    added to it. Extra parameters: W_u (C x C). Of the paper's block, the layer is the token mixer; the shared block
    supplies the pre-norms, residuals and the MLP in place of its SGLU.
    Causal only (a causal language model's layer; the papers define no bidirectional form). Complexity as
    KernelAttention: Lightning Attention's split into a masked product within blocks and a state across them is the
    chunked kernel's.
    fla: fla.ops.lightning_attn is fla.ops.simple_gla with g = -(8 / H)(1 - l / L) h for heads h = 0 .. H - 1 (no
    decay in head 0) and scale 1 / sqrt(D), not the authors' slopes and scale; tests/test_zoo_decayed.py checks the
    layer against simple_gla's naive recurrence given this layer's decays and scale 1.
    """
    normalise = False
    supports_bidirectional = False
    paper_output = {'head_norm': 'srmsnorm over all heads', 'output_gate': 'x W_u, no activation'}

    def __init__(self, config):
        super().__init__(config)
        self.gate = (LinearGate(config.n_embd, config.n_embd, bias=config.bias) if self.keeps_paper('output_gate')
                     else None)
        self.out_norm = (AllHeadsRMSNorm(config.n_embd, eps=1e-8, elementwise_affine=False)
                         if self.keeps_paper('head_norm') else None)
        self.set_output(norm=self.out_norm, gate=self.gate)

    def features(self, q, k, offset):
        return F.silu(q), F.silu(k)

    def log_decay(self, like):
        return -alibi_slopes(self.n_head, like.dtype, like.device)[None, :, None]

    def reference_scores(self, q, k):
        """s_ij = (q_i sigmoid(q_i)) . (k_j sigmoid(k_j)) lambda_h^(i - j), the decay as a power (pairs j > i, which
        the caller masks, get lambda^0)."""
        position = torch.arange(q.size(2), device=q.device, dtype=q.dtype)
        distance = (position[:, None] - position[None, :]).clamp_min(0)  # i - j, (T, T)
        decay = torch.exp(-alibi_slopes(self.n_head, q.dtype, q.device))[:, None, None] ** distance  # (H, T, T)
        return ((q * torch.sigmoid(q)) @ (k * torch.sigmoid(k)).transpose(-2, -1)) * decay
def check_length(T, block_size, what):
    """Refuses a sequence longer than the block_size rows of a variant's per-position parameters (what: their name)."""
    if T > block_size:
        raise ValueError(f"a sequence of {T} tokens is longer than block_size={block_size}, the rows of {what}: raise "
                         f"block_size")


class Linformer(Attention):
    """Linformer. Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity", arXiv:2006.04768.

    y = softmax(Q (E^T K)^T / sqrt(D)) (F^T V): keys and values are projected along the sequence, T -> k =
    linformer_k (the paper's 256), by learned E and F of shape (T_max, k), T_max = block_size, then softmax attention
    over the k projected rows. A sequence of T < T_max tokens uses the first T rows of E and F; a longer one is
    refused. Padding: padded keys and values are zeroed before the projection, so they add nothing to a projected row,
    and a padded sequence uses the rows its own length would.
    E and F are shared by the heads (the paper's headwise sharing) and drawn xavier-uniform with gain 1/sqrt(2), as in
    the authors' code (fairseq examples/linformer), which applies them to the layer input before the key and value
    projections (the same map when those have no bias), also takes the first T rows of a shorter sequence, and
    does not mask padding. Bidirectional only (the paper defines no causal form). Extra parameters: E and F, 2 T_max k.
    Time O(T k D) per head, memory O(T k + k D). Reference: the (T, T) matrix of q_i . k_j projected on its key axis
    by E, and the (T, T) mixing matrix softmax(.) F^T applied to V.
    """
    supports_causal = False

    def __init__(self, config):
        super().__init__(config)
        if config.linformer_k < 1:
            raise ValueError(f"linformer_k={config.linformer_k}: project keys and values to at least 1 row "
                             f"(the paper's 256)")
        self.max_len = config.block_size
        shape = (config.block_size, config.linformer_k)
        bound = math.sqrt(6 / sum(shape)) / math.sqrt(2)  # xavier-uniform, gain 1/sqrt(2)
        self.key_compression = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))    # E
        self.value_compression = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))  # F

    def attend(self, q, k, v, pad_mask):
        T = q.size(2)
        check_length(T, self.max_len, "linformer's projections E and F")
        if pad_mask is not None:  # a zero key or value adds nothing to a projected row
            k, v = (t.masked_fill(pad_mask[:, None, :, None], 0) for t in (k, v))
        keys = cast(self.key_compression[:T], k.dtype).T @ k        # (B, H, k, D)
        values = cast(self.value_compression[:T], v.dtype).T @ v    # (B, H, k, D)
        return F.scaled_dot_product_attention(q, keys, values)

    def attend_reference(self, q, k, v, pad_mask):
        """s_ir = sum_j (q_i . k_j / sqrt(D)) E_jr over the real keys j, p_i = softmax_r(s_i),
        y_i = sum_j (sum_r p_ir F_jr) v_j over the real j."""
        T = q.size(2)
        real = reference_mask(T, False, pad_mask, q.device)                                   # (B|1, 1, T, T)
        dots = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~real, 0)         # (B, H, T, T)
        weights = torch.softmax(dots @ self.key_compression[:T], dim=-1)                       # (B, H, T, k)
        mixing = (weights @ self.value_compression[:T].T).masked_fill(~real, 0)                # (B, H, T, T)
        return mixing @ v


class Nystromformer(Attention):
    """Nystromformer. Xiong et al. 2021, "Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention",
    arXiv:2102.03902.

    softmax(Q K^T / sqrt(D)) V ~= F Z B V + conv(V) with m = nystrom_landmarks landmarks: Q~, K~ (m, D) are the means
    of m segments of the queries and of the keys (of a sequence of L real tokens, segment j holds the tokens r with
    floor(r m / L) = j), F = softmax(Q K~^T / sqrt(D)) (T, m), A = softmax(Q~ K~^T / sqrt(D)) (m, m),
    B = softmax(Q~ K^T / sqrt(D)) (m, T) over the real keys, and Z ~= A^+ the paper's iterative Moore-Penrose
    pseudo-inverse: Z_0 = A^T / ||A||_1 (A's rows sum to 1, so ||A||_inf = 1), then 6 times
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4. conv(V) is the paper's skip on the values, a convolution over
    the sequence with one kernel of 35 taps per head, shared by its D channels (zero past the ends and at padding).
    With L < m some segments are empty and every real token is a landmark of its own; an empty landmark takes no
    part (F's column masked, A's row and column those of the identity, which leaves the iteration on the real
    landmarks as it is: the identity's column sums, 1, never exceed the largest of A's).
    Against the authors' code (mlpen/Nystromformer, LRA/code/attention_nystrom.py), whose 35-tap skip and 6 iterations
    these are: it needs T to be a multiple of m and averages fixed segments of the padded sequence, padding (zeroed)
    included, where trev segments each sequence's real tokens, so that a padded sequence gives what it gives alone;
    its default Z_0 divides by the largest column sum in the whole batch, trev's by each matrix's own (the code's
    other option), so no sequence depends on another; and it computes exact softmax attention when m equals the
    padded length, where trev keeps the formula (with L <= m, F = A = B = S and F Z B = S Z S, which tends to S as Z
    tends to S^+: tests/test_zoo_lra_attention.py bounds the gap).
    Bidirectional only (landmarks average over the whole sequence). Extra parameters: the convolution, H x 35.
    Computed in float32 at least under autocast (13 I - 15 A Z + ... cancels). Time O(T m D + m^3) per head, memory
    O(T m). Reference: per sequence, the landmarks as explicit segment means, the (L, L) matrix F Z B with Z from
    the same iteration in its expanded form Z (13 I - 15 X + 7 X^2 - X^3) / 4, X = A Z (the iteration is the model's
    definition, as the paper trains it; a test compares it with torch.linalg.pinv), and the convolution as a band.
    """
    supports_causal = False
    kernel_size = 35
    iterations = 6

    def __init__(self, config):
        super().__init__(config)
        if config.nystrom_landmarks < 1:
            raise ValueError(f"nystrom_landmarks={config.nystrom_landmarks}: use at least 1 landmark (the paper's 64)")
        self.landmarks = config.nystrom_landmarks
        self.value_convolution = nn.Conv2d(config.n_head, config.n_head, (self.kernel_size, 1),
                                           padding=(self.kernel_size // 2, 0), groups=config.n_head, bias=False)

    def segment_means(self, real, dtype):
        """real: (B, T) bool -> (B, m, T) weights in dtype whose row j averages segment j of the real tokens, (B, m)
        bool True where segment j is not empty."""
        m = self.landmarks
        rank = real.cumsum(1) - 1                                    # (B, T): r, the token's place among the real ones
        length = real.sum(1, keepdim=True).clamp_min(1)              # (B, 1): L
        segment = torch.div(rank * m, length, rounding_mode='floor')  # (B, T): floor(r m / L)
        member = (segment[:, None, :] == torch.arange(m, device=real.device)[None, :, None]) & real[:, None, :]
        count = member.sum(-1)                                       # (B, m)
        return member.to(dtype) / count.clamp_min(1)[..., None], count > 0

    def attend(self, q, k, v, pad_mask):
        B, H, T, D = q.shape
        dtype = v.dtype
        with full_precision(q):
            q, k, v = (cast(t, wide_dtype(t)) for t in (q, k, v))
            real = torch.ones(B, T, dtype=torch.bool, device=q.device) if pad_mask is None else ~pad_mask
            means, landmark = self.segment_means(real, q.dtype)
            means = means[:, None]                                   # (B, 1, m, T)
            q_landmarks, k_landmarks = means @ (q / D ** 0.5), means @ k  # (B, H, m, D); the scale on the queries
            low = torch.finfo(q.dtype).min
            kernel_1 = torch.softmax((q / D ** 0.5 @ k_landmarks.transpose(-2, -1))
                                     .masked_fill(~landmark[:, None, None, :], low), dim=-1)      # (B, H, T, m)
            both = landmark[:, None, :, None] & landmark[:, None, None, :]                        # (B, 1, m, m)
            kernel_2 = torch.softmax((q_landmarks @ k_landmarks.transpose(-2, -1))
                                     .masked_fill(~both, low), dim=-1)                            # (B, H, m, m)
            kernel_2 = torch.where(both, kernel_2, torch.eye(self.landmarks, dtype=q.dtype, device=q.device))
            kernel_3 = torch.softmax((q_landmarks @ k.transpose(-2, -1))
                                     .masked_fill(~real[:, None, None, :], low), dim=-1)          # (B, H, m, T)
            v = v.masked_fill(~real[:, None, :, None], 0)
            y = kernel_1 @ (self.pseudo_inverse(kernel_2) @ (kernel_3 @ v))
            skip = F.conv2d(v, cast(self.value_convolution.weight, v.dtype), padding=(self.kernel_size // 2, 0),
                            groups=H)
        return cast(y + skip, dtype)

    def pseudo_inverse(self, a):
        """The paper's iteration for A^+, a: (..., m, m) with rows summing to 1."""
        identity = torch.eye(a.size(-1), dtype=a.dtype, device=a.device)
        z = a.transpose(-2, -1) / a.sum(-2).amax(-1)[..., None, None]  # A^T / ||A||_1, one norm per matrix
        for _ in range(self.iterations):
            az = a @ z
            z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
        return z

    def attend_reference(self, q, k, v, pad_mask):
        """Sequence by sequence over its L real tokens: landmarks as segment means, y = (F Z B) V + band(w) V."""
        B, H, T, D = q.shape
        m, half = self.landmarks, self.kernel_size // 2
        y = torch.zeros_like(v)
        for b in range(B):
            real = torch.arange(T) if pad_mask is None else (~pad_mask[b]).nonzero()[:, 0]
            L = len(real)
            qb, kb, vb = q[b][:, real], k[b][:, real], v[b][:, real]  # (H, L, D)
            segments = [[r for r in range(L) if r * m // L == j] for j in range(m)]
            segments = [s for s in segments if s]
            q_tilde = torch.stack([qb[:, s].mean(1) for s in segments], dim=1)  # (H, m', D)
            k_tilde = torch.stack([kb[:, s].mean(1) for s in segments], dim=1)
            softmax = lambda x, y: torch.softmax(x @ y.transpose(-2, -1) / math.sqrt(D), dim=-1)
            f, a, b_kernel = softmax(qb, k_tilde), softmax(q_tilde, k_tilde), softmax(q_tilde, kb)
            identity = torch.eye(a.size(-1), dtype=a.dtype)
            z = a.transpose(-2, -1) / a.sum(-2).max(-1).values[:, None, None]
            for _ in range(self.iterations):
                x = a @ z
                z = z @ (13 * identity - 15 * x + 7 * x @ x - x @ x @ x) / 4
            offset = torch.arange(L)[None, :] - torch.arange(L)[:, None] + half  # j - i + half, (L, L)
            taps = self.value_convolution.weight[:, 0, :, 0]                   # (H, kernel_size)
            band = taps[:, offset.clamp(0, self.kernel_size - 1)] * ((offset >= 0) & (offset < self.kernel_size))
            y[b][:, real] = (f @ z @ b_kernel + band) @ vb
        return y


class Synthesizer(Attention):
    """Synthesizer. Tay et al. 2020, "Synthesizer: Rethinking Self-Attention in Transformer Models", arXiv:2005.00743.

    y_i = sum_j softmax_j(b_ij) v_j with weights synthesised without any token-token dot product, by
    synthesizer_mode:
      'dense'   b_i = F(x_i) = W_2 relu(W_1 x_i + b_1) + b_2, from token i alone: W_1 (C x C) is the shared query
                projection, head by head, W_2 (T_max x D) is shared by the heads, and b_ij is entry j of b_i;
      'random'  b_ij = R_hij, a learned (T_max, T_max) matrix per head, N(0, 1 / T_max) at initialisation, the same
                weights for every input.
    T_max = block_size: a sequence of T tokens uses the first T entries (rows and columns of R); a longer one is
    refused. Causal: j <= i (by masking, as the paper's decoders); bidirectional: every real j. The biases b_1 (the
    query projection's) and b_2 follow LayerConfig.bias, as every linear layer of trev does (off by default). The key
    projection is computed and unused (its gradient is 0); the paper's factorized and mixed synthesizers are not here.
    The authors' code (google-research/long-range-arena, models/synthesizer) has the same W_1 (with bias), W_2 shared
    by the heads, R per head and the first T entries; it then reshapes dense weights (B, T, H, T_max) to (B, H, T,
    T_max), which mixes tokens and heads, where trev keeps them apart.
    Fast path: dense, scaled_dot_product_attention with relu(q) as queries and the rows of W_2 as keys, scale 1 (b_2
    as one more key channel against a query channel of ones): time O(T^2 D), memory O(T) with a fused kernel;
    random, softmax of R's (T, T) block (per sequence where there is padding), times V: time O(T^2 D), memory
    O(T^2). Decoding keeps the values (a KVCache with zero-width keys, as the weights need none): a token at position
    t costs O(t D), up to T_max. Extra parameters: dense D T_max (+ T_max with bias), random H T_max^2.
    Reference: the logits b_ij written out from the formula, softmax one query at a time.
    """
    modes = ('dense', 'random')

    def __init__(self, config):
        super().__init__(config)
        if config.synthesizer_mode not in self.modes:
            raise ValueError(f"synthesizer_mode={config.synthesizer_mode!r}: choose 'dense' or 'random' (the paper's "
                             f"factorized and mixed synthesizers are not implemented)")
        self.mode = config.synthesizer_mode
        self.max_len = config.block_size
        if self.mode == 'dense':
            self.length_projection = nn.Linear(self.head_dim, config.block_size, bias=config.bias)  # W_2, b_2
        else:
            T_max = config.block_size
            self.random_logits = nn.Parameter(torch.randn(config.n_head, T_max, T_max) / math.sqrt(T_max))  # R

    def logits(self, q, start, end):
        """b_ij for queries q at positions start, ... and keys 0 .. end - 1: (B|1, H, Tq, end)."""
        if self.mode == 'random':
            return self.random_logits[None, :, start:start + q.size(2), :end]
        weight = cast(self.length_projection.weight[:end], q.dtype)  # (end, D)
        logits = F.relu(q) @ weight.T
        bias = self.length_projection.bias
        return logits if bias is None else logits + cast(bias[:end], q.dtype)

    def attend(self, q, k, v, pad_mask):
        B, H, T, D = q.shape
        check_length(T, self.max_len, f"the {self.mode} synthesizer's weights")
        allowed = None if pad_mask is None else ~pad_mask[:, None, None, :]
        if self.mode == 'random':
            allowed = causal_mask(T, T, q.device) if self.causal else allowed
            logits = self.logits(q, 0, T)  # (1, H, T, T)
            if allowed is not None:
                logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
            return cast(torch.softmax(logits, dim=-1), v.dtype) @ v
        keys = cast(self.length_projection.weight[:T], q.dtype).expand(B, H, T, D)  # row j of W_2: key j
        queries = F.relu(q)
        if self.length_projection.bias is not None:  # [relu(q_i), 1] . [W_2j, b_2j] = b_ij
            queries = append_ones(queries)
            keys = torch.cat([keys, cast(self.length_projection.bias[:T], q.dtype).expand(B, H, T)[..., None]], -1)
        return F.scaled_dot_product_attention(queries, keys, v, attn_mask=allowed, is_causal=self.causal, scale=1.0)

    def attend_step(self, q, k, v, state):
        start = 0 if state is None else state.length
        end = start + q.size(2)
        check_length(end, self.max_len, f"the {self.mode} synthesizer's weights")
        cache = KVCache.to_write(state, k[..., :0], v, self.max_len)  # no keys: (B, H, T_max, 0)
        cache.v[:, :, start:end] = v
        logits = self.logits(q, start, end)
        logits = logits.masked_fill(~causal_mask(q.size(2), end, q.device, offset=start), torch.finfo(logits.dtype).min)
        return cast(torch.softmax(logits, dim=-1), v.dtype) @ cache.v[:, :, :end], KVState(cache, end)

    def attend_reference(self, q, k, v, pad_mask):
        """b_ij = (relu(q_i) W_2^T + b_2)_j (dense) or R_ij (random); y_i = sum_j softmax_j(b_ij) v_j over the keys
        query i may use, one query at a time."""
        B, H, T, D = q.shape
        allowed = reference_mask(T, self.causal, pad_mask, q.device).expand(B, H, T, T)
        outputs = []
        for i in range(T):
            if self.mode == 'dense':
                b = F.relu(q[:, :, i]) @ self.length_projection.weight[:T].T  # (B, H, T)
                if self.length_projection.bias is not None:
                    b = b + self.length_projection.bias[:T]
            else:
                b = self.random_logits[:, i, :T].expand(B, H, T)
            largest = b.masked_fill(~allowed[:, :, i], float('-inf')).max(-1, keepdim=True).values
            weights = torch.exp(b - largest) * allowed[:, :, i]
            outputs.append((weights[..., None] * v).sum(2) / weights.sum(-1, keepdim=True))
        return torch.stack(outputs, dim=2)


class FNet(Attention):
    """FNet. Lee-Thorp et al. 2021, "FNet: Mixing Tokens with Fourier Transforms", arXiv:2105.03824.

    y = Re(DFT_sequence(DFT_hidden(V))) / sqrt(L C): the tokens are mixed by the real part of a 2D discrete Fourier
    transform over the sequence and the C = H D channels of all heads together; no attention weights, no parameters.
    Against the paper and the authors' code (google-research/google-research, f_net): (1) their mixing sublayer
    replaces attention whole, projections included; trev mixes the values and keeps the shared output projection, so
    that FNet differs from the other variants in the token mixing only (q and k are computed and unused, gradient 0;
    the parameter count is softmax's). (2) trev divides by sqrt(L C) (the unitary transform): the paper's
    unnormalised transform grows as sqrt(T C), and trev's blocks are pre-norm by default, where that would swamp
    the residual stream. (3) Their code ignores the padding mask and transforms the padded sequence; trev
    transforms each sequence over its L real tokens alone (a DFT of length L; a padded position's output is 0), so
    no real output depends on padding and a padded sequence gives what it gives alone: the real tokens are gathered
    to the front and each distinct length in the batch is one FFT of those rows.
    Bidirectional only (every output reads every token). torch.fft in float32 at least, autocast off (it has no
    bfloat16 kernels). Time O(T C log(T C)), memory O(T C). Reference: the double sum
    y_tc = sum_{s, c'} cos(2 pi (t s / L + c c' / C)) v_sc' / sqrt(L C), Re(e^{-i a}) = cos a, sequence by sequence.
    """
    supports_causal = False

    def attend(self, q, k, v, pad_mask):
        B, H, T, D = v.shape
        dtype = v.dtype
        with full_precision(v):
            x = cast(v, wide_dtype(v)).transpose(1, 2).reshape(B, T, H * D)  # (B, T, C): the heads side by side
            if pad_mask is None:
                y = torch.fft.fft2(x, norm='ortho').real
            else:
                order = pad_mask.to(torch.uint8).argsort(dim=1, stable=True)[..., None].expand_as(x)  # real first
                x = x.gather(1, order)
                lengths = (~pad_mask).sum(1)
                y = torch.zeros_like(x)
                for length in lengths.unique().tolist():
                    if length:
                        rows = lengths == length
                        y[rows, :length] = torch.fft.fft2(x[rows, :length], norm='ortho').real
                y = torch.zeros_like(y).scatter(1, order, y)  # each token's output back at its position
        return cast(y.view(B, T, H, D).transpose(1, 2), dtype)

    def attend_reference(self, q, k, v, pad_mask):
        """y_tc = sum_{s, c'} cos(2 pi (t s / L + c c' / C)) v_sc' / sqrt(L C) over the L real tokens of each sequence
        (t, s their places among them); 0 at padding."""
        B, H, T, D = v.shape
        C = H * D
        x = v.transpose(1, 2).reshape(B, T, C)
        y = torch.zeros_like(x)
        channel = torch.arange(C, dtype=x.dtype)
        for b in range(B):
            real = torch.arange(T) if pad_mask is None else (~pad_mask[b]).nonzero()[:, 0]
            L = len(real)
            place = torch.arange(L, dtype=x.dtype)
            angle = 2 * math.pi * (place[:, None, None, None] * place[None, None, :, None] / L
                                   + channel[None, :, None, None] * channel[None, None, None, :] / C)  # (L, C, L, C)
            y[b, real] = torch.einsum('tcsd,sd->tc', torch.cos(angle), x[b, real]) / math.sqrt(L * C)
        return y.view(B, T, H, D).transpose(1, 2)
class AttentionFreeTransformer(RecurrentAttention):
    """AFT. Zhai et al. 2021, "An Attention Free Transformer", arXiv:2105.14103: AFT-simple and AFT-local.

    Per channel (no dot products: heads only group the channels), with w_tt' the learned position biases:
        y_t = sigmoid(q_t) * sum_t' exp(k_t' + w_tt') v_t' / sum_t' exp(k_t' + w_tt')
    over t' <= t (causal) or all unpadded t'. AFT-simple (aft_window = 0): w = 0. AFT-local (aft_window = s > 0):
    w_tt' learned where |t - t'| < s (causal: 0 <= t - t' < s) and 0 outside, so every token still reaches every
    other. w is the paper's absolute (block_size x block_size) matrix, of which trev stores the band the window uses,
    position_bias[t, t - t' (+ s - 1 bidirectionally)], (block_size, s) causal or (block_size, 2s - 1); initialised to
    0 (AFT-local starts as AFT-simple); positions past block_size have no bias and are refused. Written from the paper;
    no implementation by the authors was compared.
    Fast path: the sums as the global sum (w = 0) plus the window's correction (e^w - 1) inside the window. Each channel
    is stabilised by a reference exponent that no earlier key exceeds: bidirectional, the max over all keys; causal, in
    blocks (of chunk_size, or of s for AFT-local), the running max at the block's first token, the blocks' sums carried
    across with kernels.chunk_states (the reference rising from block to block is a decay). The reference never reads
    a later token; a key more than ~88 above every earlier key of its block overflows float32 (keys are projections of
    the normed input).
    Causal: time O(T D (C + s)), memory O(T D); decoding keeps per channel the two sums, their reference and, for
    AFT-local, the last s - 1 keys and values: O(s D) per head whatever the position. Bidirectional: time O(T s D),
    memory O(T D). Reference: the (T, T) softmax over t' of k_t' + w_tt', per channel, time and memory O(T^2 D).
    Extra parameters: the position biases, block_size x s (causal) or block_size x (2s - 1).
    """

    def __init__(self, config):
        super().__init__(config)
        if config.aft_window < 0:
            raise ValueError(f"aft_window={config.aft_window}: use 0 (AFT-simple) or a window of s >= 1 tokens")
        self.window = config.aft_window
        self.block_size = config.block_size
        span = self.window if self.causal else 2 * self.window - 1
        self.position_bias = nn.Parameter(torch.zeros(config.block_size, span)) if self.window else None

    def check_positions(self, end):
        if self.window and end > self.block_size:
            raise ValueError(f"aft: position {end - 1} is past block_size={self.block_size}, the extent of AFT-local's "
                             f"position biases; raise block_size")

    def window_factor(self, query_position, key_position, key_valid, dtype):
        """(N, Q) query and (N, K) key positions, key_valid (N, K) -> (N, Q, K) e^{w_tt'} - 1 inside the window, 0
        elsewhere, in dtype."""
        distance = query_position[:, :, None] - key_position[:, None, :]  # t - t'
        if self.causal:
            inside, column = (distance >= 0) & (distance < self.window), distance
        else:
            inside, column = distance.abs() < self.window, distance + self.window - 1
        inside = inside & key_valid[:, None, :] & (query_position < self.block_size)[:, :, None]
        bias = self.position_bias[query_position.clamp(0, self.block_size - 1)[:, :, None],
                                  column.clamp(0, self.position_bias.size(1) - 1)]
        return torch.where(inside, torch.expm1(cast(bias, dtype)), 0)

    def attend_chunkwise(self, q, k, v, state):
        dtype = v.dtype
        with full_precision(q):
            q, k, v = (cast(t, wide_dtype(q)) for t in (q, k, v))
            B, H, T, D = q.shape
            offset = 0 if state is None else state['offset']
            self.check_positions(offset + T)
            running = k.cummax(2).values  # (B, H, T, D)
            if state is None:
                held_k = held_v = k.new_zeros(B, H, 0, D)
            else:
                held_k, held_v = state['keys'], state['values']
                running = torch.maximum(running, state['reference'][:, :, None])
            held = held_k.size(2)  # AFT-local's last s - 1 tokens before this call, in front of the new ones
            keys, values = torch.cat([held_k, k], 2), torch.cat([held_v, v], 2)  # (B, H, L, D)
            running = torch.cat([running[:, :, :1].expand(B, H, held, D), running], 2).detach()
            L = held + T
            C = self.window or min(self.chunk_size, L)
            N = -(-L // C)
            position = torch.arange(N * C, device=q.device)
            real = (position < L).view(N, C)
            reference = running[:, :, ::C]  # (B, H, N, D): no key before a block's first token exceeds it
            key_blocks, value_blocks = in_chunks(keys, C), in_chunks(values, C)  # (B, H, N, C, D)
            exponent = (key_blocks - reference[:, :, :, None]).masked_fill(~real[..., None], float('-inf'))
            weight = exponent.exp()
            counted = (real & (position >= held).view(N, C))[..., None]  # held tokens are in the state's sums already
            within = (torch.cat([weight * value_blocks, weight], -1) * counted).cumsum(3)  # (B, H, N, C, 2D)
            next_reference = torch.cat([reference[:, :, 1:], running[:, :, -1:]], 2)
            log_decay = (reference - next_reference).transpose(2, 3)  # (B, H, D, N), <= 0
            totals = within[:, :, :, -1].unflatten(-1, (2, D)).permute(0, 1, 4, 2, 3)  # (B, H, D, N, 2)
            start = None
            if state is not None:  # the state's sums, moved from its reference to the first block's
                start = torch.stack([state['numerator'], state['normaliser']], -1)  # (B, H, D, 2)
                start = start * (state['reference'] - reference[:, :, 0])[..., None].exp()
            entering, final = chunk_states(totals * log_decay.exp()[..., None], log_decay, start)
            sums = within + entering.permute(0, 1, 3, 4, 2).flatten(-2)[:, :, :, None]  # (B, H, N, C, 2D)
            if self.window:
                previous = lambda x: F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # block n - 1's, zeros before the first
                pair_valid = torch.cat([F.pad(real, (0, 0, 1, 0))[:-1], real], 1)  # (N, 2C)
                pair_keys = torch.cat([previous(key_blocks), key_blocks], 3)  # (B, H, N, 2C, D)
                pair_values = torch.cat([previous(value_blocks), value_blocks], 3)
                pair_weight = (pair_keys - reference[:, :, :, None]).masked_fill(~pair_valid[..., None], float('-inf'))
                pair_weight = pair_weight.exp()
                absolute = position.view(N, C) + offset - held
                key_position = torch.cat([absolute - C, absolute], 1)
                factor = self.window_factor(absolute, key_position, pair_valid, q.dtype)  # (N, C, 2C)
                sums = sums + factor @ torch.cat([pair_weight * pair_values, pair_weight], -1)
            numerator, normaliser = sums.flatten(2, 3)[:, :, held:L].split(D, -1)  # (B, H, T, D) each
            y = torch.sigmoid(q) * numerator / normaliser
            new_state = {'numerator': final[..., 0].clone(), 'normaliser': final[..., 1].clone(),
                         'reference': running[:, :, -1].clone(), 'offset': offset + T,
                         'keys': keys[:, :, max(L - self.window + 1, 0):].clone() if self.window else held_k,
                         'values': values[:, :, max(L - self.window + 1, 0):].clone() if self.window else held_v}
        return cast(y, dtype), new_state

    def attend_bidirectional(self, q, k, v, pad_mask):
        dtype = v.dtype
        with full_precision(q):
            q, k, v = (cast(t, wide_dtype(q)) for t in (q, k, v))
            B, H, T, D = q.shape
            self.check_positions(T)
            valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if pad_mask is None else ~pad_mask
            exponent = k.masked_fill(~valid[:, None, :, None], float('-inf'))
            exponent = exponent - exponent.amax(2, keepdim=True).detach()  # the max over the keys, per channel
            weight = exponent.exp()
            terms = torch.cat([weight * v, weight], -1)  # (B, H, T, 2D)
            sums = terms.sum(2, keepdim=True).expand(B, H, T, 2 * D)
            if self.window:
                s = self.window
                N = -(-T // s)
                padded = F.pad(terms, (0, 0, s, N * s - T + s))  # zero terms around: no key there
                neighbours = [padded[:, :, n * s:n * s + N * s].unflatten(2, (N, s)) for n in range(3)]
                pair_terms = torch.cat(neighbours, 3)  # (B, H, N, 3s, 2D): blocks n - 1, n, n + 1
                query_position = torch.arange(N * s, device=q.device).view(N, s)
                key_position = torch.cat([query_position - s, query_position, query_position + s], 1)
                pair_valid = (key_position >= 0) & (key_position < T)  # padded keys' terms are 0 already
                factor = self.window_factor(query_position, key_position, pair_valid, q.dtype)  # (N, s, 3s)
                sums = sums + (factor @ pair_terms).flatten(2, 3)[:, :, :T]
            numerator, normaliser = sums.split(D, -1)
            y = torch.sigmoid(q) * numerator / normaliser
        return cast(y, dtype)

    def attend_reference(self, q, k, v, pad_mask):
        """The paper's sums on the (T, T) matrix of w_tt', per channel: softmax over t' of k_t' + w_tt'."""
        B, H, T, D = q.shape
        bias = torch.zeros(T, T, dtype=q.dtype, device=q.device)  # w_tt'
        distances = range(self.window) if self.causal else range(1 - self.window, self.window)
        for column, distance in enumerate(distances):  # each diagonal t - t' = distance inside the window
            first, last = max(distance, 0), min(T, T + distance)
            t = torch.arange(first, max(first, last), device=q.device)
            bias[t, t - distance] = self.position_bias[t, column]
        logits = k[:, :, None, :, :] + bias[:, :, None]  # (B, H, T, T, D): [t, t', channel]
        allowed = reference_mask(T, self.causal, pad_mask, q.device)[..., None]  # (B|1, 1, T, T, 1)
        weights = torch.softmax(logits.masked_fill(~allowed, float('-inf')), dim=3)
        return torch.sigmoid(q) * (weights * v[:, :, None]).sum(3)


class BigBirdAttention(Attention):
    """BigBird. Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", arXiv:2007.14062, ITC form.

    Softmax attention y_i = sum_j softmax_j(q_i . k_j / sqrt(D)) v_j over a sparse set of keys, in blocks of b =
    bigbird_block tokens: the first g = bigbird_global blocks are global (ITC: existing tokens made global; their
    queries see every key and every query sees their keys); every query block sees its window, blocks i - 1, i, i + 1;
    and, bidirectionally, r = bigbird_random random blocks of its own. Causal (window and global only, bigbird_random
    unused): keys j <= i of the global blocks and of blocks i - 1 and i.
    The random blocks are drawn at construction from torch's generator (which the trainers seed), for every head and
    every query block of a block_size sequence, among the blocks neither global nor in the window, and kept as a
    buffer (`random_blocks`, saved in checkpoints): a run is reproducible, and a shorter sequence skips the blocks past
    its end. Written from the paper; no implementation by the authors was compared. The global blocks sit at the start,
    so the causal form follows the same rule.
    Fast path: each query block against its gathered key blocks, (g + 3 + r) b keys (causal g + 2), and the global
    queries against every key. Time O(T (g + 3 + r) b D + g b T D), memory O(T (g + 3 + r) b + g b T): linear in T for
    a fixed block. Decoding keeps the keys and values of the global blocks and of the current and previous block, at
    most (g + 2) b tokens: a token costs O((g + 2) b D) whatever its position. Reference: the (T, T) mask of the rule
    above, written per token, and the softmax over it.
    """

    def __init__(self, config):
        super().__init__(config)
        for knob, least in (('bigbird_block', 1), ('bigbird_global', 0), ('bigbird_random', 0)):
            if getattr(config, knob) < least:
                raise ValueError(f"{knob}={getattr(config, knob)}: must be at least {least}")
        self.block, self.n_global = config.bigbird_block, config.bigbird_global
        self.n_random = 0 if self.causal else config.bigbird_random
        n = -(-config.block_size // self.block)
        block = torch.arange(n)
        candidate = ((block[:, None] - block[None, :]).abs() > 1) & (block[None, :] >= self.n_global)  # (n, n)
        draw = torch.rand(config.n_head, n, n).masked_fill(~candidate, -1)
        chosen = draw.topk(min(self.n_random, n), dim=-1)
        # (H, n, r): each query block's random key blocks; -1 where fewer than r blocks are left to draw from
        self.register_buffer('random_blocks', chosen.indices.masked_fill(chosen.values < 0, -1))

    def key_blocks(self, N, device):
        """(H, N, S) the key blocks each query block sees (global, window, random), and (H, N, S) which of them count:
        in the sequence, and not counted twice (a window block that is global)."""
        i = torch.arange(N, device=device)[:, None]
        window = i + torch.arange(-1, 1 if self.causal else 2, device=device)      # (N, 2 or 3)
        blocks = [torch.arange(self.n_global, device=device).expand(N, -1), window]
        blocks = torch.cat(blocks, 1).expand(self.n_head, -1, -1)
        random = self.random_blocks[:, :N].to(device)
        blocks = torch.cat([blocks, random], 2)                                     # (H, N, S)
        counts = (blocks >= 0) & (blocks < N)
        counts[:, :, self.n_global:self.n_global + window.size(1)] &= window >= self.n_global
        return blocks.clamp(0, N - 1), counts

    def check_length(self, T):
        if self.n_random and T > self.random_blocks.size(1) * self.block:
            raise ValueError(f"bigbird: {T} tokens, but the random blocks were drawn for block_size "
                             f"{self.random_blocks.size(1) * self.block}; raise block_size")

    def attend(self, q, k, v, pad_mask):
        B, H, T, D = q.shape
        self.check_length(T)
        b, N = self.block, -(-q.size(2) // self.block)
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if pad_mask is None else ~pad_mask
        q_blocks, k_blocks, v_blocks = (in_chunks(t, b) for t in (q, k, v))  # (B, H, N, b, D)
        valid_blocks = F.pad(valid, (0, N * b - T)).view(B, N, b)
        blocks, counts = self.key_blocks(N, q.device)                       # (H, N, S)
        head = torch.arange(H, device=q.device)[:, None, None]
        keys = k_blocks[:, head, blocks].flatten(3, 4)                      # (B, H, N, S b, D)
        values = v_blocks[:, head, blocks].flatten(3, 4)
        key_valid = valid_blocks[:, blocks] & counts[None, ..., None]        # (B, H, N, S, b)
        allowed = key_valid.flatten(3, 4)[:, :, :, None, :]                 # (B, H, N, 1, S b)
        if self.causal:
            position = torch.arange(N * b, device=q.device).view(N, b)
            key_position = position[blocks].flatten(2, 3)                   # (H, N, S b)
            allowed = allowed & (key_position[:, :, None, :] <= position[:, :, None])
        y = masked_softmax_attention(q_blocks, keys, values, allowed).flatten(2, 3)[:, :, :T]  # (B, H, T, D)
        G = min(self.n_global * b, T)
        if G and not self.causal:  # the global queries see every key (causally their blocks above cover it)
            y_global = masked_softmax_attention(q[:, :, :G], k, v, valid[:, None, None, :])
            y = torch.cat([y_global, y[:, :, G:]], 2)
        return y

    def allowed_keys(self, query_position, key_position):
        """(Tq, Tk) bool: which keys the rule lets each query see, from their positions (causal decoding)."""
        query_block, key_block = query_position[:, None] // self.block, key_position[None, :] // self.block
        near = (query_block - key_block <= 1) | (key_block < self.n_global)
        return near & (key_position[None, :] <= query_position[:, None])

    def attend_step(self, q, k, v, state):
        start, T = (0, q.size(2)) if state is None else (state['length'], q.size(2))
        end = start + T
        position = torch.arange(start, end, device=q.device)
        if state is None:
            y, keys, values, key_position = self.attend(q, k, v, None), k, v, position
        else:
            keys, values = torch.cat([state['keys'], k], 2), torch.cat([state['values'], v], 2)
            key_position = torch.cat([state['positions'], position])
            y = masked_softmax_attention(q, keys, values, self.allowed_keys(position, key_position))
        kept = (key_position // self.block < self.n_global) | (key_position // self.block >= end // self.block - 1)
        kept = kept.nonzero().squeeze(1)  # the global tokens and the blocks a later query's window holds
        return y, {'keys': keys.index_select(2, kept), 'values': values.index_select(2, kept),
                   'positions': key_position.index_select(0, kept), 'length': end}

    def attend_reference(self, q, k, v, pad_mask):
        """softmax(q k^T / sqrt(D)) v over the keys the rule allows, per head, on the (T, T) matrix."""
        B, H, T, D = q.shape
        self.check_length(T)
        block = torch.arange(T, device=q.device) // self.block
        query_block, key_block = block[:, None], block[None, :]
        is_global = (query_block < self.n_global) | (key_block < self.n_global)
        if self.causal:
            position = torch.arange(T, device=q.device)
            allowed = (((query_block - key_block <= 1) | is_global) & (position[None, :] <= position[:, None]))[None]
        else:
            random = torch.stack([torch.isin(block, self.random_blocks[h, i]) for h in range(H)
                                  for i in range(-(-T // self.block))]).view(H, -1, T)  # [h, query block, key]
            allowed = ((query_block - key_block).abs() <= 1) | is_global | random[:, block]  # (H, T, T)
        allowed = allowed[None] if pad_mask is None else allowed[None] & ~pad_mask[:, None, None, :]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) @ v


def check_patch_grid(config, name):
    """vicinity and sra read the 2D grid of an image's patches, which only train_vit.py sets (patch_grid_width)."""
    if config.patch_grid_width < 1:
        raise ValueError(f"{name} attends over the 2D grid of an image's patches, which only train_vit.py gives it "
                         f"(patch_grid_width={config.patch_grid_width}); pick another variant for this task")
    if config.class_tokens < 0:
        raise ValueError(f"class_tokens={config.class_tokens}: must be 0 or more")


def patches_per_sequence(T, class_tokens, pad_mask, device):
    """(B|1, 1) the number of patches of each sequence: its unpadded tokens after the class tokens."""
    length = torch.full((1, 1), T, device=device) if pad_mask is None else (~pad_mask).sum(1, keepdim=True)
    return (length - class_tokens).clamp_min(0)


class VicinityAttention(KernelAttention):
    """Vicinity attention. Sun et al. 2022, "Vicinity Vision Transformer", arXiv:2206.10552.

    Linear attention over image patches whose weights fall with the 2D Manhattan distance, each axis through a
    cosine: patch i at row r_i, column c_i of an H x W grid,
        s_ij = relu(q_i) . relu(k_j) (cos(pi/2 (r_i - r_j) / H) + cos(pi/2 (c_i - c_j) / W)),
        y_i = sum_j s_ij v_j / (sum_j s_ij + 1e-4),
    over all unpadded j. cos(a - b) = cos a cos b + sin a sin b makes it linear attention with features
    [relu(x) cos(pi/2 r / H), relu(x) sin(pi/2 r / H), relu(x) cos(pi/2 c / W), relu(x) sin(pi/2 c / W)].
    The grid: patches in raster order after LayerConfig.class_tokens leading tokens, patch_grid_width = W per row, H the
    rows a sequence's patches fill (the last row may be partial; with padding, per sequence); train_vit.py sets both.
    A class token has no place on the grid: trev gives its pairs the weight of distance 0, 2, both ways, through two
    more blocks of relu features (F = 6D); with pool='mean' there is none.
    Bidirectional only (an image has no order). Compared with the authors' VicinityVisionAttention
    (OpenNLPLab/Vicinity-Vision-Transformer, classification/models/vvt/vvt.py, use_sum=True): the same features,
    angles and eps; trev leaves out what surrounds the attention there (feature reduction of q, k, v, the spatial
    reduction of keys, the squeeze-and-excitation gate, and clamping every intermediate's magnitude to [1e-4, 1e4]),
    and uses trev's shared projections.
    Time O(T F D), memory O(T (F + D) + F D) with F = 6D. Reference: the (T, T) matrix s written from positions.
    """
    supports_causal = False
    eps = 1e-4

    needs_patch_grid = True

    def __init__(self, config):
        check_patch_grid(config, 'vicinity')  # first: a causal trainer lacks the grid before the mode
        super().__init__(config)
        self.grid_width, self.class_tokens = config.patch_grid_width, config.class_tokens

    def vicinity_features(self, q, k, pad_mask):
        T = q.size(2)
        patch = torch.arange(T, device=q.device) - self.class_tokens          # a class token's is < 0
        rows = (-(-patches_per_sequence(T, self.class_tokens, pad_mask, q.device) // self.grid_width)).clamp_min(1)
        row, column = (patch.clamp_min(0) // self.grid_width).to(q.dtype), (patch.clamp_min(0) % self.grid_width).to(q.dtype)
        row_angle = (math.pi / 2) * row / rows.to(q.dtype)                       # (B|1, T)
        column_angle = (math.pi / 2) * column / self.grid_width                  # (T,)
        angles = [row_angle[:, None, :, None], column_angle.expand_as(row_angle)[:, None, :, None]]
        on_grid = (patch >= 0)[:, None].to(q.dtype)  # (T, 1)
        off_grid = 1 - on_grid

        def phi(x, class_block, patch_block):
            x = F.relu(x)
            grid = [x * f(angle) for angle in angles for f in (torch.cos, torch.sin)]
            return torch.cat([g * on_grid for g in grid] + [class_block(x), patch_block(x)], dim=-1)
        root2 = math.sqrt(2)
        fq = phi(q, lambda x: root2 * x * off_grid, lambda x: root2 * x * on_grid)
        fk = phi(k, lambda x: root2 * x, lambda x: root2 * x * off_grid)
        return fq, fk

    def attend_bidirectional(self, q, k, v, pad_mask):
        with full_precision(q):
            fq, fk = self.vicinity_features(cast(q, wide_dtype(q)), cast(k, wide_dtype(k)), pad_mask)
        return self.bidirectional(fq, fk, v, pad_mask)

    def attend_reference(self, q, k, v, pad_mask):
        """s_ij = relu(q_i) . relu(k_j) w_ij, w_ij = cos(pi/2 dr / H) + cos(pi/2 dc / W) between patches, 2 where a
        class token is in the pair; y_i = sum_j s_ij v_j / (sum_j s_ij + eps) over the unpadded j."""
        B, H, T, D = q.shape
        outputs = []
        for b in range(B):
            length = T if pad_mask is None else int((~pad_mask[b]).sum())
            n_patches = max(length - self.class_tokens, 0)
            n_rows = max(-(-n_patches // self.grid_width), 1)
            weight = torch.full((T, T), 2.0, dtype=q.dtype)
            for i in range(self.class_tokens, T):
                for j in range(self.class_tokens, T):
                    (ri, ci), (rj, cj) = divmod(i - self.class_tokens, self.grid_width), divmod(j - self.class_tokens,
                                                                                                self.grid_width)
                    weight[i, j] = (math.cos(math.pi / 2 * (ri - rj) / n_rows)
                                    + math.cos(math.pi / 2 * (ci - cj) / self.grid_width))
            scores = F.relu(q[b]) @ F.relu(k[b]).transpose(-2, -1) * weight  # (H, T, T)
            if pad_mask is not None:
                scores = scores.masked_fill(pad_mask[b][None, None, :], 0)
            outputs.append(scores @ v[b] / (scores.sum(-1, keepdim=True) + self.eps))
        return torch.stack(outputs)


class SpatialReductionAttention(Attention):
    """Spatial-reduction attention (SRA). Wang et al. 2021, "Pyramid Vision Transformer", arXiv:2102.12122.

    Softmax attention whose keys and values come from the patch grid reduced R x R (R = sra_ratio):
        SR(x) = LayerNorm(Reshape(x, R) W_S),  y = softmax(q SR(x)_k^T / sqrt(D)) SR(x)_v,
    Reshape cutting the (rows x W) grid into R x R squares, each flattened to R^2 C and projected to C by W_S, which is
    the strided convolution of the authors' attention (compared as copied into the VVT repository, pvt_Attention:
    Conv2d(C, C, R, stride=R), then LayerNorm, then the k, v projection; whai362/PVT itself was not read): trev runs
    that convolution, and its reference the reshape and matmul of the paper. Queries are every token's; the k, v projections are the shared `qkv`'s.
    The grid as vicinity's (class_tokens, then patch_grid_width patches per row, set by train_vit.py); a grid that R does
    not divide is zero-padded at the bottom and right (PVT's convolution would drop the remainder), and a reduced cell
    holding no patch of a sequence is not a key of it. The class token is not on the grid: its key and value are its own,
    from the shared projection without the reduction or its norm (PVT v1 adds its class token only in the last stage,
    where R = 1). Bidirectional only, ViT only; R = 1 is softmax attention (use 'softmax'). trev's bias setting
    applies to the convolution and the norm (PVT's convolution has a bias). attend and attend_reference take the
    reduced keys' padding (B, T'), not the queries'.
    Time O(T (T / R^2) D + T C^2) (the reduction), memory O(T T / R^2). Extra parameters: W_S (R^2 C^2) and the norm
    (C, and C of biases with bias=True).
    """
    supports_causal = False
    supports_short_conv = False  # its keys come from the grid

    needs_patch_grid = True

    def __init__(self, config):
        check_patch_grid(config, 'sra')  # first: a causal trainer lacks the grid before the mode
        super().__init__(config)
        if config.sra_ratio < 2:
            raise ValueError(f"sra_ratio={config.sra_ratio}: must be at least 2 (R = 1 is softmax attention: use "
                             f"attention='softmax')")
        self.grid_width, self.class_tokens, self.ratio = config.patch_grid_width, config.class_tokens, config.sra_ratio
        self.reduction = nn.Conv2d(config.n_embd, config.n_embd, self.ratio, stride=self.ratio, bias=config.bias)
        self.reduction_norm = nn.LayerNorm(config.n_embd, bias=config.bias)

    def forward(self, x, pad_mask=None, reference=False):
        B, T, C = x.shape
        q = F.linear(x, self.qkv.weight[:C], None if self.qkv.bias is None else self.qkv.bias[:C])
        keys_from, key_pad = self.reduce(x, pad_mask, reference)
        k, v = F.linear(keys_from, self.qkv.weight[C:], None if self.qkv.bias is None else self.qkv.bias[C:]).split(C, 2)
        q, k, v = (t.view(B, t.size(1), self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attend = self.attend_reference if reference else self.attend
        return self.output(attend(q, k, v, key_pad), x)

    def reduce(self, x, pad_mask, reference):
        """x (B, T, C) -> the tokens keys and values come from, (B, T', C): the class tokens, then the grid's R x R
        squares in raster order, each projected and normed; and their padding (B, T'), True where not a key."""
        B, T, C = x.shape
        R, W, c = self.ratio, self.grid_width, self.class_tokens
        patches = x[:, c:] if pad_mask is None else x[:, c:].masked_fill(pad_mask[:, c:, None], 0)
        N = patches.size(1)
        rows = max(-(-N // W), 1)  # a sequence without patches keeps an empty row, whose cell is no key
        height, width = -(-rows // R) * R, -(-W // R) * R
        grid = F.pad(patches, (0, 0, 0, rows * W - N)).view(B, rows, W, C)
        grid = F.pad(grid, (0, 0, 0, width - W, 0, height - rows))  # (B, height, width, C), zeros past the patches
        if reference:  # the paper: R x R squares flattened to R^2 C, times W_S (R^2 C, C)
            squares = grid.view(B, height // R, R, width // R, R, C).permute(0, 1, 3, 2, 4, 5).flatten(3)
            w_s = self.reduction.weight.permute(0, 2, 3, 1).flatten(1)  # (C, R R C), in the squares' order
            reduced = squares.flatten(1, 2) @ w_s.T
            reduced = reduced if self.reduction.bias is None else reduced + self.reduction.bias
        else:
            reduced = self.reduction(grid.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, cells, C)
        cell_row = torch.arange(height // R, device=x.device)[:, None] * R
        cell_column = torch.arange(width // R, device=x.device)[None, :] * R
        first_patch = (cell_row * W + cell_column).flatten()  # a cell holds a patch iff its first one is
        held = first_patch[None, :] < patches_per_sequence(T, c, pad_mask, x.device)  # (B|1, cells)
        class_pad = torch.zeros(1, min(c, T), dtype=torch.bool, device=x.device) if pad_mask is None else pad_mask[:, :c]
        key_pad = torch.cat([class_pad.expand(B, -1), ~held.expand(B, -1)], 1)
        return torch.cat([x[:, :c], self.reduction_norm(reduced)], 1), key_pad

    def attend(self, q, k, v, pad_mask):
        if pad_mask is None:
            return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~pad_mask[:, None, None, :])

    def attend_reference(self, q, k, v, pad_mask):
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T')
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) @ v


class LowRankSigmoidGate(nn.Module):
    """The output gate of Kimi Delta Attention: sigmoid(x W_down W_up) * y, from the layer input x (B, T, C), on the
    merged heads y (B, T, C); W_down: C -> rank, W_up: rank -> C (nn.Linear, initialised as any)."""

    def __init__(self, n_embd, rank, bias):
        super().__init__()
        self.down = nn.Linear(n_embd, rank, bias=False)
        self.up = nn.Linear(rank, n_embd, bias=bias)

    def forward(self, y, x):
        return torch.sigmoid(self.up(self.down(x))) * y


class KimiDeltaAttention(RecurrentAttention):
    """Kimi Delta Attention (KDA). Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention Architecture",
    arXiv:2510.26692.

    S_t = (I - beta_t k_t^T k_t) Diag(alpha_t) S_{t-1} + beta_t k_t^T v_t, y_t = q_t S_t / sqrt(D) (row layout; the
    paper's column layout is its transpose): Gated DeltaNet with a decay per key channel. As the paper and its
    released code: q, k <- L2Norm(SiLU(q)), L2Norm(SiLU(k)) and v <- SiLU(v) on the shared projections (the paper's
    short convolution is trev's short_conv axis: --short_conv=4); beta_t = sigmoid(x_t W_beta) per head; the
    per-channel decay log alpha_t = -exp(A_h) softplus(x_t W_down W_up + dt), rank D, A_h = log of U(1, 16) (the
    released code's initialisation) and dt = softplus^-1 of a log-uniform step in [0.001, 0.1] per channel (the
    released code loads dt from its checkpoints; this is Gated DeltaNet's initialisation); the output
    proj(sigmoid(x W_g_down W_g_up) * RMSNorm_h(heads)), rank D. The 1 / sqrt(D) is the released kernel's scale
    (fla's chunk_kda default); the paper writes y_t = q_t S_t, which the RMSNorm after it makes the same up to its eps.
    Like GLA, log alpha_t >= -8 (kernels.MIN_CHANNEL_LOG_DECAY), in the reference too. Extra parameters: W_beta
    (C x H), the decay's C x D + D x C, dt (C) and A (H), the output gate's C x D + D x C, the norm's D weights.
    Causal only (the paper defines no bidirectional form).
    Causal: chunked_generalized_delta_rule (read = alpha_t k_t, write = -beta_t k_t, key beta_t k_t), chunks of 16:
    time O(T 16 D + T D^2), memory O(T (16 + D) + (T / 16) D^2); decoding keeps a (D, D) state per head.
    Reference: the paper's recurrence, one token at a time; test_generalized_delta_rule.py also checks the kernel
    against fla's naive_recurrent_kda (fla.ops.kda.naive).
    """
    supports_bidirectional = False
    paper_output = {'head_norm': 'rmsnorm', 'output_gate': 'sigmoid(x W_down W_up), low rank'}

    def __init__(self, config):
        super().__init__(config)
        C, H, D = config.n_embd, config.n_head, self.head_dim
        self.beta = nn.Linear(C, H, bias=False)
        self.decay_down = nn.Linear(C, D, bias=False)
        self.decay_up = nn.Linear(D, C, bias=False)
        self.log_decay_rate = nn.Parameter(torch.empty(H).uniform_(1, 16).log())  # A_h
        self.step_bias = nn.Parameter(initial_step_bias(C))  # softplus(step_bias) = the initial step
        self.head_norm = self.paper_part('head_norm', config)
        self.gate = LowRankSigmoidGate(C, D, config.bias) if self.keeps_paper('output_gate') else None
        self.set_output(norm=self.head_norm, gate=self.gate)

    def gates(self, x):
        B, T, C = x.shape
        step = wide_linear(self.decay_up, wide_linear(self.decay_down, x))  # (B, T, C)
        step = F.softplus(step + cast(self.step_bias, step.dtype)).view(B, T, self.n_head, self.head_dim)
        log_alpha = -cast(self.log_decay_rate, step.dtype).exp()[:, None] * step
        return {'beta': torch.sigmoid(wide_linear(self.beta, x)).transpose(1, 2),  # (B, H, T)
                'log_alpha': log_alpha.transpose(1, 2)}                         # (B, H, T, D)

    def features(self, q, k, offset):
        return F.normalize(F.silu(q), dim=-1) / math.sqrt(q.size(-1)), F.normalize(F.silu(k), dim=-1)

    def attend_chunkwise(self, q, k, v, state, beta, log_alpha):
        fq, fk = self.wide_features(q, k, 0)
        log_alpha = cast(log_alpha, fq.dtype).clamp_min(MIN_CHANNEL_LOG_DECAY)
        key = cast(beta, fq.dtype)[..., None] * fk
        y, kv = chunked_generalized_delta_rule(fq, key, F.silu(cast(v, fq.dtype)), log_alpha, log_alpha.exp() * fk,
                                               -key, None if state is None else state['kv'], self.chunk_size)
        return cast(y, v.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask, beta, log_alpha):
        """The paper's recurrence token by token, in its layout: S (E, D), S_t = S_{t-1} Diag(alpha_t) (I - beta_t
        k_t k_t^T) + beta_t v_t k_t^T, y_t = S_t q_t / sqrt(D), with log alpha_t >= MIN_CHANNEL_LOG_DECAY."""
        B, H, T, D = q.shape
        unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        q, k, v = unit(q * torch.sigmoid(q)), unit(k * torch.sigmoid(k)), v * torch.sigmoid(v)
        alpha = log_alpha.clamp_min(MIN_CHANNEL_LOG_DECAY).exp()
        S = q.new_zeros(B, H, v.size(-1), D)
        identity = torch.eye(D, dtype=q.dtype, device=q.device)
        outputs = []
        for t in range(T):
            kt, bt = k[:, :, t, :, None], beta[:, :, t, None, None]  # (B, H, D, 1), (B, H, 1, 1)
            S = (S * alpha[:, :, t, None, :]) @ (identity - bt * kt @ kt.transpose(-2, -1)) \
                + bt * v[:, :, t, :, None] @ kt.transpose(-2, -1)
            outputs.append((S @ q[:, :, t, :, None]).squeeze(-1) / D ** 0.5)
        return torch.stack(outputs, dim=2)


class RWKV7Gate(nn.Module):
    """RWKV-7's output gate: (sigmoid(x W_1) W_2) * y, from the layer input x (B, T, C), on the merged heads y; no
    sigmoid after W_2 (the paper's g_t)."""

    def __init__(self, n_embd, rank):
        super().__init__()
        self.down = nn.Linear(n_embd, rank, bias=False)
        self.up = nn.Linear(rank, n_embd, bias=False)

    def forward(self, y, x):
        return self.up(torch.sigmoid(self.down(x))) * y


class RWKV7Attention(RecurrentAttention):
    """RWKV-7 "Goose" time mixing. Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution",
    arXiv:2503.14456.

    The generalised delta rule with a vector decay and an in-context learning rate, in the paper's layout (S: (E, D)):
    S_t = S_{t-1} (Diag(w_t) - kappa_t^T (a_t * kappa_t)) + v_t^T ktilde_t, wkv_t = S_t r_t, with r, k, v the shared
    q, k, v; the removal key kappa_t = L2Norm_h(k_t * xi), the replacement key ktilde_t = k_t * (1 + (a_t - 1) * alpha);
    the decay w_t = exp(-e^(-1/2) sigmoid(d_t)), d_t = tanh(x_t W_w1) W_w2 + w_0, and the learning rate
    a_t = sigmoid(x_t W_a1 W_a2 + a_0), both per channel; the output
    p_t = GroupNorm_h(wkv_t) + (sum_h r_t * rho * ktilde_t) v_t, then proj(g_t * p_t), g_t = sigmoid(x_t W_g1) W_g2.
    Low ranks as the paper's code: max(32, 32 round(1.8 sqrt(C) / 32)) for w and a, max(32, 32 round(0.6 C^0.8 / 32))
    for g. Initialisation: w_0 = -6.5 + 5 (c / (C - 1))^0.85 over the channels c, a_0 = 0, xi = 0.85, alpha = 1,
    rho = -0.04 (the paper's code, which also makes some depend on the layer's depth: a trev layer does not know it),
    the low-rank matrices as every nn.Linear. GroupNorm eps D 1e-5, as fla's layer. No scale on r (fla's scale=1).
    The rest of the RWKV-7 block is trev's block: no token shift (the lerp of x_t and x_{t-1} before each projection;
    trev's short_conv axis mixes neighbouring tokens instead), no value residual across layers, trev's MLP for the
    channel mixing. Extra parameters: the three low-rank maps, w_0, a_0, xi, alpha, rho (C each), the group norm (2C).
    Causal only (the paper defines no bidirectional form).
    Causal: chunked_generalized_delta_rule (read = kappa_t, write = -(a_t kappa_t), key ktilde_t), chunks of 16: time
    O(T 16 D + T D^2), memory O(T (16 + D) + (T / 16) D^2); decoding keeps a (D, D) state per head. Reference: the
    paper's recurrence, one token at a time; test_generalized_delta_rule.py also checks the kernel against fla's
    dplr_recurrence (fla.ops.generalized_delta_rule.dplr.naive), the op fla's chunk_rwkv7 calls.
    """
    supports_bidirectional = False
    paper_output = {'output_gate': 'sigmoid(x W_1) W_2, low rank'}

    def __init__(self, config):
        super().__init__(config)
        C = config.n_embd
        decay_rank = max(32, 32 * round(1.8 * C ** 0.5 / 32))
        gate_rank = max(32, 32 * round(0.6 * C ** 0.8 / 32))
        self.decay_down = nn.Linear(C, decay_rank, bias=False)
        self.decay_up = nn.Linear(decay_rank, C, bias=False)
        self.decay_bias = nn.Parameter(-6.5 + 5 * (torch.arange(C) / max(C - 1, 1)) ** 0.85)  # w_0
        self.learning_rate_down = nn.Linear(C, decay_rank, bias=False)
        self.learning_rate_up = nn.Linear(decay_rank, C, bias=True)  # bias a_0 = 0
        self.removal_key_scale = nn.Parameter(torch.full((C,), 0.85))      # xi
        self.replacement_key_mix = nn.Parameter(torch.ones(C))             # alpha
        self.bonus_scale = nn.Parameter(torch.full((C,), -0.04))           # rho
        self.group_norm = HeadGroupNorm(config.n_head, C, eps=self.head_dim * 1e-5)
        self.gate = RWKV7Gate(C, gate_rank) if self.keeps_paper('output_gate') else None
        self.set_output(gate=self.gate)

    def gates(self, x):
        B, T, C = x.shape
        heads = lambda t: t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)
        decay = wide_linear(self.decay_up, torch.tanh(wide_linear(self.decay_down, x)))
        log_decay = -math.exp(-0.5) * torch.sigmoid(decay + cast(self.decay_bias, decay.dtype))
        rate = torch.sigmoid(wide_linear(self.learning_rate_up, wide_linear(self.learning_rate_down, x)))
        return {'log_decay': heads(log_decay), 'learning_rate': heads(rate)}

    def per_head(self, parameter, like):
        """A (C,) parameter as (H, 1, D), in like's dtype."""
        return cast(parameter, like.dtype).view(self.n_head, 1, self.head_dim)

    def attend_chunkwise(self, q, k, v, state, log_decay, learning_rate):
        wide = wide_dtype(q)
        with full_precision(q):
            r, k, v, rate = cast(q, wide), cast(k, wide), cast(v, wide), cast(learning_rate, wide)
            removal = F.normalize(k * self.per_head(self.removal_key_scale, k), dim=-1)  # kappa
            replacement = k * (1 + (rate - 1) * self.per_head(self.replacement_key_mix, k))  # ktilde
            wkv, kv = chunked_generalized_delta_rule(r, replacement, v, log_decay, removal, -rate * removal,
                                                     None if state is None else state['kv'], self.chunk_size)
            bonus = (r * self.per_head(self.bonus_scale, r) * replacement).sum(-1, keepdim=True) * v
            y = self.group_norm(wkv) + bonus
        return cast(y, q.dtype), {'kv': kv}

    def attend_reference(self, q, k, v, pad_mask, log_decay, learning_rate):
        """The paper's recurrence token by token, in its layout: S (E, D), S_t = S_{t-1} (Diag(w_t) - kappa_t^T (a_t *
        kappa_t)) + v_t^T ktilde_t, p_t = GroupNorm_h(S_t r_t) + (r_t . (rho * ktilde_t)) v_t, the norm written out."""
        B, H, T, D = q.shape
        xi, alpha, rho = (p.view(H, 1, D) for p in (self.removal_key_scale, self.replacement_key_mix,
                                                    self.bonus_scale))
        kappa = k * xi
        kappa = kappa / kappa.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        ktilde = k * (1 + (learning_rate - 1) * alpha)
        w = log_decay.exp()
        S = q.new_zeros(B, H, v.size(-1), D)
        outputs = []
        for t in range(T):
            kap, a = kappa[:, :, t, None, :], learning_rate[:, :, t, None, :]  # (B, H, 1, D)
            transition = torch.diag_embed(w[:, :, t]) - kap.transpose(-2, -1) @ (a * kap)  # (B, H, D, D)
            S = S @ transition + v[:, :, t, :, None] @ ktilde[:, :, t, None, :]
            wkv = (S @ q[:, :, t, :, None]).squeeze(-1)  # (B, H, E)
            mean = wkv.mean(-1, keepdim=True)
            variance = ((wkv - mean) ** 2).mean(-1, keepdim=True)
            normed = (wkv - mean) / torch.sqrt(variance + self.group_norm.eps)
            normed = normed * self.group_norm.weight.view(H, D) + self.group_norm.bias.view(H, D)
            bonus = (q[:, :, t] * rho[:, 0] * ktilde[:, :, t]).sum(-1, keepdim=True) * v[:, :, t]
            outputs.append(normed + bonus)
        return torch.stack(outputs, dim=2)


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
    Fast path: two SDPA calls, q and k zero-padded to D so that the flash kernels apply (CPU and GPU). Time
    O(T^2 D), memory O(T). Decoding keeps a KV cache as softmax does (KVState.extended); GQA through SDPA's enable_gqa.
    """
    supports_kv_groups = True
    paper_output = {'head_norm': 'rmsnorm per head x (1 - lambda_init)'}
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
        self.head_norm = DifferentialHeadNorm(D, 1 - self.lambda_init) if self.keeps_paper('head_norm') else None
        self.set_output(norm=self.head_norm)
        self.cache_size = config.block_size  # the KV cache's first allocation, in tokens

    def difference_weight(self):
        """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, a 0-dim tensor."""
        return (torch.exp(self.lambda_q1 @ self.lambda_k1) - torch.exp(self.lambda_q2 @ self.lambda_k2)
                + self.lambda_init)

    def differential(self, q, k, v, **mask):
        """The two maps through SDPA (mask: is_causal or attn_mask), each with its own scale. Each map's half of q is
        zero-padded, in its own place, to the full width D and meets the whole of k: the scores are its halves'
        (q1 . k1, q2 . k2), and with one head dim for q, k and v SDPA's flash kernels apply, in O(T) memory instead of
        the (T, T) math path (20 GB at T = 16384 on CPU), with k read as it is (a decoding step copies no cache)."""
        D, d = q.size(-1), self.first_half

        def one_map(padded_half, width):
            return F.scaled_dot_product_attention(padded_half, k, v, scale=width ** -0.5,
                                                  enable_gqa=self.group_size > 1, **mask)
        first = one_map(F.pad(q[..., :d], (0, D - d)), d)  # (B, H, T, D): q1, then zeros
        second = one_map(F.pad(q[..., d:], (d, 0)), D - d)  # zeros, then q2
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
    'mamba2': Mamba2,
    'hgrn2': HGRN2,
    'lightning': LightningAttention,
    'linformer': Linformer,
    'nystrom': Nystromformer,
    'synthesizer': Synthesizer,
    'fnet': FNet,
    'aft': AttentionFreeTransformer,
    'bigbird': BigBirdAttention,
    'vicinity': VicinityAttention,
    'sra': SpatialReductionAttention,
    'kda': KimiDeltaAttention,
    'rwkv7': RWKV7Attention,
    'sigmoid': SigmoidAttention,
    'diff': DifferentialAttention,
    'fox': ForgettingAttention,
    'stickbreaking': StickBreakingAttention,
}


def build_attention(config):
    if config.layer_attention:
        raise ValueError(f"layer_attention={config.layer_attention!r} is a stack's pattern, not one layer's: build "
                         "each layer from layer_configs(config, n_layer)")
    if config.attention not in ATTENTION:
        raise ValueError(f"unknown attention '{config.attention}'; choose one of: {', '.join(ATTENTION)}")
    return ATTENTION[config.attention](config)


def attention_pattern(config):
    """One period of the stack's attentions: config.layer_attention parsed ('gated_deltanet*3,softmax' ->
    [gated_deltanet, gated_deltanet, gated_deltanet, softmax]), or [config.attention] where it is ''. ValueError (one
    line) for an unknown name or a count that is not a positive integer."""
    if not config.layer_attention:
        return [config.attention]
    pattern = []
    for part in config.layer_attention.split(','):
        name, star, count = part.partition('*')
        if name not in ATTENTION:
            raise ValueError(f"layer_attention={config.layer_attention!r}: unknown attention {name!r}; write names "
                             f"from {', '.join(ATTENTION)}, each optionally *count, e.g. 'gated_deltanet*3,softmax'")
        if star and not (count.isdigit() and int(count) > 0):
            raise ValueError(f"layer_attention={config.layer_attention!r}: {part!r} needs a positive count after *, "
                             "e.g. 'gated_deltanet*3,softmax'")
        pattern += [name] * (int(count) if star else 1)
    return pattern


def layer_configs(config, n_layer):
    """Hybrid stacks (Gated DeltaNet's and fla's hybrids: a few softmax layers among recurrent ones): one config per
    layer, config with that layer's attention, the pattern (attention_pattern) repeated to n_layer, e.g.
    'gated_deltanet*3,softmax' at n_layer = 8: three gated_deltanet then a softmax, twice. Every other field is
    shared. ValueError (one line) where n_layer is not a multiple of the pattern's length."""
    pattern = attention_pattern(config)
    if n_layer % len(pattern):
        raise ValueError(f"layer_attention={config.layer_attention!r} is {len(pattern)} layers, which does not repeat "
                         f"to n_layer={n_layer}: make n_layer a multiple of {len(pattern)}")
    return [replace(config, attention=name, layer_attention='') for name in pattern * (n_layer // len(pattern))]


def stack_name(config):
    """The stack's attention as run folders and logs name it: the variant, or the hybrid pattern with x for *
    ('gated_deltanetx3,softmax': * is not allowed in a Windows file name)."""
    return config.layer_attention.replace('*', 'x') or config.attention


def resolve_kernel(kernel, attentions, causal, device):
    """The kernel layers of the variants `attentions` (a list of names: a stack's attention_pattern) built with
    LayerConfig.kernel = kernel run on device: 'fla' where a causal path maps onto fla's ops
    (RecurrentAttention.fla_ops) and kernel is 'fla', or 'auto' on CUDA where fla's ops load; else 'torch'. What a
    trainer's config.json and bench's JSON record. ValueError (one line) for an unknown kernel, or 'fla' where fla's
    ops cannot run on device."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: choose one of {', '.join(KERNELS)}")
    on_cuda = str(device).startswith('cuda')
    if kernel == 'fla' and (fla_unavailable() or not on_cuda):
        raise ValueError(fla_unavailable() or f"kernel='fla' runs on CUDA, device is {device}: use kernel='auto' "
                                               "or 'torch'")
    mapped = any(getattr(ATTENTION.get(name), 'fla_ops', ()) for name in attentions) and causal
    usable = kernel == 'fla' or (kernel == 'auto' and on_cuda and fla_unavailable() is None)
    return 'fla' if mapped and usable else 'torch'


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
        self.blocks = nn.ModuleList([Block(layer) for layer in layer_configs(config, config.n_layer)])
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



# ----------------------------------------------------------------------------------------------
# fingerprint: what a run's block computes, so that a table can tell a run made by code that computes otherwise


PROBE_TOKENS = 200      # the probe sequence, where block_size allows: several chunks, longer than a local window
PROBE_NUMBERS = 4       # projections kept of the block's output, and of its input gradient
PROBE_TOLERANCE = 1e-4  # relative: far above rounding (BLAS builds, thread counts), far below a change of formula


def fingerprint(settings, causal):
    """What one Block computes, as numbers a run records and a report recomputes from today's code (same_behaviour):
    the Block of settings' LayerConfig fields (a run's config; other keys ignored) and causal, built under a fixed
    seed (probe_block), in float64 on a fixed input x (1, T, C), T = min(block_size, PROBE_TOKENS), its last quarter
    padding where bidirectional. {'output': r = block(x) - x at the real tokens, 'input_gradient': the gradient of a
    fixed projection of r}, each projected on fixed directions. Behaviour, not source: moving code keeps it.
    Torch's RNG is left as it was. A hybrid stack's (layer_attention) is the Block of each attention of its
    pattern in turn, the lists joined."""
    fields = {key: value for key, value in settings.items() if key in LayerConfig.__dataclass_fields__}
    config = LayerConfig(**{**fields, 'causal': causal, 'kernel': 'torch'})  # the same math on every machine
    probes = [probe(replace(config, attention=name, layer_attention=''))
              for name in dict.fromkeys(attention_pattern(config))]
    return {key: [number for numbers in probes for number in numbers[key]] for key in probes[0]}


def probe(config):
    """fingerprint's numbers for the Block of one LayerConfig."""
    causal = config.causal
    T = min(config.block_size, PROBE_TOKENS)
    real = T if causal else T - T // 4
    with torch.random.fork_rng(devices=[]):  # the CPU generator alone: seeding CUDA's would change a GPU run's dropout
        torch.default_generator.manual_seed(0)
        block = probe_block(config)
        x = torch.randn(1, T, config.n_embd, dtype=torch.float64, requires_grad=True)
        directions = torch.randn(PROBE_NUMBERS + 1, x.numel(), dtype=torch.float64)
    pad_mask = None if causal else torch.arange(T)[None, :] >= real
    residual = (block(x, pad_mask) - x)[:, :real].flatten()  # (real C,): the padding's outputs are undefined
    gradient = torch.autograd.grad(directions[-1, :residual.numel()] @ residual, x)[0].flatten()  # (T C,)
    return {'output': (directions[:-1, :residual.numel()] @ residual).tolist(),
            'input_gradient': (directions[:-1] @ gradient).tolist()}


def probe_block(config):
    """fingerprint's Block in float64 and eval mode, each Linear weight N(0, 1 / fan_in) from a generator seeded by
    its name (the order modules are built in does not matter), the rest as built. Not init_weights' 0.02: it leaves
    attention near uniform and small beside the MLP, where a change of the attention hardly shows."""
    block = Block(config)
    with torch.no_grad():
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.in_features ** 0.5)
    return block.double().eval()


def same_behaviour(recorded, current, tolerance=PROBE_TOLERANCE):
    """Whether two fingerprints are of the same computation: each list within tolerance of the current one, relative
    to the list's length (a single projection may be near zero)."""
    return recorded.keys() == current.keys() and all(
        len(recorded[key]) == len(current[key]) and
        math.dist(recorded[key], current[key]) <= tolerance * math.hypot(*current[key]) for key in current)
