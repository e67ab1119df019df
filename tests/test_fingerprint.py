"""attention.fingerprint, what a run records of its block: deterministic, the global RNG left alone, a behaviour change
beyond the tolerance and a different summation order within it, every variant told apart from every other."""
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

import attention
from attention import ATTENTION, fingerprint, same_behaviour
from test_attention import GRID

SETTINGS = {'n_embd': 32, 'n_head': 2, 'block_size': 48, 'chunk_size': 8, 'local_window': 8, 'performer_features': 16,
            **GRID}


@functools.cache
def probe(name, causal):
    return fingerprint({**SETTINGS, 'attention': name}, causal)


def modes(cls):
    return [causal for causal in (True, False) if (cls.supports_causal if causal else cls.supports_bidirectional)]


def test_deterministic_and_the_rng_left_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = fingerprint({**SETTINGS, 'attention': 'performer'}, causal=True)
    assert torch.equal(torch.get_rng_state(), state)  # a trainer's dropout and data streams go on undisturbed
    assert fingerprint({**SETTINGS, 'attention': 'performer', 'seed': 7}, causal=True) == first  # not a layer setting
    assert list(first) == ['output', 'input_gradient'] and len(first['output']) == attention.PROBE_NUMBERS


@pytest.mark.parametrize('name', ATTENTION)
def test_every_variant_is_told_apart_from_every_other(name):
    """The probe reaches the attention: no two variants (or modes of one) agree within the tolerance."""
    mine = [probe(name, causal) for causal in modes(ATTENTION[name])]
    assert all(torch.isfinite(torch.tensor(numbers)).all() for f in mine for numbers in f.values())
    assert not any(same_behaviour(a, b) for a, b in itertools.combinations(mine, 2))
    for other, cls in ATTENTION.items():
        if other != name:
            for causal in modes(cls):
                theirs = probe(other, causal)
                assert not any(same_behaviour(f, theirs) for f in mine), f"{name} and {other} (causal={causal})"


def test_rounding_stays_within_the_tolerance_and_a_change_of_formula_does_not(monkeypatch):
    """Another chunk size sums the same terms in another order (rounding only); a window of 7 instead of 8, or a 1%
    larger softmax scale, computes otherwise."""
    for name in ('linear', 'gla', 'deltanet'):
        assert fingerprint({**SETTINGS, 'attention': name}, True) != fingerprint(
            {**SETTINGS, 'attention': name, 'chunk_size': 16}, True)  # not bitwise the same...
        assert same_behaviour(fingerprint({**SETTINGS, 'attention': name}, True),  # ...but the same computation
                              fingerprint({**SETTINGS, 'attention': name, 'chunk_size': 16}, True))
    local = fingerprint({**SETTINGS, 'attention': 'local'}, True)
    assert not same_behaviour(fingerprint({**SETTINGS, 'attention': 'local', 'local_window': 7}, True), local)
    softmax = fingerprint({**SETTINGS, 'attention': 'softmax'}, False)
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention', lambda q, k, v, **kw: sdpa(q * 1.01, k, v, **kw))
    assert not same_behaviour(fingerprint({**SETTINGS, 'attention': 'softmax'}, False), softmax)


def test_the_padding_is_probed(monkeypatch):
    """Bidirectional: the last quarter of the probe is padding, so attending to it shows."""
    honest = fingerprint({**SETTINGS, 'attention': 'softmax'}, False)
    attend = attention.SoftmaxAttention.attend
    monkeypatch.setattr(attention.SoftmaxAttention, 'attend', lambda self, q, k, v, mask: attend(self, q, k, v, None))
    assert not same_behaviour(fingerprint({**SETTINGS, 'attention': 'softmax'}, False), honest)
