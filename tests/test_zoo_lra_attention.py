"""
What the registry-driven protocol (test_attention.py) does not reach on its own for linformer, nystrom, synthesizer
and fnet: the protocol again at knob values that compress (fewer projected rows and landmarks than tokens), the random
synthesizer and the dense one with biases; Nystromformer's iterative pseudo-inverse against torch.linalg.pinv and
softmax attention; checks that padding handled as the authors' code handles it fails the padding check; the
refusals. Float64.
"""
import re

import pytest
import torch

import attention
import test_attention
from test_attention import assert_padding_ignored, inputs, make, registry_checks

OURS = ['linformer', 'nystrom', 'synthesizer', 'fnet']
COMPRESSING = dict(linformer_k=5, nystrom_landmarks=4)  # T = 37 and 64 in the protocol: more tokens than either


@pytest.mark.parametrize('name,knobs', [('linformer', COMPRESSING), ('nystrom', COMPRESSING),
                                        ('synthesizer', dict(synthesizer_mode='random')),
                                        ('synthesizer', dict(synthesizer_mode='dense', bias=True))],
                         ids=['linformer k=5', 'nystrom 4 landmarks', 'synthesizer random', 'synthesizer dense bias'])
def test_registry_protocol_at_other_knob_values(monkeypatch, name, knobs):
    """Every registry check of test_attention.py, its layers built with these knobs."""
    monkeypatch.setattr(test_attention, 'make', lambda *args, **kwargs: make(*args, **knobs | kwargs))
    checks = registry_checks(name)
    assert any(check.startswith('test_padding_is_ignored') for check in checks)


def nystrom_inputs(T):
    return [inputs(2, T, 30, seed=s).view(2, T, 2, 15).transpose(1, 2) for s in (1, 2, 3)]  # q, k, v (B, H, T, D)


def landmark_kernel(module, q, k):
    """A = softmax(Q~ K~^T / sqrt(D)) over whole sequences: (B, H, m, m)."""
    means = module.segment_means(torch.ones(q.size(0), q.size(2), dtype=torch.bool), q.dtype)[0][:, None]
    return torch.softmax((means @ q) @ (means @ k).transpose(-2, -1) / q.size(-1) ** 0.5, dim=-1)


def test_nystrom_iteration_converges_to_the_pseudo_inverse():
    """The paper's iteration tends to A^+: with 20 iterations it equals torch.linalg.pinv to 1e-10 (a wrong
    coefficient does not converge). With its 6 it is an approximation: A's smallest singular values (condition
    number ~7e3 here) have not converged, so Z is far from A^+ in norm, while on A's leading directions it acts as
    A^+: ||A Z A - A|| <= 5% of ||A|| (3% here)."""
    module = make('nystrom', False, nystrom_landmarks=16)
    q, k, _ = nystrom_inputs(64)
    a = landmark_kernel(module, q, k)
    pinv = torch.linalg.pinv(a)
    z = module.pseudo_inverse(a)
    assert ((a @ z @ a - a).norm() / a.norm()).item() < 0.05
    assert ((z - pinv).norm() / pinv.norm()).item() > 0.5
    module.iterations = 20
    torch.testing.assert_close(module.pseudo_inverse(a), pinv, rtol=1e-10, atol=1e-10 * pinv.abs().max().item())


@pytest.mark.parametrize('T', [16, 37])
def test_nystrom_with_every_token_a_landmark_is_softmax_attention(T):
    """With m >= T every token is a landmark, F = A = B = S and F Z B = S Z S: softmax attention (plus the skip)
    once Z = S^+ (20 iterations, to 1e-10); with the paper's 6, within 5% of it on these inputs."""
    module = make('nystrom', False, nystrom_landmarks=64)
    q, k, v = nystrom_inputs(T)
    with torch.no_grad():
        skip = torch.nn.functional.conv2d(v, module.value_convolution.weight, padding=(17, 0), groups=2)
        expected = torch.softmax(q @ k.transpose(-2, -1) / 15 ** 0.5, dim=-1) @ v + skip
        approximate = module.attend(q, k, v, None)
        module.iterations = 20
        exact = module.attend(q, k, v, None)
    assert ((approximate - expected).norm() / expected.norm()).item() < 0.05
    torch.testing.assert_close(exact, expected, rtol=1e-10, atol=1e-10)


class NystromWithLandmarksOfThePaddedSequence(attention.Nystromformer):
    """Landmarks as the authors' code takes them: means of fixed segments of all T positions, padding zeroed."""

    def segment_means(self, real, dtype):
        means = super().segment_means(torch.ones_like(real), dtype)[0] * real[:, None, :]
        return means, real.new_ones(real.size(0), self.landmarks)


class FNetOverThePaddedSequence(attention.FNet):
    """The transform over all T positions, padding zeroed (the authors' code, but for the zeroing)."""

    def attend(self, q, k, v, pad_mask):
        zeroed = v if pad_mask is None else v.masked_fill(pad_mask[:, None, :, None], 0)
        return super().attend(q, k, zeroed, None)


class LinformerProjectingPadding(attention.Linformer):
    """Padded keys and values projected with the real ones (the authors' code)."""

    def attend(self, q, k, v, pad_mask):
        return super().attend(q, k, v, None)


@pytest.mark.parametrize('cls', [NystromWithLandmarksOfThePaddedSequence, FNetOverThePaddedSequence,
                                 LinformerProjectingPadding])
def test_padding_check_catches_padding_handled_as_the_authors_code_does(monkeypatch, cls):
    name = {NystromWithLandmarksOfThePaddedSequence: 'nystrom', FNetOverThePaddedSequence: 'fnet',
            LinformerProjectingPadding: 'linformer'}[cls]
    assert_padding_ignored(make(name, False, **COMPRESSING), 33, 21)
    monkeypatch.setitem(attention.ATTENTION, name, cls)
    with pytest.raises(AssertionError):
        assert_padding_ignored(make(name, False, **COMPRESSING), 33, 21)


def test_linformer_and_synthesizer_use_the_first_rows_of_their_parameters():
    """A sequence of T < block_size tokens gives what the same layer built with block_size = T gives, its parameters
    cut to their first T rows (and columns)."""
    x = inputs(2, 20, 30)
    for name, knobs in [('linformer', {}), ('synthesizer', dict(synthesizer_mode='random')),
                        ('synthesizer', dict(synthesizer_mode='dense', bias=True))]:
        long, short = make(name, False, **knobs), make(name, False, block_size=20, **knobs)
        cut = {key: p[:, :20, :20] if p.dim() == 3 else p[:20]  # R (H, T_max, T_max); E, F, W_2, b_2 (T_max, ...)
               for key, p in long.state_dict().items() if p.shape != short.state_dict()[key].shape}
        short.load_state_dict(long.state_dict() | cut)
        with torch.no_grad():
            torch.testing.assert_close(long(x), short(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', ['linformer', 'synthesizer'])
def test_a_sequence_longer_than_block_size_is_refused(name):
    module = make(name, False, block_size=16)
    with pytest.raises(ValueError, match='a sequence of 17 tokens is longer than block_size=16'):
        module(inputs(1, 17, 30))


def test_synthesizer_decoding_stops_at_block_size():
    module = make('synthesizer', True, block_size=16)
    with torch.no_grad():
        _, state = module.step(inputs(1, 16, 30))
        with pytest.raises(ValueError, match='a sequence of 17 tokens is longer than block_size=16'):
            module.step(inputs(1, 1, 30), state)


@pytest.mark.parametrize('knobs,message', [
    (dict(attention='linformer', causal=True), 'Linformer is bidirectional only'),
    (dict(attention='nystrom', causal=True), 'Nystromformer is bidirectional only'),
    (dict(attention='fnet', causal=True), 'FNet is bidirectional only'),
    (dict(attention='linformer', linformer_k=0), 'linformer_k=0: project keys and values to at least 1 row'),
    (dict(attention='nystrom', nystrom_landmarks=0), 'nystrom_landmarks=0: use at least 1 landmark'),
    (dict(attention='synthesizer', synthesizer_mode='factorized_random'),
     "synthesizer_mode='factorized_random': choose 'dense' or 'random'"),
])
def test_refusals(knobs, message):
    knobs = dict(causal=False) | knobs
    with pytest.raises(ValueError, match=re.escape(message)):
        make(knobs.pop('attention'), knobs.pop('causal'), **knobs)


def test_extra_parameters():
    """The parameters each adds to the shared projections (C = 30, H = 2, D = 15, block_size 64)."""
    count = lambda name, **knobs: sum(p.numel() for p in make(name, False, **knobs).parameters())
    base = count('softmax')
    assert count('linformer') - base == 2 * 64 * 256
    assert count('nystrom') - base == 2 * 35
    assert count('synthesizer') - base == 15 * 64
    assert count('synthesizer', bias=True) - count('softmax', bias=True) == 15 * 64 + 64
    assert count('synthesizer', synthesizer_mode='random') - base == 2 * 64 * 64
    assert count('fnet') == base
