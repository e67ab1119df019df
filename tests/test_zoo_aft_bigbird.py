"""AFT-local and BigBird with small windows and blocks through the whole registry protocol (test_attention's
registry_checks), which at LayerConfig's defaults sees AFT-simple and BigBird blocks as long as its sequences; each
check shown to fail on a deliberately broken fast path."""
import dataclasses

import pytest
import torch

import attention
from attention import ATTENTION
from test_attention import make, registry_checks


class WindowedAFT(attention.AttentionFreeTransformer):
    """AFT-local, s = 5, with position biases drawn at random (LayerConfig's are 0: no check would see them), and
    block_size 1024 for the memory check's sequences."""

    def __init__(self, config):
        super().__init__(dataclasses.replace(config, aft_window=5, block_size=1024))
        with torch.no_grad():
            self.position_bias.normal_()


class SmallBlockBigBird(attention.BigBirdAttention):
    """Blocks of 4, one global block, two random blocks: T = 37 spans 10 blocks, each kind of key in play."""

    def __init__(self, config):
        super().__init__(dataclasses.replace(config, bigbird_block=4, bigbird_global=1, bigbird_random=2))


class AFTWithTheWindowOneOff(WindowedAFT):
    def window_factor(self, query_position, key_position, key_valid, dtype):
        return super().window_factor(query_position, key_position - 1, key_valid, dtype)


class BigBirdWithoutRandomBlocks(SmallBlockBigBird):
    def key_blocks(self, N, device):
        blocks, counts = super().key_blocks(N, device)
        counts[:, :, -self.n_random:] = False
        return blocks, counts


@pytest.mark.parametrize('cls', [WindowedAFT, SmallBlockBigBird])
def test_the_protocol_passes_with_small_windows_and_blocks(cls, monkeypatch):
    monkeypatch.setitem(ATTENTION, 'small', cls)
    assert any(check.startswith('test_recurrent_equals_parallel') for check in registry_checks('small'))


@pytest.mark.parametrize('cls,check', [(AFTWithTheWindowOneOff, 'test_fast_path_equals_reference'),
                                       (BigBirdWithoutRandomBlocks, 'test_fast_path_equals_reference')])
def test_the_protocol_catches_a_broken_fast_path(cls, check, monkeypatch):
    monkeypatch.setitem(ATTENTION, 'broken', cls)
    with pytest.raises(AssertionError, match=check):
        registry_checks('broken')


def test_aft_local_sees_all_tokens_and_weighs_its_window():
    """AFT-local keeps AFT-simple's global reach (a token outside the window changes the output) and its biases act
    inside the window only (a bias outside it changes nothing)."""
    module = make('aft', False, aft_window=3)
    x = torch.randn(1, 20, 30, dtype=torch.float64)
    changed = x.clone()
    changed[:, 15] += 1
    with torch.no_grad():
        assert not torch.allclose(module(x)[:, 2], module(changed)[:, 2])
        before = module(x)
        module.position_bias[10, 2] += 1  # t = 10, t' = 10: inside
        inside = module(x)
        assert not torch.allclose(inside[:, 10], before[:, 10])
        torch.testing.assert_close(inside[:, :10], before[:, :10], rtol=0, atol=0)


def test_bigbird_random_blocks_are_fixed_per_seed_and_differ_per_head():
    a, b, c = (make('bigbird', False, seed=seed, bigbird_block=4, bigbird_random=2) for seed in (1, 1, 2))
    assert torch.equal(a.random_blocks, b.random_blocks) and not torch.equal(a.random_blocks, c.random_blocks)
    assert not torch.equal(a.random_blocks[0], a.random_blocks[1])
    assert 'random_blocks' in a.state_dict()
    blocks = a.random_blocks[:, 2:]  # query blocks from 2 on: never their window (1..3) or the global block 0
    assert ((blocks == -1) | ((blocks - torch.arange(2, 16)[:, None]).abs() > 1) & (blocks >= 1)).all()


@pytest.mark.parametrize('knob,value', [('aft_window', -1), ('bigbird_block', 0), ('bigbird_global', -1),
                                        ('bigbird_random', -2)])
def test_bad_knobs_are_refused_in_one_line(knob, value):
    with pytest.raises(ValueError, match=f'{knob}={value}'):
        make('aft' if knob.startswith('aft') else 'bigbird', False, **{knob: value})


def test_past_block_size_is_refused():
    with pytest.raises(ValueError, match='block_size'):
        make('aft', True, aft_window=2, block_size=8)(torch.randn(1, 9, 30, dtype=torch.float64))
    with pytest.raises(ValueError, match='block_size'):
        make('bigbird', False, block_size=8, bigbird_block=4)(torch.randn(1, 9, 30, dtype=torch.float64))
