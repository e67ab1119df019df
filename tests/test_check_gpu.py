"""check_gpu.py refuses what it cannot run, in one line, before any check starts (its checks: tests/test_precision.py)."""
import pytest

import check_gpu
from training import ConfigError


@pytest.mark.parametrize('argv, message', [
    (['--train_steps=1'], r"train_steps=1, train_block_size=1024: both must be at least 2"),
    (['--train_block_size=1'], r"both must be at least 2"),
    (['--out=no_such_folder/gpu.json'], r"out='no_such_folder/gpu.json': give a file in an existing folder"),
    (['--out=tests'], r"out='tests': give a file in an existing folder you can write to"),
    (['--seq_lens=1024,x'], r"seq_lens='1024,x': expected comma-separated lengths"),
    (['--variants=softmax,nope'], r"unknown variant\(s\) nope"),
])
def test_settings_it_cannot_use_are_refused_before_any_check(argv, message):
    with pytest.raises(ConfigError, match=message):
        check_gpu.parse(['--device=cpu', *argv])
