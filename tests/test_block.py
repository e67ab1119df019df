"""The ablation axes of the shared block, for every registered variant: the norm (LayerNorm, RMSNorm, ScaleNorm),
its position (pre- or post-norm) and a single head as wide as the model. Each is checked against the formula
written out here, in float64, and decoding against the parallel forward."""
import math

import pytest
import torch

import attention
import train_bert
import train_gpt
import train_lra
import train_mqar
import train_vit
from attention import ATTENTION, LayerConfig
from test_attention import GRID

NORMS = ['layernorm', 'rmsnorm', 'scalenorm']
MODES = [(name, causal) for name, cls in ATTENTION.items()
         for causal, ok in ((True, cls.supports_causal), (False, cls.supports_bidirectional)) if ok]
CAUSAL = [name for name, cls in ATTENTION.items() if cls.supports_causal]


def config(name='softmax', causal=True, **fields):
    fields = dict(n_embd=32, n_head=4, chunk_size=8, local_window=6, performer_features=16, **GRID) | fields
    return LayerConfig(attention=name, causal=causal, **fields)


def block(cfg, seed=0):
    torch.manual_seed(seed)
    return attention.Block(cfg).double()


def inputs(B, T, C, seed=1):
    return torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_scalenorm_is_one_scale_of_the_unit_vector():
    norm = attention.ScaleNorm(32).double()
    assert [p.numel() for p in norm.parameters()] == [1]
    x = inputs(2, 5, 32)
    torch.testing.assert_close(norm(x), math.sqrt(32) * x / x.norm(dim=-1, keepdim=True))
    assert torch.allclose(norm(x).pow(2).mean(-1), torch.ones(2, 5, dtype=torch.float64))  # unit RMS at start
    with torch.no_grad():
        norm.scale.fill_(3.0)
    torch.testing.assert_close(norm(x).norm(dim=-1), torch.full((2, 5), 3.0, dtype=torch.float64))
    assert torch.isfinite(norm(torch.zeros(1, 32, dtype=torch.float64))).all()  # eps: no 0 / 0


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('position', ['pre', 'post'])
def test_block_is_the_formula(norm, position):
    """Pre-norm: x + attn(n1(x)), then + mlp(n2(.)); post-norm: n1(x + attn(x)), then n2(. + mlp(.))."""
    module = block(config(norm=norm, norm_position=position))
    x = inputs(2, 9, 32)
    attn, mlp, n1, n2 = module.attn, module.mlp, module.norm_attn, module.norm_mlp
    if position == 'pre':
        h = x + attn(n1(x))
        expected = h + mlp(n2(h))
    else:
        h = n1(x + attn(x))
        expected = n2(h + mlp(h))
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
    kind = {'layernorm': torch.nn.LayerNorm, 'rmsnorm': torch.nn.RMSNorm, 'scalenorm': attention.ScaleNorm}[norm]
    assert isinstance(n1, kind) and isinstance(n2, kind)


def test_post_norm_differs_from_pre_norm():
    """The position check can fail: the same parameters in the two positions give different outputs."""
    pre, post = block(config(norm_position='pre')), block(config(norm_position='post'))
    post.load_state_dict(pre.state_dict())
    x = inputs(1, 7, 32)
    assert not torch.allclose(pre(x), post(x))


@pytest.mark.parametrize('position', ['pre', 'post'])
def test_final_norm_only_after_pre_norm_blocks(position):
    model = attention.TransformerLM(attention.LMConfig(n_layer=2, n_embd=32, n_head=4, block_size=16,
                                                       norm='scalenorm', norm_position=position))
    assert isinstance(model.norm, attention.ScaleNorm if position == 'pre' else torch.nn.Identity)
    assert all(isinstance(b.norm_attn, attention.ScaleNorm) for b in model.blocks)


@pytest.mark.parametrize('name', CAUSAL)
@pytest.mark.parametrize('norm', NORMS)
def test_post_norm_block_decodes_as_it_runs(name, norm):
    module = block(config(name, norm=norm, norm_position='post'))
    x = inputs(2, 19, 32)
    with torch.no_grad():
        expected = module(x)
        first, state = module.step(x[:, :10])
        second, _ = module.step(x[:, 10:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('name,causal', MODES)
def test_every_variant_runs_with_one_head(name, causal):
    """n_head = 1 (head dim = width), for every variant, including those whose per-head parameters or state depend
    on the head count: the fast path equals the reference in float64 (outputs and gradients), and decodes."""
    torch.manual_seed(0)
    module = attention.build_attention(config(name, causal, n_embd=24, n_head=1)).double()
    x = inputs(2, 21, 24)
    results = []
    for reference in (False, True):
        module.zero_grad()
        x_grad = x.clone().requires_grad_()
        y = module(x_grad, reference=reference)
        (y * torch.linspace(-1, 1, 24, dtype=y.dtype)).sum().backward()
        results.append([y.detach(), x_grad.grad] + [p.grad.clone() for p in module.parameters()])
    for fast, ref in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-10)
    if causal:
        with torch.no_grad():
            first, state = module.step(x[:, :8])
            second, _ = module.step(x[:, 8:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=1), results[0][0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('field,value,message', [
    ('norm', 'batchnorm', "unknown norm 'batchnorm'; choose one of: layernorm, rmsnorm, scalenorm"),
    ('norm_position', 'sandwich', "unknown norm_position 'sandwich'; choose 'pre' or 'post'"),
])
def test_unknown_norm_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        attention.Block(config(**{field: value}))


@pytest.mark.parametrize('trainer', [train_gpt, train_bert, train_vit, train_lra, train_mqar],
                         ids=lambda m: m.__name__)
def test_every_trainer_exposes_the_layer_knobs(trainer):
    """Each LayerConfig field (the axes, every variant's knobs) is a commented global of every trainer, except those
    a trainer sets itself (causal; a ViT's block_size and patch grid follow from its patches) and the fixed MLP width."""
    missing = set(LayerConfig.__dataclass_fields__) - set(trainer.DEFAULTS)
    assert missing <= {'causal', 'block_size', 'mlp_ratio', 'patch_grid_width', 'class_tokens'}, missing


def test_performer_redraws_at_its_interval_from_seed_step_and_layer():
    def model(interval):
        torch.manual_seed(0)
        return attention.TransformerLM(attention.LMConfig(attention='performer', n_layer=2, n_embd=32, n_head=2,
                                                          block_size=8, performer_features=8,
                                                          performer_redraw_interval=interval))

    projections = lambda m: [block.attn.projection.clone() for block in m.blocks]
    one, two, never = model(5), model(5), model(0)
    start = projections(one)
    for step in (0, 3, 7):  # not a positive multiple of 5
        attention.redraw_random_features(one, step, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(projections(one), start))
    attention.redraw_random_features(one, 10, seed=1)
    attention.redraw_random_features(two, 10, seed=1)
    attention.redraw_random_features(never, 10, seed=1)
    redrawn = projections(one)
    assert not any(torch.equal(a, b) for a, b in zip(redrawn, start))
    assert not torch.equal(redrawn[0], redrawn[1])  # each layer its own draw
    assert all(torch.equal(a, b) for a, b in zip(redrawn, projections(two)))  # the same on every rank, on resume
    assert all(torch.equal(a, b) for a, b in zip(projections(never), start))
    attention.redraw_random_features(two, 10, seed=2)
    assert not any(torch.equal(a, b) for a, b in zip(redrawn, projections(two)))
