"""Run folders written by hand for the report.py tests (config.json, log.jsonl, eval.json with chosen numbers, no
training): RUNS as a sweep of 2 variants x 3 seeds, EXPECTED, the table report.py prints for it, and FRONTIER, the line
under it with --plots."""
import json
import math
from types import SimpleNamespace

import pytest

import report

# attention -> per seed: (val bpc, test bpc, tokens/s of the log rows, peak MB of the rows, last elapsed_s)
RUNS = {
    'softmax': [(2.50, 2.60, [1000, 2000, 3000], [700, 750], 60),
                (2.52, 2.61, [2000, 3000, 4000], [700, 740], 120),
                (2.54, 2.62, [3000, 4000, 5000], [710, None], 180)],
    'linear': [(2.60, 2.70, [1500, 1500, 1500], [800, 820], 90),
               (2.70, 2.75, [1500, 1500, 1500], [800, 820], 90),
               (2.65, 2.80, [1500, 1500, 1500], [800, 830], 90)],
}
EXPECTED = """\
causal LM on bytes: bits per byte. Best first by val bpc (lower is better); mean ± sample std over n seeds. Δ: the \
row's bpc minus its baseline row's (softmax), the mean over the pairs (seeds both ran) [its 95% Student t interval]; \
`vs softmax` reads the val interval.

| attention | params | attn params | n | val bpc | test bpc | Δ val bpc | Δ test bpc | pairs | vs softmax \
| tokens/s | peak MB | wall min |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| softmax | 836,736 | 262,144 | 3 | 2.520 ± 0.020 | 2.610 ± 0.010 | - | - | - | baseline | 3,000 | 750 | 2.0 |
| linear | 836,736 | 262,144 | 3 | 2.650 ± 0.050 | 2.750 ± 0.050 | +0.130 [+0.022, +0.238] \
| +0.140 [+0.041, +0.239] | 3 | worse | 1,500 | 830 | 1.5 |

Against softmax at 95% on val bpc, paired by seed: worse: linear.
"""
FRONTIER = ("\nQuality against cost (val bpc against tokens/s of these runs): on the frontier, no other row both better "
            "and cheaper: softmax.\n")  # under EXPECTED with --plots: softmax is better and faster


def write_run(folder, config, evaluation, rows, fingerprint=True):
    """A run folder; its config gets the fingerprint its trainer would record today (an evaluated run's task tells
    which), unless fingerprint=False."""
    folder.mkdir(parents=True)
    if fingerprint and evaluation is not None:
        config = stamped(config, evaluation)
    (folder / 'config.json').write_text(json.dumps({'config': config, 'segments': []}))
    (folder / 'log.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
    if evaluation is not None:
        (folder / 'eval.json').write_text(json.dumps(evaluation))


def stamped(config, evaluation):
    """config with the fingerprint a trainer of the task of evaluation (an eval.json) records for it today."""
    task = report.TASKS[report.task_of(SimpleNamespace(evaluation=evaluation))[0]]
    return {**config, 'fingerprint': report.run_fingerprint(config, task)}


def gpt_config(attention, seed, **changes):
    return {'out_dir': f'results/x/attention={attention},seed={seed}', 'init_from': 'resume' if seed == 2 else
            'scratch', 'data_dir': 'data/shakespeare', 'attention': attention, 'n_layer': 4, 'max_iters': 100,
            'seed': seed, 'device': 'cpu', 'n_params': 836736, 'attention_params': 262144, **changes}


def split(bpc):
    return {'loss': bpc * math.log(2), 'tokens': 55768, 'bpc': bpc}


@pytest.fixture
def sweep(tmp_path):
    """results/x with RUNS as run folders: 2 groups x 3 seeds."""
    for attention, seeds in RUNS.items():
        for seed, (val, test, rates, peaks, wall) in enumerate(seeds, 1):
            rows = [{'iter': 0, 'val_loss': 5.5, 'elapsed_s': 1}]
            rows += [{'iter': 10 * i + 1, 'train_loss': 3.0, 'tokens_per_s': rate, 'peak_mem_mb': peak,
                      'elapsed_s': wall * i / 3} for i, (rate, peak) in enumerate(zip(rates, peaks + [None]), 1)]
            rows += [{'iter': 100, 'val_loss': val * math.log(2), 'elapsed_s': wall},
                     {'iter': 100, 'val': split(val), 'test': split(test)}]  # the row eval_only appends
            write_run(tmp_path / 'results' / 'x' / f'attention={attention},seed={seed}', gpt_config(attention, seed),
                      {'iter': 100, 'val': split(val), 'test': split(test)}, rows)
    return tmp_path / 'results' / 'x'
