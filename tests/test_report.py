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

import report
from report_runs import EXPECTED, gpt_config, sweep, write_run  # noqa: F401 (sweep is a fixture)
from conftest import run_script
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
    assert (tmp_path / 't.md').read_text() == EXPECTED == capsys.readouterr().out
    text = (tmp_path / 't.csv').read_text()
    assert text.splitlines()[0] == ('attention,n_params,attention_params,n,val_bpc,val_bpc_std,test_bpc,'
                                    'test_bpc_std,tokens_per_s,peak_mem_mb,wall_s,runs')
    cells = next(csv.DictReader(io.StringIO(text)))
    assert cells['attention'] == 'softmax' and cells['n'] == '3'
    assert float(cells['val_bpc']) == pytest.approx(2.52, abs=1e-12)
    assert float(cells['val_bpc_std']) == pytest.approx(0.02, abs=1e-12)
    assert float(cells['tokens_per_s']) == 3000 and float(cells['wall_s']) == 120
    assert cells['runs'] == 'attention=softmax,seed=1 attention=softmax,seed=2 attention=softmax,seed=3'
    for name in ('val_loss.png', 'quality_vs_throughput.png'):
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
    config = json.loads((run_folder / 'config.json').read_text())
    config['config'].update(changes)
    (run_folder / 'config.json').write_text(json.dumps(config))


def test_groups_by_what_differs_besides_the_seed(sweep, capsys):
    """n_head differs in one softmax run: it is its own group and n_head becomes a column; init_from (a resumed
    run records 'resume') and out_dir do not split groups."""
    for run in sweep.iterdir():
        edit_config(run, n_head=1 if run.name == 'attention=softmax,seed=3' else 4)
    report.main([str(sweep)])
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
    report.main([str(sweep)])
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
    report.main([str(mqar_sweep), '--best_over=learning_rate', f'--csv={tmp_path / "t.csv"}'])
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
    report.main([str(mqar_sweep)])
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
    report.main([str(mqar_sweep), '--where=block_size=64,num_kv_pairs=4', '--best_over=learning_rate'])
    out = capsys.readouterr().out
    assert out == MQAR_BEST.replace(' Each row', ' Runs with block_size=64, num_kv_pairs=4. Each row')
    report.main([str(mqar_sweep), '--where=block_size=128,learning_rate=1e-3'])
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
