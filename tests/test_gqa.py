"""
Grouped-query and multi-query attention (n_kv_head < n_head, LayerConfig.n_kv_head; 0 = n_head): every variant that
accepts it (supports_kv_groups: softmax-like variants, whose KV cache shrinks, and the linear variants whose state is
built from k and v alone) goes through the registry protocol of test_attention.py and test_modern_variants.py with
6 query heads reading 2 kv heads (3 per group, head dim 5), and the others refuse it in one line. At n_kv_head =
n_head a layer is the one it was before the knob: same state_dict, same qkv shape.
"""
import re

import pytest
import torch

import attention
import test_attention
import test_modern_variants
from attention import ATTENTION, LayerConfig, build_attention
from test_attention import GRID, Selection, inputs, make, registry_checks
from training import ConfigError

GROUPED = Selection(lambda name, cls: [name] if cls.supports_kv_groups else [])
GROUPED_CAUSAL = Selection(lambda name, cls: [name] if cls.supports_kv_groups and cls.supports_causal else [])
REFUSING = Selection(lambda name, cls: [name] if not cls.supports_kv_groups else [])


def grouped(monkeypatch):
    """The protocol's make() builds 6 query heads over 2 kv heads unless a test sets its own heads."""
    def make_grouped(name, causal, **knobs):
        return make(name, causal, **({'n_head': 6, 'n_kv_head': 2} | knobs))
    monkeypatch.setattr(test_attention, 'make', make_grouped)
    monkeypatch.setattr(test_modern_variants, 'make', make_grouped)


@pytest.mark.parametrize('name', GROUPED)
def test_registry_protocol_with_grouped_heads(name, monkeypatch):
    grouped(monkeypatch)
    checks = registry_checks(name) + registry_checks(name, vars(test_modern_variants))
    assert any(check.startswith('test_fast_path_equals_reference') for check in checks)


def test_protocol_catches_query_heads_reading_the_wrong_kv_head(monkeypatch):
    """The reference gives query head h kv head h // group_size; a fast path that tiles the kv heads instead
    (h % n_kv_head) no longer matches it."""
    grouped(monkeypatch)
    monkeypatch.setattr(attention.Attention, 'repeat_kv',
                        lambda self, x: x.repeat(1, self.group_size, 1, 1))
    with pytest.raises(AssertionError, match='test_fast_path_equals_reference'):
        registry_checks('linear')


def held_tensors(state):
    """name -> every tensor a decoding state holds: a KVState's cache, a dict's entries, nested."""
    if isinstance(state, attention.KVState):
        return {'keys': state.cache.k, 'values': state.cache.v}
    held = {}
    for key, value in state.items():
        if torch.is_tensor(value):
            held[key] = value
        elif isinstance(value, (dict, attention.KVState)):
            held |= {f'{key}.{name}': t for name, t in held_tensors(value).items()}
    return held


@pytest.mark.parametrize('name', GROUPED_CAUSAL)
def test_decoding_state_keeps_one_head_per_kv_head(name):
    """What decoding keeps of keys and values (a KV cache, the linear family's state) has n_kv_head heads, not n_head;
    per-query-head parts (fox's cumulative forget gate) stay as they are."""
    x = inputs(2, 20, 30)
    states = {}
    for n_kv_head in (6, 2):
        with torch.no_grad():
            states[n_kv_head] = held_tensors(make(name, True, n_head=6, n_kv_head=n_kv_head).step(x)[1])
    assert states[2].keys() == states[6].keys()
    shrunk = [key for key in states[6] if states[2][key].shape != states[6][key].shape]
    assert shrunk, f"{name}: nothing in the state shrank"
    for key in shrunk:
        full, kept = states[6][key].shape, states[2][key].shape
        assert (full[1], kept[1]) == (6, 2) and full[:1] + full[2:] == kept[:1] + kept[2:], key


def test_softmax_cache_holds_the_kv_heads():
    with torch.no_grad():
        _, state = make('softmax', True, n_head=6, n_kv_head=1).step(inputs(2, 9, 30))
    assert state.cache.k.shape == state.cache.v.shape == (2, 1, 64, 5)  # MQA: one head of keys, block_size slots


@pytest.mark.parametrize('name', REFUSING)
def test_variants_with_a_state_per_query_head_refuse_groups_in_one_line(name):
    causal = ATTENTION[name].supports_causal
    with pytest.raises(ValueError) as error:
        build_attention(LayerConfig(attention=name, causal=causal, n_head=4, n_kv_head=2, **GRID))
    message = str(error.value)
    assert '\n' not in message and 'n_kv_head=0' in message
    assert message.endswith(', '.join(n for n, cls in ATTENTION.items() if cls.supports_kv_groups))


@pytest.mark.parametrize('n_kv_head', [-1, 3, 8])
def test_n_kv_head_must_divide_n_head(n_kv_head):
    with pytest.raises(ValueError, match=re.escape(f'n_kv_head={n_kv_head}: must divide n_head=4 (0 = n_head)')):
        build_attention(LayerConfig(n_head=4, n_kv_head=n_kv_head))


@pytest.mark.parametrize('name,causal', test_attention.MODES)
def test_n_kv_head_equal_to_n_head_is_the_layer_without_groups(name, causal):
    """Same parameters, names, shapes and initial values (qkv is C -> 3C) and the same output."""
    plain, explicit = make(name, causal), make(name, causal, n_kv_head=2)
    assert plain.qkv.weight.shape == (90, 30)
    assert list(plain.state_dict()) == list(explicit.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key]), key
    x = inputs(2, 11, 30)
    with torch.no_grad():
        assert torch.equal(plain(x), explicit(x))


def test_grouped_projection_is_smaller():
    """q keeps C outputs, k and v n_kv_head D each: C (C + 2 n_kv_head D) weights."""
    module = make('softmax', True, n_head=6, n_kv_head=2)
    assert module.qkv.weight.shape == (30 + 2 * 2 * 5, 30)


@pytest.mark.slow
def test_trainer_runs_and_records_grouped_heads(gpt, tmp_path):
    """MQA trains in train_gpt.py and its checkpoint's config records n_kv_head; a variant that cannot share kv heads
    stops in one line."""
    rows = gpt.train(tmp_path / 'mqa', '--attention=softmax', '--n_kv_head=1', '--max_iters=3')
    assert all(torch.isfinite(torch.tensor(row['train_loss'])) for row in rows if 'train_loss' in row)
    assert torch.load(tmp_path / 'mqa' / 'ckpt.pt', weights_only=False)['model_args']['n_kv_head'] == 1
    with pytest.raises(ConfigError, match='n_kv_head=0'):
        gpt.main('--attention=retention', '--n_kv_head=1', f'--out_dir={tmp_path / "retention"}')
