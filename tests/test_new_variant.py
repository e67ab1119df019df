"""A variant in four places (its class, its registry entry, configs/<name>.py, its README row): a class defined and
registered at run time is checked by the attention protocol, joins bench's linear family and its floors, and trains
in every trainer (LM, masked LM, images, LRA, MQAR), with no other edit anywhere."""
import math

import pytest

import attention
from test_attention import SoftplusAttention, registry_checks
from test_bench import assert_family_includes


@pytest.mark.slow
def test_a_variant_registered_at_run_time_needs_no_other_edit(monkeypatch, tmp_path, gpt, bert, vit, lra, mqar):
    monkeypatch.setitem(attention.ATTENTION, 'softplus', SoftplusAttention)
    assert "test_fast_path_equals_reference(name='softplus', causal=True, B=2, T=37)" in registry_checks('softplus')
    assert_family_includes('softplus')

    for trainer in (gpt, bert, vit, lra, mqar):
        rows = trainer.train(tmp_path / trainer.name, '--attention=softplus', '--max_iters=4')
        steps = [row for row in rows if 'train_loss' in row]
        assert len(steps) == 4 and all(math.isfinite(row['train_loss']) for row in steps), trainer.name
        assert all(row['grad_norm'] > 0 for row in steps), trainer.name
