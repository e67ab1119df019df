"""
The table of a set of runs: quality, size, speed and memory of each configuration, mean ± std over seeds.

    python report.py results/shakespeare_gpt                       # a folder of run folders, or run folders
    python report.py results/shakespeare_gpt --bench=bench_results/cpu.json --bench_seq_len=4096
    python report.py results/ablation_norm --markdown=t.md --csv=t.csv --plots=plots/ablation_norm
    python report.py results/mqar --best_over=learning_rate       # each group at its best learning rate
    python report.py results/mqar --where=block_size=128,num_kv_pairs=8 --best_over=learning_rate   # those runs only
    python report.py results/mqar --best_over=learning_rate --solved=90 --baseline=linear   # solved k/n, vs linear
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
--baseline=NAME (default softmax where the table has it; '' for none) pairs each row with a baseline row by seed: one
seed is the same initial weights of every shared parameter and the same batches for every variant. NAME is a variant
or KEY=VALUE[,...] of the table's columns (--baseline=n_head=4), and a row's baseline row has those values and the
row's own values of the other columns (the --best_over key aside: each row at its own best). Columns: the difference
of the main metric on each split, mean over the seeds both ran with its 95% Student t interval (n - 1 dof; none for one
pair), the number of pairs, and better / worse / not separated at the first split's interval; a line under the table
lists the rows of each verdict.
--solved=K (accuracy tasks, e.g. 90 for MQAR) adds the number of a row's runs whose first-split accuracy (%) reaches K.
A run is stale when today's code would not reproduce it: the fingerprint its trainer recorded in config.json (each
segment's) is missing or differs from the one recomputed from its config with today's code, attention.fingerprint of
its block (within attention.same_behaviour's tolerance) and training.code_fingerprint of its task's trainer. Its row
reads `variant (stale)`, and a line under the table names the stale runs and why, to be re-run.
--plots=FOLDER writes val_loss.png (each row's periodic validation loss: the mean over seeds, shaded from the minimum
to the maximum; colour by the variant's family, then line style and marker, so no two rows look alike; the legend in
the table's order) and quality_vs_cost.png (the main metric, mean with its 95% interval over seeds, against the
attention layer's forward+backward time from --bench, or the runs' throughput without it; softmax a star), and adds
a line under the table listing the frontier drawn there: the rows no other row beats on both axes.
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
import math
import os
import re
import shlex
import statistics
import sys
from collections import namedtuple

import attention
import training
from training import ConfigError

DEFAULTS = dict(
    bench='',                  # a bench.py JSON file: the attention layer's time at bench_seq_len, per variant
    bench_seq_len=4096,        # the sequence length of those times
    markdown='',               # also write the table (with its heading) to this file
    csv='',                    # also write one row per group, every number unrounded, to this CSV file
    plots='',                  # write the PLOTS (val_loss.png, quality_vs_cost.png) into this folder
    readme='',                 # alone: regenerate every generated table in this markdown file from its command
    best_over='',              # a config key (e.g. learning_rate): each group at its value with the best mean metric
    where='',                  # KEY=VALUE[,KEY=VALUE...]: only the runs whose config has these values
    bench_table='',            # alone (with bench_seq_len): the benchmark table of this bench.py JSON file
    baseline='auto',           # the rows each row is compared with: a variant, or KEY=VALUE[,...] of the table's
                               # columns; 'auto' = softmax where the table has it, '' = no comparison
    solved=0.0,                # accuracy tasks: a column counting the runs whose val accuracy (%) reaches this
)
GENERATED = re.compile(r'^<!-- (python report\.py [^\n]*?) -->\n(.*?)^<!-- end of generated table -->$', re.M | re.S)
GENERATED_START = re.compile(r'^<!-- python report\.py ', re.M)
# not grouped on
IGNORED = ('seed', 'out_dir', 'init_from', 'eval_only', 'n_params', 'attention_params', 'fingerprint')
Metric = namedtuple('Metric', 'key label scale decimals')  # eval.json key, column label, x scale, decimals shown
Task = namedtuple('Task', 'title metrics higher_is_better rate causal trainer')
TASKS = {  # by what eval.json holds; the first metric is the main one
    'bytes': Task('causal LM on bytes: bits per byte', [Metric('bpc', 'bpc', 1, 3)], False, 'tokens_per_s', True,
                  'train_gpt.py'),
    'words': Task('causal LM on tokens: word-level perplexity', [Metric('word_ppl', 'word ppl', 1, 2),
                  Metric('token_ppl', 'token ppl', 1, 2)], False, 'tokens_per_s', True, 'train_gpt.py'),
    'tokens': Task('causal LM on tokens: token perplexity', [Metric('token_ppl', 'token ppl', 1, 2)], False,
                   'tokens_per_s', True, 'train_gpt.py'),
    'mlm': Task('masked LM: loss in nats per masked token', [Metric('loss', 'loss', 1, 3),
                Metric('acc', 'acc %', 100, 2)], False, 'tokens_per_s', False, 'train_bert.py'),
    'images': Task('image classification: top-1 accuracy', [Metric('acc', 'top-1 %', 100, 2)], True,
                   'images_per_s', False, 'train_vit.py'),
    'lra': Task('Long Range Arena: top-1 accuracy', [Metric('accuracy', 'accuracy %', 100, 2)], True, 'tokens_per_s',
                False, 'train_lra.py'),
    'mqar': Task('multi-query associative recall: accuracy on the answer tokens',
                 [Metric('accuracy', 'acc %', 100, 2)], True, 'tokens_per_s', True, 'train_mqar.py'),
}
SPLITS = ('val', 'test')
Run = namedtuple('Run', 'path config evaluation rows segments')  # segments: the config of each stretch of the run
Group = namedtuple('Group', 'label values runs')
Baseline = namedtuple('Baseline', 'values name matched')  # {key: value}, as written, the columns a pair agrees on
Interval = namedtuple('Interval', 'mean low high n')  # a mean and its 95% interval (None, None for n = 1)
COVERAGE = 0.95
PLOTS = ('val_loss.png', 'quality_vs_cost.png')
HERE = os.path.dirname(os.path.abspath(__file__))  # the trainers' folder


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


def read_dict(path):
    """A run's JSON file, which must be a JSON object."""
    data = training.read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a trev run file (expected a JSON object)")
    return data


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(path):
    """(config, the configs of its segments, evaluation or None) of a run folder, each checked for the shape its
    trainer writes: config.json's 'config' (and each segment's) maps keys to scalars, and 'fingerprint' to what the
    trainer recorded; eval.json is {'iter': N, split: {metric: number}}."""
    config_path = os.path.join(path, 'config.json')
    record = read_dict(config_path)
    config = record.get('config')
    segments = [segment.get('config') if isinstance(segment, dict) else None
                for segment in record.get('segments') or [record]]
    for settings in [config] + segments:
        if not isinstance(settings, dict):
            raise ConfigError(f"{config_path} is not a trev run file (expected a JSON object under 'config')")
        if not all(value is None or isinstance(value, (str, int, float))
                   for key, value in settings.items() if key != 'fingerprint'):
            raise ConfigError(f"{config_path} holds a setting that is not a number, bool or string: not a trev run's "
                              "config; restore it, or move the folder out of the report")
        if 'fingerprint' in settings and not is_fingerprint(settings['fingerprint']):
            raise ConfigError(f"{config_path} holds a fingerprint that is not a trainer's ({{'block': {{'output': "
                              "[numbers], ...}, 'trainer': hash}}): restore it, or delete it to mark the run stale")
    eval_path = os.path.join(path, 'eval.json')
    if not os.path.exists(eval_path):
        return config, segments, None
    evaluation = read_dict(eval_path)
    if type(evaluation.get('iter')) is not int or not all(
            isinstance(metrics, dict) and all(map(is_number, metrics.values()))
            for key, metrics in evaluation.items() if key != 'iter'):
        raise ConfigError(f"{eval_path} is not a trev evaluation ({{'iter': N, 'val': {{metric: number, ...}}, ...}}): "
                          "evaluate the run again (--init_from=resume --eval_only=True)")
    return config, segments, evaluation


def is_fingerprint(value):
    """Whether value has the shape of a trainer's fingerprint: {'block': {name: [numbers]}, 'trainer': str}."""
    return (isinstance(value, dict) and isinstance(value.get('trainer'), str) and isinstance(value.get('block'), dict)
            and all(isinstance(numbers, list) and all(map(is_number, numbers)) for numbers in value['block'].values()))


def load_runs(folders):
    """The finished runs of the folders (a note on stderr names those left out)."""
    runs, unevaluated, unfinished = [], [], []
    paths = {os.path.realpath(path): path for folder in folders for path in run_folders(folder)}  # each run once
    for path in paths.values():
        config, segments, evaluation = read_run(path)
        log_path = os.path.join(path, 'log.jsonl')
        if evaluation is None:
            unevaluated.append(path)
            continue
        if evaluation.get('iter') != config.get('max_iters'):
            unfinished.append(f"{path} (iter {evaluation.get('iter')} of {config.get('max_iters')})")
            continue
        rows = training.read_log_rows(log_path) if os.path.exists(log_path) else []
        runs.append(Run(path, as_shown(config), evaluation, rows, segments))
    if unevaluated:
        print(f"note: left out, not evaluated (no eval.json): {', '.join(unevaluated)}", file=sys.stderr)
    if unfinished:
        print(f"note: left out, evaluated before max_iters: {', '.join(unfinished)}", file=sys.stderr)
    if not runs:
        raise ConfigError(f"no finished run in {', '.join(folders)}: train and evaluate first (see sweep.py)")
    return runs


def as_shown(config):
    """A run's config as the report groups and labels it: a hybrid stack's pattern (layer_attention) stands in the
    attention column, where the variant of every layer stands for the other runs."""
    pattern = config.get('layer_attention')
    return {**{key: value for key, value in config.items() if key != 'layer_attention'},
            **({'attention': pattern} if pattern else {})}


def parse_where(text, option='where'):
    """--where's (or --baseline's) KEY=VALUE[,KEY=VALUE...] -> {key: value}, each value a Python literal where it is
    one."""
    conditions = {}
    for item in text.split(','):
        key, eq, value = item.partition('=')
        if not eq or not key:
            raise ConfigError(f"--{option}={text}: expected KEY=VALUE[,KEY=VALUE...], e.g. --{option}=block_size=128")
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


def t_coverage(t, dof):
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom, in closed form (Abramowitz and
    Stegun 26.7.3 and 26.7.4: a finite series in cos(theta), theta = atan(t / sqrt(dof)))."""
    theta = math.atan(t / math.sqrt(dof))
    cos2, term, total = math.cos(theta) ** 2, 1.0, 0.0
    if dof % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), dof // 2 terms
        for k in range(1, dof // 2 + 1):
            total, term = total + term, term * cos2 * 2 * k / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    for k in range(1, dof // 2 + 1):  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), dof / 2 terms
        total, term = total + term, term * cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_critical(dof, coverage=COVERAGE):
    """The t with P(|T| <= t) = coverage (4.303 for 2 dof at 95%), by bisection on t_coverage: exact to double
    precision with the standard library alone."""
    low, high = 0.0, 1.0
    while t_coverage(high, dof) < coverage:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_coverage(middle, dof) < coverage else (low, middle)
    return (low + high) / 2


def mean_interval(values):
    """The mean of values with its 95% Student t interval (n - 1 degrees of freedom); no interval for one value."""
    mean, std = mean_std(values)
    if std is None:
        return Interval(mean, None, None, len(values))
    half = t_critical(len(values) - 1) * std / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def summarise(group, task, splits, bench, solved, stale):
    """A group's numbers, unrounded: column name -> value (None where there is none)."""
    runs = group.runs
    row = dict(group.values, n_params=runs[0].config.get('n_params'),
               attention_params=runs[0].config.get('attention_params'), n=len(runs))
    for split in splits:
        for metric in task.metrics:
            row[f'{split}_{metric.key}'], row[f'{split}_{metric.key}_std'] = mean_std(
                [run.evaluation[split][metric.key] for run in runs])
    if solved:
        main = task.metrics[0]
        row[f'{splits[0]}_solved'] = sum(run.evaluation[splits[0]][main.key] * main.scale >= solved for run in runs)
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
    row['runs'] = ' '.join(map(run_name, runs))
    row['stale'] = '; '.join(f'{run_name(run)} ({stale[run.path]})' for run in runs if run.path in stale)
    return row


def run_name(run):
    return os.path.basename(os.path.normpath(run.path))


def run_fingerprint(settings, task):
    """The fingerprint a trainer of task records in config.json for a run of these settings, with today's code."""
    return {'block': attention.fingerprint(settings, task.causal),
            'trainer': training.code_fingerprint(os.path.join(HERE, task.trainer))}


def stale_runs(runs, task):
    """{path: why} for each run today's code would not reproduce: in one of its segments the recorded fingerprint is
    missing ('no fingerprint') or differs from the one recomputed from the segment's config ('trainer model code
    changed', 'block behaviour changed', or the block cannot be built today)."""
    trainer = training.code_fingerprint(os.path.join(HERE, task.trainer))
    blocks = {}  # layer settings -> today's block fingerprint, computed once: the runs of a sweep share them
    stale = {}
    for run in runs:
        reason = next(filter(None, (stale_reason(settings, task, trainer, blocks) for settings in run.segments)), None)
        if reason:
            stale[run.path] = reason
    return stale


def stale_reason(settings, task, trainer, blocks):
    """Why one segment's config is stale (None if it is not): its fingerprint against today's trainer hash and
    block fingerprint (cached in blocks)."""
    recorded = settings.get('fingerprint')
    if recorded is None:
        return 'no fingerprint'
    if recorded['trainer'] != trainer:
        return 'trainer model code changed'
    layer = tuple(sorted((key, value) for key, value in settings.items()
                         if key in attention.LayerConfig.__dataclass_fields__))
    if layer not in blocks:
        try:
            blocks[layer] = attention.fingerprint(dict(layer), task.causal)
        except ValueError as error:  # a variant or setting today's code no longer has
            blocks[layer] = f'block cannot be built today: {error}'
    if isinstance(blocks[layer], str):
        return blocks[layer]
    return None if attention.same_behaviour(recorded['block'], blocks[layer]) else 'block behaviour changed'


def baseline_of(text, groups, columns):
    """--baseline as a Baseline: a bare name is a variant ({'attention': name}), 'auto' softmax where a row has it;
    None where there is no comparison ('', or 'auto' without softmax). columns: the keys a baseline may name; a row
    is paired with the baseline row that has the row's own values of the other columns (Baseline.matched)."""
    if text == 'auto':
        text = 'softmax' if any(group.values['attention'] == 'softmax' for group in groups) else ''
    if not text:
        return None
    wanted = parse_where(text, 'baseline') if '=' in text else {'attention': text}
    for key in wanted:
        if key not in columns:
            raise ConfigError(f"--baseline={text}: {key} is not a column of this table ({', '.join(columns)})")
    if not any(all(group.values[key] == value for key, value in wanted.items()) for group in groups):
        raise ConfigError(f"--baseline={text}: no row of the table has it; name a row's attention (or KEY=VALUE of "
                          "its columns), or --baseline='' for no comparison")
    return Baseline(wanted, text, [column for column in columns if column not in wanted])


def by_seed(group):
    """A group's runs by seed; a seed twice in one row cannot be paired and is refused."""
    runs = {}
    for run in group.runs:
        seed = run.config.get('seed')
        if seed in runs:
            raise ConfigError(f"{runs[seed].path} and {run.path} are runs of one row with the same seed {seed}: "
                              "move one out of the report")
        runs[seed] = run
    return runs


def paired_difference(group, baseline, split, key):
    """mean_interval of the group's metric minus the baseline's over the seeds both ran, None where they share none.
    Paired because one seed is the same initial weights of every shared parameter and the same batches in both."""
    mine, theirs = by_seed(group), by_seed(baseline)
    differences = [mine[seed].evaluation[split][key] - theirs[seed].evaluation[split][key]
                   for seed in sorted(mine.keys() & theirs.keys(), key=repr)]
    return mean_interval(differences) if differences else None


def verdict(difference, higher_is_better):
    """better / worse / not separated at the interval of a paired_difference, or why there is no interval."""
    if difference is None:
        return 'no common seed'
    if difference.low is None:
        return 'n=1, no interval'
    if difference.low <= 0 <= difference.high:
        return 'not separated'
    return 'better' if (difference.mean > 0) == higher_is_better else 'worse'


def compare(groups, rows, baseline, task, splits):
    """Adds to each row its paired difference from its baseline row on the main metric of every split (mean, 95%
    interval), the number of pairs and the verdict on the first split. A row's baseline row has the baseline's
    values and the row's own values of every other column (the best_over key aside: each row at its own best)."""
    key = task.metrics[0].key
    for group, row in zip(groups, rows):
        baseline_group = next((other for other in groups if
                               all(other.values[k] == v for k, v in baseline.values.items()) and
                               all(other.values[k] == group.values[k] for k in baseline.matched)), None)
        paired = baseline_group is not None and baseline_group is not group
        differences = {split: paired_difference(group, baseline_group, split, key) if paired else None
                       for split in splits}
        for split, difference in differences.items():
            row[f'{split}_{key}_diff'], row[f'{split}_{key}_diff_low'], row[f'{split}_{key}_diff_high'] = \
                difference[:3] if difference else (None,) * 3
        first = differences[splits[0]]
        row['pairs'] = (first.n if first else 0) if paired else None
        row['verdict'] = ('baseline' if baseline_group is group else 'no baseline row' if baseline_group is None
                          else verdict(first, task.higher_is_better))


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


def markdown(rows, differ, task, splits, options, grid=None, baseline=None):
    main = task.metrics[0]
    direction = 'higher' if task.higher_is_better else 'lower'
    lines = [f"{task.title}. Best first by {splits[0]} {main.label} ({direction} is better); mean ± sample std "
             f"over n seeds."]
    if options['where']:
        lines[0] += f" Runs with {', '.join(f'{key}={value}' for key, value in parse_where(options['where']).items())}."
    if options['best_over']:
        lines[0] += (f" Each row at the best {options['best_over']} of the grid {', '.join(map(str, grid))} by mean "
                     f"{splits[0]} {main.label} over seeds.")
    if options['solved']:
        lines[0] += f" solved: the runs whose {splits[0]} {main.label} reaches {options['solved']:g}."
    if baseline:
        same = f" at the row's {', '.join(baseline.matched)}" if baseline.matched else ''
        lines[0] += (f" Δ: the row's {main.label} minus its baseline row's ({baseline.name}{same}), the mean over the "
                     f"pairs (seeds both ran) [its {COVERAGE:.0%} Student t interval]; `vs {baseline.name}` reads the "
                     f"{splits[0]} interval.")
    if options['bench']:
        lines[0] += f" Attention layer alone at T={options['bench_seq_len']}: {options['bench']}."
    lines.append('')
    metric_columns = [f'{split} {metric.label}' for split in splits for metric in task.metrics]
    if options['solved']:
        metric_columns.insert(1, 'solved')
    header = [*(f'best {key}' if key == options['best_over'] else key for key in differ), 'params', 'attn params',
              'n', *metric_columns]
    if baseline:
        header += [*(f'Δ {split} {main.label}' for split in splits), 'pairs', f'vs {baseline.name}']
    header += [task.rate.replace('_per_s', '/s'), 'peak MB', 'wall min']
    if options['bench']:
        header.append(f"fwd+bwd ms T={options['bench_seq_len']}")
        if task.causal:
            header.append(f"decode ms/token T={options['bench_seq_len']}")
    lines += ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    best_key = options['best_over']
    for row in rows:
        cells = ['-' if row[key] is None else str(row[key]) for key in differ]
        if row['stale']:
            cells[0] += ' (stale)'
        if best_key and row[f'{best_key}_values_tried'] < len(grid):
            cells[differ.index(best_key)] += f" ({row[f'{best_key}_values_tried']} of {len(grid)})"
        cells += [cell(row['n_params'], 0), cell(row['attention_params'], 0), str(row['n'])]
        metric_cells = [cell(row[f'{split}_{m.key}'], m.decimals, m.scale, row[f'{split}_{m.key}_std'])
                        for split in splits for m in task.metrics]
        if options['solved']:
            metric_cells.insert(1, f"{row[f'{splits[0]}_solved']}/{row['n']}")
        cells += metric_cells
        if baseline:
            cells += [difference_cell(row, f'{split}_{main.key}_diff', main) for split in splits]
            cells += [cell(row['pairs'], 0), row['verdict']]
        cells += [cell(row[task.rate], 0), cell(row['peak_mem_mb'], 0),
                  cell(None if row['wall_s'] is None else row['wall_s'] / 60, 1)]
        if 'fwdbwd_ms' in row:
            cells.append(cell(row['fwdbwd_ms'], 1))
        if 'decode_ms' in row:
            cells.append(cell(row['decode_ms'], 2))
        lines.append('| ' + ' | '.join(cells) + ' |')
    if baseline:
        lines += ['', separation_line(rows, [key for key in differ if key != best_key], baseline,
                                      f'{splits[0]} {main.label}')]
    if any(row['stale'] for row in rows):
        lines += ['', f"Stale, to re-run on today's code (the fingerprint of their model's code is missing or not "
                      f"today's): {'; '.join(row['stale'] for row in rows if row['stale'])}."]
    return '\n'.join(lines) + '\n'


def difference_cell(row, key, metric):
    """A paired difference, signed, with its interval where there is one: '-0.101 [-0.150, -0.052]'."""
    def signed(value):
        return f'{round(value * metric.scale, metric.decimals) + 0.0:+.{metric.decimals}f}'  # + 0.0: no -0.000
    if row[key] is None:
        return '-'
    low, high = row[f'{key}_low'], row[f'{key}_high']
    return signed(row[key]) if low is None else f'{signed(row[key])} [{signed(low)}, {signed(high)}]'


VERDICTS = ('better', 'worse', 'not separated', 'n=1, no interval', 'no common seed', 'no baseline row')


def row_label(row, columns):
    """A row's name in the lines under a table: its values of the columns, e.g. softmax or softmax/rmsnorm/post."""
    return '/'.join(str(row[column]) for column in columns)


def separation_line(rows, columns, baseline, metric_label):
    """The sentence under a table: which rows differ from their baseline row at 95%, in which direction, and which do
    not."""
    parts = [f"{name}: {', '.join(row_label(row, columns) for row in rows if row['verdict'] == name)}"
             for name in VERDICTS if any(row['verdict'] == name for row in rows)]
    return (f"Against {baseline.name} at {COVERAGE:.0%} on {metric_label}, paired by seed: "
            f"{'; '.join(parts) if parts else 'no other row'}.")


def csv_text(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator='\n')
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)
    return text.getvalue()


# Curve colours by family, derived from the registry class (the first base class that matches): shades of one hue
# per family, then line styles, then markers, so no two rows share all three.
FAMILIES = (((attention.DeltaNet, attention.KimiDeltaAttention, attention.RWKV7Attention),
             ('#54278f', '#c51b8a', '#9e9ac8')),                  # delta rule: purples
            ((attention.Retention, attention.GatedLinearAttention, attention.Mamba2, attention.HGRN2,
              attention.LightningAttention), ('#006d2c', '#41ab5d', '#a1d99b')),        # gated / decay: greens
            (attention.RecurrentAttention, ('#08306b', '#2b8cbe', '#7fcdbb')),        # kernel / feature map: blues
            (attention.Attention, ('#b2182b', '#f16913', '#8c510a')))                 # softmax-like: reds
OTHER_COLOURS = ('#252525', '#737373', '#bdbdbd')  # a variant not in the registry
LINE_STYLES = ('-', '--', ':', '-.')
MARKERS = ('o', 's', '^', 'D', 'v', 'P')


def family_colours(variant):
    cls = attention.ATTENTION.get(variant)
    return next((colours for base, colours in FAMILIES if cls and issubclass(cls, base)), OTHER_COLOURS)


def curve_styles(groups):
    """A (color, linestyle, marker) per group, in order: the i-th group of a family gets shade i % 3, line style
    i // 3 and marker i // 12 (unique up to 72 rows a family)."""
    seen = {}
    styles = []
    for group in groups:
        colours = family_colours(group.values['attention'])
        i = seen[colours] = seen.get(colours, -1) + 1
        styles.append(dict(color=colours[i % 3], linestyle=LINE_STYLES[i // 3 % len(LINE_STYLES)],
                           marker=MARKERS[i // 12 % len(MARKERS)]))
    return styles


def curves_figure(groups, splits, name):
    """Each group's periodic validation loss against iteration: the mean over seeds, a min-to-max band, the legend in
    the table's order; the y range leaves out the first evaluation (the loss at initialisation) so the bands show."""
    from matplotlib.figure import Figure
    loss_key = f'{splits[0]}_loss'  # the periodic estimate in log.jsonl: val_loss, or test_loss for CIFAR-10
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    later = []
    for group, style in zip(groups, curve_styles(groups)):
        curves = [{r['iter']: r[loss_key] for r in run.rows if loss_key in r} for run in group.runs]
        iters = sorted(set.intersection(*(set(curve) for curve in curves)))
        values = [[curve[i] for curve in curves] for i in iters]
        ax.plot(iters, [statistics.mean(v) for v in values], label=group.label, markersize=4, **style)
        ax.fill_between(iters, [min(v) for v in values], [max(v) for v in values], color=style['color'], alpha=0.2)
        later += [x for v in values[1:] for x in v]
    if later:
        pad = (max(later) - min(later)) * 0.05 or 0.05
        ax.set_ylim(min(later) - pad, max(later) + pad)
    ax.set(xlabel='iteration', ylabel=f'{loss_key} (nats)',
           title=f'{name}: {loss_key}, mean over seeds, shaded from min to max')
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1), ncols=1 + len(groups) // 21)
    return fig


def cost_axis(task, options):
    """(row key, axis label, lower is better) of the cost axis: the attention layer's forward+backward time from
    --bench, else the runs' own throughput."""
    if options['bench']:
        return 'fwdbwd_ms', f"attention layer fwd+bwd ms at T={options['bench_seq_len']}", True
    return task.rate, f"{task.rate.replace('_per_s', '/s')} of these runs", False


def frontier(points):
    """Indices of the points (quality, cost), both oriented so that higher is better, that no other point beats on
    both axes (at least as good on each and better on one), in the given order."""
    return [i for i, point in enumerate(points)
            if not any(other != point and other[0] >= point[0] and other[1] >= point[1] for other in points)]


def cost_figure(groups, rows, columns, task, splits, options, name):
    """The main metric (mean over seeds, 95% interval as an error bar) against cost (cost_axis), one point per group
    that has a cost, labelled by row_label, softmax as a star, the frontier drawn; returns (figure, the frontier's
    rows). The y range is the means': an interval wider than that (two seeds on both sides of a plateau) runs off it."""
    from matplotlib.figure import Figure
    main = task.metrics[0]
    cost_key, cost_label, cheaper_is_lower = cost_axis(task, options)
    shown = [(group, row, style) for group, row, style in zip(groups, rows, curve_styles(groups))
             if is_number(row.get(cost_key))]
    points = [((1 if task.higher_is_better else -1) * row[f'{splits[0]}_{main.key}'],
               (-1 if cheaper_is_lower else 1) * row[cost_key]) for _, row, _ in shown]
    on_frontier = [shown[i] for i in frontier(points)]
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    for group, row, style in shown:
        interval = mean_interval([run.evaluation[splits[0]][main.key] for run in group.runs])
        y = interval.mean * main.scale
        error = None if interval.low is None else [[y - interval.low * main.scale], [interval.high * main.scale - y]]
        softmax = group.values['attention'] == 'softmax'
        ax.errorbar(row[cost_key], y, yerr=error, color=style['color'], marker='*' if softmax else style['marker'],
                    markersize=14 if softmax else 6, capsize=3)
        ax.annotate(row_label(row, columns), (row[cost_key], y), textcoords='offset points', xytext=(5, 4),
                    fontsize=8, weight='bold' if softmax else 'normal')
    if on_frontier:
        line = sorted((row[cost_key], row[f'{splits[0]}_{main.key}'] * main.scale) for _, row, _ in on_frontier)
        ax.plot(*zip(*line), color='grey', linestyle='--', linewidth=1, label='frontier: no row better on both axes')
        ax.legend(fontsize=8)
    means = [row[f'{splits[0]}_{main.key}'] * main.scale for _, row, _ in shown]
    if means:
        pad = (max(means) - min(means)) * 0.1 or 0.1 * main.scale
        ax.set_ylim(min(means) - pad, max(means) + pad)
    ax.margins(x=0.15)  # room for the labels
    ax.set(xlabel=cost_label, ylabel=f'{splits[0]} {main.label}',
           title=f"{name}: quality against cost (mean, {COVERAGE:.0%} interval over seeds; softmax a star)")
    return fig, [row for _, row, _ in on_frontier]


def plot(groups, rows, columns, task, splits, options, name):
    """The PLOTS of --plots in its folder; returns the line under the table that lists the cost plot's frontier."""
    try:
        import matplotlib  # noqa: F401 (only plots need it; a Figure needs no pyplot and no display)
    except ImportError:
        raise ConfigError("--plots needs matplotlib: pip install -r requirements.txt") from None
    folder = options['plots']
    os.makedirs(folder, exist_ok=True)
    save(curves_figure(groups, splits, name), os.path.join(folder, PLOTS[0]))
    fig, on_frontier = cost_figure(groups, rows, columns, task, splits, options, name)
    save(fig, os.path.join(folder, PLOTS[1]))
    cost_label = cost_axis(task, options)[1]
    names = ', '.join(row_label(row, columns) for row in on_frontier) or 'none'
    return (f"\nQuality against cost ({splits[0]} {task.metrics[0].label} against {cost_label}): on the frontier, "
            f"no other row both better and cheaper: {names}.\n")


def save(fig, path):
    training.write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=120, bbox_inches='tight'))


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
                          "[--plots=FOLDER] [--best_over=KEY] [--where=KEY=VALUE,...] [--baseline=NAME] [--solved=K], "
                          "or python report.py "
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
    if options['solved'] and not task.higher_is_better:
        raise ConfigError(f"--solved={options['solved']:g} counts the runs whose accuracy reaches it; this table's "
                          f"{splits[0]} {task.metrics[0].label} is not an accuracy")
    bench = load_bench(options['bench'], options['bench_seq_len'], task.causal) if options['bench'] else None
    groups, differ = group_runs(runs, IGNORED + (options['best_over'],) if options['best_over'] else IGNORED)
    grid = None
    if options['best_over']:
        groups, differ, grid = best_over(groups, differ, options['best_over'], task, splits[0])
    stale = stale_runs([run for group in groups for run in group.runs], task)
    rows = [summarise(group, task, splits, bench, options['solved'], stale) for group in groups]
    main_key = f'{splits[0]}_{task.metrics[0].key}'
    order = sorted(range(len(rows)), key=lambda i: ((-1 if task.higher_is_better else 1) * rows[i][main_key],
                                                    groups[i].label))
    groups, rows = [groups[i] for i in order], [rows[i] for i in order]
    columns = [key for key in differ if key != options['best_over']]  # what tells rows apart
    baseline = baseline_of(options['baseline'], groups, columns)
    if baseline:
        compare(groups, rows, baseline, task, splits)
    table = markdown(rows, differ, task, splits, options, grid, baseline)
    if options['plots']:
        table += plot(groups, rows, columns, task, splits, options, table_name(folders, options))
    if options['markdown']:
        training.write_atomic(options['markdown'], lambda f: f.write(table.encode()))
    if options['csv']:
        training.write_atomic(options['csv'], lambda f: f.write(csv_text(rows).encode()))
    return table


def table_name(folders, options):
    """The name a table's figures carry: its run folders, and its --where."""
    name = ', '.join(os.path.basename(os.path.normpath(folder)) for folder in folders)
    return f"{name} ({options['where']})" if options['where'] else name


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
