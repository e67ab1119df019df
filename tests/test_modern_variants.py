"""
What the registry-driven protocol (test_attention.py) does not reach on its own: the short convolution as an axis of
every variant, checks that the references catch a fast path with a wrong gate, and the refusal of bidirectional use
where a paper defines none (the kernels the newer variants use: test_kernels.py).
Float64 unless a test is about float32.
"""
import re

import pytest
import torch

import attention
import kernels
from attention import ATTENTION, LayerConfig, build_attention
from test_attention import (CAUSAL, BIDIRECTIONAL, MODES, Selection, assert_decodes_in_pieces, assert_padding_ignored,
                            inputs, make, outputs_with_token_changed, padding, registry_checks)
import training
from training import ConfigError

NEW = ['gla', 'deltanet', 'gated_deltanet', 'rfa', 'based', 'hedgehog']
CONVOLVED = Selection(lambda name, cls: [(name, causal) for name, causal in MODES.rule(name, cls)]
                      if cls.supports_short_conv else [])  # sra's keys come from the patch grid: no short conv
CONVOLVED_BIDIRECTIONAL = Selection(lambda name, cls: [name] if cls.supports_short_conv and cls.supports_bidirectional
                                    else [])
CAUSAL_ONLY = Selection(lambda name, cls: [name] if not cls.supports_bidirectional else [])


# ----------------------------------------------------------------------------------------------
# the short convolution, on every variant


def test_short_convolution_is_the_causal_depthwise_sum():
    """y_t = sum_{s<K} w_s h_{t-s} + b per channel, h = 0 before the start, written as a loop over taps."""
    torch.manual_seed(0)
    conv = attention.ShortConvolution(6, 4, bias=True).double()
    h = inputs(2, 9, 6)
    y, history = conv(h)
    weight, bias = conv.conv.weight[:, 0], conv.conv.bias  # (channels, K): tap K-1 reads the current token
    expected = torch.zeros_like(h) + bias
    for t in range(9):
        for s in range(4):
            if t - s >= 0:
                expected[:, t] += weight[:, 3 - s] * h[:, t - s]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(history, h[:, -3:])


@pytest.mark.parametrize('name,causal', CONVOLVED)
def test_short_conv_fast_path_equals_reference(name, causal):
    module = make(name, causal, short_conv=4)
    x = inputs(2, 21, 30)
    pad_mask = None if causal else padding([21, 14], 21)
    keep = torch.ones(2, 21, dtype=torch.bool) if causal else ~pad_mask
    ys = [module(x, pad_mask, reference=reference) * keep[..., None] for reference in (False, True)]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name', CAUSAL)
def test_short_conv_decodes_in_uneven_pieces(name):
    """The state carries the convolution's last K - 1 inputs: pieces shorter than K - 1 (1, 2) continue exactly."""
    module = make(name, True, short_conv=4)
    state = assert_decodes_in_pieces(module, inputs(2, 30, 30), (1, 2, 1, 9, 1, 16))
    assert state['short_conv'].shape == (2, 3, module.qkv.out_features)  # 3C, or C + 2 n_kv_head D with groups


@pytest.mark.parametrize('name', CAUSAL)
def test_short_conv_does_not_leak(name):
    y, y_changed = outputs_with_token_changed(make(name, True, short_conv=4), 11)
    torch.testing.assert_close(y_changed[:, :11], y[:, :11], rtol=0, atol=1e-12)
    assert not torch.allclose(y_changed[:, 11:14], y[:, 11:14])


@pytest.mark.parametrize('name', CONVOLVED_BIDIRECTIONAL)
def test_short_conv_ignores_padding(name):
    assert_padding_ignored(make(name, False, short_conv=4), 17, 11)


def test_short_conv_is_off_by_default_and_adds_its_own_parameters():
    plain, convolved = make('linear', True), make('linear', True, short_conv=4)
    assert plain.short_conv is None
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(convolved) == count(plain) + 90 * 4  # (3C) x K weights, no bias (bias=False)
    with pytest.raises(ValueError, match='short_conv=-1'):
        make('linear', True, short_conv=-1)


# ----------------------------------------------------------------------------------------------
# the references catch a wrong gate


class GLAWithScalarDecay(attention.GatedLinearAttention):
    """A fast path that averages the per-channel decays into one per head."""

    def attend_chunkwise(self, q, k, v, state, log_alpha):
        return super().attend_chunkwise(q, k, v, state, log_alpha.mean(-1, keepdim=True).expand_as(log_alpha))


class DeltaNetWithoutTheCorrection(attention.DeltaNet):
    """A fast path that forgets the delta rule's correction: plain linear attention with beta-weighted keys."""

    def attend_chunkwise(self, q, k, v, state, beta, log_alpha=None):
        fq, fk = self.wide_features(q, k, 0)
        y, kv = kernels.chunked_linear_attention(fq, fk * beta[..., None], v, log_alpha,
                                                 None if state is None else state['kv'], self.chunk_size)
        return y, {'kv': kv}


class GatedRFAWithoutKeyWeights(attention.RandomFeatureAttention):
    """Gated RFA whose fast path decays the state but does not weight new keys by 1 - g_t."""

    def attend_chunkwise(self, q, k, v, state, gate_logit=None):
        fq, fk = self.wide_features(q, k, 0)
        y, kv = kernels.chunked_linear_attention(fq, fk, self.values(v), torch.nn.functional.logsigmoid(gate_logit),
                                                 None if state is None else state['kv'], self.chunk_size)
        return self.finish(y, v.dtype), {'kv': kv}


@pytest.mark.parametrize('cls', [GLAWithScalarDecay, DeltaNetWithoutTheCorrection, GatedRFAWithoutKeyWeights],
                         ids=lambda cls: cls.__name__)
def test_reference_catches_a_wrong_gate(monkeypatch, cls):
    monkeypatch.setitem(ATTENTION, 'wrong', cls)
    with pytest.raises(AssertionError, match='test_fast_path_equals_reference'):
        registry_checks('wrong')


# ----------------------------------------------------------------------------------------------
# causal only


@pytest.mark.parametrize('name', CAUSAL_ONLY)
def test_causal_only_variants_refuse_bidirectional_use_in_one_line(name):
    with pytest.raises(ValueError) as error:
        build_attention(LayerConfig(attention=name, causal=False))
    message = str(error.value)
    assert '\n' not in message and 'causal only' in message
    assert message.endswith(', '.join(n for n, cls in ATTENTION.items() if cls.supports_bidirectional))


def test_masked_lm_and_vit_say_which_variants_they_accept(bert, vit, tmp_path):
    accepted = ', '.join(n for n, cls in ATTENTION.items() if cls.supports_bidirectional)
    for trainer in (bert, vit):
        with pytest.raises(ConfigError, match=re.escape(f'pick one of: {accepted}')):
            trainer.main('--attention=gla', f'--out_dir={tmp_path / trainer.name}')


@pytest.mark.parametrize('name,causal', MODES)
def test_no_variant_has_its_biases_or_scales_decayed(name, causal):
    """build_optimizer decays the parameters of 2+ dims. A variant keeps its biases and scales one-dim, as nn.Linear
    keeps its biases and the norms their gains, so that none of them is pulled towards 0 (RFA's sigma, its kernel's
    sharpness, and Hedgehog's feature bias once were (H, 1, D) and decayed)."""
    module = make(name, causal)
    decayed = training.build_optimizer('adamw', module, 1e-3, 0.1, (0.9, 0.99), 'cpu').param_groups[0]
    decayed = {id(p) for p in decayed['params']}
    for param_name, p in module.named_parameters():
        if param_name.endswith('bias') or param_name.endswith('sigma'):
            assert id(p) not in decayed, f"{name}: {param_name} gets weight decay"


def test_rfa_clamps_its_normaliser_from_below():
    """With one random direction and a sharp sigma, many normaliser estimates are below 0: the output divides by
    rfa_normaliser_floor there, the same in the fast path and the (T, T) reference, and stays bounded."""
    floor = 0.25
    module = make('rfa', False, rfa_features=1, rfa_normaliser_floor=floor)
    with torch.no_grad():
        module.sigma.fill_(10.0)
    q, k, v = (inputs(2, 37, 30, seed=s).view(2, 37, 2, 15).transpose(1, 2) for s in (1, 2, 3))  # (B, H, T, D)
    scores = module.reference_scores(q, k)  # (B, H, T, T)
    normaliser = scores.sum(-1, keepdim=True)
    assert (normaliser < 0).any() and (normaliser > floor).any()
    expected = (scores @ v) / normaliser.clamp_min(floor)
    torch.testing.assert_close(module.attend(q, k, v, None), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module.attend_reference(q, k, v, None), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=re.escape('rfa_normaliser_floor=0: must be > 0')):
        make('rfa', True, rfa_normaliser_floor=0)


def test_based_keeps_each_product_of_its_taylor_features_once():
    """phi(q) . phi(k) = 1 + s + s^2 / 2 with F = 1 + d' + d' (d' + 1) / 2 features: 153 for the paper's d' = 16,
    where vec(x x^T) would take 273."""
    module = make('based', True, based_feature_dim=16)
    q, k = inputs(2, 14, 15).view(2, 2, 7, 15), inputs(2, 10, 15, seed=2).view(2, 2, 5, 15)  # (B, H, T, D)
    fq, fk = module.features(q, k, 0)
    assert fq.shape == (2, 2, 7, 153) and fk.shape == (2, 2, 5, 153)
    s = (q @ module.query_projection) @ (k @ module.key_projection).transpose(-2, -1) / 4  # sqrt(16)
    torch.testing.assert_close(fq @ fk.transpose(-2, -1), 1 + s + s * s / 2, rtol=1e-12, atol=1e-12)


def test_extra_parameters_of_the_new_variants():
    counts = {name: sum(p.numel() for p in make(name, True).parameters()) for name in ['softmax'] + NEW}
    base, C, H, D = counts['softmax'], 30, 2, 15
    assert counts['gla'] == base + (C * 16 + 16 * C + C) + C * C + 2 * C  # gate, output gate, group norm
    assert counts['deltanet'] == base + C * H + D                          # beta, head norm
    assert counts['gated_deltanet'] == base + 2 * C * H + 2 * H + D + C * C
    assert counts['rfa'] == base + C + C * H + H                           # sigma, gate
    assert sum(p.numel() for p in make('rfa', False).parameters()) == base + C  # ungated: sigma only
    assert counts['based'] == base + 2 * C * 16
    assert counts['hedgehog'] == base + H * D * D + C
