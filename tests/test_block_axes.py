"""
The output gate and the norm of the heads' outputs as axes of every variant (LayerConfig.output_gate, head_norm), as
the short convolution is one (test_modern_variants.py): the registry protocol's checks (fast path = reference with
the gradients of every parameter, decoding, leakage, padding, autocast against float64) with both axes on for every
variant in each mode, both off for the variants whose papers have them, and every combination for linear and
gated_deltanet; that '' gives the paper's block, bitwise; that the parts are the formula and the parameters they name.
"""
import pytest
import torch
import torch.nn.functional as F

import attention
from attention import ATTENTION, LayerConfig, build_attention
from test_attention import (GRID, Selection, assert_decodes_in_pieces, assert_padding_ignored, grads, inputs, make,
                            modes, outputs_with_token_changed, padding)
from test_precision import assert_close_to_float64, float64_output, sequence

# CPU autocast hands the head norms a bfloat16 input and their float32 weight (as test_precision.py notes)
pytestmark = pytest.mark.filterwarnings('ignore:Mismatch dtype between input and weight')


def other_norm(cls):
    """A head norm other than the paper's: what 'both on' adds to a variant."""
    return 'groupnorm' if cls.paper_output.get('head_norm') == 'rmsnorm' else 'rmsnorm'


def settings(name, cls):
    """(output_gate, head_norm) to check for a variant: both on; both off where its paper has either; every
    combination for linear and gated_deltanet."""
    if name in ('linear', 'gated_deltanet'):
        return [(gate, norm) for gate in ('none', 'swish') for norm in ('none', 'rmsnorm', 'groupnorm')]
    return [('swish', other_norm(cls))] + ([('none', 'none')] if cls.paper_output else [])


AXES = Selection(lambda name, cls: [(name, causal, gate, norm) for causal in modes(cls)
                                    for gate, norm in settings(name, cls)])
CAUSAL_AXES = Selection(lambda name, cls: [(name, gate, norm) for gate, norm in settings(name, cls)]
                        if cls.supports_causal else [])
BIDIRECTIONAL_AXES = Selection(lambda name, cls: [(name, gate, norm) for gate, norm in settings(name, cls)]
                               if cls.supports_bidirectional else [])
ONE_SETTING = Selection(lambda name, cls: [(name, modes(cls)[0], 'swish', other_norm(cls))])


@pytest.mark.parametrize('name,causal,output_gate,head_norm', AXES)
def test_axes_fast_path_equals_reference(name, causal, output_gate, head_norm):
    """Outputs and the gradients of the input and of every parameter (an added part that output() did not use
    would have none)."""
    module = make(name, causal, output_gate=output_gate, head_norm=head_norm)
    x = inputs(2, 21, 30)
    pad_mask = None if causal else padding([21, 14], 21)
    keep = torch.ones(2, 21, dtype=torch.bool) if causal else ~pad_mask
    y_fast, g_fast = grads(module, x, pad_mask, False, keep)
    y_ref, g_ref = grads(module, x, pad_mask, True, keep)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-9, atol=1e-10)
    for key in g_fast:
        torch.testing.assert_close(g_fast[key], g_ref[key], rtol=1e-9, atol=1e-10, msg=f"gradient of {key}")


@pytest.mark.parametrize('name,output_gate,head_norm', CAUSAL_AXES)
def test_axes_decode_in_uneven_pieces(name, output_gate, head_norm):
    module = make(name, True, output_gate=output_gate, head_norm=head_norm)
    assert_decodes_in_pieces(module, inputs(2, 30, 30), (1, 2, 1, 9, 1, 16))


@pytest.mark.parametrize('name,output_gate,head_norm', CAUSAL_AXES)
def test_axes_do_not_leak(name, output_gate, head_norm):
    y, y_changed = outputs_with_token_changed(make(name, True, output_gate=output_gate, head_norm=head_norm), 11)
    torch.testing.assert_close(y_changed[:, :11], y[:, :11], rtol=0, atol=1e-12)
    assert not torch.allclose(y_changed[:, 11], y[:, 11])


@pytest.mark.parametrize('name,output_gate,head_norm', BIDIRECTIONAL_AXES)
def test_axes_ignore_padding(name, output_gate, head_norm):
    assert_padding_ignored(make(name, False, output_gate=output_gate, head_norm=head_norm), 17, 11)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name,causal,output_gate,head_norm', ONE_SETTING)
def test_axes_under_autocast_match_float64(name, causal, output_gate, head_norm, dtype):
    """test_precision's check (relative RMSE <= 1e-2 overall and per window of 256) with both axes on, T = 512: the
    parts act on each token alone, so a shorter sequence than test_precision's covers them."""
    torch.manual_seed(0)
    module = build_attention(LayerConfig(attention=name, n_embd=128, n_head=2, causal=causal, block_size=512,
                                         performer_features=64, output_gate=output_gate, head_norm=head_norm, **GRID))
    x = sequence(512)
    reference = float64_output(module, x)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        y = module(x)
    assert_close_to_float64(y, reference, f"{name} causal={causal} {dtype} {output_gate} {head_norm}")


@pytest.mark.parametrize('name,causal', Selection(lambda name, cls: [(name, causal) for causal in modes(cls)]
                                                   if cls.paper_output else []))
def test_the_papers_parts_named_are_the_default_bitwise(name, causal):
    """output_gate and head_norm set to the paper's kinds give the default layer: the same parameters under the same
    names, drawn in the same order, and bitwise the same output."""
    named = {axis: kind for axis, kind in ATTENTION[name].paper_output.items() if kind in attention.OUTPUT_PARTS[axis]}
    default, explicit = make(name, causal, seed=3), make(name, causal, seed=3, **named)
    assert list(default.state_dict()) == list(explicit.state_dict())
    for (key, p), q in zip(default.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(p, q), key
    x = inputs(2, 13, 30)
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))


def test_the_parts_are_the_formula():
    """y -> proj(swish(x W_g) * merge(norm(y))), the norm per head: RMSNorm over D with one weight vector, or
    LayerNorm over D with a per-channel affine."""
    y, x = torch.randn(2, 2, 7, 15, dtype=torch.float64), inputs(2, 7, 30)  # (B, H, T, D) heads, the layer input
    merge = lambda t: t.transpose(1, 2).reshape(2, 7, 30)
    for head_norm in ('rmsnorm', 'groupnorm'):
        module = make('softmax', True, output_gate='swish', head_norm=head_norm)
        torch.nn.init.normal_(module.output_norm.weight)
        if head_norm == 'rmsnorm':
            normed = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * module.output_norm.weight
        else:
            torch.nn.init.normal_(module.output_norm.bias)
            centred = y - y.mean(-1, keepdim=True)
            normed = merge(centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5))
            normed = (normed * module.output_norm.weight + module.output_norm.bias).view(2, 7, 2, 15).transpose(1, 2)
        gate = F.silu(x @ module.output_gate.weight.T)
        torch.testing.assert_close(module.output(y, x), module.proj(gate * merge(normed)), rtol=1e-12, atol=1e-12)


def test_the_axes_add_and_remove_their_parameters():
    C, H, D = 30, 2, 15
    count = lambda module: sum(p.numel() for p in module.parameters())
    base = count(make('softmax', True))
    assert count(make('softmax', True, output_gate='swish')) == base + C * C
    assert count(make('softmax', True, head_norm='rmsnorm')) == base + D
    assert count(make('softmax', True, head_norm='groupnorm')) == base + 2 * C
    assert count(make('retention', True, output_gate='none', head_norm='none')) == base
    assert count(make('gated_deltanet', True, output_gate='none', head_norm='none')) == base + 2 * C * H + 2 * H
    added = make('rfa', True, output_gate='swish', head_norm='groupnorm')  # rfa's own `gate` is its decay's
    assert {'output_gate.weight', 'output_norm.weight', 'output_norm.bias', 'gate.weight'} <= set(added.state_dict())
    replaced = make('deltanet', True, head_norm='groupnorm')
    assert replaced.head_norm is None and isinstance(replaced.output_norm, attention.HeadGroupNorm)


@pytest.mark.parametrize('knob,value', [('output_gate', 'sigmoid'), ('head_norm', 'layernorm')])
def test_an_unknown_kind_is_refused_in_one_line(knob, value):
    with pytest.raises(ValueError) as error:
        make('linear', True, **{knob: value})
    message = str(error.value)
    assert '\n' not in message and message.startswith(f"{knob}='{value}'")
    assert ', '.join(attention.OUTPUT_PARTS[knob]) in message


def test_an_own_part_must_be_declared():
    """A variant that sets an output part of its own without declaring it in paper_output would keep it whatever the
    axes say (and an added part beside it would go unused): it is refused at construction."""
    class UndeclaredNorm(attention.LinearAttention):
        def __init__(self, config):
            super().__init__(config)
            self.out_norm = attention.AllHeadsRMSNorm(config.n_embd)
            self.set_output(norm=self.out_norm)

    with pytest.raises(TypeError, match="paper_output"):
        UndeclaredNorm(LayerConfig(n_embd=30, n_head=2))
