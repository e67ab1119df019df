"""
Hybrid stacks and grouped-query attention in the models the trainers build. A hybrid stack
(LayerConfig.layer_attention, e.g. 'gated_deltanet*3,softmax', repeated to n_layer) gives each layer its own
variant: decoding token by token, each layer with its own state (a KV cache for softmax, a fixed-size state for the
recurrent ones), equals the full forward, with and without GQA; every trainer builds the pattern, a run records it
and a resume cannot change it; the fingerprint covers each variant of the pattern; sweep, report and bench take it;
a bad pattern is one line wherever it is given.
"""
import json
import re
from types import SimpleNamespace

import pytest
import torch

import bench
import report
import sweep
import training
import train_gpt
from attention import (KVState, LayerConfig, LMConfig, attention_pattern, build_attention, fingerprint,
                       layer_configs, stack_name)
from test_bench import one_case, run_case, tiny_config
from test_sweep import write_sweep
from training import ConfigError

PATTERN = 'gated_deltanet*3,softmax'


def test_the_pattern_repeats_to_n_layer_and_shares_every_other_field():
    config = LMConfig(layer_attention=PATTERN, n_layer=8, n_head=2, chunk_size=8)
    layers = layer_configs(config, 8)
    assert [layer.attention for layer in layers] == ['gated_deltanet'] * 3 + ['softmax'] + ['gated_deltanet'] * 3 + [
        'softmax']
    assert all(type(layer) is LMConfig and layer.layer_attention == '' and layer.chunk_size == 8 for layer in layers)
    assert [layer.attention for layer in layer_configs(LMConfig(attention='linear'), 3)] == ['linear'] * 3
    assert attention_pattern(LayerConfig(layer_attention='linear,retention*2')) == ['linear', 'retention', 'retention']
    assert stack_name(config) == 'gated_deltanetx3,softmax' and stack_name(LMConfig(attention='gla')) == 'gla'


@pytest.mark.parametrize('pattern, n_layer, message', [
    ('gdn*3,softmax', 4, "layer_attention='gdn*3,softmax': unknown attention 'gdn'"),
    ('softmax,,linear', 3, "unknown attention ''"),
    ('softmax*0', 1, "'softmax*0' needs a positive count after *"),
    ('softmax*', 1, "'softmax*' needs a positive count after *"),
    ('softmax*two', 2, "'softmax*two' needs a positive count after *"),
    (PATTERN, 6, "is 4 layers, which does not repeat to n_layer=6: make n_layer a multiple of 4"),
])
def test_a_bad_pattern_is_one_line(pattern, n_layer, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        layer_configs(LayerConfig(layer_attention=pattern), n_layer)
    assert '\n' not in str(error.value)


def test_a_layer_is_never_built_from_a_pattern():
    """A stack's pattern on one layer would silently build `attention` in every layer: refused instead."""
    with pytest.raises(ValueError, match="is a stack's pattern, not one layer's"):
        build_attention(LayerConfig(layer_attention=PATTERN))


@pytest.mark.parametrize('pattern, knobs', [
    (PATTERN, {}),
    ('mamba2,fox', {}),
    ('linear,softmax', {'n_head': 4, 'n_kv_head': 2}),  # GQA in both kinds of layer
    ('', {'attention': 'softmax', 'n_head': 4, 'n_kv_head': 1}),  # MQA: one kv head, a quarter of the cache
    ('', {'attention': 'linear', 'n_head': 4, 'n_kv_head': 2}),
])
def test_decoding_in_pieces_equals_the_full_forward(pattern, knobs):
    torch.manual_seed(0)
    config = LMConfig(**{'vocab_size': 40, 'n_layer': 4, 'n_head': 2, 'n_embd': 32, 'block_size': 24,
                         'chunk_size': 4, 'layer_attention': pattern, **knobs})
    model = train_gpt.GPT(config).double().eval()
    idx = torch.randint(40, (2, 19))
    full, _ = model(idx)
    pieces, states, position = [], None, 0
    for length in (7, 1, 1, 6, 4):  # a prefill, single tokens, then blocks that cross chunk boundaries
        logits, states = model.step(idx[:, position:position + length], states, position)
        pieces.append(logits)
        position += length
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-9, atol=1e-9)
    names = (attention_pattern(config) * 4)[:4]  # the pattern repeated to the 4 layers
    assert [type(block.attn) for block in model.blocks] == [
        type(build_attention(LayerConfig(attention=name, n_embd=32, n_head=knobs.get('n_head', 2), chunk_size=4,
                                         n_kv_head=knobs.get('n_kv_head', 0)))) for name in names]
    for name, state in zip(names, states):  # each layer its own kind of state: a cache only for the softmax layers
        assert isinstance(state, KVState) == (name == 'softmax')
        if isinstance(state, KVState):
            assert state.cache.k.shape[1] == (config.n_kv_head or config.n_head)


def test_a_variant_refusing_gqa_refuses_it_in_a_hybrid_too():
    with pytest.raises(ValueError, match='n_kv_head'):
        train_gpt.GPT(LMConfig(layer_attention='gated_deltanet,softmax', n_layer=2, n_head=4, n_embd=32,
                               n_kv_head=2))


def test_the_fingerprint_covers_each_variant_of_the_pattern():
    settings = {'n_embd': 16, 'n_head': 2, 'block_size': 32, 'chunk_size': 8}
    plain = {name: fingerprint({**settings, 'attention': name}, causal=True) for name in ('gated_deltanet', 'softmax')}
    hybrid = fingerprint({**settings, 'layer_attention': PATTERN}, causal=True)
    assert hybrid == {key: plain['gated_deltanet'][key] + plain['softmax'][key] for key in hybrid}


@pytest.mark.parametrize('name', ['gpt', 'bert', 'vit', 'lra', 'mqar'])
def test_every_trainer_builds_records_and_keeps_the_pattern(name, request, tmp_path):
    trainer = request.getfixturevalue(name)
    pattern = 'softmax,linear*2,softmax' if name in ('gpt', 'mqar') else 'linear,softmax'
    n_layer = len(attention_pattern(LayerConfig(layer_attention=pattern)))
    trainer.train(tmp_path, f'--layer_attention={pattern}', f'--n_layer={n_layer}', '--max_iters=2',
                  '--lr_decay_iters=2', '--eval_interval=2')
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['model_args']['layer_attention'] == pattern
    config = json.loads((tmp_path / 'config.json').read_text())['config']
    assert config['layer_attention'] == pattern and len(config['fingerprint']['block']['output']) == 8  # 2 variants
    with pytest.raises(ConfigError, match=re.escape(f"layer_attention={pattern!r} in the checkpoint, 'linear' in")):
        trainer.main(f'--out_dir={tmp_path}', '--init_from=resume', '--layer_attention=linear', f'--n_layer={n_layer}',
                     '--max_iters=4', '--lr_decay_iters=4')


def test_lra_refuses_a_causal_only_layer(lra, tmp_path):
    with pytest.raises(ConfigError, match=re.escape("attention='gla' is causal only and LRA encodes both directions")):
        lra.main(f'--out_dir={tmp_path}', '--layer_attention=softmax,gla')
    assert not any(tmp_path.iterdir())


def test_a_sweep_plans_a_hybrid_row_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, 'trainer_defaults', lambda trainer: (train_gpt.DEFAULTS, True, False))
    monkeypatch.setattr(sweep, 'trainer_refusal', lambda trainer, named_configs: None)
    monkeypatch.chdir(sweep.os.path.dirname(sweep.__file__))
    keys = dict(trainer='train_gpt.py', overrides={'n_layer': 4}, runs=[{'layer_attention': PATTERN}], seeds=[1],
                out_dir=str(tmp_path))
    path = write_sweep(tmp_path / 'hybrid.py', **keys)
    runs = sweep.plan_runs(SimpleNamespace(**training.apply_overrides(sweep.DEFAULTS, [path])), path)
    assert [run.name for run in runs] == ['layer_attention=gated_deltanet_3,softmax,seed=1']
    assert f'--layer_attention={PATTERN}' in runs[0].args
    path = write_sweep(tmp_path / 'bad.py', **{**keys, 'overrides': {'n_layer': 6}})
    with pytest.raises(ConfigError, match=re.escape('does not repeat to n_layer=6')):
        sweep.plan_runs(SimpleNamespace(**training.apply_overrides(sweep.DEFAULTS, [path])), path)


def test_a_report_shows_the_pattern_in_the_attention_column():
    shown = report.as_shown({'attention': 'softmax', 'layer_attention': PATTERN, 'seed': 1})
    assert shown == {'attention': PATTERN, 'seed': 1}
    assert report.as_shown({'attention': 'gla', 'layer_attention': ''}) == {'attention': 'gla'}
    assert report.as_shown({'attention': 'gla'}) == {'attention': 'gla'}  # runs made before the knob


def test_bench_times_a_hybrid_stack_as_a_row_of_its_own():
    config = tiny_config('--model=gpt', '--n_layer=4', '--variants=softmax', f'--layer_attention={PATTERN}')
    assert config['variants'] == ['softmax', PATTERN] and config['kernels'][PATTERN] == 'torch'
    record = run_case(one_case(config, PATTERN, 'train'))
    assert record['status'] == 'ok' and record['tokens_per_s'] > 0
    with pytest.raises(ConfigError, match="is a stack's pattern: bench it with --model=gpt"):
        tiny_config(f'--layer_attention={PATTERN}')
