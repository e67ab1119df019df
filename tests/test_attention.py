"""
The correctness protocol, run on every class in ATTENTION in each mode it supports: the parametrized tests
draw their variants from the registry, so a variant added there is covered with no edit here, and
registry_checks(name) runs the same checks on a variant registered at run time. Comparisons run in float64
so that only real differences show.

1. Reference: each variant's attend_reference is the paper's formula written out on the (T, T) score
   matrix (or an explicit loop), sharing no helper or decomposition with the fast path; the
   test_reference_catches_* tests show that a fast path with a deliberate mistake no longer matches it.
2. Fast path == reference in float64, outputs and gradients of the input, of q, k, v and of every
   parameter: test_fast_path_equals_reference, test_attend_gradients_of_q_k_v.
3. Recurrent decoding == the parallel forward, token by token after a prefill of 0, 1 or 13 tokens and in
   uneven pieces; the linear family's state does not grow and holds no memory beyond its own:
   test_recurrent_equals_parallel, test_decoding_in_uneven_pieces, test_linear_family_state_has_fixed_size,
   test_decoding_state_holds_only_its_own_memory, test_block_runs_and_decodes. Training in recomputed segments
   (recompute_segment) equals one pass over the sequence and keeps only its inputs for backward;
   test_training_in_segments_equals_the_whole_sequence, test_training_in_segments_keeps_only_the_inputs; a forward
   without autograd goes in the same segments: test_forward_without_gradient_goes_in_segments.
4. Causality: perturbing token t changes no output before t: test_no_leakage_from_the_future.
5. Awkward shapes: T = 37 is no multiple of the chunk (8) or the window (6), T = 1, head dim 15 (odd, not
   a power of two), B > 1: the shapes of the tests above. The chunk size changes nothing (8, 13, 64 at T = 50):
   test_chunk_size_does_not_change_the_result.
Data-dependent gates (gates(x), passed to attend as keyword arguments) go through every check above; the attend
step alone is also checked for the gradients of the gates themselves.
6. Padding (bidirectional): outputs at real positions do not depend on padded positions, and a padded
   sequence gives what it gives alone: test_padding_is_ignored; test_bidirectional_sees_both_sides.
7. Determinism: the same seed gives the same parameters and bitwise the same outputs: test_deterministic.
Memory: test_memory_grows_linearly, for the variants that claim O(T) memory.
"""
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import attention
import kernels
from attention import ATTENTION, LayerConfig, build_attention
from test_kernels import kept_for_backward


class Selection(list):
    """Parametrize values drawn from the registry: rule(name, cls) gives one variant's values. registry_checks
    applies the rule to a variant registered after this module was imported."""

    def __init__(self, rule):
        super().__init__(value for name, cls in ATTENTION.items() for value in rule(name, cls))
        self.rule = rule


def modes(cls):
    """causal=True and/or causal=False, as the class supports them."""
    return [causal for causal, ok in ((True, cls.supports_causal), (False, cls.supports_bidirectional)) if ok]


def is_linear_family(cls):
    return issubclass(cls, attention.RecurrentAttention)


VARIANTS = list(ATTENTION)
CAUSAL = Selection(lambda name, cls: [name] if cls.supports_causal else [])
BIDIRECTIONAL = Selection(lambda name, cls: [name] if cls.supports_bidirectional else [])
MODES = Selection(lambda name, cls: [(name, causal) for causal in modes(cls)])
LINEAR_FAMILY = Selection(lambda name, cls: [name] if is_linear_family(cls) and cls.supports_causal else [])
LINEAR_MEMORY = Selection(lambda name, cls: [(name, causal) for causal in modes(cls)]
                          if is_linear_family(cls) or issubclass(cls, attention.LocalAttention) else [])


GRID = dict(patch_grid_width=4, class_tokens=1)  # ignored by every variant but vicinity and sra


def make(name, causal, n_embd=30, n_head=2, seed=0, **knobs):
    """A small float64 layer. head dim 15: odd; chunk 8 and window 6 so T = 37 crosses several of each. A patch grid for
    vicinity and sra (GRID): a class token, then rows of 4 patches, so any T is an image, its last row partial."""
    knobs = dict(chunk_size=8, local_window=6, performer_features=20, block_size=64) | GRID | knobs
    torch.manual_seed(seed)
    config = LayerConfig(attention=name, n_embd=n_embd, n_head=n_head, causal=causal, **knobs)
    return build_attention(config).double()


def inputs(B, T, C, seed=1):
    return torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def padding(lengths, T):
    """(B, T) bool, True past each sequence's length."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def grads(module, x, pad_mask, reference, keep):
    """Output and gradients of x and every parameter, for a loss that only reads positions in keep."""
    module.zero_grad()
    x = x.clone().requires_grad_()
    y = module(x, pad_mask, reference=reference)
    (y * keep[..., None] * torch.linspace(-1, 1, y.size(-1), dtype=y.dtype)).sum().backward()
    named = {'x': x.grad} | {name: p.grad.clone() for name, p in module.named_parameters()}
    return y * keep[..., None], named


@pytest.mark.parametrize('name,causal', MODES)
@pytest.mark.parametrize('B,T', [(1, 1), (2, 37), (1, 64)])
def test_fast_path_equals_reference(name, causal, B, T):
    module = make(name, causal)
    x = inputs(B, T, 30)
    pad_mask = None if causal or B == 1 else padding([T, T - 9], T)
    keep = torch.ones(B, T, dtype=torch.bool) if pad_mask is None else ~pad_mask
    y_fast, g_fast = grads(module, x, pad_mask, False, keep)
    y_ref, g_ref = grads(module, x, pad_mask, True, keep)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-9, atol=1e-10)
    assert g_fast.keys() == g_ref.keys()
    for key in g_fast:
        torch.testing.assert_close(g_fast[key], g_ref[key], rtol=1e-9, atol=1e-10, msg=f"gradient of {key}")


def fast_matches_reference(module):
    q, k, v = (inputs(2, 37, 30, seed=s).view(2, 37, 2, 15).transpose(1, 2) for s in (1, 2, 3))  # (B, H, T, D)
    with torch.no_grad():
        fast, reference = module.attend(q, k, v, None), module.attend_reference(q, k, v, None)
    return torch.allclose(fast, reference, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('causal', [True, False])
def test_reference_catches_a_cosformer_with_the_wrong_angle(causal):
    module = make('cosformer', causal)
    assert fast_matches_reference(module)
    module.features = make('cosformer', causal, block_size=128).features  # M doubled in the fast path only
    assert not fast_matches_reference(module)


RETENTION_MISTAKES = {  # retention's features are (rotary(q), rotary(k) / sqrt(D)), D = 15 in make()
    'frequency doubled': lambda q, k, offset: (attention.rotary(attention.rotary(q, offset), offset),
                                               attention.rotary(attention.rotary(k, offset), offset) / 15 ** 0.5),
    'queries one position late': lambda q, k, offset: (attention.rotary(q, offset + 1),
                                                       attention.rotary(k, offset) / 15 ** 0.5),
}


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('mistake', RETENTION_MISTAKES)
def test_reference_catches_a_retention_with_the_wrong_rotation(causal, mistake):
    module = make('retention', causal)
    assert fast_matches_reference(module)
    module.features = RETENTION_MISTAKES[mistake]  # the fast path only
    assert not fast_matches_reference(module)


@pytest.mark.parametrize('name,causal', MODES)
def test_attend_gradients_of_q_k_v(name, causal):
    """The attend step alone: gradients of q, k and v directly (not only through the projection), and of the gates
    a variant computes from the layer input (decays, step sizes), as attend takes them."""
    module = make(name, causal)
    D = module.head_dim
    q, k, v = (inputs(2, 29, D, seed=s).view(2, 29, 1, D).expand(2, 29, heads, D).transpose(1, 2).contiguous()
               for s, heads in ((1, module.n_head), (2, module.n_kv_head), (3, module.n_kv_head)))
    with torch.no_grad():
        gates = module.gates(inputs(2, 29, 30, seed=4))
    results = []
    for attend in (module.attend, module.reference):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        gate_leaves = {key: t.clone().requires_grad_() for key, t in gates.items()}
        y = attend(*leaves, None, **gate_leaves)
        (y * y.detach().sin()).sum().backward()
        results.append([y] + [t.grad for t in leaves] + [t.grad for t in gate_leaves.values()])
    for fast, ref, what in zip(*results, ('y', 'q', 'k', 'v', *gates)):
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10, msg=what)


@pytest.mark.parametrize('name', CAUSAL)
@pytest.mark.parametrize('prefill', [0, 1, 13])
def test_recurrent_equals_parallel(name, prefill):
    """Token-by-token decoding (after an optional parallel prefill) reproduces the parallel forward."""
    module = make(name, True)
    x = inputs(2, 30, 30)
    with torch.no_grad():
        expected = module(x)
        outputs, state = [], None
        if prefill:
            y, state = module.step(x[:, :prefill], state)
            outputs.append(y)
        for t in range(prefill, x.size(1)):
            y, state = module.step(x[:, t:t + 1], state)
            outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, rtol=1e-9, atol=1e-10)


def assert_decodes_in_pieces(module, x, sizes):
    """Decoding x (B, T, C) in pieces of these sizes (summing to T) gives the parallel forward; returns the last state."""
    with torch.no_grad():
        expected = module(x)
        outputs, state, start = [], None, 0
        for size in sizes:
            y, state = module.step(x[:, start:start + size], state)
            outputs.append(y)
            start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, rtol=1e-9, atol=1e-10)
    return state


def outputs_with_token_changed(module, t, T=20):
    """The module's outputs on a sequence of T tokens and on the same with token t changed: (y, y_changed)."""
    x = inputs(1, T, 30)
    changed = x.clone()
    changed[:, t] += 5
    with torch.no_grad():
        return module(x), module(changed)


@pytest.mark.parametrize('name', CAUSAL)
def test_decoding_in_uneven_pieces(name):
    assert_decodes_in_pieces(make(name, True), inputs(1, 40, 30), (5, 1, 11, 2, 21))


def branches_match_forward(module):
    """A state continued twice: two sequences share their first 12 tokens, then each branch is decoded from that one
    state, the two taking turns (a token or a piece each). True when each branch's outputs equal the parallel forward
    of its own sequence, i.e. neither continuation overwrote what the other reads."""
    shared = inputs(1, 12, 30)
    branches = [torch.cat([shared, inputs(1, 18, 30, seed=seed)], dim=1) for seed in (2, 3)]
    with torch.no_grad():
        _, state = module.step(shared)
        states, outputs, start = [state, state], [[], []], 12
        for size in (1, 1, 3, 1, 9, 1, 2):
            for b in (0, 1):
                y, states[b] = module.step(branches[b][:, start:start + size], states[b])
                outputs[b].append(y)
            start += size
        return all(torch.allclose(torch.cat(outputs[b], dim=1), module(branches[b])[:, 12:], rtol=1e-9, atol=1e-10)
                   for b in (0, 1))


@pytest.mark.parametrize('name', CAUSAL)
def test_decoding_from_a_state_continued_twice(name):
    assert branches_match_forward(make(name, True))


@pytest.mark.parametrize('variant', ['softmax', 'local'])
def test_branching_check_catches_a_cache_shared_by_two_continuations(variant, monkeypatch):
    to_write = attention.KVCache.to_write

    def always_in_place(state, k, v, capacity):  # ignores the other live states reading the cache
        return state.cache if state is not None and state.cache.capacity == capacity else to_write(state, k, v, capacity)

    monkeypatch.setattr(attention.KVCache, 'to_write', staticmethod(always_in_place))
    assert not branches_match_forward(make(variant, True))


@pytest.mark.parametrize('variant', ['softmax', 'local'])
def test_decoding_writes_in_place(variant):
    """A continuation writes into the cache of the state it continues while no other live state reads it: nothing is
    copied (softmax's step is O(t) in attention, not also O(t) in copies), the same cache again once the earlier
    continuation is gone (bench's decode steps, each from the same prefilled state), a copy while it lives."""
    module = make(variant, True)
    x = inputs(1, 20, 30)
    with torch.no_grad():
        _, state = module.step(x[:, :10])
        _, continued = module.step(x[:, 10:11], state)
        assert continued.cache is state.cache
        _, branch = module.step(x[:, 10:11], state)
        assert branch.cache is not state.cache
        del continued, branch
        cache = state.cache
        _, state = module.step(x[:, 10:11], state)
        assert state.cache is cache
        for t in range(11, 20):  # decoding on, each state dropped once continued (as generate does)
            _, state = module.step(x[:, t:t + 1], state)
    assert state.cache is cache
    assert cache.capacity == (6 if variant == 'local' else 64)  # the window's ring; block_size for softmax


def softmax_decoding_after_growth(module):
    """Decodes 37 tokens in pieces from a cache allocated for 4 -> (outputs equal the parallel forward, the cache's
    capacity after each piece)."""
    x = inputs(2, 37, 30)
    with torch.no_grad():
        outputs, capacities, state, start = [], [], None, 0
        for size in (3, 1, 1, 5, 1, 9, 17):
            y, state = module.step(x[:, start:start + size], state)
            outputs.append(y)
            capacities.append(state.cache.capacity)
            start += size
        return torch.allclose(torch.cat(outputs, dim=1), module(x), rtol=1e-9, atol=1e-10), capacities


def test_softmax_cache_grows_past_its_first_allocation():
    matches, capacities = softmax_decoding_after_growth(make('softmax', True, block_size=4))
    assert matches
    assert capacities == [4, 4, 8, 16, 16, 32, 64]  # doubled, or to what one piece needs (37 > 2 x 16)


def test_growth_check_catches_a_cache_grown_without_its_tokens(monkeypatch):
    to_write = attention.KVCache.to_write

    def forgets_when_growing(state, k, v, capacity):
        grows = state is not None and capacity != state.cache.capacity
        return to_write(None if grows else state, k, v, capacity)

    monkeypatch.setattr(attention.KVCache, 'to_write', staticmethod(forgets_when_growing))
    assert not softmax_decoding_after_growth(make('softmax', True, block_size=4))[0]

@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_chunk_size_does_not_change_the_result(name):
    """Chunks of 8, 13 and 64 tokens (the layer default; more than T = 50) give the same outputs and gradients."""
    x = inputs(2, 50, 30)
    results = []
    for chunk_size in (8, 13, 64):
        module = make(name, True, chunk_size=chunk_size)
        results.append(grads(module, x, None, False, torch.ones(2, 50, dtype=torch.bool)))
    for y, named in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=1e-9, atol=1e-10)
        for key in named:
            torch.testing.assert_close(named[key], results[0][1][key], rtol=1e-9, atol=1e-10, msg=f"gradient of {key}")


@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_linear_family_state_has_fixed_size(name):
    module = make(name, True)
    with torch.no_grad():
        _, short = module.step(inputs(1, 10, 30), None)
        _, long = module.step(inputs(1, 300, 30), None)
    sizes = lambda state: {key: tuple(v.shape) for key, v in state.items() if torch.is_tensor(v)}
    assert sizes(short) == sizes(long)


@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_decoding_state_holds_only_its_own_memory(name):
    """A state is not a view into a larger tensor (such as every chunk's state), which would stay alive with it."""
    module = make(name, True)
    with torch.no_grad():
        _, state = module.step(inputs(1, 300, 30), None)
    for key, value in state.items():
        if torch.is_tensor(value):
            held, own = value.untyped_storage().nbytes(), value.numel() * value.element_size()
            assert held == own, f"state['{key}'] holds {held} bytes for its own {own}"


@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_training_in_segments_equals_the_whole_sequence(name):
    """recompute_segment (SegmentedRecompute): segments of 16 tokens (two chunks) and of 13 (no whole number of
    chunks) give the outputs and gradients (of x and every parameter, gates included) of one pass over T = 50."""
    x = inputs(2, 50, 30)
    keep = torch.ones(2, 50, dtype=torch.bool)
    y_whole, g_whole = grads(make(name, True, recompute_segment=0), x, None, False, keep)
    for segment in (16, 13):
        y, g = grads(make(name, True, recompute_segment=segment), x, None, False, keep)
        torch.testing.assert_close(y, y_whole, rtol=1e-9, atol=1e-10)
        for key in g:
            torch.testing.assert_close(g[key], g_whole[key], rtol=1e-9, atol=1e-10, msg=f"gradient of {key}")


@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_forward_without_gradient_goes_in_segments(name):
    """Without autograd (an evaluation, a prompt) more than recompute_segment tokens go segment by segment, so the
    temporaries are one segment's: T = 50 in segments of 16 is four calls of the chunkwise form, in the forward and
    in a prefill, each with one pass's output and the prefill with its state."""
    x, after = inputs(2, 50, 30), inputs(2, 3, 30, seed=2)
    with torch.no_grad():
        whole = make(name, True, recompute_segment=0)
        y_whole, (y_next_whole, _) = whole(x, None), whole.step(after, whole.step(x)[1])
        module = make(name, True, recompute_segment=16)
        calls = []
        chunkwise = module.attend_chunkwise
        module.attend_chunkwise = lambda q, *args, **gates: calls.append(q.size(2)) or chunkwise(q, *args, **gates)
        y = module(x, None)
        assert calls == [16, 16, 16, 2]
        y_prefill, state = module.step(x)
        y_next, _ = module.step(after, state)
    assert calls == [16, 16, 16, 2] * 2 + [3]
    for got in (y, y_prefill):
        torch.testing.assert_close(got, y_whole, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y_next, y_next_whole, rtol=1e-9, atol=1e-10)


def test_segment_check_catches_a_backward_that_drops_the_state_gradient(monkeypatch):
    """Without the gradient that flows back through the state between segments, the check above fails."""
    run = kernels.SegmentedRecompute.run

    def cut_state(ctx, per_token, start, state):
        y, leaving = run(ctx, per_token, start, state)
        return y, {key: value.detach() if torch.is_tensor(value) else value for key, value in leaving.items()}
    monkeypatch.setattr(kernels.SegmentedRecompute, 'run', staticmethod(cut_state))
    with pytest.raises(AssertionError, match='gradient of'):
        test_training_in_segments_equals_the_whole_sequence('linear')


@pytest.mark.parametrize('name', LINEAR_FAMILY)
def test_training_in_segments_keeps_only_the_inputs(name):
    """Between forward and backward the segmented layer keeps q, k, v, the gates and the parameters, nothing it
    computed from them (the states entering the segments aside); one pass over the sequence keeps more. This also
    shows that the variant's causal training goes through the segments at all."""
    kept = {}
    for segment in (16, 0):
        module = make(name, True, recompute_segment=segment)
        q, k, v = (inputs(2, 50, heads * module.head_dim, seed=s).view(2, 50, heads, -1).transpose(1, 2)
                   .requires_grad_() for s, heads in ((1, module.n_head), (2, module.n_kv_head), (3, module.n_kv_head)))
        gates = module.gates(inputs(2, 50, 30))
        given = {t.untyped_storage().data_ptr() for t in (q, k, v, *gates.values(), *module.parameters())}
        kept[segment] = kept_for_backward(lambda: module.attend(q, k, v, None, **gates)) <= given
    assert kept == {16: True, 0: False}


@pytest.mark.parametrize('name', CAUSAL)
@pytest.mark.parametrize('t', [0, 8, 20, 36])
def test_no_leakage_from_the_future(name, t):
    module = make(name, True)
    x = inputs(2, 37, 30)
    changed = x.clone()
    changed[:, t] += 5 * torch.randn(2, 30, dtype=torch.float64)
    with torch.no_grad():
        y, y_changed = module(x), module(changed)
    torch.testing.assert_close(y_changed[:, :t], y[:, :t], rtol=0, atol=1e-12)
    assert not torch.allclose(y_changed[:, t], y[:, t])  # the test can see a change where there is one


def assert_padding_ignored(module, T, length):
    """Outputs at real positions do not depend on what sits at padded positions, and a sequence padded from `length`
    to T gives what it gives alone."""
    x = inputs(2, T, 30)
    pad_mask = padding([T, length], T)
    changed = x.clone()
    changed[pad_mask] = 100 * torch.randn(int(pad_mask.sum()), 30, dtype=torch.float64)
    with torch.no_grad():
        y, y_changed = module(x, pad_mask), module(changed, pad_mask)
        unpadded = module(x[1:, :length])
    torch.testing.assert_close(y_changed[~pad_mask], y[~pad_mask], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y[1:, :length], unpadded, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name', BIDIRECTIONAL)
def test_padding_is_ignored(name):
    """Bidirectional: outputs at real positions do not depend on what sits at padded positions."""
    assert_padding_ignored(make(name, False), 33, 21)


@pytest.mark.parametrize('name', BIDIRECTIONAL)
def test_bidirectional_sees_both_sides(name):
    module = make(name, False)
    x = inputs(1, 20, 30)
    changed = x.clone()
    changed[:, 12] += 5
    with torch.no_grad():
        assert not torch.allclose(module(changed)[:, 10], module(x)[:, 10])


@pytest.mark.parametrize('name,causal', MODES)
def test_deterministic(name, causal):
    a, b = make(name, causal, seed=3), make(name, causal, seed=3)
    x = inputs(2, 20, 30)
    for (key, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), key
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert torch.equal(a(x), a(x))


def test_performer_projection_changes_only_when_asked():
    module = make('performer', True)
    before = module.projection.clone()
    with torch.no_grad():
        module(inputs(1, 10, 30))
    module.train()
    module(inputs(1, 10, 30)).sum().backward()
    assert torch.equal(module.projection, before)
    assert 'projection' in module.state_dict()
    module.redraw_projection()
    assert not torch.equal(module.projection, before)


def test_performer_approximates_softmax():
    """FAVOR+ is an unbiased estimator of softmax attention: with many features it comes close."""
    performer = make('performer', False, n_embd=16, n_head=1, performer_features=4096)
    softmax = make('softmax', False, n_embd=16, n_head=1)
    q, k, v = (0.5 * inputs(1, 32, 16, seed=s)[:, None] for s in (1, 2, 3))
    error = (performer.attend(q, k, v, None) - softmax.attend(q, k, v, None)).abs().mean()
    assert error < 0.05 * v.abs().mean()


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('direction', ['random', 'opposite'])
def test_performer_stabiliser_survives_long_keys(causal, direction):
    """With |q|, |k| large (48 after performer's D^(-1/4) scaling), the paper's exp(w.x - |x|^2/2) underflows to 0
    in float32 for every feature. With q and k pointing apart, every product phi(q)_f phi(k)_f underflows too,
    after the stabiliser: without the feature floor the float32 normaliser falls below 1e-19, and its square in
    the backward to 0 (NaN gradients; 0 / 0 in the forward below 1e-45). The float32 fast path,
    outputs and gradients, matches the float64 reference, which writes out the same floored features."""
    module = make('performer', causal)
    x = inputs(1, 40, 15, seed=1)[:, None].expand(1, 2, 40, 15)
    y = -x + 0.1 * inputs(1, 40, 15, seed=2)[:, None] if direction == 'opposite' else inputs(1, 40, 15, seed=2)[:, None]
    q, k = (z / z.norm(dim=-1, keepdim=True) * 48 * 15 ** 0.25 for z in (x, y.expand(1, 2, 40, 15)))
    v = inputs(1, 40, 15, seed=3)[:, None].expand(1, 2, 40, 15)
    q, k, v = (z.clone().requires_grad_() for z in (q, k, v))
    expected = module.attend_reference(q, k, v, None)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    module.float()
    q32, k32, v32 = (z.detach().float().requires_grad_() for z in (q, k, v))
    _, half_norm = module.project(k32)
    assert (half_norm > 1000).all()  # exp(w.x - |x|^2/2) <= exp(|W x| - 1152): 0 in float32 for every feature
    y32 = module.attend(q32, k32, v32, None)
    grads = torch.autograd.grad(y32.square().sum(), (q32, k32, v32))
    torch.testing.assert_close(y32.double(), expected, rtol=1e-3, atol=1e-4)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-3, atol=1e-3 * expected_grad.abs().max())
    if direction == 'opposite':  # what the floor prevents: training on GPU stopped at a NaN gradient like these
        module.feature_floor = 0.0
        grads = torch.autograd.grad(module.attend(q32, k32, v32, None).square().sum(), (q32, k32, v32))
        assert not any(torch.isfinite(grad).all() for grad in grads)


class TensorSizes(TorchDispatchMode):
    """Records the largest tensor any op produces, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize('name,causal', LINEAR_MEMORY)
def test_memory_grows_linearly(name, causal):
    """No (T, T) matrix and no (T, F, D) tensor: the largest intermediate doubles when T doubles."""
    largest = {}
    for T in (512, 1024):
        module = make(name, causal, n_embd=16, n_head=2, chunk_size=16, local_window=16, performer_features=16,
                      rfa_features=8, based_feature_dim=2).float()
        x = torch.randn(1, T, 16, requires_grad=True)
        with TensorSizes() as sizes:
            module(x).sum().backward()
        largest[T] = sizes.largest
        assert sizes.largest < T * T // 4, f"a tensor of {sizes.largest} elements at T={T}"
        assert sizes.largest < 2 * T * 8 * 8, "as large as a per-token (F, D) state"
    assert largest[1024] <= 2.1 * largest[512]


def test_unknown_variant_lists_the_registered_names():
    with pytest.raises(ValueError) as error:
        build_attention(LayerConfig(attention='flash_linear'))
    for name in ATTENTION:
        assert name in str(error.value)


def test_a_mode_a_variant_cannot_do_is_refused():
    class BidirectionalOnly(attention.SoftmaxAttention):
        supports_causal = False

    with pytest.raises(ValueError, match='bidirectional only'):
        BidirectionalOnly(LayerConfig(causal=True))
    BidirectionalOnly(LayerConfig(causal=False))


@pytest.mark.parametrize('variant', ['softmax', 'linear'])
def test_a_negative_recompute_segment_is_refused(variant):
    with pytest.raises(ValueError, match='recompute_segment=-1'):
        make(variant, True, recompute_segment=-1)


def test_step_and_padding_are_refused_where_undefined():
    with pytest.raises(ValueError, match='causal=False'):
        make('linear', False).step(inputs(1, 4, 30))
    with pytest.raises(ValueError, match='pad_mask'):
        make('linear', True)(inputs(1, 4, 30), padding([3], 4))


def test_extra_parameters_are_the_variants_own():
    """Same projections everywhere: parameter counts differ only by what a variant adds."""
    counts = {name: sum(p.numel() for p in make(name, ATTENTION[name].supports_causal).parameters())
              for name in VARIANTS}
    base = counts['softmax']
    C = 30
    assert counts['retention'] == base + C * C + 2 * C  # gate and group norm
    assert counts['norm_linear'] == base + C             # output RMSNorm
    for name in ('linear', 'performer', 'cosformer', 'local'):
        assert counts[name] == base  # the newer variants': test_modern_variants.py


@pytest.mark.parametrize('name,causal', MODES)
def test_block_runs_and_decodes(name, causal):
    config = LayerConfig(attention=name, n_embd=32, n_head=4, causal=causal, chunk_size=8, local_window=6,
                         performer_features=16, **GRID)
    torch.manual_seed(0)
    block = attention.Block(config).double()
    x = inputs(2, 19, 32)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if causal:
        with torch.no_grad():
            first, state = block.step(x[:, :10])
            second, _ = block.step(x[:, 10:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=1), y.detach(), rtol=1e-9, atol=1e-10)


def test_retention_head_norm_is_group_norm():
    """Retention normalises each head as nn.GroupNorm(n_head, C) would; its fast form must not change that."""
    module = make('retention', True)
    torch.nn.init.normal_(module.group_norm.weight)
    torch.nn.init.normal_(module.group_norm.bias)
    y, x = torch.randn(2, 2, 7, 15, dtype=torch.float64), inputs(2, 7, 30)  # (B, H, T, D) heads, block input
    grouped = torch.nn.GroupNorm.forward(module.group_norm, y.transpose(1, 2).reshape(14, 30)).view(2, 7, 30)
    expected = module.proj(torch.nn.functional.silu(torch.nn.Linear.forward(module.gate, x)) * grouped)
    torch.testing.assert_close(module.output(y, x), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# the checks above, for a variant registered at run time


def argnames(mark):
    names = mark.args[0]
    return [n.strip() for n in names.split(',')] if isinstance(names, str) else list(names)


def registry_checks(name, tests=None):
    """Runs this file's registry-driven tests (or those among `tests`, another test file's globals()) on the variant
    `name`, wherever it was registered: every test_* with a Selection of variants among its parametrize marks, with
    that Selection's rule applied to `name` and every combination of its other parametrized values. Returns the
    checks run, as calls ("test_deterministic(name='linear', causal=True)"); after running them all, raises
    AssertionError naming each that failed."""
    cls = ATTENTION[name]
    run, failures = [], []
    for test_name, test in list((globals() if tests is None else tests).items()):
        marks = [m for m in getattr(test, 'pytestmark', []) if m.name == 'parametrize']
        if not test_name.startswith('test_') or not any('name' in argnames(m) for m in marks):
            continue
        choices = []  # for each mark, the keyword arguments of each of its values
        for mark in marks:
            names, values = argnames(mark), mark.args[1]
            if 'name' in names:
                if not isinstance(values, Selection):
                    raise TypeError(f"{test_name}: parametrize 'name' with a Selection, for registry_checks")
                values = values.rule(name, cls)
            choices.append([dict(zip(names, value if len(names) > 1 else [value])) for value in values])
        for combination in itertools.product(*choices):
            kwargs = {key: value for part in combination for key, value in part.items()}
            call = ', '.join(f'{p}={kwargs[p]!r}' for p in inspect.signature(test).parameters)
            run.append(f'{test_name}({call})')
            try:
                test(**kwargs)
            except AssertionError as error:
                failures.append(f'{run[-1]}: {error}')
    if failures:
        raise AssertionError(f"{len(failures)} of {len(run)} checks failed for '{name}':\n" + '\n'.join(failures))
    return run


class SoftplusAttention(attention.KernelAttention):
    """Linear attention with phi(x) = softplus(x), a throwaway variant that tests register at run time:
    y_i = sum_j s_ij v_j / (sum_j s_ij + eps), s_ij = softplus(q_i) . softplus(k_j). Complexity as KernelAttention."""

    def features(self, q, k, offset):
        return F.softplus(q), F.softplus(k)

    def reference_scores(self, q, k):
        return F.softplus(q) @ F.softplus(k).transpose(-2, -1)


def test_a_variant_registered_at_run_time_is_checked(monkeypatch):
    class ForgetsTheNormaliser(SoftplusAttention):
        def attend_reference(self, q, k, v, pad_mask):  # sum_j s_ij v_j, never divided by sum_j s_ij
            allowed = attention.reference_mask(q.size(2), self.causal, pad_mask, q.device)
            return self.reference_scores(q, k).masked_fill(~allowed, 0) @ v

    class SeesTheFuture(SoftplusAttention):
        def attend(self, q, k, v, pad_mask):  # the bidirectional sums in either mode
            return self.bidirectional(*self.features(q, k, 0), v, pad_mask)

    monkeypatch.setitem(ATTENTION, 'throwaway', SoftplusAttention)
    checks = registry_checks('throwaway')
    assert {check.split('(')[0] for check in checks} == {
        'test_fast_path_equals_reference', 'test_attend_gradients_of_q_k_v', 'test_recurrent_equals_parallel',
        'test_decoding_in_uneven_pieces', 'test_chunk_size_does_not_change_the_result',
        'test_decoding_from_a_state_continued_twice',
        'test_linear_family_state_has_fixed_size', 'test_decoding_state_holds_only_its_own_memory',
        'test_training_in_segments_equals_the_whole_sequence', 'test_training_in_segments_keeps_only_the_inputs',
        'test_forward_without_gradient_goes_in_segments',
        'test_no_leakage_from_the_future', 'test_padding_is_ignored', 'test_bidirectional_sees_both_sides',
        'test_deterministic', 'test_memory_grows_linearly', 'test_block_runs_and_decodes'}
    assert "test_recurrent_equals_parallel(name='throwaway', prefill=13)" in checks
    assert "test_deterministic(name='throwaway', causal=False)" in checks

    monkeypatch.setitem(ATTENTION, 'throwaway', ForgetsTheNormaliser)
    with pytest.raises(AssertionError, match='test_fast_path_equals_reference'):
        registry_checks('throwaway')
    monkeypatch.setitem(ATTENTION, 'throwaway', SeesTheFuture)
    with pytest.raises(AssertionError, match='test_no_leakage_from_the_future'):
        registry_checks('throwaway')
