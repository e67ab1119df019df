"""
report.py on run folders written by hand (config.json, log.jsonl, eval.json with chosen numbers, no training):
means and sample standard deviations over seeds, grouping, the CSV, plots, the bench.py join, runs left out
with a note, byte-identical output for the same input, and bad input as one line.
"""
import csv
import io
import json
import re

import pytest
import torch
import torch.nn.functional as F

import attention
import report
from attention import ATTENTION
from conftest import run_script
from report_runs import EXPECTED, FRONTIER, gpt_config, split, stamped, sweep, write_run  # noqa: F401 (a fixture)
from training import ConfigError

BENCH = {'env': {'device': 'cpu'}, 'results': [
    {'variant': v, 'mode': mode, 'seq_len': t, 'causal': True, 'status': 'ok', 'time_ms': ms, 'peak_mem_mb': 1.0}
    for v, mode, t, ms in [('softmax', 'fwdbwd', 4096, 608.2), ('softmax', 'decode', 4096, 3.456),
                           ('linear', 'fwdbwd', 4096, 219.4), ('linear', 'decode', 4096, 0.712),
                           ('softmax', 'fwdbwd', 1024, 72.0), ('linear', 'fwd', 4096, 99.0)]]}


def test_table_means_stds_and_order(sweep, capsys):
    report.main([str(sweep)])
    assert capsys.readouterr().out == EXPECTED


def test_csv_markdown_and_plots(sweep, tmp_path, capsys):
    report.main([str(sweep), f'--csv={tmp_path / "t.csv"}', f'--markdown={tmp_path / "t.md"}',
                 f'--plots={tmp_path / "plots"}'])
    assert (tmp_path / 't.md').read_text() == EXPECTED + FRONTIER == capsys.readouterr().out
    text = (tmp_path / 't.csv').read_text()
    assert text.splitlines()[0] == ('attention,n_params,attention_params,n,val_bpc,val_bpc_std,test_bpc,'
                                    'test_bpc_std,tokens_per_s,peak_mem_mb,wall_s,runs,stale,val_bpc_diff,val_bpc_diff_low,'
                                    'val_bpc_diff_high,test_bpc_diff,test_bpc_diff_low,test_bpc_diff_high,pairs,'
                                    'verdict')
    cells = next(csv.DictReader(io.StringIO(text)))
    assert cells['attention'] == 'softmax' and cells['n'] == '3'
    assert float(cells['val_bpc']) == pytest.approx(2.52, abs=1e-12)
    assert float(cells['val_bpc_std']) == pytest.approx(0.02, abs=1e-12)
    assert float(cells['tokens_per_s']) == 3000 and float(cells['wall_s']) == 120
    assert cells['runs'] == 'attention=softmax,seed=1 attention=softmax,seed=2 attention=softmax,seed=3'
    assert cells['stale'] == ''
    for name in report.PLOTS:
        data = (tmp_path / 'plots' / name).read_bytes()
        assert data.startswith(b'\x89PNG') and len(data) > 1000
    first = (tmp_path / 't.csv').read_bytes()
    report.main([str(sweep), f'--csv={tmp_path / "again.csv"}'])
    assert (tmp_path / 'again.csv').read_bytes() == first  # deterministic


def test_bench_join(sweep, tmp_path, capsys):
    (tmp_path / 'bench.json').write_text(json.dumps(BENCH))
    report.main([str(sweep), f'--bench={tmp_path / "bench.json"}'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"Attention layer alone at T=4096: {tmp_path / 'bench.json'}.")
    assert lines[2].endswith('| wall min | fwd+bwd ms T=4096 | decode ms/token T=4096 |')
    assert lines[4].endswith('| 2.0 | 608.2 | 3.46 |') and lines[5].endswith('| 1.5 | 219.4 | 0.71 |')
    report.main([str(sweep), f'--bench={tmp_path / "bench.json"}', '--bench_seq_len=1024'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[4].endswith('| 72.0 | - |') and lines[5].endswith('| - | - |')


def edit_config(run_folder, **changes):
    """Changes a run's settings, and its fingerprint to what its trainer would record for them."""
    config = json.loads((run_folder / 'config.json').read_text())
    evaluation = json.loads((run_folder / 'eval.json').read_text())
    config['config'] = stamped({**config['config'], **changes}, evaluation)
    (run_folder / 'config.json').write_text(json.dumps(config))


def test_groups_by_what_differs_besides_the_seed(sweep, capsys):
    """n_head differs in one softmax run: it is its own group and n_head becomes a column; init_from (a resumed
    run records 'resume') and out_dir do not split groups."""
    for run in sweep.iterdir():
        edit_config(run, n_head=1 if run.name == 'attention=softmax,seed=3' else 4)
    report.main([str(sweep), '--baseline='])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith('| attention | n_head | params |')
    assert [line.split(' | ')[:4] for line in lines[4:]] == [
        ['| softmax', '4', '836,736', '262,144'], ['| softmax', '1', '836,736', '262,144'],
        ['| linear', '4', '836,736', '262,144']]
    assert '| 2 | 2.510 ± 0.014 |' in lines[4] and '| 1 | 2.540 | 2.620 |' in lines[5]  # n = 1: the mean alone


def test_a_knob_newer_than_some_runs_splits_only_where_set_differently(sweep, capsys):
    """Runs made before a knob existed lack it in config.json: one value among the runs that hold it splits nothing,
    two values do (and the runs without it show '-')."""
    edit_config(sweep / 'attention=linear,seed=1', short_conv=False)
    edit_config(sweep / 'attention=linear,seed=2', short_conv=False)
    report.main([str(sweep)])
    assert capsys.readouterr().out == EXPECTED
    edit_config(sweep / 'attention=linear,seed=2', short_conv=True)
    report.main([str(sweep), '--baseline='])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith('| attention | short_conv | params |')
    assert [line.split(' | ')[:3] for line in lines[4:]] == [['| softmax', '-', '836,736'],  # best first
                                                             ['| linear', 'False', '836,736'],
                                                             ['| linear', '-', '836,736'],
                                                             ['| linear', 'True', '836,736']]


def test_unfinished_runs_are_left_out_with_a_note(sweep, capsys):
    (sweep / 'attention=linear,seed=3' / 'eval.json').unlink()
    evaluation = json.loads((sweep / 'attention=linear,seed=2' / 'eval.json').read_text())
    (sweep / 'attention=linear,seed=2' / 'eval.json').write_text(json.dumps({**evaluation, 'iter': 50}))
    report.main([str(sweep), str(sweep / 'attention=softmax,seed=1')])  # a run folder given alone is read too
    out, err = capsys.readouterr()
    assert f"note: left out, not evaluated (no eval.json): {sweep / 'attention=linear,seed=3'}" in err
    assert f"note: left out, evaluated before max_iters: {sweep / 'attention=linear,seed=2'} (iter 50 of 100)" in err
    assert '| linear | 836,736 | 262,144 | 1 | 2.600 | 2.700 |' in out
    assert '| softmax | 836,736 | 262,144 | 3 |' in out  # a run given twice counts once


def test_other_tasks(tmp_path, capsys):
    for seed, acc in ((1, 0.40), (2, 0.45)):
        write_run(tmp_path / 'vit' / f'seed={seed}', {'attention': 'linear', 'seed': seed, 'max_iters': 10},
                  {'iter': 10, 'test': {'loss': 1.5, 'acc': acc, 'images': 10000}},
                  [{'iter': 10, 'test_loss': 1.5, 'test_acc': acc, 'images_per_s': 500.0, 'elapsed_s': 30}])
    report.main([str(tmp_path / 'vit')])
    assert capsys.readouterr().out.splitlines()[2:] == [
        '| attention | params | attn params | n | test top-1 % | images/s | peak MB | wall min |',
        '| --- | --- | --- | --- | --- | --- | --- | --- |',
        '| linear | - | - | 2 | 42.50 ± 3.54 | 500 | - | 0.5 |']


def test_bad_input_is_one_line(sweep, tmp_path):
    bert = {'iter': 100, 'val': {'loss': 2.0, 'ppl': 7.4, 'acc': 0.44, 'masked_tokens': 8000}}
    write_run(tmp_path / 'bert' / 'seed=1', gpt_config('softmax', 1), bert, [])
    with pytest.raises(ConfigError, match=r"are different tasks or splits: report them separately"):
        report.main([str(sweep), str(tmp_path / 'bert')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ConfigError, match=r"empty holds no run"):
        report.main([str(tmp_path / 'empty')])
    (sweep / 'attention=linear,seed=1' / 'eval.json').write_text('{"iter": 100, ')
    with pytest.raises(ConfigError, match=r"eval.json is not readable JSON"):
        report.main([str(sweep)])
    result = run_script('report.py', str(sweep), '--colour=red', timeout=120)
    assert result.returncode == 1 and result.stdout == ''
    assert result.stderr.startswith("error: --colour=red: unknown key 'colour'") and result.stderr.count('\n') == 1


@pytest.mark.parametrize('file, text, message', [
    ('eval.json', '{"iter": 100, "val": {"loss": "low", "bpc": 2.5}}', r"eval.json is not a trev evaluation"),
    ('eval.json', '{"iter": "100", "val": {"loss": 1.7}}', r"eval.json is not a trev evaluation"),
    ('eval.json', '{"iter": 100, "val": [1.7]}', r"eval.json is not a trev evaluation"),
    ('config.json', '{"config": {"attention": "linear", "learning_rate": [0.001]}}', r"config.json holds a setting "
                                                                                     r"that is not a number"),
    ('config.json', '{"config": [1]}', r"config.json is not a trev run file"),
])
def test_run_files_of_the_wrong_shape_are_one_line(sweep, file, text, message):
    (sweep / 'attention=linear,seed=1' / file).write_text(text)
    with pytest.raises(ConfigError, match=message):
        report.main([str(sweep)])


@pytest.mark.parametrize('results', [[1, 2], [{'variant': 'softmax', 'mode': 'fwdbwd', 'seq_len': 4096,
                                              'status': 'ok', 'time_ms': '608'}], 'none', [{'variant': 'softmax'}]])
def test_a_bench_json_of_the_wrong_shape_is_one_line(sweep, tmp_path, results):
    (tmp_path / 'bench.json').write_text(json.dumps({'results': results}))
    for argv in ([f'--bench_table={tmp_path / "bench.json"}'], [str(sweep), f'--bench={tmp_path / "bench.json"}']):
        with pytest.raises(ConfigError, match=r"bench.json is not a bench.py JSON file"):
            report.main(argv)


# MQAR: attention -> learning rate -> per seed (val accuracy, test accuracy). Chosen so that a wrong choice shows:
# softmax's best single run (1.00 at 1e-2) is not its best mean (1e-3), linear's best on test (1e-3) is not its best
# on val (1e-2); local lacks 1e-4 and ties at 1e-3 and 1e-2 (the smaller wins).
MQAR = {
    'softmax': {1e-4: [(0.50, 0.52), (0.60, 0.58)], 1e-3: [(0.99, 0.98), (0.97, 0.96)],
                1e-2: [(0.90, 0.91), (1.00, 0.99)]},
    'linear': {1e-4: [(0.20, 0.21), (0.30, 0.29)], 1e-3: [(0.40, 0.47), (0.44, 0.45)],
               1e-2: [(0.46, 0.45), (0.40, 0.41)]},
    'local': {1e-3: [(0.50, 0.50), (0.50, 0.52)], 1e-2: [(0.60, 0.58), (0.40, 0.40)]},
}
MQAR_BEST = """\
multi-query associative recall: accuracy on the answer tokens. Best first by val acc % (higher is better); mean ± \
sample std over n seeds. Each row at the best learning_rate of the grid 0.0001, 0.001, 0.01 by mean val acc % over \
seeds.

| attention | best learning_rate | params | attn params | n | val acc % | test acc % | tokens/s | peak MB | wall min |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| softmax | 0.001 | 1,000 | 100 | 2 | 98.00 ± 1.41 | 97.00 ± 1.41 | 2,000 | 500 | 1.0 |
| local | 0.001 (2 of 3) | 1,000 | 100 | 2 | 50.00 ± 0.00 | 51.00 ± 1.41 | 2,000 | 500 | 1.0 |
| linear | 0.01 | 1,000 | 100 | 2 | 43.00 ± 4.24 | 43.00 ± 2.83 | 2,000 | 500 | 1.0 |
"""


@pytest.fixture
def mqar_sweep(tmp_path):
    for attention, grid in MQAR.items():
        for lr, seeds in grid.items():
            for seed, (val, test) in enumerate(seeds, 1):
                config = {'attention': attention, 'block_size': 64, 'num_kv_pairs': 4, 'learning_rate': lr,
                          'seed': seed, 'max_iters': 10, 'n_params': 1000, 'attention_params': 100}
                evaluation = {'iter': 10, **{split: {'loss': 1.0 - acc, 'accuracy': acc, 'queries': 4000}
                                             for split, acc in (('val', val), ('test', test))}}
                rows = [{'iter': 10, 'val_loss': 1.0 - val, 'val_acc': val, 'train_loss': 0.5, 'tokens_per_s': 2000,
                         'peak_mem_mb': 500, 'elapsed_s': 60}]
                write_run(tmp_path / 'mqar' / f'attention={attention},learning_rate={lr},seed={seed}', config,
                          evaluation, rows)
    return tmp_path / 'mqar'


def test_mqar_best_learning_rate_per_group(mqar_sweep, tmp_path, capsys):
    """The best mean val accuracy over seeds picks each variant's learning rate (a tie goes to the smaller one),
    and test accuracy is reported at that learning rate; a group without part of the grid says so in its row and
    in a note."""
    report.main([str(mqar_sweep), '--best_over=learning_rate', f'--csv={tmp_path / "t.csv"}', '--baseline='])
    out, err = capsys.readouterr()
    assert out == MQAR_BEST
    assert err == ('note: local has learning_rate = 0.001, 0.01 of the grid 0.0001, 0.001, 0.01: its best is over '
                   'those only\n')
    cells = {row['attention']: row for row in csv.DictReader(open(tmp_path / 't.csv'))}
    assert cells['linear']['learning_rate'] == '0.01' and cells['linear']['n'] == '2'
    assert cells['local']['learning_rate_values_tried'] == '2' and cells['linear']['learning_rate_values_tried'] == '3'
    assert float(cells['softmax']['test_accuracy']) == pytest.approx(0.97, abs=1e-12)
    assert cells['softmax']['runs'] == 'attention=softmax,learning_rate=0.001,seed=1 ' \
                                       'attention=softmax,learning_rate=0.001,seed=2'


def test_mqar_without_best_over_shows_every_learning_rate(mqar_sweep, capsys):
    report.main([str(mqar_sweep), '--baseline='])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith('| attention | learning_rate | params | attn params | n | val acc % | test acc % |')
    assert len(lines) == 4 + 8 and lines[4].startswith('| softmax | 0.001 | 1,000 | 100 | 2 | 98.00 ± 1.41 |')


def test_where_reports_one_setting_of_a_sweep(mqar_sweep, tmp_path, capsys):
    """Runs of a second setting in the same folder are left out by --where (its value read as a literal: 64 and
    1e-3 match the configs' numbers), and the heading names the setting."""
    for attention in ('softmax', 'linear'):
        config = {'attention': attention, 'block_size': 128, 'num_kv_pairs': 8, 'learning_rate': 1e-3, 'seed': 1,
                  'max_iters': 10, 'n_params': 1000, 'attention_params': 100}
        evaluation = {'iter': 10, **{split: {'loss': 0.9, 'accuracy': 0.1, 'queries': 8000} for split in ('val', 'test')}}
        write_run(mqar_sweep / f'block_size=128,attention={attention},seed=1', config, evaluation,
                  [{'iter': 10, 'val_loss': 0.9, 'elapsed_s': 60}])
    report.main([str(mqar_sweep), '--where=block_size=64,num_kv_pairs=4', '--best_over=learning_rate', '--baseline='])
    out = capsys.readouterr().out
    assert out == MQAR_BEST.replace(' Each row', ' Runs with block_size=64, num_kv_pairs=4. Each row')
    report.main([str(mqar_sweep), '--where=block_size=128,learning_rate=1e-3', '--baseline='])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(' | ')[0] for line in lines[4:]] == ['| linear', '| softmax']


@pytest.mark.parametrize('where, message', [
    ('block_size', "--where=block_size: expected KEY=VALUE"), ('colour=red', "no run has colour in its config.json"),
    ('block_size=32', "--where=block_size=32: no finished run has those values")])
def test_where_without_a_match_is_one_line(mqar_sweep, where, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        report.main([str(mqar_sweep), f'--where={where}'])


@pytest.mark.parametrize('key, message', [
    ('colour', "--best_over=colour: "), ('seed', "--best_over=seed: the table compares over that key")])
def test_best_over_a_key_that_is_not_a_setting_is_one_line(mqar_sweep, key, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        report.main([str(mqar_sweep), f'--best_over={key}'])


def bench_record(variant, mode, T, time_ms, memory=None, status='ok'):
    return {'variant': variant, 'mode': mode, 'seq_len': T, 'causal': True, 'status': status, 'time_ms': time_ms,
            'peak_mem_mb': memory}


def test_bench_table_compares_each_variant_with_softmax(tmp_path, capsys):
    """Times and memory per T, the ratios to softmax's at bench_seq_len (time) and the longest T (memory), decode per
    T; a case that ran out of memory says so, and its ratio is '-'; bidirectional records are left out."""
    records = [bench_record('softmax', 'fwdbwd', 1024, 50.0, 10.0), bench_record('softmax', 'fwdbwd', 4096, 400.0, 40.0),
               bench_record('linear', 'fwdbwd', 1024, 40.0, 20.0), bench_record('linear', 'fwdbwd', 4096, 100.0, 30.0),
               bench_record('softmax', 'decode', 4096, 0.5), bench_record('linear', 'decode', 4096, 0.25),
               bench_record('gla', 'fwdbwd', 1024, 60.0, 30.0), bench_record('gla', 'fwdbwd', 4096, None, status='oom'),
               {**bench_record('linear', 'fwdbwd', 1024, 1.0, 1.0), 'causal': False}]
    path = tmp_path / 'bench.json'
    path.write_text(json.dumps({'env': {}, 'results': records}))
    report.main([f'--bench_table={path}', '--bench_seq_len=1024'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ('| variant | fwd+bwd ms, T=1024 | fwd+bwd ms, T=4096 | x softmax, T=1024 | peak MB, T=1024 | '
                        'peak MB, T=4096 | x softmax, T=4096 | decode ms/token, T=4096 |')
    assert lines[4:] == ['| `softmax` | 50 | 400 | 1.00 | 10 | 40 | 1.00 | 0.50 |',
                         '| `linear` | 40 | 100 | 0.80 | 20 | 30 | 0.75 | 0.25 |',
                         '| `gla` | 60 | oom | 1.20 | 30 | oom | - | - |']
    path.write_text(json.dumps({'env': {}, 'results': records + records[:1]}))
    with pytest.raises(ConfigError, match=r"has two fwdbwd records of softmax at T=1024"):
        report.main([f'--bench_table={path}'])
    with pytest.raises(ConfigError, match=r"--bench_table .*: give it alone"):
        report.main([str(tmp_path), f'--bench_table={path}'])
    path.write_text(json.dumps({'env': {}, 'results': records}))
    with pytest.raises(ConfigError, match=r"--bench_seq_len=2048: .* has fwdbwd records at T = 1024, 4096; pick one"):
        report.main([f'--bench_table={path}', '--bench_seq_len=2048'])


def test_t_critical_matches_the_printed_tables():
    for dof, t in ((1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (100, 1.984)):
        assert report.t_critical(dof) == pytest.approx(t, abs=5e-4)


def interval_by_hand(differences, t):
    n = len(differences)
    mean = sum(differences) / n
    std = (sum((d - mean) ** 2 for d in differences) / (n - 1)) ** 0.5
    return mean, mean - t * std / n ** 0.5, mean + t * std / n ** 0.5


def test_paired_difference_over_the_common_seeds(sweep, tmp_path):
    """linear minus softmax, seed by seed: three pairs (t = 4.303 for 2 dof); linear's seed 4 has no softmax run to
    pair with and is left out of the difference (but counts in linear's n)."""
    write_run(sweep / 'attention=linear,seed=4', gpt_config('linear', 4),
              {'iter': 100, 'val': {'loss': 1.0, 'tokens': 1, 'bpc': 1.0}, 'test': {'loss': 1.0, 'tokens': 1,
                                                                                   'bpc': 1.0}}, [])
    report.main([str(sweep), f'--csv={tmp_path / "t.csv"}'])
    cells = {row['attention']: row for row in csv.DictReader(open(tmp_path / 't.csv'))}
    linear, softmax = cells['linear'], cells['softmax']
    for split, differences in (('val', [0.10, 0.18, 0.11]), ('test', [0.10, 0.14, 0.18])):
        mean, low, high = interval_by_hand(differences, 4.303)
        assert float(linear[f'{split}_bpc_diff']) == pytest.approx(mean, abs=1e-9)
        assert float(linear[f'{split}_bpc_diff_low']) == pytest.approx(low, abs=1e-4)
        assert float(linear[f'{split}_bpc_diff_high']) == pytest.approx(high, abs=1e-4)
    assert (linear['n'], linear['pairs'], linear['verdict']) == ('4', '3', 'worse')  # lower bpc is better
    assert (softmax['pairs'], softmax['verdict'], softmax['val_bpc_diff']) == ('', 'baseline', '')


def test_one_pair_has_no_interval(sweep, capsys):
    for seed in (2, 3):
        (sweep / f'attention=softmax,seed={seed}' / 'eval.json').unlink()
    report.main([str(sweep)])
    out = capsys.readouterr().out
    assert '| 2.650 ± 0.050 | 2.750 ± 0.050 | +0.100 | +0.100 | 1 | n=1, no interval |' in out
    assert out.endswith('Against softmax at 95% on val bpc, paired by seed: n=1, no interval: linear.\n')


def test_accuracy_pairs_on_the_chosen_learning_rates_and_higher_is_better(mqar_sweep, tmp_path, capsys):
    """With --best_over each row is paired with the baseline's runs at the baseline's own best learning rate: softmax
    (1e-3) against linear (1e-2) is +0.53 and +0.57, better, as accuracy is higher-is-better; local (1e-3) is +0.04
    and +0.10, not separated at 2 pairs (t = 12.706 for 1 dof). --solved counts the runs at or above it."""
    report.main([str(mqar_sweep), '--best_over=learning_rate', '--baseline=linear', '--solved=90',
                 f'--csv={tmp_path / "t.csv"}'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith('| attention | best learning_rate | params | attn params | n | val acc % | solved | '
                               'test acc % | Δ val acc % | Δ test acc % | pairs | vs linear |')
    cells = {row['attention']: row for row in csv.DictReader(open(tmp_path / 't.csv'))}
    for attention, differences, verdict in (('softmax', [0.53, 0.57], 'better'),
                                            ('local', [0.04, 0.10], 'not separated')):
        mean, low, high = interval_by_hand(differences, 12.706)
        assert float(cells[attention]['val_accuracy_diff']) == pytest.approx(mean, abs=1e-9)
        assert float(cells[attention]['val_accuracy_diff_low']) == pytest.approx(low, abs=1e-4)
        assert float(cells[attention]['val_accuracy_diff_high']) == pytest.approx(high, abs=1e-4)
        assert cells[attention]['verdict'] == verdict
    assert lines[4].startswith('| softmax | 0.001 | 1,000 | 100 | 2 | 98.00 ± 1.41 | 2/2 | 97.00 ± 1.41 | '
                               '+55.00 [+29.59, +80.41] |')
    assert lines[-1] == 'Against linear at 95% on val acc %, paired by seed: better: softmax; not separated: local.'


def test_a_baseline_names_settings_and_is_paired_at_the_other_columns(sweep, capsys):
    """--baseline=n_head=4 compares each row with the n_head=4 row of its own attention."""
    for run in sweep.iterdir():
        edit_config(run, n_head=1 if run.name.startswith('attention=linear') else 4)
    for seed in (1, 2, 3):
        write_run(sweep / f'attention=linear,n_head=4,seed={seed}', gpt_config('linear', seed, n_head=4),
                  {'iter': 100, 'val': split(2.6), 'test': split(2.7)}, [])
    report.main([str(sweep), '--baseline=n_head=4'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("Δ: the row's bpc minus its baseline row's (n_head=4 at the row's attention), the mean "
                             "over the pairs (seeds both ran) [its 95% Student t interval]; `vs n_head=4` reads the "
                             "val interval.")
    assert [line.split(' | ')[-4:-3] for line in lines[4:7]] == [['baseline'], ['baseline'], ['not separated']]
    assert lines[-1] == 'Against n_head=4 at 95% on val bpc, paired by seed: not separated: linear/1.'



@pytest.mark.parametrize('argv, message', [
    (['--baseline=gla'], "--baseline=gla: no row of the table has it; name a row's attention"),
    (['--baseline=n_head=4'], "--baseline=n_head=4: n_head is not a column of this table (attention)"),
    (['--baseline=n_head'], "--baseline=n_head: no row of the table has it"),
    (['--solved=90'], "--solved=90 counts the runs whose accuracy reaches it; this table's val bpc is not an accuracy"),
])
def test_a_baseline_or_threshold_the_table_cannot_use_is_one_line(sweep, argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        report.main([str(sweep), *argv])


def test_without_a_baseline_there_are_no_comparison_columns(sweep, capsys):
    report.main([str(sweep), '--baseline='])
    out = capsys.readouterr().out
    assert 'Δ' not in out and 'paired' not in out and '| softmax | 836,736 | 262,144 | 3 | 2.520 ± 0.020 | ' \
                                                       '2.610 ± 0.010 | 3,000 |' in out


def test_frontier_keeps_the_points_no_other_beats_on_both_axes():
    # (quality, cost), higher better on both: (3, 1) and (1, 3) trade off; (2, 2) too; (1, 1) loses to all; the
    # second (3, 1) ties the first and is kept; (2, 1) loses to (3, 1) on quality at the same cost
    points = [(3, 1), (1, 3), (2, 2), (1, 1), (3, 1), (2, 1)]
    assert report.frontier(points) == [0, 1, 2, 4]


def test_every_registered_variant_has_a_family_colour():
    colours = {name: report.family_colours(name) for name in ATTENTION}
    assert report.OTHER_COLOURS not in colours.values()
    assert colours['softmax'] == colours['local'] != colours['linear'] == colours['performer']
    assert colours['deltanet'] == colours['gated_deltanet'] != colours['gla'] == colours['retention']
    assert report.family_colours('not_registered') == report.OTHER_COLOURS


def legend_styles(fig):
    handles = fig.axes[0].get_legend().legend_handles
    return [(handle.get_color(), handle.get_linestyle(), handle.get_marker()) for handle in handles]


def test_curves_of_30_rows_are_told_apart_and_listed_in_table_order(sweep):
    """30 rows, 20 of them one family: no two legend entries share colour, line style and marker, and the legend
    lists the rows in the table's order."""
    runs = report.load_runs([str(sweep)])
    names = list(ATTENTION) + [f'kernel_{i}' for i in range(30 - len(ATTENTION))]
    groups = [report.Group(name, {'attention': name}, runs[:3]) for name in names]
    fig = report.curves_figure(groups, ('val',), 'x')
    assert len(set(legend_styles(fig))) == 30
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()] == names
    same_family = [report.Group(f'linear {i}', {'attention': 'linear'}, runs[:3]) for i in range(20)]
    assert len(set(legend_styles(report.curves_figure(same_family, ('val',), 'x')))) == 20


def set_fingerprint(run_folder, fingerprint):
    """Sets (or with None removes) the fingerprint in a run's config.json."""
    record = json.loads((run_folder / 'config.json').read_text())
    record['config'].pop('fingerprint')
    if fingerprint is not None:
        record['config']['fingerprint'] = fingerprint
    (run_folder / 'config.json').write_text(json.dumps(record))


def elu_plus_one_by_cases(self, q, k, offset):
    """LinearAttention.features written otherwise: elu(x) + 1 is x + 1 above 0 and exp(x) below."""
    return torch.where(q > 0, q + 1, q.exp()), torch.where(k > 0, k + 1, k.exp())


def test_runs_today_s_code_would_not_reproduce_are_marked_stale_with_why(sweep, monkeypatch, capsys):
    """softmax seed 1 has no fingerprint (a run from before they were recorded), seed 2 one of other trainer code;
    linear attention then computes otherwise (elu + 1 becomes elu + 1.01): every linear run is stale. softmax seed 3
    matches, and an equivalent rewrite of linear's features (behaviour, not source) marks nothing."""
    softmax = json.loads((sweep / 'attention=softmax,seed=2' / 'config.json').read_text())['config']
    set_fingerprint(sweep / 'attention=softmax,seed=1', None)
    set_fingerprint(sweep / 'attention=softmax,seed=2', {**softmax['fingerprint'], 'trainer': '0123456789abcdef'})
    monkeypatch.setattr(attention.LinearAttention, 'features', elu_plus_one_by_cases)
    report.main([str(sweep), '--baseline='])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(' | ')[0] for line in lines[4:6]] == ['| softmax (stale)', '| linear']
    assert lines[-1] == ("Stale, to re-run on today's code (the fingerprint of their model's code is missing or not "
                         "today's): attention=softmax,seed=1 (no fingerprint); attention=softmax,seed=2 (trainer "
                         "model code changed).")
    monkeypatch.setattr(attention.LinearAttention, 'features',
                        lambda self, q, k, offset: (F.elu(q) + 1.01, F.elu(k) + 1.01))
    report.main([str(sweep), f'--csv={sweep.parent / "t.csv"}', '--baseline='])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(' | ')[0] for line in lines[4:6]] == ['| softmax (stale)', '| linear (stale)']
    assert lines[-1].endswith("attention=softmax,seed=2 (trainer model code changed); attention=linear,seed=1 (block "
                              "behaviour changed); attention=linear,seed=2 (block behaviour changed); "
                              "attention=linear,seed=3 (block behaviour changed).")
    cells = {row['attention']: row['stale'] for row in csv.DictReader(open(sweep.parent / 't.csv'))}
    assert cells['softmax'] == ('attention=softmax,seed=1 (no fingerprint); attention=softmax,seed=2 (trainer model '
                                'code changed)')


def test_a_run_is_stale_where_any_segment_is(sweep, capsys):
    """A run resumed on today's code after a stretch trained without a fingerprint is stale; a segment of a variant
    today's code no longer has says so."""
    run = sweep / 'attention=linear,seed=1'
    record = json.loads((run / 'config.json').read_text())
    unrecorded = {key: value for key, value in record['config'].items() if key != 'fingerprint'}
    record['segments'] = [{'start_iter': 0, 'config': unrecorded}, {'start_iter': 50, 'config': record['config']}]
    (run / 'config.json').write_text(json.dumps(record))
    report.main([str(sweep)])
    assert capsys.readouterr().out.splitlines()[-1].endswith(": attention=linear,seed=1 (no fingerprint).")
    record['segments'][0]['config'] = {**record['config'], 'attention': 'retired'}
    (run / 'config.json').write_text(json.dumps(record))
    report.main([str(sweep)])
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        ": attention=linear,seed=1 (block cannot be built today: unknown attention 'retired'; choose one of: "
        f"{', '.join(ATTENTION)}).")


def test_a_fingerprint_of_the_wrong_shape_is_one_line(sweep):
    set_fingerprint(sweep / 'attention=linear,seed=1', {'block': [1.0, 2.0], 'trainer': 'abc'})
    with pytest.raises(ConfigError, match=r"config.json holds a fingerprint that is not a trainer's .*: restore it, or "
                                          r"delete it to mark the run stale"):
        report.main([str(sweep)])
