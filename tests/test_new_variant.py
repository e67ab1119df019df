"""A variant in four places (its class, its registry entry, configs/<name>.py, its README row): a class defined and
registered at run time is checked by the attention protocol, joins bench's linear family and its floors, and trains
in every trainer (LM, masked LM, images, LRA, MQAR), with no other edit anywhere."""
import math

import attention
import prepare_lra
import train_bert
import train_gpt
import train_lra
import train_mqar
import train_vit
from test_attention import SoftplusAttention, registry_checks
from test_bench import assert_family_includes
from test_train_gpt import TINY as GPT_TINY
from test_train_lra import TINY as LRA_TINY
from test_train_mqar import TINY as MQAR_TINY
from test_train_bert import TINY as BERT_TINY
from test_train_vit import TINY as VIT_TINY, write_image_folder
from trainer_checks import read_log, write_byte_corpus


def test_a_variant_registered_at_run_time_needs_no_other_edit(monkeypatch, tmp_path):
    monkeypatch.setitem(attention.ATTENTION, 'softplus', SoftplusAttention)
    assert "test_fast_path_equals_reference(name='softplus', causal=True, B=2, T=37)" in registry_checks('softplus')
    assert_family_includes('softplus')

    (tmp_path / 'bytes').mkdir()
    corpus = write_byte_corpus(tmp_path / 'bytes')
    write_image_folder(tmp_path / 'images', n_train=64, n_val=16)
    prepare_lra.main(['listops', f'--data_dir={tmp_path / "listops"}', '--examples=64,16,16', '--min_length=8',
                      '--max_length=32', '--seed=1'])
    runs = {
        'gpt': (train_gpt, GPT_TINY + [f'--data_dir={corpus}']),
        'bert': (train_bert, BERT_TINY + [f'--data_dir={corpus}']),
        'vit': (train_vit, VIT_TINY + ['--dataset=imagefolder', f'--data_dir={tmp_path / "images"}']),
        'lra': (train_lra, LRA_TINY + [f'--data_dir={tmp_path / "listops"}']),
        'mqar': (train_mqar, MQAR_TINY),
    }
    for task, (script, args) in runs.items():
        out_dir = tmp_path / task
        script.main(args + ['--attention=softplus', '--max_iters=4', f'--out_dir={out_dir}'])
        rows = read_log(out_dir)
        steps = [row for row in rows if 'train_loss' in row]
        assert len(steps) == 4 and all(math.isfinite(row['train_loss']) for row in steps), task
        assert all(row['grad_norm'] > 0 for row in steps), task
