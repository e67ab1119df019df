"""
The table of a set of runs: quality, size, speed and memory of each configuration, mean ± std over seeds.

    python report.py results/shakespeare_gpt                       # a folder of run folders, or run folders
    python report.py results/shakespeare_gpt --bench=bench_results/cpu.json --bench_seq_len=4096
    python report.py results/ablation_norm --markdown=t.md --csv=t.csv --plots=plots/ablation_norm
    python report.py results/mqar --best_over=learning_rate       # each group at its best learning rate
    python report.py results/mqar --where=block_size=128,num_kv_pairs=8 --best_over=learning_rate   # those runs only
    python report.py --bench_table=bench_results/cpu.json         # the benchmark table of a bench.py JSON
    python report.py --readme=RESULTS.md      # regenerate every table of RESULTS.md from the command above it

Runs are grouped by their config (config.json) but the seed and the keys no result depends on (IGNORED: out_dir,
init_from, which a resumed run records as 'resume', eval_only, and the parameter counts the other keys fix); runs
that differ in anything else are separate groups (a key only some configs hold, a knob newer than the other runs,
splits them only where the runs holding it disagree). One row per group, best first by the task's main metric:
    the keys that differ between groups (attention first), parameters (all; in attention), n (seeds),
    the task's metrics on each evaluated split from eval.json, as mean ± sample std (ddof 1) over seeds (the mean
        alone for n = 1): bits per byte (byte data), word and token perplexity (tokenized text), masked-token
        loss and accuracy (masked LM), top-1 accuracy (images),
    throughput (tokens/s or images/s: the median over a run's log rows, then the mean over seeds), peak memory
    (the maximum over the runs' log rows), training wall time (the last log row's elapsed_s, mean over seeds),
    and with --bench=FILE (a bench.py JSON) the attention layer's forward+backward time and (causal tasks)
    decoding time per token at T = bench_seq_len, for the group's variant.
--best_over=KEY (any config key, e.g. learning_rate) groups on everything but the seed and KEY, and keeps in each
group the runs of the KEY value with the best mean main metric over seeds on the first split (val where there is
one; ties go to the smallest value), as Zoology reports the best accuracy over a learning-rate grid per model.
A column `best KEY` gives the value kept, the heading the grid; a group that lacks part of it says so in that column
(e.g. `0.001 (2 of 3)`: the best of the 2 values it has runs of) and in a note.
--where=KEY=VALUE[,KEY=VALUE...] reports only the runs whose config.json has those values (each VALUE read as a Python
literal where it is one, so 1e-3 matches 0.001): one table per setting of a sweep over several.
A run is reported once it is finished: eval.json there and at its max_iters. The others are left out with a note,
so a sweep in progress can be reported. Runs of different tasks (or evaluated splits) are refused. The same inputs
give byte-identical markdown and CSV (the statistics module computes means and deviations exactly, whatever the
order of the runs), so a test can regenerate a table and compare. Notes go to stderr, the table to stdout.
--plots=FOLDER writes val_loss.png (each group's periodic validation loss against iteration: the mean over seeds,
and a band from the minimum to the maximum) and quality_vs_throughput.png (the main metric against throughput, one
labelled point per group, with the std as an error bar).
--bench_table=FILE alone prints the table of a bench.py JSON: per causal variant, in the file's order, forward+backward
time and peak memory at each T, each against softmax's (time at bench_seq_len, memory at the longest T), and decoding
time per token at each T.
--readme=RESULTS.md alone regenerates the generated tables of a markdown file (any path): each is a block that starts
with the line `<!-- python report.py ARGS -->` and ends with `<!-- end of generated table -->`, and gets the output of
that command (whose plots and files are rewritten too). A start line without its end line is refused before anything
is written, as the text up to the next block's end would be replaced. tests/test_results.py checks that every table of
RESULTS.md is what its command prints from the committed run folders.
"""
import ast
import csv
import io
import os
import re
import shlex
import statistics
import sys
from collections import namedtuple

import training
from training import ConfigError

DEFAULTS = dict(
    bench='',                  # a bench.py JSON file: the attention layer's time at bench_seq_len, per variant
    bench_seq_len=4096,        # the sequence length of those times
    markdown='',               # also write the table (with its heading) to this file
    csv='',                    # also write one row per group, every number unrounded, to this CSV file
    plots='',                  # write val_loss.png and quality_vs_throughput.png into this folder
    readme='',                 # alone: regenerate every generated table in this markdown file from its command
    best_over='',              # a config key (e.g. learning_rate): each group at its value with the best mean metric
    where='',                  # KEY=VALUE[,KEY=VALUE...]: only the runs whose config has these values
    bench_table='',            # alone (with bench_seq_len): the benchmark table of this bench.py JSON file
)
GENERATED = re.compile(r'^<!-- (python report\.py [^\n]*?) -->\n(.*?)^<!-- end of generated table -->$', re.M | re.S)
GENERATED_START = re.compile(r'^<!-- python report\.py ', re.M)
IGNORED = ('seed', 'out_dir', 'init_from', 'eval_only', 'n_params', 'attention_params')  # not grouped on
Metric = namedtuple('Metric', 'key label scale decimals')  # eval.json key, column label, x scale, decimals shown
Task = namedtuple('Task', 'title metrics higher_is_better rate causal')
TASKS = {  # by what eval.json holds; the first metric is the main one
    'bytes': Task('causal LM on bytes: bits per byte', [Metric('bpc', 'bpc', 1, 3)], False, 'tokens_per_s', True),
    'words': Task('causal LM on tokens: word-level perplexity', [Metric('word_ppl', 'word ppl', 1, 2),
                  Metric('token_ppl', 'token ppl', 1, 2)], False, 'tokens_per_s', True),
    'tokens': Task('causal LM on tokens: token perplexity', [Metric('token_ppl', 'token ppl', 1, 2)], False,
                   'tokens_per_s', True),
    'mlm': Task('masked LM: loss in nats per masked token', [Metric('loss', 'loss', 1, 3),
                Metric('acc', 'acc %', 100, 2)], False, 'tokens_per_s', False),
    'images': Task('image classification: top-1 accuracy', [Metric('acc', 'top-1 %', 100, 2)], True,
                   'images_per_s', False),
    'lra': Task('Long Range Arena: top-1 accuracy', [Metric('accuracy', 'accuracy %', 100, 2)], True, 'tokens_per_s',
                False),
    'mqar': Task('multi-query associative recall: accuracy on the answer tokens',
                 [Metric('accuracy', 'acc %', 100, 2)], True, 'tokens_per_s', True),
}
SPLITS = ('val', 'test')
Run = namedtuple('Run', 'path config evaluation rows')
Group = namedtuple('Group', 'label values runs')


def run_folders(folder):
    """A run folder (it holds config.json), or the run folders in a folder, sorted by name."""
    if os.path.isfile(os.path.join(folder, 'config.json')):
        return [folder]
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder; give run folders or folders of run folders")
    found = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, name, 'config.json')))
    if not found:
        raise ConfigError(f"{folder} holds no run: no config.json in it or in its subfolders")
    return found


def task_of(run):
    """(task name, evaluated splits) of a finished run, from its eval.json."""
    splits = tuple(split for split in SPLITS if isinstance(run.evaluation.get(split), dict))
    metrics = run.evaluation[splits[0]] if splits else {}
    for name, key in (('mlm', 'masked_tokens'), ('images', 'images'), ('bytes', 'bpc'), ('words', 'word_ppl'),
                      ('tokens', 'token_ppl'), ('lra', 'examples'), ('mqar', 'queries')):
        if key in metrics:
            return name, splits
    raise ConfigError(f"{os.path.join(run.path, 'eval.json')} is not a trev trainer's evaluation (no val or test "
                      "metrics)")


def read_dict(path, key=None):
    """A run's JSON file (or its entry `key`), which must be a JSON object."""
    data = training.read_json(path)
    data = data.get(key) if key and isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a trev run file (expected a JSON object{f' under {key!r}' if key else ''})")
    return data


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(path):
    """(config, evaluation or None) of a run folder, each checked for the shape its trainer writes: config.json's
    'config' maps keys to scalars, eval.json is {'iter': N, split: {metric: number}}."""
    config = read_dict(os.path.join(path, 'config.json'), 'config')
    if not all(value is None or isinstance(value, (str, int, float)) for value in config.values()):
        raise ConfigError(f"{os.path.join(path, 'config.json')} holds a setting that is not a number, bool or string: "
                          "not a trev run's config; restore it, or move the folder out of the report")
    eval_path = os.path.join(path, 'eval.json')
    if not os.path.exists(eval_path):
        return config, None
    evaluation = read_dict(eval_path)
    if type(evaluation.get('iter')) is not int or not all(
            isinstance(metrics, dict) and all(map(is_number, metrics.values()))
            for key, metrics in evaluation.items() if key != 'iter'):
        raise ConfigError(f"{eval_path} is not a trev evaluation ({{'iter': N, 'val': {{metric: number, ...}}, ...}}): "
                          "evaluate the run again (--init_from=resume --eval_only=True)")
    return config, evaluation


def load_runs(folders):
    """The finished runs of the folders (a note on stderr names those left out)."""
    runs, unevaluated, unfinished = [], [], []
    paths = {os.path.realpath(path): path for folder in folders for path in run_folders(folder)}  # each run once
    for path in paths.values():
        config, evaluation = read_run(path)
        log_path = os.path.join(path, 'log.jsonl')
        if evaluation is None:
            unevaluated.append(path)
            continue
        if evaluation.get('iter') != config.get('max_iters'):
            unfinished.append(f"{path} (iter {evaluation.get('iter')} of {config.get('max_iters')})")
            continue
        rows = training.read_log_rows(log_path) if os.path.exists(log_path) else []
        runs.append(Run(path, config, evaluation, rows))
    if unevaluated:
        print(f"note: left out, not evaluated (no eval.json): {', '.join(unevaluated)}", file=sys.stderr)
    if unfinished:
        print(f"note: left out, evaluated before max_iters: {', '.join(unfinished)}", file=sys.stderr)
    if not runs:
        raise ConfigError(f"no finished run in {', '.join(folders)}: train and evaluate first (see sweep.py)")
    return runs


def parse_where(text):
    """--where's KEY=VALUE[,KEY=VALUE...] -> {key: value}, each value a Python literal where it is one."""
    conditions = {}
    for item in text.split(','):
        key, eq, value = item.partition('=')
        if not eq or not key:
            raise ConfigError(f"--where={text}: expected KEY=VALUE[,KEY=VALUE...], e.g. --where=block_size=128")
        try:
            conditions[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            conditions[key] = value
    return conditions


def select_runs(runs, text):
    """The runs whose config has every value of --where=text."""
    conditions = parse_where(text)
    for key in conditions:
        if not any(key in run.config for run in runs):
            raise ConfigError(f"--where={text}: no run has {key} in its config.json; name a config key")
    chosen = [run for run in runs if all(key in run.config and run.config[key] == value
                                         for key, value in conditions.items())]
    if not chosen:
        raise ConfigError(f"--where={text}: no finished run has those values")
    return chosen


def check_one_task(runs):
    first = task_of(runs[0])
    for run in runs[1:]:
        if task_of(run) != first:
            raise ConfigError(f"{runs[0].path} ({first[0]}, {'/'.join(first[1])}) and {run.path} ({task_of(run)[0]}, "
                              f"{'/'.join(task_of(run)[1])}) are different tasks or splits: report them separately")
    return TASKS[first[0]], first[1]


def group_runs(runs, ignored=IGNORED):
    """Groups of runs with the same config but the ignored keys, and the keys that differ between groups. A key that
    only some configs hold (a knob added to the trainers after the other runs were made) is grouped on only where the
    runs that hold it disagree: one value among them means the newer runs left it at the one setting there was."""
    keys = [key for run in runs for key in run.config if key not in ignored]
    keys = list(dict.fromkeys(keys))  # first appearance order, each once
    values = {key: {repr(run.config[key]) for run in runs if key in run.config} for key in keys}
    keys = [key for key in keys if all(key in run.config for run in runs) or len(values[key]) > 1]
    groups = {}
    for run in runs:
        groups.setdefault(tuple(run.config.get(key) for key in keys), []).append(run)
    differ = [key for i, key in enumerate(keys) if len({values[i] for values in groups}) > 1]
    differ = ['attention'] + [key for key in differ if key != 'attention']
    result = []
    for values, members in groups.items():
        shown = {key: members[0].config.get(key) for key in differ}
        label = ', '.join(f'{key}={value}' for key, value in shown.items()) if len(differ) > 1 else \
            str(shown['attention'])
        result.append(Group(label, shown, members))
    return result, differ


def best_over(groups, differ, key, task, split):
    """Each group cut to the runs of its value of `key` with the best mean main metric on split (ties: the smallest
    value), that value shown in a column, with how many values of the grid the group has runs of (a sweep under way
    has tried fewer for some); returns (groups, differ, the grid: every value of key, sorted)."""
    for group in groups:
        for run in group.runs:
            if key not in run.config:
                raise ConfigError(f"--best_over={key}: {run.path} has no {key} in its config.json; name a config key")
    grid = sorted({run.config[key] for group in groups for run in group.runs})
    metric, sign = task.metrics[0].key, 1 if task.higher_is_better else -1
    best_groups = []
    for group in groups:
        by_value = {}
        for run in group.runs:
            by_value.setdefault(run.config[key], []).append(run)
        tried = sorted(by_value)
        if tried != grid:
            print(f"note: {group.label} has {key} = {', '.join(map(str, tried))} of the grid "
                  f"{', '.join(map(str, grid))}: its best is over those only", file=sys.stderr)
        best = max(tried, key=lambda value: sign * statistics.mean(run.evaluation[split][metric]
                                                                    for run in by_value[value]))
        best_groups.append(Group(f'{group.label} ({key}={best})',
                                 {**group.values, key: best, f'{key}_values_tried': len(tried)}, by_value[best]))
    return best_groups, differ + [key], grid


def mean_std(values):
    """(mean, sample std or None for one value); exact (statistics works in fractions), so order-independent."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(group, task, splits, bench):
    """A group's numbers, unrounded: column name -> value (None where there is none)."""
    runs = group.runs
    row = dict(group.values, n_params=runs[0].config.get('n_params'),
               attention_params=runs[0].config.get('attention_params'), n=len(runs))
    for split in splits:
        for metric in task.metrics:
            row[f'{split}_{metric.key}'], row[f'{split}_{metric.key}_std'] = mean_std(
                [run.evaluation[split][metric.key] for run in runs])
    rates = [[r[task.rate] for r in run.rows if r.get(task.rate) is not None] for run in runs]
    row[task.rate] = statistics.mean(statistics.median(r) for r in rates) if all(rates) else None
    peaks = [r['peak_mem_mb'] for run in runs for r in run.rows if r.get('peak_mem_mb') is not None]
    row['peak_mem_mb'] = max(peaks) if peaks else None
    walls = [[r['elapsed_s'] for r in run.rows if 'elapsed_s' in r] for run in runs]
    row['wall_s'] = statistics.mean(w[-1] for w in walls) if all(walls) else None
    if bench is not None:
        row['fwdbwd_ms'] = bench.get((group.values['attention'], 'fwdbwd'))
        if task.causal:
            row['decode_ms'] = bench.get((group.values['attention'], 'decode'))
    row['runs'] = ' '.join(os.path.basename(os.path.normpath(run.path)) for run in runs)
    return row


def bench_records(path, causal):
    """(variant, mode, T) -> (time_ms, peak_mem_mb), each the status ('oom', 'unsupported') where the case did not
    run, for the causal (or bidirectional) records of a bench.py JSON; one bench run holds each case once."""
    data = training.read_json(path)
    records = {}
    wrong = ConfigError(f"{path} is not a bench.py JSON file (a 'results' list of records, each with variant, mode, "
                        "seq_len, status, and time_ms and peak_mem_mb numbers where the status is 'ok'); bench again")
    if not isinstance(data, dict) or not isinstance(data.get('results'), list):
        raise wrong
    for record in data['results']:
        if not isinstance(record, dict) or not (isinstance(record.get('variant'), str) and isinstance(
                record.get('mode'), str) and type(record.get('seq_len')) is int and isinstance(record.get('status'), str)):
            raise wrong
        ok = record['status'] == 'ok'
        if ok and not (is_number(record.get('time_ms')) and (record.get('peak_mem_mb') is None or
                                                              is_number(record['peak_mem_mb']))):
            raise wrong
        if record.get('causal', True) != causal:
            continue
        key = (record['variant'], record['mode'], record['seq_len'])
        if key in records:
            raise ConfigError(f"{path} has two {key[1]} records of {key[0]} at T={key[2]}: give one bench run")
        records[key] = (record['time_ms'], record.get('peak_mem_mb')) if ok else (record['status'],) * 2
    return records


def load_bench(path, seq_len, causal):
    """(variant, mode) -> time_ms, or the status ('oom', 'unsupported'), from a bench.py JSON at seq_len."""
    table = {(variant, mode): time for (variant, mode, T), (time, _) in bench_records(path, causal).items()
             if T == seq_len and mode in ('fwdbwd', 'decode')}
    if not table:
        print(f"note: {path} has no {'causal' if causal else 'bidirectional'} fwdbwd or decode record at "
              f"T={seq_len}", file=sys.stderr)
    return table


def bench_markdown(path, ratio_seq_len):
    """The table of --bench_table=path (see the module docstring), as a string."""
    records = bench_records(path, causal=True)
    lengths = {mode: sorted({T for _, m, T in records if m == mode}) for mode in ('fwdbwd', 'decode')}
    if not lengths['fwdbwd'] or 'softmax' not in {variant for variant, _, _ in records}:
        raise ConfigError(f"{path} has no causal fwdbwd records with softmax among them: nothing to compare")
    if ratio_seq_len not in lengths['fwdbwd']:
        raise ConfigError(f"--bench_seq_len={ratio_seq_len}: {path} has fwdbwd records at T = "
                          f"{', '.join(map(str, lengths['fwdbwd']))}; pick one of them")

    def against_softmax(variant, T, index):
        mine, softmax = (records.get((v, 'fwdbwd', T), (None, None))[index] for v in (variant, 'softmax'))
        numbers = all(isinstance(x, (int, float)) for x in (mine, softmax))
        return mine / softmax if numbers and softmax else None
    longest = lengths['fwdbwd'][-1]
    header = (['variant'] + [f'fwd+bwd ms, T={T}' for T in lengths['fwdbwd']] + [f'x softmax, T={ratio_seq_len}'] +
              [f'peak MB, T={T}' for T in lengths['fwdbwd']] + [f'x softmax, T={longest}'] +
              [f'decode ms/token, T={T}' for T in lengths['decode']])
    lines = [f"One causal attention layer (its projections included), from {path}: forward+backward time and peak "
             f"memory, each also as a multiple of softmax's, and the time to decode one token after T.", '',
             '| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |']
    for variant in dict.fromkeys(variant for variant, _, _ in records):
        fwdbwd = [records.get((variant, 'fwdbwd', T), (None, None)) for T in lengths['fwdbwd']]
        row = ([f'`{variant}`'] + [milliseconds(time) for time, _ in fwdbwd] +
               [cell(against_softmax(variant, ratio_seq_len, 0), 2)] + [cell(memory, 0) for _, memory in fwdbwd] +
               [cell(against_softmax(variant, longest, 1), 2)] +
               [cell(records.get((variant, 'decode', T), (None,))[0], 2) for T in lengths['decode']])
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines) + '\n'


def milliseconds(value):
    """A time cell: whole milliseconds, or two decimals below 10 ms (a GPU's times)."""
    return cell(value, 2 if isinstance(value, (int, float)) and value < 10 else 0)


def cell(value, decimals, scale=1, std=None):
    if value is None:
        return '-'
    if isinstance(value, str):
        return value
    text = f'{value * scale:,.{decimals}f}'
    return text if std is None else f'{text} ± {std * scale:.{decimals}f}'


def markdown(rows, differ, task, splits, options, grid=None):
    main = task.metrics[0]
    direction = 'higher' if task.higher_is_better else 'lower'
    lines = [f"{task.title}. Best first by {splits[0]} {main.label} ({direction} is better); mean ± sample std "
             f"over n seeds."]
    if options['where']:
        lines[0] += f" Runs with {', '.join(f'{key}={value}' for key, value in parse_where(options['where']).items())}."
    if options['best_over']:
        lines[0] += (f" Each row at the best {options['best_over']} of the grid {', '.join(map(str, grid))} by mean "
                     f"{splits[0]} {main.label} over seeds.")
    if options['bench']:
        lines[0] += f" Attention layer alone at T={options['bench_seq_len']}: {options['bench']}."
    lines.append('')
    header = [*(f'best {key}' if key == options['best_over'] else key for key in differ), 'params', 'attn params',
              'n', *(f'{split} {metric.label}' for split in splits for metric in task.metrics),
              task.rate.replace('_per_s', '/s'), 'peak MB', 'wall min']
    if options['bench']:
        header.append(f"fwd+bwd ms T={options['bench_seq_len']}")
        if task.causal:
            header.append(f"decode ms/token T={options['bench_seq_len']}")
    lines += ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    best_key = options['best_over']
    for row in rows:
        cells = ['-' if row[key] is None else str(row[key]) for key in differ]
        if best_key and row[f'{best_key}_values_tried'] < len(grid):
            cells[differ.index(best_key)] += f" ({row[f'{best_key}_values_tried']} of {len(grid)})"
        cells += [cell(row['n_params'], 0), cell(row['attention_params'], 0), str(row['n'])]
        cells += [cell(row[f'{split}_{m.key}'], m.decimals, m.scale, row[f'{split}_{m.key}_std'])
                  for split in splits for m in task.metrics]
        cells += [cell(row[task.rate], 0), cell(row['peak_mem_mb'], 0),
                  cell(None if row['wall_s'] is None else row['wall_s'] / 60, 1)]
        if 'fwdbwd_ms' in row:
            cells.append(cell(row['fwdbwd_ms'], 1))
        if 'decode_ms' in row:
            cells.append(cell(row['decode_ms'], 2))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def csv_text(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator='\n')
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)
    return text.getvalue()


def plot(groups, rows, task, splits, folder):
    """val_loss.png and quality_vs_throughput.png in folder."""
    try:
        from matplotlib.figure import Figure  # only plots need it; a Figure needs no pyplot and no display
    except ImportError:
        raise ConfigError("--plots needs matplotlib: pip install -r requirements.txt") from None
    os.makedirs(folder, exist_ok=True)
    loss_key = f'{splits[0]}_loss'  # the periodic estimate in log.jsonl: val_loss, or test_loss for CIFAR-10
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for group in groups:
        curves = [{r['iter']: r[loss_key] for r in run.rows if loss_key in r} for run in group.runs]
        iters = sorted(set.intersection(*(set(curve) for curve in curves)))
        values = [[curve[i] for curve in curves] for i in iters]
        line, = ax.plot(iters, [statistics.mean(v) for v in values], label=group.label)
        ax.fill_between(iters, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                        alpha=0.2)
    ax.set(xlabel='iteration', ylabel=f'{loss_key} (nats)', title='validation loss: mean over seeds, min-max band')
    ax.legend(fontsize=8)
    save(fig, os.path.join(folder, 'val_loss.png'))
    main = task.metrics[0]
    key = f'{splits[0]}_{main.key}'
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for row, group in zip(rows, groups):
        if row[task.rate] is None:
            continue
        ax.errorbar(row[task.rate], row[key] * main.scale, yerr=(row[f'{key}_std'] or 0) * main.scale, fmt='o')
        ax.annotate(group.label, (row[task.rate], row[key] * main.scale), textcoords='offset points',
                    xytext=(4, 4), fontsize=8)
    ax.margins(x=0.15, y=0.1)  # room for the labels
    ax.set(xlabel=task.rate.replace('_per_s', ' / s'), ylabel=f'{splits[0]} {main.label}',
           title=f"{task.title} against throughput")
    save(fig, os.path.join(folder, 'quality_vs_throughput.png'))


def save(fig, path):
    fig.tight_layout()
    training.write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=120))


def check_output(path):
    """An output file can be written: it is not a folder and no file stands where a folder must be."""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder; give a file name")
    training.check_out_dir(os.path.dirname(path) or '.')


def report(argv):
    """The table of `python report.py ARGV` (also writing the files its options name), as a string."""
    folders = [arg for arg in argv if not arg.startswith('--')]
    options = training.apply_overrides(DEFAULTS, [arg for arg in argv if arg.startswith('--')])
    if options['bench_table']:
        if folders or options['readme']:
            raise ConfigError("--bench_table prints the table of a bench.py JSON: give it alone (or with "
                              "--bench_seq_len)")
        return bench_markdown(options['bench_table'], options['bench_seq_len'])
    if not folders:
        raise ConfigError("usage: python report.py FOLDER... [--bench=FILE.json] [--csv=FILE] [--markdown=FILE] "
                          "[--plots=FOLDER] [--best_over=KEY] [--where=KEY=VALUE,...], or python report.py "
                          "--readme=RESULTS.md, or python report.py --bench_table=FILE.json")
    if options['readme']:
        raise ConfigError("--readme regenerates a markdown file's tables from the commands in it: give it alone")
    for key in ('markdown', 'csv'):
        if options[key]:
            check_output(options[key])
    if options['plots']:
        training.check_out_dir(options['plots'])
    if options['best_over'] in ('attention',) + IGNORED:
        raise ConfigError(f"--best_over={options['best_over']}: the table compares over that key; name a setting "
                          "such as learning_rate")
    runs = load_runs(folders)
    if options['where']:
        runs = select_runs(runs, options['where'])
    task, splits = check_one_task(runs)
    bench = load_bench(options['bench'], options['bench_seq_len'], task.causal) if options['bench'] else None
    groups, differ = group_runs(runs, IGNORED + (options['best_over'],) if options['best_over'] else IGNORED)
    grid = None
    if options['best_over']:
        groups, differ, grid = best_over(groups, differ, options['best_over'], task, splits[0])
    rows = [summarise(group, task, splits, bench) for group in groups]
    main_key = f'{splits[0]}_{task.metrics[0].key}'
    order = sorted(range(len(rows)), key=lambda i: ((-1 if task.higher_is_better else 1) * rows[i][main_key],
                                                    groups[i].label))
    groups, rows = [groups[i] for i in order], [rows[i] for i in order]
    table = markdown(rows, differ, task, splits, options, grid)
    if options['markdown']:
        training.write_atomic(options['markdown'], lambda f: f.write(table.encode()))
    if options['csv']:
        training.write_atomic(options['csv'], lambda f: f.write(csv_text(rows).encode()))
    if options['plots']:
        plot(groups, rows, task, splits, options['plots'])
    return table


def generated_tables(text, name):
    """The generated tables of markdown text (from file `name`): (argv, table) for each block that starts with a line
    `<!-- python report.py ARGS -->` and ends with `<!-- end of generated table -->`. A start line whose block does not
    end before the next one is an error: the block would run on to the next end line and swallow the text between."""
    blocks = list(GENERATED.finditer(text))
    for start in GENERATED_START.finditer(text):
        if all(block.start() != start.start() for block in blocks):  # inside the block left open, or after it
            open_at = next((block.start() for block in blocks if block.start() < start.start() < block.end()),
                           start.start())
            line = text.count('\n', 0, open_at) + 1
            raise ConfigError(f"{name}, line {line}: this generated table has no '<!-- end of generated table -->' "
                              "line before the next table or the end; add it (nothing was written)")
    return [(shlex.split(match.group(1))[2:], match.group(2)) for match in blocks]


def update_readme(path):
    """Rerun the command above each generated table of the markdown file `path` (writing the plots and files it
    names too) and put its output in place. Returns the number of tables that changed."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    blocks = generated_tables(text, path)
    if not blocks:
        raise ConfigError(f"{path} has no generated table (a line '<!-- python report.py ... -->', the table, then "
                          f"'<!-- end of generated table -->')")
    tables = iter([report(argv) for argv, _ in blocks])  # every table built before the README changes
    updated = GENERATED.sub(lambda match: f'<!-- {match.group(1)} -->\n{next(tables)}<!-- end of generated table -->',
                            text)
    training.write_atomic(path, lambda f: f.write(updated.encode('utf-8')))
    return sum(old != new for (_, old), (_, new) in zip(blocks, generated_tables(updated, path)))


def main(argv):
    readme = training.apply_overrides(DEFAULTS, [arg for arg in argv if arg.startswith('--')])['readme']
    if readme and len(argv) == 1:
        print(f"{readme}: {update_readme(readme)} generated table(s) changed")
    else:
        print(report(argv), end='')


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
