"""
Small stateless plumbing the trainers call (train_gpt.py, train_bert.py, train_vit.py, train_lra.py,
train_mqar.py). No loop lives here: each trainer writes its own model build, optimizer and training loop, top to
bottom, and calls these. A trainer's settings are one object, cfg = SimpleNamespace(**config): the loop reads it,
and config.json and the checkpoint record vars(cfg), what actually ran (device and dtype resolved, sizes added).

    config = apply_overrides(defaults, argv)   # configs/*.py, then --key=value; types and ranges checked
    with distributed(device) as dist: ...      # Dist(rank, local_rank, world_size, master, device); python = 1 process
    dtype = resolve_dtype(device, dtype)       # 'auto' -> bfloat16 / float16 on cuda, float32 on cpu
    ctx, scaler = mixed_precision(device, dtype)  # autocast context (GPU only) and GradScaler (enabled for float16)
    check_run(cfg, dist)                       # batch split, init_from, out_dir
    optimizer = build_optimizer(name, model, learning_rate, weight_decay, betas, device)  # 'adamw', 'sgd', 'adafactor'
    iter_num, elapsed_s, last_saved = start_or_resume(cfg, ckpt_path, model, optimizer, scaler, model_args,
                                                      generators, dist)  # fresh: overwrite no run; resume: restore all
    log = start_run_folder(cfg, start_iter)    # config.json (vars(cfg) as this segment), log.jsonl cut at start_iter
    write_eval(out_dir, results); write_atomic(path, write); read_json(path)  # run files, atomic and fsync'd
    save_checkpoint(path, make_checkpoint(model, optimizer, scaler, model_args, cfg, iter_num, rng, elapsed_s))
    checkpoint = load_checkpoint(path)         # save: atomic, fsync'd; load: on cpu, checked to be trev's
    unwrap(model), all_finite(model)           # the raw model under DDP / torch.compile; no nan/inf in parameters
    get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters)  # linear warmup, cosine decay to min_lr
    with StopSignal() as stop: ... stop.requested(device, agree_now)  # Ctrl-C / SIGTERM: finish the step, save, exit
    states = rng_states(generators); restore_rng_states(states, generators, dist)  # every RNG of a run, per rank
    all_reduce_sum(values, device); peak_memory_mb(device); format_row(row)
    exit_nonfinite(iter_num, what, last_saved, ckpt_path)   # stop on nan/inf, naming the last good checkpoint
    exit_with(config_error)                    # a script's `error: <one line>`, once under torchrun
    code_fingerprint(trainer_path)             # a hash of a trainer's model code (config.json's fingerprint, with
                                               # attention.fingerprint's numbers for its block)
    with FolderLock(folder, fix): ...          # one live process per run or data folder, else FolderBusy
    meta = load_meta(data_dir); data = open_split(data_dir, split, dtype); load_encoding(name)  # prepared data

A trainer's main() raises ConfigError for any input the user can fix; its `__main__` block turns that into
`error: <one line>` on stderr and a non-zero exit, with no traceback (exit_with).
"""
import ast
import copy
import dataclasses
import gc
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import types
from collections import namedtuple
from contextlib import contextmanager, nullcontext, suppress

import numpy as np
import torch
import torch.distributed as torch_dist


class ConfigError(Exception):
    """Bad input the user can fix (config key, type, missing data, wrong checkpoint): one line, exit non-zero."""


class FolderBusy(ConfigError):
    """A folder another live process holds (FolderLock): the script exits EXIT_BUSY, so a sweep can tell it apart."""


EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: try again later


def exit_with(error):
    """A script's end on a ConfigError: `error: <message>` on stderr, exit 1 (EXIT_BUSY for a FolderBusy). A ConfigError raised in a DataLoader
    worker comes back with the worker's traceback in its message; its last line holds ours. Under torchrun every
    rank meets the same bad input: rank 0 says it at once and the others a second later, by when torchrun has
    usually stopped them, so the user reads it once (and a rank with an error of its own still says it)."""
    message = str(error).splitlines()[-1].rpartition('ConfigError: ')[2] if '\n' in str(error) else str(error)
    if int(os.environ.get('RANK', 0)):
        time.sleep(1)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BUSY if isinstance(error, FolderBusy) else 1)


# ----------------------------------------------------------------------------------------------
# config: commented globals in the trainer, overridden by configs/*.py files and --key=value


def check_value(config, key, value, source):
    """Same type as the default; an int may stand for a float. Returns the value to store."""
    if key not in config:
        raise ConfigError(f"{source}: unknown key '{key}'; valid keys: {', '.join(config)}")
    default = config[key]
    if type(value) is int and type(default) is float:
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{source}: {key}={value!r} has type {type(value).__name__}, "
                          f"expected {type(default).__name__} like the default {default!r}")
    return value


def apply_overrides(config, argv):
    """Returns a copy of `config` with argv applied in order: `path.py` files are exec'd as plain Python
    (they may only assign existing keys) and `--key=value` is parsed with literal_eval (str keys take the
    text as it is, so --start=123 stays a string)."""
    config = dict(config)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg} not found")
            namespace = dict(config)
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, 'exec'), namespace)
            except Exception as error:  # a config file is the user's Python: any error is theirs to fix
                raise ConfigError(f"config file {arg}{error_line(error, arg)}: {type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}; fix the file") from None
            for key, value in namespace.items():
                if key.startswith('_') or isinstance(value, types.ModuleType):
                    continue
                config[key] = check_value(config, key, value, arg)
            continue
        key, eq, text = arg[2:].partition('=')
        if not eq:
            raise ConfigError(f"{arg}: expected --key=value")
        if isinstance(config.get(key), str):
            value = text
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        config[key] = check_value(config, key, value, arg)
    check_ranges(config)
    return config


def error_line(error, path):
    """' line N' of the innermost frame in `path` (or of a SyntaxError), '' if none."""
    line = getattr(error, 'lineno', None) if isinstance(error, SyntaxError) else None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return f" line {line}" if line else ''


# the ranges of the keys the scripts share, checked by name in whatever config holds them
AT_LEAST_ONE = ('n_layer', 'n_head', 'n_embd', 'block_size', 'batch_size', 'gradient_accumulation_steps', 'max_iters',
                'eval_interval', 'eval_iters', 'log_interval', 'chunk_size', 'local_window', 'performer_features',
                'mlp_ratio', 'patch_size', 'image_size', 'head_dim', 'vocab_size', 'repeats')
AT_LEAST_ZERO = ('warmup_iters', 'lr_decay_iters', 'learning_rate', 'min_lr', 'weight_decay',
                 'grad_clip', 'num_workers', 'max_new_tokens', 'top_k', 'warmup', 'min_time', 'threads',
                 'peak_tflops', 'fit_from', 'performer_redraw_interval')
MIN_TEMPERATURE = 1e-3
FRACTIONS = ('dropout', 'beta1', 'beta2', 'label_smoothing')  # in [0, 1)


def check_ranges(config):
    """ConfigError for the first value outside its range, naming the key and what it must be."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: must be a finite number; set --{key} to one")
        if key in AT_LEAST_ONE and value < 1:
            raise ConfigError(f"{key}={value!r}: must be at least 1; set --{key} to a positive value")
        if key in AT_LEAST_ZERO and (value < 0 or value != value):
            raise ConfigError(f"{key}={value!r}: must not be negative; set --{key} to 0 or more")
        if key in FRACTIONS and not 0 <= value < 1:
            raise ConfigError(f"{key}={value!r}: must be in [0, 1); set --{key} to a value in that range")
    if not 0 < config.get('mask_prob', 0.5) < 1:
        raise ConfigError(f"mask_prob={config['mask_prob']!r}: must be between 0 and 1 (exclusive); RoBERTa's is 0.15")
    if not config.get('temperature', 1.0) >= MIN_TEMPERATURE:  # logits / temperature must stay finite
        raise ConfigError(f"temperature={config['temperature']!r}: must be at least {MIN_TEMPERATURE} (small = "
                          "near-greedy; top_k=1 is greedy)")


# ----------------------------------------------------------------------------------------------
# processes and devices

Dist = namedtuple('Dist', 'rank local_rank world_size master device')


def resolve_device(device):
    """'auto' -> 'cuda' if available, else 'cpu'; any other name must be a device this machine has."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    kind, colon, index = device.partition(':')
    if kind == 'cpu' and not colon:
        return device
    if kind == 'cuda' and (not colon or index.isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but torch sees no CUDA GPU here; use --device=cpu or --device=auto")
        if colon and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} GPU(s): "
                              f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return device
    if device == 'mps':
        if not torch.backends.mps.is_available():
            raise ConfigError("device='mps' but torch sees no Apple GPU here; use --device=cpu or --device=auto")
        return device
    raise ConfigError(f"device={device!r}: choose 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def setup_distributed(device):
    """nanoGPT's pattern: torchrun sets RANK / LOCAL_RANK / WORLD_SIZE, plain python is one process.
    device 'auto' -> 'cuda' if available else 'cpu'; under DDP on cuda each process takes cuda:LOCAL_RANK."""
    device = resolve_device(device)
    if 'RANK' not in os.environ:
        return Dist(0, 0, 1, True, device)
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    return Dist(rank, local_rank, world_size, rank == 0, device)


def teardown_distributed():
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextmanager
def distributed(device):
    """with distributed(cfg.device) as dist: ... -- setup_distributed, and teardown however the block ends."""
    dist = setup_distributed(device)
    try:
        yield dist
        if torch_dist.is_initialized():
            gc.collect()  # DDP's reducer sits in reference cycles: free it while its process group still exists
            torch_dist.barrier()  # all ranks done before any tears down: gloo aborts on a peer gone mid-exchange
    finally:
        teardown_distributed()


def resolve_dtype(device, dtype):
    """'auto' -> bfloat16 where the GPU supports it, else float16 on cuda; float32 on cpu (no autocast there)."""
    if dtype == 'auto':
        if not device.startswith('cuda'):
            return 'float32'
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype={dtype!r}; choose 'auto', 'float32', 'bfloat16' or 'float16'")
    if dtype != 'float32' and not device.startswith('cuda'):
        raise ConfigError(f"dtype={dtype!r} needs a GPU (autocast is GPU-only here); use float32 on {device}")
    return dtype


def mixed_precision(device, dtype):
    """(autocast context, GradScaler). fp16 needs loss scaling; bf16 and fp32 do not (the scaler is a no-op)."""
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=getattr(torch, dtype))
    return ctx, torch.amp.GradScaler(device_type, enabled=dtype == 'float16')


def peak_memory_mb(device):
    """cuda: torch.cuda.max_memory_allocated (tensors on this GPU). cpu: the process's peak resident set size
    (ru_maxrss: everything the process ever held, Python and torch included), so CPU numbers are upper bounds."""
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only: on Windows CPU runs log no peak memory
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == 'darwin' else peak / 2**10  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------------------------
# the run folder: config.json, log.jsonl, ckpt.pt


def git_commit():
    """(commit, dirty) of the code that ran, or (None, None) outside a git checkout. Dirty: a tracked file outside
    results/ and bench_results/ differs from the commit; new files (data, run folders) and the sweeps' and
    benchmarks' own results do not count."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = lambda *args: subprocess.run(['git', *args], cwd=here, capture_output=True, text=True, check=True,
                                           timeout=60).stdout.strip()
        commit = git('rev-parse', 'HEAD')
        status = git('status', '--porcelain', '--untracked-files=no', '--', '.', ':(exclude)results',
                     ':(exclude)bench_results')
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status)


def write_atomic(path, write):
    """write(file) into a temp file next to path, flushed to disk, then renamed over path: a crash at any moment
    leaves either the old file or the new one, never a part."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj):
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + '\n').encode()))


def write_config(out_dir, config, start_iter=0):
    """config.json: the resolved config, torch version, git commit (and whether the tree was dirty), command line,
    and under 'segments' the same for every stretch of the run: a resume at start_iter > 0 keeps the segments that
    began before it and adds its own, so a setting changed on resume is on record beside the one it replaced."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'config.json')
    commit, dirty = git_commit()
    segment = {'start_iter': start_iter, 'config': config, 'torch': torch.__version__, 'git_commit': commit,
               'git_dirty': dirty, 'command': [sys.executable] + sys.argv}
    earlier = []
    if start_iter > 0 and os.path.exists(path):
        earlier = [s for s in read_json(path).get('segments', []) if s['start_iter'] < start_iter]
    write_json(path, {**{k: v for k, v in segment.items() if k != 'start_iter'}, 'segments': earlier + [segment]})


def start_run_folder(cfg, start_iter):
    """What a run writes to cfg.out_dir once it is really running (has evaluated and stepped): config.json with the
    settings (vars(cfg)) as this segment, and log.jsonl cut to the rows before start_iter. Returns the Log to append
    to."""
    write_config(cfg.out_dir, vars(cfg), start_iter)
    return Log(cfg.out_dir, keep_before=start_iter)


class FolderLock:
    """`with FolderLock(folder, fix):` holds folder for this process alone (a run folder, a prepared data folder);
    a second process gets FolderBusy, whose message ends with `fix` (what to do instead). The claim is an OS lock
    on folder/<name> (flock on POSIX, msvcrt on Windows; a sweep holds a run by another name than its trainer), which the OS drops however the process ends, so a crash
    never leaves a folder stuck; the file holds the owner's pid, for the message. A folder the claim created is
    removed again on release if nothing else was written to it: a command that fails changes nothing."""

    def __init__(self, folder, fix, name='.lock'):
        self.folder, self.fix = folder, fix
        self.path = os.path.join(folder, name)

    def __enter__(self):
        self.created = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        while True:
            self.file = open(self.path, 'a+')
            if not lock_file(self.file):
                self.file.seek(0)
                owner = self.file.read().strip() if os.name != 'nt' else ''  # Windows hides a locked byte
                self.file.close()
                raise FolderBusy(f"{self.folder} is in use by another process{f' (pid {owner})' if owner else ''}: "
                                 f"{self.fix}")
            try:  # its last owner may have removed the file between our open and our lock: then take the new one
                if os.path.samestat(os.fstat(self.file.fileno()), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            self.file.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f'{os.getpid()}\n')
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if os.name != 'nt':  # removed while still held, so no other process can take a file on its way out
            os.remove(self.path)
        self.file.close()
        if os.name == 'nt':
            with suppress(OSError):  # another process may hold it by now
                os.remove(self.path)
        if self.created and not os.listdir(self.folder):
            with suppress(OSError):
                os.rmdir(self.folder)


def lock_file(file):
    """True if this process now holds the OS's exclusive lock on an open file; False if another process does."""
    try:
        if os.name == 'nt':
            import msvcrt
            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def read_json(path):
    """A JSON file of a run or data folder; ConfigError naming it when it is unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not readable JSON ({error}); restore it or prepare / train again") from None


class Log:
    """log.jsonl in the run folder, keeping only the existing rows with iter < keep_before: 0 for a fresh run,
    k when resuming at iteration k (rows the stopped run wrote after its checkpoint go, so the file reads as one
    uninterrupted run), None to append to everything (e.g. an evaluation of a finished run). The cut is an
    atomic rewrite; rows are then appended, each flushed."""

    def __init__(self, out_dir, keep_before=None):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, 'log.jsonl')
        if keep_before is not None or ends_cut(self.path):  # a row appended to a cut line would be lost with it
            rows = read_log_rows(self.path) if os.path.exists(self.path) else []
            text = ''.join(json.dumps(row) + '\n' for row in rows if keep_before is None or row['iter'] < keep_before)
            write_atomic(self.path, lambda f: f.write(text.encode()))

    def write(self, row):
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')


def ends_cut(path):
    """True if the file exists and its last line lacks its newline (a process killed mid-append)."""
    if not os.path.exists(path) or not os.path.getsize(path):
        return False
    with open(path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b'\n'


def read_log_rows(path):
    """The rows of a log.jsonl. A last line cut short (a kill mid-append) is dropped with a note; a bad line
    anywhere else is a ConfigError."""
    with open(path) as f:
        lines = [line for line in f.read().split('\n') if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            row['iter']
        except (ValueError, TypeError, KeyError):
            if number == len(lines):
                print(f"note: {path}: dropping a cut-off last line ({line[:40]!r}...)")
                break
            raise ConfigError(f"{path} line {number} is not a log row; repair or remove that line") from None
        rows.append(row)
    return rows


def write_eval(out_dir, results):
    """eval_only's results: printed, written to eval.json (atomically) and appended to log.jsonl."""
    print(json.dumps(results, indent=2))
    write_json(os.path.join(out_dir, 'eval.json'), results)
    Log(out_dir).write(results)


# a trev checkpoint: make_checkpoint writes these keys, load_checkpoint requires them, resume reads them
CHECKPOINT_KEYS = ('model', 'optimizer', 'optimizer_class', 'scaler', 'model_args', 'config', 'iter_num', 'rng',
                   'elapsed_s')


def make_checkpoint(model, optimizer, scaler, model_args, cfg, iter_num, rng, elapsed_s):
    """The state a run continues from: weights, optimizer and loss-scale state (and the optimizer's class, which a
    resume must match), the model's arguments and the run's settings (cfg, as config.json records them), the
    iteration, every RNG state (rng_states) and the training time so far. model is the raw model (no DDP or
    compile prefixes)."""
    return {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'optimizer_class': type(optimizer).__name__, 'scaler': scaler.state_dict(), 'model_args': model_args,
            'config': vars(cfg), 'iter_num': iter_num, 'rng': rng, 'elapsed_s': elapsed_s}


def save_checkpoint(path, checkpoint):
    """torch.save through write_atomic: a crash mid-write leaves the old checkpoint."""
    write_atomic(path, lambda f: torch.save(checkpoint, f))




def load_checkpoint(path):
    """A trev checkpoint, on cpu; ConfigError when it is missing, unreadable (empty, cut short) or not trev's."""
    if not os.path.isfile(path):
        raise ConfigError(f"no checkpoint at {path}: train first, or set init_from='scratch'")
    try:  # weights_only=False: our own file, and it holds numpy / python RNG states besides tensors
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:  # torch.load fails in many ways on a damaged file (EOFError, RuntimeError, ...)
        detail = str(error).split('. ')[0] if str(error) else 'no detail'  # torch's messages run on
        raise ConfigError(f"{path} is not a readable checkpoint ({type(error).__name__}: {detail}); it is damaged: "
                          "start afresh in another --out_dir") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint] if isinstance(checkpoint, dict) else ['all']
    if missing:
        raise ConfigError(f"{path} is not a trev checkpoint (missing {', '.join(missing)}): point --out_dir at a "
                          "folder a trev trainer wrote")
    return checkpoint


def unwrap(model):
    """The raw model under DDP (.module) and torch.compile (._orig_mod), in either order."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def model_state(model):
    """state_dict without 'module.' / '_orig_mod.' prefixes, loadable into a plain model."""
    return unwrap(model).state_dict()


def all_finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# schedule, stopping, RNG


def get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """nanoGPT's schedule: linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then flat."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


class StopSignal:
    """While active, Ctrl-C (SIGINT) and SIGTERM only set a flag, so the loop finishes its step, saves a
    checkpoint and exits cleanly instead of dying mid-update. Repeats are ignored (under torchrun a worker
    gets Ctrl-C twice: from the terminal and forwarded by torchrun); Ctrl-\\ still kills at once."""

    def __init__(self):
        self.flag = False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if not self.flag:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint", flush=True)
        self.flag = True

    def requested(self, device='cpu', agree_now=True):
        """True once a signal came. Under DDP every rank must stop at the same step, so ranks agree through an
        all-reduce, a host sync: only when agree_now (the loops pass their log steps); otherwise False on all ranks."""
        if not torch_dist.is_initialized():
            return self.flag
        if not agree_now:
            return False
        flag = torch.tensor(float(self.flag), device=device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return bool(flag.item())


def rng_states(generators):
    """Every RNG a run draws from (torch cpu + cuda, numpy, python, and the run's own torch.Generators,
    e.g. the data sampler's), one dict per rank: ranks seed dropout differently."""
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(), 'python': random.getstate(),
             'generators': [g.get_state() for g in generators]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    if not torch_dist.is_initialized():
        return [state]
    states = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(states, state)
    return states


def restore_rng_states(states, generators, dist):
    """Exact resume needs the same world size; with another, only the shared generators (the same on every
    rank) are restored and the per-rank RNGs keep their fresh seeds."""
    if len(states) != dist.world_size:
        if dist.master:
            print(f"note: checkpoint from {len(states)} processes, now {dist.world_size}: "
                  "same data order, but dropout randomness is not an exact continuation")
        for g, s in zip(generators, states[0]['generators']):
            g.set_state(s)
        return
    state = states[dist.rank]
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    if 'cuda' in state and dist.device.startswith('cuda'):
        torch.cuda.set_rng_state(state['cuda'])
    for g, s in zip(generators, state['generators']):
        g.set_state(s)


# ----------------------------------------------------------------------------------------------
# pieces of the training loop every trainer writes the same way


def check_run(cfg, dist):
    """The settings every trainer checks before it builds anything."""
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} does not split over {dist.world_size} processes")
    if cfg.init_from not in ('scratch', 'resume'):
        raise ConfigError(f"init_from={cfg.init_from!r}; choose 'scratch' or 'resume'")
    check_out_dir(cfg.out_dir)


def check_out_dir(out_dir, option='out_dir'):
    """out_dir is, or can become, a folder: neither it nor any folder above it is a file."""
    path = os.path.abspath(out_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(f"{option}={out_dir!r}: {path} is a file, not a folder; choose another --{option}")


def check_fresh(out_dir, ckpt_path):
    """A run from scratch never overwrites another run's checkpoint."""
    if os.path.exists(ckpt_path):
        raise ConfigError(f"{out_dir} already holds a run ({ckpt_path}): continue it with --init_from=resume, or "
                          "start afresh in another --out_dir")


OPTIMIZERS = ('adamw', 'sgd', 'adafactor')


def build_optimizer(name, model, learning_rate, weight_decay, betas, device):
    """The optimizer a config names, over two groups: weight decay on matrices, convolutions and embeddings (every
    parameter of 2+ dims), none on biases and norm gains.
        'adamw'     torch.optim.AdamW(betas)
        'sgd'       torch.optim.SGD with Nesterov momentum beta1 (weight decay added to the gradient, as SGD does)
        'adafactor' torch.optim.Adafactor (Shazeer & Stern 2018, factored second moments; betas unused)"""
    groups = [{'params': [p for p in model.parameters() if p.dim() >= 2], 'weight_decay': weight_decay},
              {'params': [p for p in model.parameters() if p.dim() < 2], 'weight_decay': 0.0}]
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device.startswith('cuda'))
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=learning_rate, momentum=betas[0], nesterov=True)
    if name == 'adafactor':
        return torch.optim.Adafactor(groups, lr=learning_rate)
    raise ConfigError(f"optimizer={name!r}; choose one of: {', '.join(OPTIMIZERS)}")


NOT_THE_MODEL = ('dropout', 'kernel')  # model_args a resume may change: regularisation, and which kernels compute it


def check_resume(checkpoint, model_args, optimizer, path, defaults=None):
    """ConfigError when a checkpoint holds another model (a model_args key but NOT_THE_MODEL differs) or was trained
    with another optimizer class than the one this run built. A key the checkpoint lacks (a knob newer than it) passes
    at its default in `defaults` (the model config's), the value that leaves the model as it was before the knob."""
    saved, defaults = checkpoint['model_args'], defaults or {}
    diff = [f"{k}={saved.get(k)!r} in the checkpoint, {v!r} in the config" for k, v in model_args.items()
            if k not in NOT_THE_MODEL and (saved[k] != v if k in saved else k not in defaults or defaults[k] != v)]
    if diff:
        raise ConfigError(f"{path} is a different model: {'; '.join(diff)}")
    built = type(optimizer).__name__
    if checkpoint['optimizer_class'] != built:
        raise ConfigError(f"{path} was trained with {checkpoint['optimizer_class']}, this run builds {built}: resume "
                          f"with the same optimizer, or start afresh in another --out_dir")


def hold_run_folder(out_dir, dist):
    """The run folder for this run alone (a FolderLock held by rank 0) while it trains or evaluates: a second trainer
    or sweep on it stops in one line rather than writing the same files."""
    check_out_dir(out_dir)
    return FolderLock(out_dir, "wait for it to finish, or give another --out_dir") if dist.master else nullcontext()


# what train() adds to the settings it records
RUN_KEYS = ('device', 'dtype', 'n_params', 'attention_params', 'fingerprint')


def check_trainer(checkpoint, defaults, path, script):
    """ConfigError when a checkpoint was written by another trainer: its settings hold keys this one does not have
    (a trainer's keys only grow, so its own older checkpoints pass)."""
    foreign = sorted(set(checkpoint['config']) - set(defaults) - set(RUN_KEYS))
    if foreign:
        raise ConfigError(f"{path} is another trainer's run (its settings include {', '.join(foreign[:3])}): "
                          f"{script} reads only its own; give the --out_dir of a {script} run")


def code_fingerprint(trainer_path):
    """A hash of the code with which a trainer builds its model, for its runs to record and a report to recompute:
    build_model and the module-level classes, functions and UPPER_CASE constants it refers to, transitively (GPT;
    LRAClassifier, sinusoids and PAD), as ast.unparse writes them without docstrings: comments, docstrings, layout
    and the config defaults (lower case; a run records its settings) do not count. Read from the file, not
    imported: report.py imports no trainer."""
    try:
        with open(trainer_path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), trainer_path)
    except (OSError, SyntaxError, ValueError) as error:
        raise ConfigError(f"cannot read the model code of {trainer_path}: {error}") from None
    definitions = {name: node for node in tree.body for name in defined_names(node)}
    if 'build_model' not in definitions:
        raise ConfigError(f"{trainer_path} has no build_model(model_args): not a trev trainer")
    used, names = [], ['build_model']
    while names:
        node = definitions[names.pop()]
        if node not in used:
            used.append(node)
            names += [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in definitions]
    code = '\n'.join(ast.unparse(without_docstrings(node)) for node in tree.body if node in used)  # file order
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def defined_names(node):
    """The names of model code a module-level statement defines: a class or function, or an UPPER_CASE constant."""
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return [target.id for target in targets if isinstance(target, ast.Name) and target.id.isupper()]


def without_docstrings(node):
    """A copy of node with the docstring of every class and function in it removed."""
    node = copy.deepcopy(node)
    for inner in ast.walk(node):
        body = getattr(inner, 'body', None)
        if (isinstance(inner, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            inner.body = body[1:] or [ast.Pass()]
    return node


def start_or_resume(cfg, ckpt_path, model, optimizer, scaler, model_args, generators, dist):
    """Where a run starts: (iter_num, elapsed_s, last_saved). init_from 'scratch': (0, 0.0, None), once ckpt_path is
    found free (a fresh run never overwrites another run's checkpoint). 'resume': the checkpoint at ckpt_path, checked
    to hold this model and optimizer class, restored into model, optimizer, scaler and every RNG (generators: the
    run's own, e.g. the data sampler's); the run continues at its iter_num, and last_saved (the iteration of the
    checkpoint on disk) is that iter_num."""
    if cfg.init_from != 'resume':
        check_fresh(cfg.out_dir, ckpt_path)
        return 0, 0.0, None
    checkpoint = load_checkpoint(ckpt_path)
    defaults = {field.name: field.default for field in dataclasses.fields(unwrap(model).config)
                if field.default is not dataclasses.MISSING}  # a knob's value before it existed
    check_resume(checkpoint, model_args, optimizer, ckpt_path, defaults)
    model.load_state_dict(checkpoint['model'])
    optimizer.load_state_dict(checkpoint['optimizer'])
    scaler.load_state_dict(checkpoint['scaler'])
    restore_rng_states(checkpoint['rng'], generators, dist)
    return checkpoint['iter_num'], checkpoint['elapsed_s'], checkpoint['iter_num']


def all_reduce_sum(values, device):
    """Sum a list of floats over ranks (a no-op in one process)."""
    if not torch_dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def exit_nonfinite(iter_num, what, last_saved, ckpt_path):
    """Stop a run whose loss or parameters went nan/inf, saying which checkpoint (if any) is still good."""
    kept = f"last good checkpoint (iter {last_saved}) kept in {ckpt_path}" if last_saved is not None else \
        "no checkpoint was saved"
    sys.exit(f"error: non-finite {what} at iter {iter_num}: stopping; {kept}")


def format_row(row):
    """A log row as one printed line: losses and accuracies to 4 decimals, lr in e-notation, grad_norm to 3
    significant digits, the rest as integers; None (no peak memory on Windows CPU) is left out."""
    def text(key, value):
        if key.endswith(('loss', 'acc')):
            return f"{key} {value:.4f}"
        return f"{key} {value:.2e}" if key == 'lr' else f"{key} {value:.3g}" if key == 'grad_norm' else \
            f"{key} {value:,.0f}"
    return f"iter {row['iter']}: " + ', '.join(text(k, v) for k, v in row.items() if k != 'iter' and v is not None)


# ----------------------------------------------------------------------------------------------
# prepared data folders: {train,val,test}.bin and meta.json from prepare_enwik8.py / prepare_wikitext103.py


def prepare_command(data_dir):
    """The command that writes data_dir: enwik8 and wikitext103 by name, any other folder from a file as bytes."""
    name = os.path.basename(os.path.normpath(data_dir))
    if name not in ('enwik8', 'wikitext103'):
        return f"python prepare_enwik8.py --src=FILE --data_dir={data_dir}"
    custom = os.path.normpath(data_dir) != os.path.join('data', name)
    return f"python prepare_{name}.py" + (f" --data_dir={data_dir}" if custom else '')


def load_meta(data_dir, splits=('train', 'val', 'test')):
    """meta.json of a prepared data folder, checked against the splits' .bin files: 'dtype' and 'tokenizer'
    inferred from vocab_size where missing; each file a whole number of tokens, as many as meta.json records
    (where it does), and no token id at or above vocab_size. A missing file is a ConfigError naming the prepare
    command, any disagreement one naming the file."""
    for name in [f'{split}.bin' for split in splits] + ['meta.json']:
        path = os.path.join(data_dir, name)
        if not os.path.exists(path):
            raise ConfigError(f"{path} not found: run `{prepare_command(data_dir)}`")
    path = os.path.join(data_dir, 'meta.json')
    meta = read_json(path)
    if isinstance(meta, dict) and 'task' in meta:  # train_lra.py's data: documents and labels, not a token stream
        raise ConfigError(f"{data_dir} holds LRA {meta['task']} examples from prepare_lra.py, not a corpus: give "
                          f"--data_dir a folder from prepare_enwik8.py or prepare_wikitext103.py, e.g. `python "
                          f"prepare_enwik8.py --src=FILE --data_dir=data/my_corpus`")
    redo = f"run `{prepare_command(data_dir)}` again"
    if not isinstance(meta, dict) or not isinstance(meta.get('vocab_size'), int) or meta['vocab_size'] < 1:
        raise ConfigError(f"{path} has no positive integer vocab_size; {redo}")
    meta.setdefault('dtype', 'uint8' if meta['vocab_size'] <= 256 else 'uint16')
    meta.setdefault('tokenizer', 'bytes' if meta['vocab_size'] <= 256 else 'gpt2')
    if meta['dtype'] not in ('uint8', 'uint16', 'uint32'):
        raise ConfigError(f"{path}: dtype {meta['dtype']!r} is not uint8, uint16 or uint32; {redo}")
    for split in splits:
        size, itemsize = os.path.getsize(os.path.join(data_dir, f'{split}.bin')), np.dtype(meta['dtype']).itemsize
        recorded = meta.get('tokens', {}).get(split)
        if size % itemsize or (recorded is not None and recorded != size // itemsize):
            raise ConfigError(f"{data_dir}/{split}.bin holds {size:,} bytes, not the {recorded or 'whole number of'} "
                              f"{meta['dtype']} tokens {path} records; {redo}")
        data = open_split(data_dir, split, meta['dtype'])
        if len(data) and int(data.max()) >= meta['vocab_size']:
            raise ConfigError(f"{data_dir}/{split}.bin holds token {int(data.max())}, beyond vocab_size "
                              f"{meta['vocab_size']} in {path}; {redo}")
    return meta


def open_split(data_dir, split, dtype):
    # re-opened for every batch, as nanoGPT does: a long-lived np.memmap leaks memory
    return np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=dtype, mode='r')


def load_encoding(name):
    """tiktoken's encoding `name` (the tokenizer prepare_wikitext103.py wrote the data with); ValueError if it is
    unknown, cannot be loaded offline, or has too many tokens for uint16 files."""
    import tiktoken  # only tokenized data needs it
    if name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown tokenizer {name}: tiktoken has {', '.join(tiktoken.list_encoding_names())}")
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception:  # tiktoken's download fails in many ways (requests, OSError, ...) when offline
        raise ValueError(f"could not load tiktoken's {name} encoding (needs internet once, or TIKTOKEN_CACHE_DIR "
                         f"set to a cache that has it)") from None
    if encoding.n_vocab > 2**16:
        raise ValueError(f"tokenizer {name} has {encoding.n_vocab:,} tokens: too many for uint16")
    return encoding
