"""vicinity and sra, the two attentions that read the patch grid: on grids with and without a class token against
their references (each shown to catch a broken fast path), a tiny ViT run learning with each (class token and mean
pooling), and every other trainer refusing them in one line."""
import math

import pytest
import torch
import torch.nn.functional as F

import attention
from test_attention import inputs, make, padding
from training import ConfigError


def matches_reference(module, T, pad_mask=None):
    x = inputs(2, T, 30)
    with torch.no_grad():
        return torch.allclose(module(x, pad_mask), module(x, pad_mask, reference=True), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name', ['vicinity', 'sra'])
@pytest.mark.parametrize('width,class_tokens,T', [(6, 0, 36), (6, 1, 37), (5, 1, 29), (3, 2, 14)])
def test_fast_path_equals_reference_on_grids(name, width, class_tokens, T):
    module = make(name, False, patch_grid_width=width, class_tokens=class_tokens, sra_ratio=3 if width == 6 else 2)
    assert matches_reference(module, T)
    assert matches_reference(module, T, padding([T, T - 7], T))


class VicinityWithRowsAndColumnsSwapped(attention.VicinityAttention):
    def vicinity_features(self, q, k, pad_mask):
        fq, fk = super().vicinity_features(q, k, pad_mask)
        D = q.size(-1)
        swap = lambda f: torch.cat([f[..., 2 * D:4 * D], f[..., :2 * D], f[..., 4 * D:]], -1)
        return swap(fq), fk


class SRAWithTheKernelTransposed(attention.SpatialReductionAttention):
    """The fast path's convolution reads its kernel's rows as columns; the reference's W_S is right."""

    def __init__(self, config):
        super().__init__(config)
        conv = self.reduction
        conv.forward = lambda grid: F.conv2d(grid, conv.weight.transpose(2, 3), conv.bias, stride=conv.stride)


@pytest.mark.parametrize('cls', [VicinityWithRowsAndColumnsSwapped, SRAWithTheKernelTransposed])
def test_reference_catches_a_broken_fast_path(cls):
    torch.manual_seed(0)
    config = attention.LayerConfig(n_embd=30, n_head=2, causal=False, patch_grid_width=6, class_tokens=1)
    assert not matches_reference(cls(config).double(), 37)


def test_vicinity_weighs_near_patches_more():
    """Equal queries and keys everywhere: the weight of a key falls with its grid distance, and a class token weighs
    as much as a patch at distance 0."""
    module = make('vicinity', False, patch_grid_width=4, class_tokens=1)
    q = torch.ones(1, 1, 17, 3, dtype=torch.float64)
    fq, fk = module.vicinity_features(q, q, None)
    scores = (fq @ fk.transpose(-2, -1))[0, 0] / 3  # (T, T): the weights w_ij
    patch = lambda row, column: 1 + 4 * row + column
    assert scores[patch(0, 0), patch(0, 0)] > scores[patch(0, 0), patch(0, 1)] > scores[patch(0, 0), patch(3, 3)]
    assert torch.allclose(scores[0], torch.full((17,), 2.0, dtype=torch.float64))
    assert torch.allclose(scores[:, 0], torch.full((17,), 2.0, dtype=torch.float64))
    expected = math.cos(math.pi / 2 * 3 / 4) + math.cos(math.pi / 2 * 3 / 4)
    assert math.isclose(scores[patch(0, 0), patch(3, 3)], expected)


def test_sra_keys_are_the_reduced_grid_and_the_class_token():
    module = make('sra', False, patch_grid_width=8, class_tokens=1, sra_ratio=2)
    keys_from, key_pad = module.reduce(inputs(2, 65, 30), None, False)
    assert keys_from.shape == (2, 1 + 16, 30) and not key_pad.any()  # 8 x 8 patches -> 4 x 4


@pytest.mark.parametrize('name', ['vicinity', 'sra'])
def test_grid_variants_refuse_a_sequence_without_a_grid(name):
    with pytest.raises(ValueError, match='only train_vit.py'):
        attention.build_attention(attention.LayerConfig(attention=name, causal=False))


@pytest.mark.parametrize('knob,value,match', [('sra_ratio', 1, 'sra_ratio=1'), ('short_conv', 4, 'short_conv=4')])
def test_sra_refuses_what_it_cannot_do(knob, value, match):
    with pytest.raises(ValueError, match=match):
        make('sra', False, **{knob: value})


@pytest.mark.parametrize('name', ['vicinity', 'sra'])
@pytest.mark.parametrize('pool', ['cls', 'mean'])
def test_a_tiny_vit_learns_with_it(vit, tmp_path, name, pool):
    """10 steps: every loss finite, and the last three training losses below the first."""
    rows = vit.train(tmp_path, f'--attention={name}', f'--pool={pool}', '--max_iters=10')
    losses = [row['train_loss'] for row in rows if 'train_loss' in row]
    assert len(losses) == 10 and all(math.isfinite(loss) for loss in losses)
    assert max(losses[-3:]) < losses[0], losses


@pytest.mark.parametrize('name', ['vicinity', 'sra'])
@pytest.mark.parametrize('trainer', ['gpt', 'bert', 'lra', 'mqar'])
def test_other_trainers_refuse_it_in_one_line(request, tmp_path, trainer, name):
    with pytest.raises(ConfigError) as error:
        request.getfixturevalue(trainer).main(f'--out_dir={tmp_path}', f'--attention={name}')
    assert 'only train_vit.py' in str(error.value) and '\n' not in str(error.value)
