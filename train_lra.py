"""
Long Range Arena (Tay et al. 2020, arXiv:2011.04006) with any attention in attention.py run bidirectionally
(causal=False): ListOps, byte-level text classification (IMDB), byte-level document retrieval (AAN, two towers),
image classification on pixel sequences (CIFAR-10) and Pathfinder, from the folders prepare_lra.py writes.
Everything but the attention is the same for every run. Metric: top-1 accuracy on the test split.

    python prepare_lra.py listops && python train_lra.py configs/lra/listops.py   # LRA's ListOps recipe, softmax
    python train_lra.py configs/lra/listops.py configs/linear.py                  # the same with linear attention
    python train_lra.py configs/lra/listops_cpu.py --attention=local             # a CPU recipe: minutes
    torchrun --standalone --nproc_per_node=8 train_lra.py configs/lra/text.py configs/performer.py
    python train_lra.py configs/lra/listops.py --init_from=resume                # continue out_dir/ckpt.pt exactly
    python train_lra.py configs/lra/listops.py --init_from=resume --eval_only=True   # full val + test split

The model: the tokens (token + 1, 0 = padding) are embedded, a class token is put in front (pool='cls'), fixed
sinusoidal (LRA's default) or learned positions added, then n_layer bidirectional attention.Blocks read
them with the padding mask (every bidirectional variant honours it: padding changes no real token's output), a
final norm, pooling (the class token, or the mean over real tokens) and LRA's classifier head: Linear to
mlp_ratio x n_embd, ReLU, Linear to the classes. Retrieval encodes its two documents with the same encoder (two
towers) and classifies [u, v, u * v, u - v] of their pooled vectors with LRA's deeper head (Linear, ReLU,
Linear to half the width, ReLU, Linear). Causal-only variants are refused: LRA encodes both directions.

Data: every example is padded to the task's seq_len (the tasks' standard lengths; see prepare_lra.py). Epoch e
is a permutation of the training set drawn from (seed, e), so what an iteration loads depends on the iteration
alone: a resumed run loads exactly what the uninterrupted one would, whatever the number of processes.
Evaluation runs over the split in its fixed order: the periodic val_loss and val_acc on its first
eval_iters x batch_size examples, eval_only on every example of val and test, written to eval.json as
{'val': {'accuracy', 'loss', 'examples'}, 'test': {...}}.
One run writes out_dir/{config.json, log.jsonl, ckpt.pt} (and eval.json for eval_only), as train_gpt.py does;
tokens_per_s counts every position the model reads, padding included. The model (LRAClassifier, LRAConfig) imports
without side effects.
"""
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import training
from attention import (ATTENTION, Block, LayerConfig, attention_pattern, fingerprint, init_weights, layer_configs,
                       make_final_norm, redraw_random_features, resolve_kernel, stack_name)
from training import ConfigError

# -----------------------------------------------------------------------------------------------
# config: every key below can be changed by configs/*.py files and --key=value, nothing else.
# The defaults are LRA's ListOps recipe (configs/lra/listops.py gives the source of each number): 6 layers, 512
# wide, 8 heads, MLP 2048, class-token pooling, batch 32 for 5,000 steps, Adam with betas (0.9, 0.98), weight decay
# 0.1 and LRA's schedule constant 0.05 x linear warmup (1,000 steps) x rsqrt decay.
# I/O
out_dir = ''               # '' = out-lra-<data folder>-<attention>, e.g. out-lra-listops-linear
init_from = 'scratch'      # 'scratch' or 'resume' (out_dir/ckpt.pt, same architecture)
eval_only = False          # evaluate the full val and test splits, write out_dir/eval.json, exit
eval_interval = 500        # also how often ckpt.pt is written
eval_iters = 20            # batches in the quick val estimate: the first eval_iters x batch_size val examples
log_interval = 10          # also how often Ctrl-C is acted on under DDP (the check is a sync)
# data
data_dir = 'data/lra/listops'  # a folder prepare_lra.py wrote: {train,val,test}.bin, .index.bin, .labels.bin, meta.json
batch_size = 32            # examples per micro-step over ALL processes: each of N ranks takes batch_size / N
gradient_accumulation_steps = 1  # micro-steps per optimizer step, whatever the number of processes
# model
attention = 'softmax'      # a name in attention.ATTENTION that supports bidirectional attention
n_layer = 6
n_head = 8
n_embd = 512
mlp_ratio = 4              # MLP width = mlp_ratio x n_embd (LRA's mlp_dim), also the classifier head's hidden width
pool = 'cls'               # 'cls': classify the class token; 'mean': the mean over the real (unpadded) tokens
position = 'sinusoidal'    # 'sinusoidal' (fixed, LRA's default) or 'learned'
dropout = 0.1
bias = False               # bias in linear layers and LayerNorm
norm = 'layernorm'         # 'layernorm', 'rmsnorm' or 'scalenorm' (one learned scale of the l2-normalised vector)
norm_position = 'pre'      # 'pre': x + f(norm(x)); 'post': norm(x + f(x)), as in the original transformer
chunk_size = 64            # linear-attention family: chunk length of the chunkwise-parallel kernel
local_window = 128         # local: keys per query (64 on each side)
performer_features = 256   # performer: random features per head
performer_redraw_interval = 1000  # performer: redraw its random features every this many steps (0 = never)
short_conv = 0             # every variant: kernel of a depthwise causal convolution on q, k, v; 0 = off (papers: 4)
rfa_features = 128         # rfa: random directions per head (a sine and a cosine feature each)
rfa_gate = True            # rfa: gated RFA in causal mode (a learned per-token decay); bidirectional RFA is ungated
rfa_normaliser_floor = 0.1 # rfa: clamp the normaliser's weighted mean to at least this (its estimate can be <= 0)
based_feature_dim = 16     # based: q and k projected to this many dims before the Taylor feature map
recompute_segment = 1024   # linear family, causal: train longer sequences in segments of this, recomputed; 0 = never
output_gate = ''           # every variant: 'none' or 'swish' (y * swish(x W_g)); '' = the variant's paper's
head_norm = ''             # every variant: 'none', 'rmsnorm' or 'groupnorm' on each head's output; '' = the paper's
linformer_k = 256          # linformer: keys and values projected along the sequence to this many rows
nystrom_landmarks = 64     # nystrom: landmarks, the means of this many segments of the queries and of the keys
synthesizer_mode = 'dense' # synthesizer: 'dense' (weights from each token alone) or 'random' (a learned matrix)
aft_window = 0             # aft: window s of AFT-local's learned position biases; 0 = AFT-simple
bigbird_block = 16         # bigbird: tokens per block
bigbird_global = 1         # bigbird: the first this many blocks are global
bigbird_random = 3         # bigbird: random key blocks per query block (bidirectional only)
sra_ratio = 2              # sra (train_vit.py only): keys and values from the patch grid reduced R x R
kernel = 'auto'            # linear family, causal: 'fla' (flash-linear-attention's Triton ops, CUDA), 'torch' or 'auto'
n_kv_head = 0              # GQA / MQA: key/value heads, each read by n_head / n_kv_head query heads (0 = n_head)
layer_attention = ''       # hybrid stack: each layer's attention, e.g. 'gated_deltanet*3,softmax', repeated to n_layer
# optimizer: weight decay on matrices and embeddings only
optimizer = 'adamw'        # 'adamw', 'sgd' (Nesterov momentum beta1) or 'adafactor' (see training.build_optimizer)
learning_rate = 0.05       # lr_schedule 'rsqrt': the constant in front (the peak is learning_rate / sqrt(warmup_iters))
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.98
grad_clip = 0.0            # 0 = off (LRA does not clip)
# schedule
lr_schedule = 'rsqrt'      # 'rsqrt': LRA's linear warmup then 1 / sqrt(step) decay; 'cosine': warmup, cosine to min_lr
warmup_iters = 1000
lr_decay_iters = 5000      # cosine only
min_lr = 0.0               # cosine only
# system
device = 'auto'            # 'auto' = cuda if available, else cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'             # 'auto' = bfloat16 (float16 where unsupported) on cuda, float32 on cpu
compile = False            # torch.compile the model (off: compile support and speedups differ by variant)
seed = 1337
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
CAUSAL = False  # the attention's mode in this task (sweep.py checks each planned variant against it)
PAD = 0                    # the model's id of padding; a token t of the data is id t + 1
# -----------------------------------------------------------------------------------------------


@dataclass
class LRAConfig(LayerConfig):
    """The block's LayerConfig plus the classifier's own fields; block_size (positions) follows from them."""
    vocab_size: int = 16       # model ids: the data's tokens + 1, and the padding id 0
    num_classes: int = 10
    seq_len: int = 2000        # tokens per document, padding included
    documents: int = 1         # documents per example: 2 = a two-tower model (retrieval)
    padded: bool = True        # documents can be shorter than seq_len: the blocks get the padding mask
    n_layer: int = 6
    pool: str = 'cls'
    position: str = 'sinusoidal'
    causal: bool = False
    block_size: int = field(init=False)

    def __post_init__(self):
        self.block_size = self.seq_len + (self.pool == 'cls')


def sinusoids(length, width):
    """LRA's fixed position table (as in Vaswani et al. 2017): (1, length, width), sin on even channels and cos on
    odd ones at position p, channel pair i: p / 10000^(2i / width)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * -(math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, :width // 2]
    return table[None]


class LRAClassifier(nn.Module):
    """Token embedding (id 0 = padding), optional class token, positions, n_layer bidirectional Blocks given
    the padding mask, final norm (pre-norm), pooling, then LRA's classifier head (common_layers.classifier_head, and
    classifier_head_dual with interaction 'NLI' for two documents)."""

    def __init__(self, config):
        super().__init__()
        if config.causal:
            raise ValueError("LRA encodes both directions: causal must be False")
        if config.pool not in ('cls', 'mean'):
            raise ValueError(f"unknown pool '{config.pool}'; choose 'cls' or 'mean'")
        if config.position not in ('sinusoidal', 'learned'):
            raise ValueError(f"unknown position '{config.position}'; choose 'sinusoidal' or 'learned'")
        if config.documents not in (1, 2):
            raise ValueError(f"documents={config.documents}: an example holds one document, or two (retrieval)")
        self.config = config
        C, hidden = config.n_embd, config.mlp_ratio * config.n_embd
        self.token_embedding = nn.Embedding(config.vocab_size, C)
        self.class_token = nn.Parameter(torch.zeros(1, 1, C)) if config.pool == 'cls' else None
        if config.position == 'learned':
            self.position_embedding = nn.Parameter(torch.zeros(1, config.block_size, C))
        else:  # a buffer, not saved: it is the same in every run
            self.register_buffer('position_embedding', sinusoids(config.block_size, C), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(layer) for layer in layer_configs(config, config.n_layer)])
        self.norm = make_final_norm(config)
        if config.documents == 1:
            self.head = nn.Sequential(nn.Linear(C, hidden), nn.ReLU(), nn.Linear(hidden, config.num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(4 * C, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU(),
                                      nn.Linear(hidden // 2, config.num_classes))
        init_weights(self, config.n_layer, also=('position_embedding',) if config.position == 'learned' else ())
        # LRA's token embeddings are N(0, 1), on the scale of its sinusoids (init_weights draws N(0, 0.02)): at 0.02
        # the positions drown the tokens, and a small model learns ListOps far slower
        with torch.no_grad():
            self.token_embedding.weight.mul_(50)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def encode(self, ids):
        """ids: (N, T) model ids, T <= seq_len -> (N, C), one pooled vector per document."""
        pad_mask = ids == PAD if self.config.padded else None  # (N, T), True at padding
        x = self.token_embedding(ids)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.size(0), -1, -1), x], dim=1)  # (N, 1 + T, C)
            if pad_mask is not None:
                pad_mask = F.pad(pad_mask, (1, 0), value=False)  # the class token is never padding
        x = self.drop(x + self.position_embedding[:, :x.size(1)])
        for block in self.blocks:
            x = block(x, pad_mask)
        x = self.norm(x)
        if self.class_token is not None:
            return x[:, 0]
        if pad_mask is None:
            return x.mean(dim=1)
        real = (~pad_mask).unsqueeze(-1).to(x.dtype)  # (N, T, 1)
        return (x * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)

    def forward(self, ids, targets=None):
        """ids: (B, documents, T) model ids; targets: (B,) classes or None. Returns logits (B, num_classes) and the
        mean cross-entropy (or None)."""
        B, D, T = ids.shape
        pooled = self.encode(ids.reshape(B * D, T)).view(B, D, -1)  # both towers in one pass: (B, D, C)
        if D == 1:
            features = pooled[:, 0]
        else:
            u, v = pooled.unbind(dim=1)
            features = torch.cat([u, v, u * v, u - v], dim=-1)  # (B, 4C)
        logits = self.head(features)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss


# -----------------------------------------------------------------------------------------------
# data


TASKS = ('listops', 'text', 'retrieval', 'image', 'pathfinder')  # prepare_lra.py's


def prepare_command(data_dir, task):
    default = os.path.normpath(data_dir) == os.path.join('data', 'lra', task)
    return f"python prepare_lra.py {task}" + ('' if default else f" --data_dir={data_dir}")


def load_meta(data_dir):
    """meta.json of a folder prepare_lra.py wrote, checked against its files: each split's tokens, document offsets
    and labels agree in size and range. A missing or disagreeing file is a ConfigError naming the command to run."""
    path = os.path.join(data_dir, 'meta.json')
    task = os.path.basename(os.path.normpath(data_dir))
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: run `{prepare_command(data_dir, task if task in TASKS else 'listops')}`"
                          + ('' if task in TASKS else f" (or another task: {', '.join(TASKS)})"))
    meta = training.read_json(path)
    keys = ('task', 'vocab_size', 'seq_len', 'documents', 'num_classes', 'padded', 'examples', 'tokens')
    if not isinstance(meta, dict) or any(key not in meta for key in keys):  # e.g. a corpus: never prepared over
        raise ConfigError(f"{path} is not from prepare_lra.py (it lacks {', '.join(keys)}): give --data_dir a folder "
                          f"prepare_lra.py wrote, e.g. `python prepare_lra.py listops` writes data/lra/listops")
    redo = f"run `{prepare_command(data_dir, meta['task'])}` again"
    for split in ('train', 'val', 'test'):
        files = {name: os.path.join(data_dir, f'{split}.{name}') for name in ('bin', 'index.bin', 'labels.bin')}
        for name in files.values():
            if not os.path.exists(name):
                raise ConfigError(f"{name} not found; {redo}")
        examples, tokens = meta['examples'].get(split), meta['tokens'].get(split)
        sizes = {name: os.path.getsize(file) for name, file in files.items()}
        expected = {'bin': tokens, 'index.bin': 8 * (meta['documents'] * (examples or 0) + 1), 'labels.bin': examples}
        for name, size in sizes.items():
            if size != expected[name]:
                raise ConfigError(f"{files[name]} holds {size:,} bytes, not the {expected[name]} that {path} implies; "
                                  f"{redo}")
        if not examples:
            raise ConfigError(f"{path}: the {split} split has no examples; {redo}")
        index, labels = load_split(data_dir, split)
        lengths = np.diff(index)
        if index[0] != 0 or index[-1] != tokens or lengths.min() < 0 or lengths.max() > meta['seq_len']:
            raise ConfigError(f"{files['index.bin']} does not cut {files['bin']} into documents of at most seq_len = "
                              f"{meta['seq_len']} tokens; {redo}")
        if int(labels.max()) >= meta['num_classes']:
            raise ConfigError(f"{files['labels.bin']} holds class {int(labels.max())}, beyond num_classes "
                              f"{meta['num_classes']}; {redo}")
        data = training.open_split(data_dir, split, 'uint8')
        if tokens and int(data.max()) >= meta['vocab_size']:
            raise ConfigError(f"{files['bin']} holds token {int(data.max())}, beyond vocab_size {meta['vocab_size']}; "
                              f"{redo}")
    meta['dtype'] = 'uint8'
    return meta


def load_split(data_dir, split):
    """(document offsets int64, labels uint8) of a split: small, read whole; the tokens stay memory-mapped."""
    return (np.fromfile(os.path.join(data_dir, f'{split}.index.bin'), dtype=np.int64),
            np.fromfile(os.path.join(data_dir, f'{split}.labels.bin'), dtype=np.uint8))


def get_batch(data, split, examples, meta, device):
    """x: (len(examples), documents, seq_len) int64 model ids (token + 1; 0 = padding), y: (len(examples),) classes."""
    index, labels = split
    documents = meta['documents']
    x = np.full((len(examples), documents, meta['seq_len']), PAD - 1, dtype=np.int64)
    for row, example in enumerate(examples):
        for d in range(documents):
            start, end = index[example * documents + d], index[example * documents + d + 1]
            x[row, d, :end - start] = data[start:end]
    x, y = torch.from_numpy(x + 1), torch.from_numpy(labels[examples].astype(np.int64))
    if device.startswith('cuda'):  # pinned memory makes the host-to-device copy asynchronous
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@functools.lru_cache(maxsize=1)
def epoch_order(seed, epoch, n_examples):
    # the hash of a tuple of ints is the same in every process
    return torch.randperm(n_examples, generator=torch.Generator().manual_seed(hash((seed, epoch)))).numpy()


def train_examples(it, micro_step, n_examples, cfg, dist):
    """This rank's share of the examples of micro-step micro_step of iteration it. Epoch e is a permutation of the
    training set drawn from (seed, e), its remainder dropped, cut into steps of batch_size x
    gradient_accumulation_steps examples; every rank draws the same global batch and takes its own slice, so the data
    depends on the iteration alone, not on the number of processes or where a run was resumed."""
    step_size = cfg.batch_size * cfg.gradient_accumulation_steps
    epoch, step = divmod(it, n_examples // step_size)
    start = step * step_size + micro_step * cfg.batch_size
    share = cfg.batch_size // dist.world_size
    return epoch_order(cfg.seed, epoch, n_examples)[start + dist.rank * share:start + (dist.rank + 1) * share]


@torch.no_grad()
def evaluate(model, cfg, meta, split, n_examples, dist, ctx):
    """Sums over the split's first n_examples, in order, in batches of batch_size: ranks take every world_size-th
    example and the sums are all-reduced. Returns (mean loss, top-1 accuracy, examples)."""
    data = training.open_split(cfg.data_dir, split, meta['dtype'])
    index_labels = load_split(cfg.data_dir, split)
    examples = np.arange(n_examples)[dist.rank::dist.world_size]
    nll = correct = count = 0.0
    for start in range(0, len(examples), cfg.batch_size):
        x, y = get_batch(data, index_labels, examples[start:start + cfg.batch_size], meta, dist.device)
        with ctx:
            logits, _ = model(x)
        nll += F.cross_entropy(logits.float(), y, reduction='sum').item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    nll, correct, count = training.all_reduce_sum([nll, correct, count], dist.device)
    return nll / count, correct / count, int(count)


# -----------------------------------------------------------------------------------------------
# the run


def get_lr(it, cfg):
    """lr_schedule 'rsqrt' is LRA's 'constant * linear_warmup * rsqrt_decay': learning_rate x min(1, step /
    warmup_iters) / sqrt(max(step, warmup_iters)) at step = it + 1, so learning_rate is a constant, not the peak
    (LRA's 0.05 peaks at 0.05 / sqrt(1000) = 1.6e-3). 'cosine' is training.get_lr."""
    if cfg.lr_schedule == 'cosine':
        return training.get_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
    step = it + 1
    return cfg.learning_rate * min(1.0, step / max(cfg.warmup_iters, 1)) / math.sqrt(max(step, cfg.warmup_iters))


def check_bidirectional(cfg):
    """A registered variant that cannot attend both ways, in any layer, is refused, naming those that can."""
    try:
        names = attention_pattern(cfg)
    except ValueError as e:  # a hybrid pattern naming no variant
        raise ConfigError(str(e)) from None
    accepted = [variant for variant, cls in ATTENTION.items() if cls.supports_bidirectional and not cls.needs_patch_grid]
    for name in names:
        if name in ATTENTION and not ATTENTION[name].supports_bidirectional:  # (vicinity, sra refuse with their own)
            raise ConfigError(f"attention={name!r} is causal only and LRA encodes both directions; choose one of: "
                              f"{', '.join(accepted)}")


def build_model(model_args):
    try:
        return LRAClassifier(LRAConfig(**model_args))
    except ValueError as e:  # unknown attention, norm, pool or position, n_embd not divisible by n_head
        raise ConfigError(str(e)) from None


def train(cfg, dist):
    """The run: checks, data, model, optimizer, resume, then eval_only or the training loop."""
    device, accumulation = dist.device, cfg.gradient_accumulation_steps
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    training.check_run(cfg, dist)
    check_bidirectional(cfg)
    if cfg.lr_schedule not in ('rsqrt', 'cosine'):
        raise ConfigError(f"lr_schedule={cfg.lr_schedule!r}; choose 'rsqrt' (LRA's) or 'cosine'")
    dtype = training.resolve_dtype(device, cfg.dtype)
    cfg.device, cfg.dtype = device, dtype  # config.json records what actually ran
    ctx, scaler = training.mixed_precision(device, dtype)  # autocast, and fp16's loss scaling (a no-op otherwise)

    # data: what an iteration loads depends on the iteration alone (train_examples)
    meta = load_meta(cfg.data_dir)
    train_split = load_split(cfg.data_dir, 'train')
    if meta['examples']['train'] < cfg.batch_size * accumulation:
        raise ConfigError(f"{meta['examples']['train']:,} training examples: fewer than one step of batch_size x "
                          f"gradient_accumulation_steps = {cfg.batch_size * accumulation}")
    tokens_per_iter = accumulation * cfg.batch_size * meta['documents'] * meta['seq_len']

    # model: the same initial weights on every rank and for every variant (see attention.init_weights)
    model_args = {k: v for k, v in vars(cfg).items() if k in LRAConfig.__dataclass_fields__}
    model_args.update(vocab_size=meta['vocab_size'] + 1, num_classes=meta['num_classes'], seq_len=meta['seq_len'],
                      documents=meta['documents'], padded=meta['padded'], causal=CAUSAL)  # + 1: the padding id
    torch.manual_seed(cfg.seed)
    model = build_model(model_args).to(device)
    try:  # config.json records the kernel the attention runs here, 'auto' resolved
        cfg.kernel = resolve_kernel(cfg.kernel, attention_pattern(cfg), model_args['causal'], device)
    except ValueError as e:  # 'fla' where it cannot run
        raise ConfigError(str(e)) from None
    torch.manual_seed(cfg.seed + dist.rank)  # dropout: a stream per rank
    # the optimizer, built here and nowhere else: swap this line to try another; resume restores whatever it is
    optimizer = training.build_optimizer(cfg.optimizer, model, cfg.learning_rate, cfg.weight_decay,
                                         (cfg.beta1, cfg.beta2), device)
    # resume: the checkpoint's model, optimizer, loss scale and RNG streams, and the iteration to continue from;
    # from scratch: never overwrite another run's checkpoint or results
    iter_num, elapsed_before, last_saved = training.start_or_resume(cfg, ckpt_path, model, optimizer, scaler,
                                                                    model_args, [], dist)
    eval_model = torch.compile(model) if cfg.compile else model
    train_model = eval_model  # evaluation skips DDP: ranks may run different numbers of eval batches
    if dist.world_size > 1:
        train_model = DDP(eval_model, device_ids=[dist.local_rank] if device.startswith('cuda') else None)
    attention_params = sum(p.numel() for block in model.blocks for p in block.attn.parameters())
    cfg.n_params, cfg.attention_params = model.num_params(), attention_params  # recorded in config.json
    cfg.fingerprint = {'block': fingerprint(vars(cfg), causal=False), 'trainer': training.code_fingerprint(__file__)}
    if dist.master:
        print(f"{stack_name(cfg)} (bidirectional): {model.num_params():,} parameters ({attention_params:,} in "
              f"attention), {meta['task']}: {meta['documents']} x {meta['seq_len']:,} tokens per example, "
              f"{accumulation * cfg.batch_size:,} examples per iteration, {dist.world_size} process(es) on {device}, "
              f"{dtype}, {type(optimizer).__name__}")

    if cfg.eval_only:
        eval_model.eval()
        results = {'iter': iter_num}
        for split in ('val', 'test'):
            loss, accuracy, examples = evaluate(eval_model, cfg, meta, split, meta['examples'][split], dist, ctx)
            results[split] = {'accuracy': accuracy, 'loss': loss, 'examples': examples}
        if dist.master:
            training.write_eval(cfg.out_dir, results)
        return

    val_examples = min(cfg.eval_iters * cfg.batch_size, meta['examples']['val'])  # the quick estimate: fixed examples
    log = None  # the run folder changes once this run has evaluated and stepped: a failed start changes nothing
    start_iter = iter_num
    t_start = t_last = time.time()
    iters_since_log = 0
    with training.StopSignal() as stop:
        while True:
            # Ctrl-C / SIGTERM: ranks agree on log steps only, as the check is a host sync under DDP
            stopping = stop.requested(device, agree_now=iter_num % cfg.log_interval == 0)
            row = {}
            t_pause = time.time()
            if not stopping and (iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters):
                eval_model.eval()
                row['val_loss'], row['val_acc'], _ = evaluate(eval_model, cfg, meta, 'val', val_examples, dist, ctx)
                eval_model.train()
                if not math.isfinite(row['val_loss']):
                    training.exit_nonfinite(iter_num, 'val loss', last_saved, ckpt_path)
            if stopping or (row and iter_num > start_iter):  # a checkpoint after each eval, and before stopping
                rng = training.rng_states([])  # a collective under DDP: every rank calls it
                if not training.all_finite(model):  # never overwrite a good checkpoint with a broken model
                    training.exit_nonfinite(iter_num, 'parameters', last_saved, ckpt_path)
                if dist.master:
                    checkpoint = training.make_checkpoint(model, optimizer, scaler, model_args, cfg, iter_num, rng,
                                                          elapsed_before + time.time() - t_start)
                    training.save_checkpoint(ckpt_path, checkpoint)
                last_saved = iter_num
            if stopping:
                if dist.master:
                    print(f"stopped at iter {iter_num}: checkpoint in {ckpt_path}; continue with --init_from=resume")
                sys.exit(130)
            t_last += time.time() - t_pause  # throughput counts training time only

            if iter_num < cfg.max_iters:
                lr = get_lr(iter_num, cfg)
                for group in optimizer.param_groups:
                    group['lr'] = lr
                # performer: new random features every performer_redraw_interval steps, the same on every rank
                redraw_random_features(model, iter_num, cfg.seed)
                train_loss = torch.zeros((), device=device)
                for micro_step in range(accumulation):
                    if dist.world_size > 1:  # sync gradients on the last micro-step only: one all-reduce per step
                        train_model.require_backward_grad_sync = micro_step == accumulation - 1
                    data = training.open_split(cfg.data_dir, 'train', meta['dtype'])
                    examples = train_examples(iter_num, micro_step, meta['examples']['train'], cfg, dist)
                    x, y = get_batch(data, train_split, examples, meta, device)
                    with ctx:
                        _, loss = train_model(x, y)
                        loss = loss / accumulation  # the step's gradient is the mean over its micro-batches
                    scaler.scale(loss).backward()
                    train_loss += loss.detach()
                scaler.unscale_(optimizer)  # the true gradients (fp16's loss scale divided out) for the norm and clip
                # the norm before clipping, logged as grad_norm; grad_clip = 0 leaves the gradients as they are
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                scaler.step(optimizer)  # fp16: skipped when a gradient is inf/nan, and the scale lowered
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                iters_since_log += 1
                if iter_num % cfg.log_interval == 0:  # .item() waits for the GPU: on log steps only
                    row['train_loss'] = training.all_reduce_sum([train_loss.item()], device)[0] / dist.world_size
                    if not math.isfinite(row['train_loss']):
                        training.exit_nonfinite(iter_num, 'train loss', last_saved, ckpt_path)
                    now = time.time()
                    row.update(lr=lr, grad_norm=grad_norm.item(),
                               tokens_per_s=iters_since_log * tokens_per_iter / (now - t_last),
                               peak_mem_mb=training.peak_memory_mb(device))
                    t_last, iters_since_log = now, 0
            if log is None and dist.master:
                log = training.start_run_folder(cfg, start_iter)  # config.json, log.jsonl cut
            if row and dist.master:
                row = {'iter': iter_num, **row, 'elapsed_s': elapsed_before + time.time() - t_start}
                log.write(row)
                print(training.format_row(row))
            if iter_num >= cfg.max_iters:
                break
            iter_num += 1


def main(argv):
    cfg = SimpleNamespace(**training.apply_overrides(DEFAULTS, argv))
    if not cfg.out_dir:
        cfg.out_dir = f"out-lra-{os.path.basename(os.path.normpath(cfg.data_dir))}-{stack_name(cfg)}"
    with training.distributed(cfg.device) as dist, training.hold_run_folder(cfg.out_dir, dist):
        train(cfg, dist)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        training.exit_with(e)
