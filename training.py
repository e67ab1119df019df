"""
Run machinery shared by train_gpt.py, train_bert.py and train_vit.py, written once.

    config = apply_overrides(defaults, argv)   # configs/*.py files, then --key=value; bad input -> ConfigError
    dist = setup_distributed(device)           # Dist(rank, local_rank, world_size, master, device); python = 1 process
    device = resolve_device(device)            # 'auto' -> 'cuda' if available, else 'cpu'
    teardown_distributed()
    with distributed(device) as dist: ...   # both of the above around a block
    dtype = resolve_dtype(device, dtype)       # 'auto' -> bfloat16 / float16 on cuda, float32 on cpu
    ctx, scaler = mixed_precision(device, dtype)  # autocast context (GPU only) and GradScaler (enabled for float16)
    write_config(out_dir, config)              # config.json: resolved config, torch version, git commit, command line
    log = Log(out_dir, keep_before)            # log.jsonl; log.write(row) appends one JSON object per line
    save_checkpoint(path, checkpoint)          # atomic: temp file in the same folder, then os.replace
    checkpoint = load_checkpoint(path)         # on cpu; ConfigError if missing
    unwrap(model), model_state(model)          # the raw model under DDP / torch.compile, and its state_dict
    get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters)  # linear warmup, cosine decay to min_lr
    with StopSignal() as stop: ... stop.requested()  # Ctrl-C / SIGTERM: finish the step, save, exit
    all_finite(model)                          # no nan/inf in the parameters (checked before any checkpoint)
    states = rng_states(generators)            # every RNG that drives a run, one entry per rank
    restore_rng_states(states, generators, dist)
    peak_memory_mb(device)
    adamw(model, cfg, device)                  # AdamW, weight decay on 2+ dim parameters only
    check_architecture(saved_args, model_args, keys, path)  # ConfigError when a checkpoint is another model
    all_reduce_sum(values, device)             # sum floats over ranks
    exit_nonfinite(iter_num, what, last_saved, ckpt_path)   # stop on nan/inf, naming the last good checkpoint
    print(format_row(row))                     # a log row as one line
    run = Run(cfg, config, dist)               # one training run: build, then train or write_eval (see Run)

A trainer's main() raises ConfigError for any input the user can fix; its `__main__` block turns that into
`error: <one line>` on stderr and a non-zero exit, with no traceback.
"""
import ast
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import time
import types
from collections import namedtuple
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP


class ConfigError(Exception):
    """Bad input the user can fix (config key, type, missing data, wrong checkpoint): one line, exit non-zero."""


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
            with open(arg) as f:
                exec(compile(f.read(), arg, 'exec'), namespace)
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
    return config


# ----------------------------------------------------------------------------------------------
# processes and devices

Dist = namedtuple('Dist', 'rank local_rank world_size master device')


def resolve_device(device):
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == 'darwin' else peak / 2**10  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------------------------
# the run folder: config.json, log.jsonl, ckpt.pt


def git_commit():
    """(commit, dirty) of the code that ran, or (None, None) outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, check=True)
        status = subprocess.run(['git', 'status', '--porcelain'], cwd=here, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip())


def write_config(out_dir, config):
    os.makedirs(out_dir, exist_ok=True)
    commit, dirty = git_commit()
    record = {'config': config, 'torch': torch.__version__, 'git_commit': commit, 'git_dirty': dirty,
              'command': [sys.executable] + sys.argv}
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(record, f, indent=2)


class Log:
    """log.jsonl in the run folder, keeping only the existing rows with iter < keep_before: 0 for a fresh run,
    k when resuming at iteration k (rows the stopped run wrote after its checkpoint go, so the file reads as one
    uninterrupted run), None to append to everything (e.g. an evaluation of a finished run)."""

    def __init__(self, out_dir, keep_before=None):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, 'log.jsonl')
        if keep_before is not None:
            rows = []
            if os.path.exists(self.path):
                with open(self.path) as f:
                    rows = [line for line in f if json.loads(line)['iter'] < keep_before]
            with open(self.path, 'w') as f:
                f.writelines(rows)

    def write(self, row):
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')


def save_checkpoint(path, checkpoint):
    """torch.save to a temp file in the same folder, then os.replace: a crash mid-write leaves the old file."""
    tmp = path + '.tmp'
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.exists(path):
        raise ConfigError(f"no checkpoint at {path}: train first, or set init_from='scratch'")
    # weights_only=False: our own file, and it holds numpy / python RNG states besides tensors
    return torch.load(path, map_location='cpu', weights_only=False)


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

    def requested(self, device='cpu'):
        """True once any rank got a signal; under DDP every rank agrees, so all stop at the same step."""
        if not torch_dist.is_initialized():
            return self.flag
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


def adamw(model, cfg, device):
    """AdamW from cfg's learning_rate, weight_decay, beta1, beta2: weight decay on matrices, convolutions and
    embeddings (every parameter of 2+ dims), none on biases and norm gains."""
    return torch.optim.AdamW(
        [{'params': [p for p in model.parameters() if p.dim() >= 2], 'weight_decay': cfg.weight_decay},
         {'params': [p for p in model.parameters() if p.dim() < 2], 'weight_decay': 0.0}],
        lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=device.startswith('cuda'))


def check_architecture(saved_args, model_args, keys, path):
    """ConfigError naming every key in keys on which a checkpoint's model_args and the config disagree."""
    diff = [f"{k}={saved_args[k]!r} in the checkpoint, {model_args[k]!r} in the config"
            for k in keys if saved_args[k] != model_args[k]]
    if diff:
        raise ConfigError(f"{path} is a different model: {'; '.join(diff)}")


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
    """A log row as one printed line: losses and accuracies to 4 decimals, lr in e-notation, the rest as integers."""
    return f"iter {row['iter']}: " + ', '.join(
        f"{k} {v:.4f}" if k.endswith(('loss', 'acc')) else f"lr {v:.2e}" if k == 'lr' else f"{k} {v:,.0f}"
        for k, v in row.items() if k != 'iter')


# ----------------------------------------------------------------------------------------------
# one run: everything a trainer does around its own model, data, loss and metrics


class Run:
    """A training run, the same for every task:
        run = Run(cfg, config, dist)   # dtype, autocast and GradScaler; checks the batch split and init_from
        model = run.build(make_model, model_args, ARCHITECTURE, generators)  # seeded, AdamW, resumed, compiled, DDP
        run.write_eval(results)        # eval_only: print, eval.json, a log row
        run.train(micro_loss, evaluate, 'tokens_per_s', tokens_per_iter)    # the loop, checkpoints, log.jsonl
    """

    def __init__(self, cfg, config, dist):
        self.cfg, self.config, self.dist = cfg, config, dist
        dtype = resolve_dtype(dist.device, cfg.dtype)
        config.update(device=dist.device, dtype=dtype)  # config.json records what actually ran
        self.ctx, self.scaler = mixed_precision(dist.device, dtype)
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"batch_size={cfg.batch_size} does not split over {dist.world_size} processes")
        if cfg.init_from not in ('scratch', 'resume'):
            raise ConfigError(f"init_from={cfg.init_from!r}; choose 'scratch' or 'resume'")
        self.ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')

    def build(self, make_model, model_args, architecture, generators=()):
        """make_model(model_args) runs with torch seeded by cfg.seed on every rank (DDP also broadcasts rank 0's
        weights); dropout then draws from a per-rank stream. generators: the run's own torch.Generators (data
        order, masks), saved in every checkpoint. init_from='resume' restores model, optimizer, scaler, RNGs and
        the iteration from out_dir/ckpt.pt, refusing a checkpoint that disagrees on an architecture key.
        Returns the raw model; run.model (compiled, DDP) trains and run.eval_model (compiled) evaluates."""
        cfg, dist = self.cfg, self.dist
        torch.manual_seed(cfg.seed)
        self.raw_model = make_model(model_args).to(dist.device)
        torch.manual_seed(cfg.seed + dist.rank)
        self.optimizer = adamw(self.raw_model, cfg, dist.device)
        self.model_args, self.generators = model_args, list(generators)
        self.iter_num, self.elapsed_before, self.last_saved = 0, 0.0, None
        if cfg.init_from == 'resume':
            checkpoint = load_checkpoint(self.ckpt_path)
            check_architecture(checkpoint['model_args'], model_args, architecture, self.ckpt_path)
            self.raw_model.load_state_dict(checkpoint['model'])
            self.optimizer.load_state_dict(checkpoint['optimizer'])
            self.scaler.load_state_dict(checkpoint['scaler'])
            restore_rng_states(checkpoint['rng'], self.generators, dist)
            self.iter_num, self.elapsed_before = checkpoint['iter_num'], checkpoint['elapsed_s']
            self.last_saved = self.iter_num  # the iteration of the checkpoint on disk
        self.eval_model = torch.compile(self.raw_model) if cfg.compile else self.raw_model
        self.model = self.eval_model  # evaluation skips DDP: ranks may run different numbers of eval batches
        if dist.world_size > 1:
            self.model = DDP(self.eval_model, device_ids=[dist.local_rank] if dist.device.startswith('cuda') else None)
        return self.raw_model

    def write_eval(self, results):
        if self.dist.master:
            print(json.dumps(results, indent=2))
            with open(os.path.join(self.cfg.out_dir, 'eval.json'), 'w') as f:
                json.dump(results, f, indent=2)
            Log(self.cfg.out_dir).write(results)

    def save(self, iter_num):
        rng = rng_states(self.generators)  # collective under DDP: every rank calls save
        if not all_finite(self.raw_model):  # never overwrite a good checkpoint with a broken model
            exit_nonfinite(iter_num, 'parameters', self.last_saved, self.ckpt_path)
        if self.dist.master:
            save_checkpoint(self.ckpt_path, {
                'model': model_state(self.raw_model), 'optimizer': self.optimizer.state_dict(),
                'scaler': self.scaler.state_dict(), 'model_args': self.model_args, 'config': self.config,
                'iter_num': iter_num, 'rng': rng, 'elapsed_s': self.elapsed_before + time.time() - self.t_start})
        self.last_saved = iter_num

    def train(self, micro_loss, evaluate, throughput_key, items_per_iter):
        """Every eval_interval steps and at the end: evaluate(eval_model) -> dict of metrics (the first must be
        finite), then a checkpoint. Each step: micro_loss(model) of gradient_accumulation_steps micro-batches,
        averaged, gradients synced (DDP) on the last micro-step only; clipping; AdamW at get_lr's rate.
        Every log_interval steps a log.jsonl row: train_loss, lr, throughput (items_per_iter per step, training
        time only), peak_mem_mb. Ctrl-C / SIGTERM: save and exit 130; a non-finite loss: stop, keep the last
        good checkpoint. Refuses to start from scratch where out_dir already holds a checkpoint."""
        cfg, dist, model = self.cfg, self.dist, self.model
        device, accumulation = dist.device, cfg.gradient_accumulation_steps
        if cfg.init_from == 'scratch' and os.path.exists(self.ckpt_path):  # never overwrite a run by accident
            raise ConfigError(f"{cfg.out_dir} already holds a run ({self.ckpt_path}): continue it with "
                              "--init_from=resume, or start afresh in another --out_dir")
        if dist.master:
            write_config(cfg.out_dir, self.config)
            log = Log(cfg.out_dir, keep_before=self.iter_num)
        iter_num = start_iter = self.iter_num
        self.t_start = t_last = time.time()
        iters_since_log = 0
        with StopSignal() as stop:
            while True:
                if stop.requested(device):
                    self.save(iter_num)
                    if dist.master:
                        print(f"stopped at iter {iter_num}: checkpoint in {self.ckpt_path}; continue with "
                              "--init_from=resume")
                    sys.exit(130)
                row = {}
                if iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters:
                    t_eval = time.time()
                    model.eval()
                    row.update(evaluate(self.eval_model))
                    model.train()
                    name, value = next(iter(row.items()))
                    if not math.isfinite(value):
                        exit_nonfinite(iter_num, name.replace('_', ' '), self.last_saved, self.ckpt_path)
                    if iter_num > start_iter:
                        self.save(iter_num)
                    t_last += time.time() - t_eval  # throughput counts training time only
                if iter_num < cfg.max_iters:
                    lr = get_lr(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
                    for group in self.optimizer.param_groups:
                        group['lr'] = lr
                    train_loss = torch.zeros((), device=device)
                    for micro_step in range(accumulation):
                        if dist.world_size > 1:  # sync gradients on the last micro-step only
                            model.require_backward_grad_sync = micro_step == accumulation - 1
                        with self.ctx:
                            loss = micro_loss(model) / accumulation  # the step's gradient: mean over micro-steps
                        self.scaler.scale(loss).backward()
                        train_loss += loss.detach()
                    if cfg.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    iters_since_log += 1
                    if iter_num % cfg.log_interval == 0:
                        row['train_loss'] = all_reduce_sum([train_loss.item()], device)[0] / dist.world_size
                        if not math.isfinite(row['train_loss']):
                            exit_nonfinite(iter_num, 'train loss', self.last_saved, self.ckpt_path)
                        now = time.time()
                        row.update({'lr': lr, throughput_key: iters_since_log * items_per_iter / (now - t_last),
                                    'peak_mem_mb': peak_memory_mb(device)})
                        t_last, iters_since_log = now, 0
                if row and dist.master:
                    row = {'iter': iter_num, **row, 'elapsed_s': self.elapsed_before + time.time() - self.t_start}
                    log.write(row)
                    print(format_row(row))
                if iter_num >= cfg.max_iters:
                    break
                iter_num += 1
