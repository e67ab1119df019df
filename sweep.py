"""
Runs a sweep: one trainer over a grid of configurations and seeds, each run in its own folder, each followed by
its full-split evaluation. A sweep is a plain-Python file in sweeps/ that assigns only the keys of DEFAULTS below
(an unknown key or a value of the wrong type is an error, as in a trainer's config file):

    python sweep.py sweeps/shakespeare_gpt.py                   # every run, one after another
    python sweep.py sweeps/shakespeare_gpt.py --dry_run=True    # one command per run, for a scheduler
    python sweep.py sweeps/shakespeare_gpt.py --only=attention=linear,seed=2    # one run
    python sweep.py sweeps/shakespeare_gpt.py --seeds=[1]       # any key of the file, changed for this call
    python report.py results/shakespeare_gpt                    # the table

    # sweeps/example.py (paths are relative to where sweep.py runs, the repository root, as the trainers' are)
    trainer = 'train_gpt.py'
    configs = ['configs/cpu_small.py']                  # every run gets these config files first, in order,
    overrides = {'max_iters': 1000}                     # then these keys,
    axes = {'attention': '*causal', 'n_head': [1, 4]}   # then one value of each axis: every combination,
    seeds = [1, 2, 3]                                   # once per seed

The combinations are `runs` (explicit dicts key -> value; default: one empty one) crossed with `axes`. The axis
'attention' may be '*' (every variant in attention.ATTENTION), '*causal' or '*bidirectional' (those supporting
that mode), so a variant registered later joins the sweep with no edit. Seeds are the outer loop, so a sweep
stopped part-way has the first seeds of every combination. A run is named after its settings, e.g.
attention=linear,seed=2, and is the trainer command
    python <trainer> <configs> --<key>=<value> ... --seed=<seed> --out_dir=<out_dir>/<name>
then the same with --init_from=resume --eval_only=True, which writes eval.json. Before any run starts, every run's
config is checked against the trainer's own keys, types and ranges (its DEFAULTS, read in a subprocess: a script
never imports another), the attention layer it would build in the trainer's mode (CAUSAL), and the trainer's own
check_settings where it has one, so a typo or an impossible setting stops the sweep at once rather than a day in.

What a run still needs is read from its folder when its turn comes, so a sweep stopped at any point completes
when run again and redoes no work:
    skip      eval.json is there for iteration max_iters: the run is finished (with or without its ckpt.pt, so
              results kept without their checkpoints count as finished)
    evaluate  ckpt.pt is at max_iters but not evaluated: the evaluation only
    resume    ckpt.pt is before max_iters (Ctrl-C, a timeout, a crash): --init_from=resume, then the evaluation
    train     no ckpt.pt: from scratch, then the evaluation. A folder with a log but no checkpoint (stopped
              before its first one) starts afresh, its log rewritten; one holding eval.json of another
              iteration but no checkpoint is refused, so finished results are never overwritten.
A run's folder is held by one process at a time (training.FolderLock): a second sweep on the same file, or the
same --dry_run line started twice, leaves each run that another process is doing to it, and never writes a run twice.
Ctrl-C (or SIGTERM) reaches the running trainer (a terminal signals the whole process group, and the sweep passes
it on too; a trainer ignores the repeat): it saves a checkpoint and exits, and the sweep exits 130 saying how to
continue. A trainer that fails (non-zero exit) or runs past timeout_hours (it is then stopped the same way) stops
the sweep with one line naming the run and its command; finished runs stay as they are.

--dry_run=True prints, instead of running, one line per run: `python sweep.py <sweep file> [options] --only=<run>`.
Each line does whatever its run still needs, decided when the line starts, so the lines run on their own, in any
order or at once (a run writes its own folder only), and a line run again (a preempted or retried job) goes on
where it stopped. Printing the trainer commands instead would fix each run's state at printing time: a `scratch`
line re-run after a preemption would be refused. Run line i of a job array with `sed -n "${i}p" jobs.txt | sh`,
or four at a time on one machine with `xargs -P 4 -I{} sh -c {} < jobs.txt`.
"""
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import namedtuple
from types import SimpleNamespace

import training
from attention import ATTENTION, LayerConfig, build_attention, layer_configs
from training import ConfigError

DEFAULTS = dict(
    # the sweep file's keys; every one can also be given after the file as --key=value
    trainer='',                # the trainer script of every run, e.g. 'train_gpt.py'
    configs=[],                # config files every run gets first, in order
    overrides={},              # key -> value every run gets after the config files
    axes={},                   # key -> list of values, crossed; for 'attention' also '*', '*causal', '*bidirectional'
    runs=[],                   # explicit combinations (dicts key -> value), crossed with axes; [] = one empty one
    seeds=[1337],              # every combination runs once per seed (the trainers' --seed)
    out_dir='',                # '' = results/<sweep file name>; a run's folder is out_dir/<run name>
    timeout_hours=168.0,       # a trainer command running longer is stopped (it saves) and the sweep stops
    # command line only
    dry_run=False,             # print one command per run (see above) instead of running
    only='',                   # do only the run of this name (as --dry_run=True prints it)
)
RESULTS = 'results'        # the default out_dir is RESULTS/<sweep file name>
SHORTHANDS = {             # 'attention' axis values standing for the registered variants that pass the test
    '*': lambda cls: True,
    '*causal': lambda cls: cls.supports_causal,
    '*bidirectional': lambda cls: cls.supports_bidirectional}
SET_BY_SWEEP = ('seed', 'out_dir', 'init_from', 'eval_only', 'mode')  # keys a sweep file may not set
READ_TIMEOUT_S = 300       # reading a trainer's DEFAULTS (a torch import)
STOP_WAIT_S = 600          # a stopped trainer's time to save and exit before it is killed
Run = namedtuple('Run', 'name out_dir args max_iters')
LAYER_KEYS = set(LayerConfig.__dataclass_fields__) - {'causal', 'patch_grid_width'}  # the trainer decides these


def trainer_defaults(trainer):
    """(DEFAULTS, CAUSAL, PATCH_GRID) of a trainer: its config keys and defaults, its attention's mode, and whether its
    layers see an image's patch grid; read in a subprocess: sweep.py imports no trainer."""
    code = ('import json, runpy, sys; script = runpy.run_path(sys.argv[1]); '
            'print(json.dumps([script["DEFAULTS"], script["CAUSAL"], script.get("PATCH_GRID", False)]))')
    try:
        result = subprocess.run([sys.executable, '-c', code, trainer], capture_output=True, text=True,
                                timeout=READ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"reading the config keys of {trainer} took over {READ_TIMEOUT_S} s") from None
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ['no output'])[-1]
        raise ConfigError(f"cannot read the config keys (DEFAULTS) of {trainer}: {last}; is it a trev trainer?")
    return json.loads(result.stdout.splitlines()[-1])


CHECK_SETTINGS = """import json, runpy, sys
from types import SimpleNamespace
check = runpy.run_path(sys.argv[1]).get('check_settings')
for name, config in json.load(sys.stdin) if check else []:
    try:
        check(SimpleNamespace(**config))
    except Exception as error:
        print(json.dumps([name, str(error)]))
        break
"""


def trainer_refusal(trainer, named_configs):
    """(run name, the trainer's message) for the first planned config its own check_settings(cfg) refuses, or None:
    the settings a trainer checks beyond keys, types and shared ranges (e.g. MQAR's pairs against its vocabulary),
    read in a subprocess, as trainer_defaults is."""
    try:
        result = subprocess.run([sys.executable, '-c', CHECK_SETTINGS, trainer], input=json.dumps(named_configs),
                                capture_output=True, text=True, timeout=READ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"checking the planned runs with {trainer} took over {READ_TIMEOUT_S} s") from None
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ['no output'])[-1]
        raise ConfigError(f"cannot check the planned runs with {trainer}: {last}")
    return json.loads(result.stdout) if result.stdout.strip() else None


def check_setting(key, value, where, path):
    """A trainer setting of a sweep: a scalar (what --key=value carries) of a key the sweep does not set itself."""
    if key in SET_BY_SWEEP:
        raise ConfigError(f"{path}: {where} sets {key!r}, which the sweep sets itself (seeds, out_dir, and each "
                          "run's state); remove it")
    if not isinstance(value, (int, float, bool, str)):
        raise ConfigError(f"{path}: {where}[{key!r}] holds {value!r}; expected a number, bool or string")


def check_settings(settings, where, path):
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: {where} is {settings!r}; expected a dict key -> value, e.g. {{'n_head': 4}}")
    for key, value in settings.items():
        check_setting(key, value, where, path)


def axis_values(key, values, path, causal, patch_grid):
    """An axis's list of values, a shorthand of the 'attention' axis expanded from the registry to the variants that
    pass its test and that the trainer can run (its mode; an image's patch grid for those that need one)."""
    if key == 'attention' and isinstance(values, str) and values in SHORTHANDS:
        return [name for name, cls in ATTENTION.items() if SHORTHANDS[values](cls) and
                (cls.supports_causal if causal else cls.supports_bidirectional) and
                (patch_grid or not cls.needs_patch_grid)]
    if not isinstance(values, list) or not values:
        also = f", or one of {', '.join(SHORTHANDS)}" if key == 'attention' else ''
        raise ConfigError(f"{path}: axes[{key!r}] = {values!r}; expected a non-empty list of values{also}")
    for value in values:
        check_setting(key, value, 'axes', path)
    return values


def check_sweep(sweep, path):
    """ConfigError for the first thing wrong with a sweep's own keys, naming the file."""
    if not sweep.trainer:
        raise ConfigError(f"{path} names no trainer; add e.g. trainer = 'train_gpt.py'")
    if not os.path.isfile(sweep.trainer):
        raise ConfigError(f"{path}: trainer {sweep.trainer!r} not found; e.g. 'train_gpt.py', 'train_bert.py', "
                          "'train_vit.py' (paths are relative to where sweep.py runs)")
    if not all(isinstance(name, str) for name in sweep.configs):
        raise ConfigError(f"{path}: configs = {sweep.configs!r}; expected a list of config file paths")
    if not sweep.seeds or not all(type(seed) is int for seed in sweep.seeds) or len(set(sweep.seeds)) < len(
            sweep.seeds):
        raise ConfigError(f"{path}: seeds = {sweep.seeds!r}; expected a non-empty list of distinct integers")
    check_settings(sweep.overrides, 'overrides', path)
    for number, combination in enumerate(sweep.runs):
        check_settings(combination, f'runs[{number}]', path)
        if set(combination) & set(sweep.axes):
            raise ConfigError(f"{path}: runs[{number}] and axes both set {sorted(set(combination) & set(sweep.axes))}")
    if not sweep.timeout_hours > 0:
        raise ConfigError(f"{path}: timeout_hours = {sweep.timeout_hours!r}; must be positive")


def sweep_dir(sweep, path):
    return sweep.out_dir or os.path.join(RESULTS, os.path.splitext(os.path.basename(path))[0])


def plan_runs(sweep, path):
    """Every run of the sweep, in order (seeds outermost), each checked as its trainer would: keys, types and ranges,
    the layer it builds in the trainer's mode, and the trainer's own check_settings."""
    defaults, causal, patch_grid = trainer_defaults(sweep.trainer)
    axes = {key: axis_values(key, values, path, causal, patch_grid) for key, values in sweep.axes.items()}
    combinations = [{**combination, **dict(zip(axes, values))}
                    for combination in sweep.runs or [{}] for values in itertools.product(*axes.values())]
    out_dir = sweep_dir(sweep, path)
    runs, configs = [], []
    for seed in sweep.seeds:
        for combination in combinations:
            settings = {**combination, 'seed': seed}
            name = re.sub(r'[^\w.,=+-]', '_', ','.join(f'{key}={value}' for key, value in settings.items()))
            args = [*sweep.configs, *(f'--{key}={value}' for key, value in {**sweep.overrides, **settings}.items()),
                    f'--out_dir={os.path.join(out_dir, name)}']
            try:
                config = training.apply_overrides(defaults, args)
            except ConfigError as error:
                raise ConfigError(f"{path}: run {name}: {error}") from None
            try:  # the layers the trainer would build (each variant of a hybrid stack once): their mode and knobs,
                # refused now rather than hours in; an image trainer derives the patch grid itself (and checks it when it
                # starts): one row stands in for it here
                layer = LayerConfig(**{key: value for key, value in config.items() if key in LAYER_KEYS},
                                    causal=causal, patch_grid_width=int(patch_grid))
                for each in {each.attention: each for each in layer_configs(layer, config['n_layer'])}.values():
                    build_attention(each)
            except ValueError as error:
                raise ConfigError(f"{path}: run {name}: {error}") from None
            runs.append(Run(name, config['out_dir'], args, config['max_iters']))
            configs.append([name, config])
    refusal = trainer_refusal(sweep.trainer, configs)
    if refusal:
        raise ConfigError(f"{path}: run {refusal[0]}: {refusal[1]}")
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"{path}: two runs share the folder {twice[0]}; make the combinations distinct")
    return runs


def run_state(run):
    """(what the run still needs: 'skip', 'evaluate', 'resume' or 'train'; why), from its folder."""
    ckpt_path, eval_path = (os.path.join(run.out_dir, name) for name in ('ckpt.pt', 'eval.json'))
    evaluated = training.read_json(eval_path) if os.path.exists(eval_path) else {}
    evaluated_at = evaluated.get('iter') if isinstance(evaluated, dict) else None
    if evaluated_at == run.max_iters:
        return 'skip', f"finished: eval.json at iter {run.max_iters}"
    if not os.path.exists(ckpt_path):
        if evaluated_at is not None:
            raise ConfigError(f"{run.out_dir} holds eval.json of iter {evaluated_at} but no ckpt.pt to continue to "
                              f"max_iters={run.max_iters}: set max_iters back, or move the folder away to start afresh")
        if os.path.exists(os.path.join(run.out_dir, 'log.jsonl')):
            return 'train', "restart: a log but no ckpt.pt, stopped before its first checkpoint"
        return 'train', "new"
    trained = training.load_checkpoint(ckpt_path)['iter_num']
    if trained > run.max_iters:
        raise ConfigError(f"{ckpt_path} is at iter {trained}, past max_iters={run.max_iters}: set max_iters back, or "
                          "move the folder away to start afresh")
    if trained < run.max_iters:
        return 'resume', f"ckpt.pt at iter {trained} of {run.max_iters}"
    return 'evaluate', f"trained to iter {run.max_iters}, not evaluated"


def shown(command):
    """A command as a shell line, with `python` for this interpreter."""
    return shlex.join(['python', *command[1:]])


def stop(process, interrupted):
    """Asks a running trainer to save and exit, as Ctrl-C does, and waits (killing it after STOP_WAIT_S). The
    signal is sent again every few seconds: a trainer ignores SIGINT until its loop takes it over (run_command starts
    it so), and ignores repeats, so one that Ctrl-C reached already is unharmed. An evaluation has nothing to save
    and is ended at once. Windows cannot send Ctrl-C to one process: there a console Ctrl-C reached the trainer
    already, and a timed-out trainer is ended unsaved."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        if '--eval_only=True' in process.args:  # nothing to save: ended at once
            process.terminate()
        elif os.name != 'nt':
            process.send_signal(signal.SIGINT)
        elif not interrupted:
            process.terminate()
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait(timeout=STOP_WAIT_S)


def ignore_ctrl_c():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_command(command, run, timeout_hours):
    """Runs one trainer command to its end (its output goes to ours): True, or False if the trainer found the run
    folder held by another process; ConfigError if it fails or runs too long. On Ctrl-C (KeyboardInterrupt) the
    trainer is stopped and the interrupt goes on."""
    print(f"+ {shown(command)}", flush=True)
    # not subprocess.run: on Ctrl-C it kills the child before it can save. The trainer starts with Ctrl-C ignored, so
    # one that lands while it imports prints no traceback; its loop takes Ctrl-C over, and stop() repeats the signal
    process = subprocess.Popen(command, preexec_fn=ignore_ctrl_c if os.name != 'nt' else None)
    try:
        code = process.wait(timeout=timeout_hours * 3600)
    except subprocess.TimeoutExpired:
        stop(process, interrupted=False)
        raise ConfigError(f"run {run.name} ran past timeout_hours={timeout_hours} and was stopped: {shown(command)}; "
                          "raise timeout_hours and run the sweep again to continue") from None
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the trainer's saving short
        stop(process, interrupted=True)
        raise
    if code == training.EXIT_BUSY:
        return False
    if code:
        raise ConfigError(f"run {run.name} failed (exit {code}): {shown(command)}; fix it and run the sweep again "
                          "(finished runs are kept)")
    return True


def execute(runs, sweep, numbers):
    """Does what each run still needs, one after another, holding its folder meanwhile; a run whose folder another
    process holds (a second sweep on the same file, a trainer started by hand) is left to it. Returns how many runs
    were in each state."""
    counts = dict.fromkeys(('skip', 'evaluate', 'resume', 'train', 'busy'), 0)
    for number, run in zip(numbers, runs):
        try:  # the run's folder for this process alone, from reading its state to its evaluation
            with training.FolderLock(run.out_dir, '', name='.sweep.lock'):
                state, why = run_state(run)
                print(f"[{number}] {run.name}: {state} ({why})", flush=True)
                command = [sys.executable, sweep.trainer, *run.args]
                commands = []
                if state in ('train', 'resume'):
                    commands.append(command + ['--init_from=resume'] * (state == 'resume'))
                if state != 'skip':
                    commands.append(command + ['--init_from=resume', '--eval_only=True'])
                for trainer_command in commands:
                    if not run_command(trainer_command, run, sweep.timeout_hours):
                        state = 'busy'
                        print(f"[{number}] {run.name}: left to the process that holds its folder", flush=True)
                        break
        except training.FolderBusy:
            state = 'busy'
            print(f"[{number}] {run.name}: busy (another sweep process is doing it)", flush=True)
        counts[state] += 1
    return counts


def main(argv):
    files = [arg for arg in argv if not arg.startswith('--')]
    if len(files) != 1:
        raise ConfigError("usage: python sweep.py sweeps/NAME.py [--key=value ...], one sweep file")
    path = files[0]
    sweep = SimpleNamespace(**training.apply_overrides(DEFAULTS, argv))
    check_sweep(sweep, path)
    runs = plan_runs(sweep, path)
    numbers = [f'{number}/{len(runs)}' for number in range(1, len(runs) + 1)]
    if sweep.only:
        chosen = [i for i, run in enumerate(runs) if run.name == sweep.only]
        if not chosen:
            raise ConfigError(f"{path} has no run named {sweep.only!r}; --dry_run=True lists them")
        runs, numbers = [runs[chosen[0]]], [numbers[chosen[0]]]
    options = [arg for arg in argv if not arg.startswith(('--dry_run=', '--only='))]
    if sweep.dry_run:
        for run in runs:
            print(shlex.join(['python', 'sweep.py', *options, f'--only={run.name}']))
        return
    print(f"sweep {path}: {len(runs)} run(s) of {sweep.trainer} in {sweep_dir(sweep, path)}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's SIGTERM stops the sweep as Ctrl-C does
    started = time.time()
    counts = execute(runs, sweep, numbers)
    print(f"done in {(time.time() - started) / 60:.1f} min: {counts['skip']} skipped (finished), "
          f"{counts['evaluate']} evaluated, {counts['resume']} resumed, {counts['train']} trained, "
          f"{counts['busy']} left to other processes; "
          f"report with: python report.py {sweep_dir(sweep, path)}")


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept, a stopped trainer saved its checkpoint; continue with: "
              f"{shlex.join(['python', 'sweep.py', *sys.argv[1:]])}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `--dry_run=True | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes stdout
        sys.exit(141)
