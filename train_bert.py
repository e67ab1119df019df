"""
Masked language modelling, RoBERTa-style, with any attention in attention.py run bidirectionally (causal=False):
dynamic masking (fresh masks every batch), no next-sentence task, on the same prepared .bin data as train_gpt.py
(WikiText-103 GPT-2 tokens, enwik8 bytes, or any byte corpus). Everything but the attention is the same for every run.

    python train_bert.py                                         # the WikiText-103 baseline below, softmax attention
    python train_bert.py configs/linear.py                  # the same recipe with linear attention
    python train_bert.py configs/bert/cpu_small.py --attention=retention    # config files, then --key=value
    torchrun --standalone --nproc_per_node=8 train_bert.py configs/linear.py
    python train_bert.py configs/bert/cpu_small.py --init_from=resume       # continue out_dir/ckpt.pt exactly
    python train_bert.py configs/bert/cpu_small.py --init_from=resume --eval_only=True  # full val + test split

Masking: 15% of the tokens are selected; of those 80% become the mask token (a token added to the vocabulary,
id = the data's vocab_size), 10% a random token of the original vocabulary, 10% stay as they are; the loss is
on the selected tokens only. Training masks come from the run's seeded generator (saved in the checkpoint, so a
resumed run masks exactly as an uninterrupted one). Evaluation masks each split once from eval_seed alone, the
same positions and replacements for every model, variant and run, and scores fixed non-overlapping windows of
block_size over the whole split: MLM loss (nats per masked token), perplexity exp(loss) and masked-token accuracy.

One run writes out_dir/{config.json, log.jsonl, ckpt.pt} (and eval.json for eval_only), as train_gpt.py does.
The model (BERT, BERTConfig) imports without side effects.
"""
import math
import os
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import training
from attention import (LMConfig, TransformerLM, attention_pattern, fingerprint, redraw_random_features,
                       resolve_kernel, stack_name)
from training import ConfigError

# -----------------------------------------------------------------------------------------------
# config: every key below can be changed by configs/*.py files and --key=value, nothing else.
# The defaults are the WikiText-103 baseline, a RoBERTa-small: 8 layers, 512 wide, 8 heads, 512-token windows,
# 64k tokens per step (16 x 8 x 512) for 50k steps (3.3B tokens, ~28 epochs of the 117M training tokens), with
# RoBERTa's masking, betas (0.9, 0.98) and weight decay 0.01, warmup then cosine decay.
# I/O
out_dir = ''               # '' = out-bert-<data folder>-<attention>, e.g. out-bert-wikitext103-linear
init_from = 'scratch'      # 'scratch' or 'resume' (out_dir/ckpt.pt, same architecture)
eval_only = False          # evaluate the full val and test splits, write out_dir/eval.json, exit
eval_interval = 1000       # also how often ckpt.pt is written
eval_iters = 100           # batches in the quick val estimate: evenly spaced windows of the fixed masked val split
log_interval = 10          # also how often Ctrl-C is acted on under DDP (the check is a sync)
# data
data_dir = 'data/wikitext103'  # {train,val,test}.bin and meta.json from prepare_wikitext103.py / prepare_enwik8.py
batch_size = 16            # sequences per micro-step over ALL processes: each of N ranks takes batch_size / N
gradient_accumulation_steps = 8  # micro-steps per optimizer step, whatever the number of processes
block_size = 512           # sequence length
mask_prob = 0.15           # fraction of tokens selected for prediction (80% mask, 10% random, 10% unchanged)
eval_seed = 1234           # the evaluation masks; keep it fixed across runs that are compared
# model
attention = 'softmax'      # a name in attention.ATTENTION with a bidirectional form (the causal-only ones, gla,
                           # deltanet, mamba2, fox, ..., are refused with the list of those accepted); run bidirectionally
n_layer = 8
n_head = 8
n_embd = 512
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
learning_rate = 6e-4
max_iters = 50000
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.98               # RoBERTa's
grad_clip = 1.0            # 0 = off
# schedule: linear warmup, cosine decay to min_lr at lr_decay_iters
warmup_iters = 2000
lr_decay_iters = 50000
min_lr = 6e-5
# system
device = 'auto'            # 'auto' = cuda if available, else cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'             # 'auto' = bfloat16 (float16 where unsupported) on cuda, float32 on cpu
compile = False            # torch.compile the model (off: compile support and speedups differ by variant)
seed = 1337
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
CAUSAL = False  # the attention's mode in this task (sweep.py checks each planned variant against it)
IGNORE = -100              # target of the tokens that were not selected (F.cross_entropy's ignore_index)
# -----------------------------------------------------------------------------------------------


@dataclass
class BERTConfig(LMConfig):
    """The block's LayerConfig plus the masked LM's own fields. vocab_size includes the mask token."""
    vocab_size: int = 257
    n_layer: int = 8
    causal: bool = False


class BERT(TransformerLM):
    """The masked LM: attention.TransformerLM with bidirectional Blocks. The mask token is the last id of the
    vocabulary."""

    def __init__(self, config):
        if config.causal:
            raise ValueError("a masked LM reads both directions: causal must be False")
        super().__init__(config)

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids, T <= block_size. Without targets: logits (B, T, vocab) and None. With targets
        (B, T), IGNORE where not selected: the head runs on the selected positions only, returning their logits
        (N, vocab) and the mean loss over them."""
        x = self.hidden(idx)
        if targets is None:
            return self.lm_head(x), None
        selected = targets != IGNORE
        logits = self.lm_head(x[selected])  # (N, vocab): ~15% of the positions, so ~1/7 of the head's work
        return logits, F.cross_entropy(logits.float(), targets[selected])


# -----------------------------------------------------------------------------------------------
# masking and data


def mask_tokens(tokens, vocab_size, mask_prob, generator):
    """RoBERTa's masking of tokens (any shape, ids in [0, vocab_size)); the mask token is vocab_size.
    Selects each token with probability mask_prob; a selected token becomes the mask token (80%), a uniformly
    random token of the original vocabulary (10%) or stays (10%). Returns (inputs, targets), targets IGNORE where
    not selected. Draws three tensors of tokens.shape from generator, whatever the outcome."""
    selected = torch.rand(tokens.shape, generator=generator) < mask_prob
    action = torch.rand(tokens.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, tokens.shape, generator=generator)
    inputs = torch.where(selected & (action < 0.8), vocab_size, tokens)
    inputs = torch.where(selected & (action >= 0.9), random_tokens, inputs)
    return inputs, torch.where(selected, tokens, IGNORE)


def to_device(tensors, device):
    if device.startswith('cuda'):  # pinned memory makes the host-to-device copy asynchronous
        return [t.pin_memory().to(device, non_blocking=True) for t in tensors]
    return [t.to(device) for t in tensors]


def train_batch(data, cfg, vocab_size, generator, dist):
    """This rank's share of a fresh batch of batch_size random windows, masked: (inputs, targets, weight).
    The generator is the same on every rank, so all ranks draw and mask the same global batch and each takes its
    own rows: the data does not depend on the number of processes. Ranks get different numbers of masked tokens;
    weight = world_size x this rank's share of them, so the mean over ranks of weight x (this rank's mean loss)
    is the mean over every masked token of the batch, as in one process."""
    starts = torch.randint(len(data) - cfg.block_size + 1, (cfg.batch_size,), generator=generator).tolist()
    tokens = torch.from_numpy(np.stack([data[s:s + cfg.block_size] for s in starts]).astype(np.int64))
    inputs, targets = mask_tokens(tokens, vocab_size, cfg.mask_prob, generator)
    share = cfg.batch_size // dist.world_size
    rows = slice(dist.rank * share, (dist.rank + 1) * share)
    weight = dist.world_size * (targets[rows] != IGNORE).sum().item() / (targets != IGNORE).sum().item()
    return *to_device([inputs[rows], targets[rows]], dist.device), weight


def masked_split(cfg, meta, split):
    """The whole split masked once, as a flat stream, from eval_seed alone: (inputs, targets), each (N,) int64.
    The same for every model and run over the same data, whatever the block_size."""
    tokens = torch.from_numpy(training.open_split(cfg.data_dir, split, meta['dtype']).astype(np.int64))
    return mask_tokens(tokens, meta['vocab_size'], cfg.mask_prob, torch.Generator().manual_seed(cfg.eval_seed))


@torch.no_grad()
def evaluate(model, masked, starts, cfg, dist, ctx):
    """Sums over the windows [s, s + block_size) of the masked stream (the one at the end of the split may be
    shorter): ranks take every world_size-th window, the sums are all-reduced.
    Returns (loss in nats per masked token, masked-token accuracy, masked tokens)."""
    inputs, targets = masked
    starts = starts[dist.rank::dist.world_size]
    full = [s for s in starts if s + cfg.block_size <= len(inputs)]
    groups = [full[i:i + cfg.batch_size] for i in range(0, len(full), cfg.batch_size)]
    groups += [[s] for s in starts if s + cfg.block_size > len(inputs)]
    nll = correct = count = 0.0
    for group in groups:
        length = min(cfg.block_size, len(inputs) - group[0])
        x, y = to_device([torch.stack([t[s:s + length] for s in group]) for t in (inputs, targets)], dist.device)
        with ctx:
            logits, _ = model(x, y)
        y = y[y != IGNORE]
        nll += F.cross_entropy(logits.float(), y, reduction='sum').item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    nll, correct, count = training.all_reduce_sum([nll, correct, count], dist.device)
    return nll / count, correct / count, int(count)


def quick_starts(n_tokens, cfg):
    """eval_iters batches of full windows spread evenly over the split: the quick val estimate during training."""
    full = list(range(0, n_tokens - cfg.block_size + 1, cfg.block_size))
    stride = max(1, len(full) // (cfg.eval_iters * cfg.batch_size))
    return full[::stride][:cfg.eval_iters * cfg.batch_size]


# -----------------------------------------------------------------------------------------------
# the run


def build_model(model_args):
    try:
        return BERT(BERTConfig(**model_args))
    except ValueError as e:  # unknown attention or norm, n_embd not divisible by n_head
        raise ConfigError(str(e)) from None


def train(cfg, dist):
    """The run: checks, data, model, optimizer, resume, then eval_only or the training loop."""
    device, accumulation = dist.device, cfg.gradient_accumulation_steps
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    training.check_run(cfg, dist)
    dtype = training.resolve_dtype(device, cfg.dtype)
    cfg.device, cfg.dtype = device, dtype  # config.json records what actually ran
    ctx, scaler = training.mixed_precision(device, dtype)  # autocast, and fp16's loss scaling (a no-op otherwise)

    # data: random training windows and their masks drawn from a generator that is the same on every rank
    meta = training.load_meta(cfg.data_dir)
    for split in ('train', 'val', 'test'):
        if len(training.open_split(cfg.data_dir, split, meta['dtype'])) < cfg.block_size:
            raise ConfigError(f"{cfg.data_dir}/{split}.bin is shorter than block_size = {cfg.block_size} tokens")
    data_generator = torch.Generator().manual_seed(cfg.seed)
    tokens_per_iter = accumulation * cfg.batch_size * cfg.block_size

    # model: the same initial weights on every rank and for every variant (see attention.init_weights)
    model_args = {k: v for k, v in vars(cfg).items() if k in BERTConfig.__dataclass_fields__}
    model_args.update(vocab_size=meta['vocab_size'] + 1, causal=CAUSAL)  # + 1: the mask token
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
                                                                    model_args, [data_generator], dist)
    eval_model = torch.compile(model) if cfg.compile else model
    train_model = eval_model  # evaluation skips DDP: ranks may run different numbers of eval batches
    if dist.world_size > 1:
        train_model = DDP(eval_model, device_ids=[dist.local_rank] if device.startswith('cuda') else None)
    attention_params = sum(p.numel() for block in model.blocks for p in block.attn.parameters())
    cfg.n_params, cfg.attention_params = model.num_params(), attention_params  # recorded in config.json
    cfg.fingerprint = {'block': fingerprint(vars(cfg), causal=False), 'trainer': training.code_fingerprint(__file__)}
    if dist.master:
        print(f"{stack_name(cfg)} (bidirectional): {model.num_params():,} parameters ({attention_params:,} in "
              f"attention), {tokens_per_iter:,} tokens per iteration, {dist.world_size} process(es) on {device}, "
              f"{dtype}, {type(optimizer).__name__}")

    if cfg.eval_only:
        eval_model.eval()
        results = {'iter': iter_num}
        for split in ('val', 'test'):
            masked = masked_split(cfg, meta, split)
            starts = list(range(0, len(masked[0]), cfg.block_size))
            loss, accuracy, masked_tokens = evaluate(eval_model, masked, starts, cfg, dist, ctx)
            results[split] = {'loss': loss, 'ppl': math.exp(loss), 'acc': accuracy, 'masked_tokens': masked_tokens}
        if dist.master:
            training.write_eval(cfg.out_dir, results)
        return

    val = masked_split(cfg, meta, 'val')  # the quick estimate: fixed windows of the fixed masked val split
    val_starts = quick_starts(len(val[0]), cfg)
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
                row['val_loss'], row['val_acc'], _ = evaluate(eval_model, val, val_starts, cfg, dist, ctx)
                eval_model.train()
                if not math.isfinite(row['val_loss']):
                    training.exit_nonfinite(iter_num, 'val loss', last_saved, ckpt_path)
            if stopping or (row and iter_num > start_iter):  # a checkpoint after each eval, and before stopping
                rng = training.rng_states([data_generator])  # a collective under DDP: every rank calls it
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
                lr = training.get_lr(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
                for group in optimizer.param_groups:
                    group['lr'] = lr
                # performer: new random features every performer_redraw_interval steps, the same on every rank
                redraw_random_features(model, iter_num, cfg.seed)
                train_loss = torch.zeros((), device=device)
                for micro_step in range(accumulation):
                    if dist.world_size > 1:  # sync gradients on the last micro-step only: one all-reduce per step
                        train_model.require_backward_grad_sync = micro_step == accumulation - 1
                    data = training.open_split(cfg.data_dir, 'train', meta['dtype'])
                    x, y, weight = train_batch(data, cfg, meta['vocab_size'], data_generator, dist)
                    with ctx:
                        _, loss = train_model(x, y)
                        # weight: this rank's share of the masked tokens (see train_batch); the step's gradient is
                        # the mean over its micro-batches
                        loss = loss * weight / accumulation
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
        cfg.out_dir = f"out-bert-{os.path.basename(os.path.normpath(cfg.data_dir))}-{stack_name(cfg)}"
    with training.distributed(cfg.device) as dist, training.hold_run_folder(cfg.out_dir, dist):
        train(cfg, dist)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        training.exit_with(e)
