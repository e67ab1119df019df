"""
train_mqar.py: the generator against Zoology's layout (pairs, query slots, answers, filler), its samplers against
the distributions they promise (checks shown to fail on a wrong sampler), held-out sets fixed by eval_seed alone, it
learns, eval_only scores every answer once, and bad input is a one-line error. (What every trainer does the same way,
Ctrl-C and resume among it, is in test_trainers.py; every causal variant learns in test_train_gpt.py.)
"""
import json
import math
import os
import re
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import train_mqar
import training
from attention import LMConfig
from conftest import ROOT, read_log
from train_mqar import IGNORE, RecallLM, mqar_examples
from training import ConfigError


def setting(**changes):
    return SimpleNamespace(**{**train_mqar.DEFAULTS, **changes})


def slots_of_keys(inputs, targets, kv):
    """(n, kv): the query slot (0-based) of each key, keys in the order of the pairs, read back from examples."""
    slots = torch.empty(len(inputs), kv, dtype=torch.long)
    for row, (x, y) in enumerate(zip(inputs.tolist(), targets.tolist())):
        keys = x[0:2 * kv:2]
        for position in (p for p, target in enumerate(y) if target != IGNORE):
            slots[row, keys.index(x[position])] = (position - 2 * kv) // 2
    return slots


def within_sampling_error(counts, probabilities, n):
    """Every count within 5 standard deviations (+1) of its expectation under the given probabilities."""
    return all(abs(counts.get(i, 0) - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1 for i, p in probabilities.items())


def power_law(slots, power_a):
    weights = [g ** (power_a - 1) for g in range(1, slots + 1)]
    return [w / sum(weights) for w in weights]


# -----------------------------------------------------------------------------------------------
# the generator


@pytest.mark.parametrize('random_filler', [False, True])
def test_examples_follow_zoologys_layout(random_filler):
    """Pairs k_1 v_1 .. k_kv v_kv (keys 1 .. V/2 - 1, values V/2 .. V - 1, distinct), each key asked once in a query
    slot 2 kv + 2 g, its value the target there and nowhere else, filler 0 (or random tokens) everywhere else."""
    V, T, kv = 40, 26, 3
    inputs, targets = mqar_examples(500, setting(vocab_size=V, block_size=T, num_kv_pairs=kv,
                                                 random_filler=random_filler), torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (500, T)
    filler = []
    for x, y in zip(inputs.tolist(), targets.tolist()):
        keys, values = x[0:2 * kv:2], x[1:2 * kv:2]
        assert len(set(keys)) == kv and all(1 <= k < V // 2 for k in keys)
        assert len(set(values)) == kv and all(V // 2 <= v < V for v in values)
        queries = [p for p in range(T) if y[p] != IGNORE]
        assert len(queries) == kv and all(p >= 2 * kv and (p - 2 * kv) % 2 == 0 for p in queries)
        assert sorted(x[p] for p in queries) == sorted(keys)
        assert all(y[p] == values[keys.index(x[p])] for p in queries)
        filler += [x[p] for p in range(2 * kv, T) if p not in queries]
    if random_filler:  # uniform over the whole vocabulary
        assert within_sampling_error(Counter(filler), {t: 1 / V for t in range(V)}, len(filler))
    else:
        assert set(filler) == {0}


def test_query_slots_follow_the_power_law():
    """Slots are drawn without replacement from P(g) ~ g^(power_a - 1), key by key: the first key's slot has the
    power law itself, the second's the law after removing the first pick. Data drawn with uniform slots fail it."""
    kv, T, n = 3, 2 * 3 + 2 * 12, 20000
    law = power_law(12, 0.01)
    second = {j: sum(law[i] * law[j] / (1 - law[i]) for i in range(12) if i != j) for j in range(12)}

    def follows(power_a, a):
        slots = slots_of_keys(*mqar_examples(n, setting(vocab_size=64, block_size=T, num_kv_pairs=kv,
                                                        power_a=power_a), torch.Generator().manual_seed(1)), kv)
        return (within_sampling_error(Counter(slots[:, 0].tolist()), dict(enumerate(power_law(12, a))), n) and
                within_sampling_error(Counter(slots[:, 1].tolist()),
                                      second if a == 0.01 else {j: 1 / 12 for j in range(12)}, n))

    assert follows(0.01, 0.01)
    assert follows(1.0, 1.0)  # power_a = 1: uniform slots
    assert not follows(1.0, 0.01)  # the check tells the two apart


def test_uniform_without_replacement_draws_every_ordered_tuple_equally():
    n = 60000
    draws = train_mqar.uniform_without_replacement(5, n, 3, torch.Generator().manual_seed(2))
    tuples = Counter(map(tuple, draws.tolist()))
    every = {t: 1 / 60 for t in tuples}  # 5 x 4 x 3 ordered tuples of distinct values
    assert len(tuples) == 60 and within_sampling_error(tuples, every, n)
    assert not within_sampling_error(Counter(map(tuple, draws.sort(1).values.tolist())), every, n)  # order matters


def test_held_out_sets_depend_only_on_eval_seed():
    cfg = setting(vocab_size=64, block_size=32, num_kv_pairs=4)
    torch.manual_seed(0)
    first = mqar_examples(50, cfg, train_mqar.stream('val', 1234))
    torch.manual_seed(1)  # the global RNG (model init, dropout) plays no part
    again = mqar_examples(50, cfg, train_mqar.stream('val', 1234))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in (train_mqar.stream('test', 1234), train_mqar.stream('val', 99), train_mqar.stream('train', 1234)):
        assert not torch.equal(mqar_examples(50, cfg, other)[0], first[0])


# -----------------------------------------------------------------------------------------------
# the trainer


@pytest.mark.slow
def test_it_learns(mqar, tmp_path):
    rows = mqar.train(tmp_path)
    train_losses = [r['train_loss'] for r in rows if 'train_loss' in r]
    val_losses = [r['val_loss'] for r in rows if 'val_loss' in r]
    assert len(train_losses) == 20 and len(val_losses) == 3  # evals at 0, 10, 20
    assert train_losses[0] == pytest.approx(math.log(32), abs=0.3)
    assert val_losses[-1] < val_losses[0] - 0.4  # answers are values: log 32 -> log 16 and below
    assert {'val_acc', 'tokens_per_s', 'peak_mem_mb', 'elapsed_s'} <= set(rows[0])
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    assert checkpoint['iter_num'] == 20 and checkpoint['model_args']['attention'] == 'softmax'
    assert checkpoint['model_args']['causal'] is True and checkpoint['model_args']['vocab_size'] == 32
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in checkpoint['model'])


@pytest.mark.slow
def test_eval_only_scores_every_answer_once(mqar, tmp_path):
    mqar.train(tmp_path, '--max_iters=3')
    mqar.main(f'--out_dir={tmp_path}', '--init_from=resume', '--eval_only=True', '--batch_size=7')
    results = json.load(open(tmp_path / 'eval.json'))
    assert read_log(tmp_path)[-1] == results and results['iter'] == 3
    checkpoint = torch.load(tmp_path / 'ckpt.pt', weights_only=False)
    model = RecallLM(LMConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    cfg = setting(vocab_size=32, block_size=16, num_kv_pairs=2)
    for split, n in (('val', 64), ('test', 48)):
        inputs, targets = mqar_examples(n, cfg, train_mqar.stream(split, 1234))
        nll = correct = 0.0
        for x, y in zip(inputs.long(), targets.long()):  # one example at a time, logits at every position
            logits, _ = model(x[None])
            answers = y != IGNORE
            nll += F.cross_entropy(logits[0][answers], y[answers], reduction='sum').item()
            correct += (logits[0][answers].argmax(-1) == y[answers]).sum().item()
        metrics = results[split]
        assert metrics['queries'] == 2 * n
        assert metrics['loss'] == pytest.approx(nll / (2 * n), rel=1e-5)
        assert metrics['accuracy'] == pytest.approx(correct / (2 * n))


@pytest.mark.slow
def test_each_setting_gets_its_own_run_folder(mqar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mqar.main('--max_iters=1')
    mqar.main('--block_size=20', '--num_kv_pairs=3', '--max_iters=1')
    assert sorted(path.name for path in tmp_path.iterdir()) == ['out-mqar-t16-kv2-softmax', 'out-mqar-t20-kv3-softmax']


def test_configs():
    """The CPU recipe is at (64, 4) with 2 layers of width 64 or more; the other settings' files change the setting."""
    quick = training.apply_overrides(train_mqar.DEFAULTS, [os.path.join(ROOT, 'configs', 'mqar', 'cpu.py')])
    assert (quick['block_size'], quick['num_kv_pairs'], quick['n_layer']) == (64, 4, 2) and quick['n_embd'] >= 64
    for name, shape in (('t128_kv8', (128, 8)), ('t256_kv16', (256, 16))):
        config = training.apply_overrides(quick, [os.path.join(ROOT, 'configs', 'mqar', f'{name}.py')])
        assert (config['block_size'], config['num_kv_pairs']) == shape
        assert {k for k in config if config[k] != quick[k]} <= {'block_size', 'num_kv_pairs', 'batch_size',
                                                                 'local_window', 'max_iters', 'lr_decay_iters'}


def test_bad_input_is_one_line_error(mqar, tmp_path):
    mqar.train(tmp_path, '--max_iters=1')
    base = [f'--out_dir={tmp_path}']
    cases = [
        (['--num_kv_pairs=5'], 'block_size=16 has no room for 5 pairs and their queries; set block_size to 4 x '
                               'num_kv_pairs = 20 or more'),
        (['--vocab_size=5'], 'vocab_size=5 leaves 1 key tokens (1 .. V/2 - 1) for num_kv_pairs=2 distinct keys; set '
                             'vocab_size to 6 or more'),
        (['--num_kv_pairs=0'], 'num_kv_pairs=0: must be at least 1'),
        (['--train_examples=0'], 'train_examples=0: must be at least 1'),
        (['--power_a=0'], 'power_a=0.0: must be positive'),
        (['--attention=flash'], 'choose one of: softmax, linear'),
        (['--n_layer=3', '--init_from=resume'], 'is a different model: n_layer=2 in the checkpoint, 3 in the config'),
        (['--optimizer=sgd', '--init_from=resume'], 'was trained with AdamW, this run builds SGD'),
        ([], f'{tmp_path} already holds a run'),
    ]
    before = {name: (tmp_path / name).read_bytes() for name in ('ckpt.pt', 'log.jsonl', 'config.json')}
    for args, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            mqar.main(*base, *args)
    assert before == {name: (tmp_path / name).read_bytes() for name in before}  # the run there is untouched
