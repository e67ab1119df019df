"""
Masked language modelling, RoBERTa-style, with any attention in attention.py run bidirectionally (causal=False):
dynamic masking (fresh masks every batch), no next-sentence task, on the same prepared .bin data as train_gpt.py
(WikiText-103 GPT-2 tokens, enwik8 bytes, or any byte corpus). Everything but the attention is the same for every run.

    python train_bert.py                                         # the WikiText-103 baseline below, softmax attention
    python train_bert.py configs/bert/linear.py                  # the same recipe with linear attention
    python train_bert.py configs/bert/cpu_small.py --attention=retention    # config files, then --key=value
    torchrun --standalone --nproc_per_node=8 train_bert.py configs/bert/linear.py
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
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

import training
from attention import LMConfig, TransformerLM
from train_gpt import load_meta, open_split
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
log_interval = 10
# data
data_dir = 'data/wikitext103'  # {train,val,test}.bin and meta.json from prepare_wikitext103.py / prepare_enwik8.py
batch_size = 16            # sequences per micro-step over ALL processes: each of N ranks takes batch_size / N
gradient_accumulation_steps = 8  # micro-steps per optimizer step, whatever the number of processes
block_size = 512           # sequence length
mask_prob = 0.15           # fraction of tokens selected for prediction (80% mask, 10% random, 10% unchanged)
eval_seed = 1234           # the evaluation masks; keep it fixed across runs that are compared
# model
attention = 'softmax'      # a name in attention.ATTENTION; always run bidirectionally here
n_layer = 8
n_head = 8
n_embd = 512
dropout = 0.1
bias = False               # bias in linear layers and LayerNorm
norm = 'layernorm'         # 'layernorm' or 'rmsnorm'
chunk_size = 64            # linear-attention family: chunk length of the chunkwise-parallel kernel
local_window = 128         # local: keys per query (64 on each side)
performer_features = 256   # performer: random features per head
# optimizer: AdamW, weight decay on matrices and embeddings only
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
ARCHITECTURE = ('vocab_size', 'n_layer', 'attention', 'n_head', 'n_embd', 'block_size', 'bias', 'norm',
                'chunk_size', 'local_window', 'performer_features')  # a checkpoint must agree on these
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
    tokens = torch.from_numpy(open_split(cfg.data_dir, split, meta['dtype']).astype(np.int64))
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


def run_training(cfg, config, dist):
    run = training.Run(cfg, config, dist)
    if not 0 < cfg.mask_prob < 1:
        raise ConfigError(f"mask_prob={cfg.mask_prob} must be between 0 and 1")
    meta = load_meta(cfg.data_dir)
    for split in ('train', 'val', 'test'):
        if len(open_split(cfg.data_dir, split, meta['dtype'])) < cfg.block_size:
            raise ConfigError(f"{cfg.data_dir}/{split}.bin is shorter than block_size = {cfg.block_size} tokens")
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    model_args = {k: v for k, v in config.items() if k in BERTConfig.__dataclass_fields__}
    model_args.update(vocab_size=meta['vocab_size'] + 1, causal=False)  # + 1: the mask token
    data_generator = torch.Generator().manual_seed(cfg.seed)  # training windows and masks; the same on every rank
    raw_model = run.build(build_model, model_args, ARCHITECTURE, [data_generator])
    if dist.master:
        attention_params = sum(p.numel() for block in raw_model.blocks for p in block.attn.parameters())
        print(f"{cfg.attention} (bidirectional): {raw_model.num_params():,} parameters ({attention_params:,} in "
              f"attention), {tokens_per_iter:,} tokens per iteration, {dist.world_size} process(es) on "
              f"{dist.device}, {config['dtype']}")

    if cfg.eval_only:
        run.eval_model.eval()
        results = {'iter': run.iter_num}
        for split in ('val', 'test'):
            masked = masked_split(cfg, meta, split)
            loss, accuracy, masked_tokens = evaluate(run.eval_model, masked,
                                                     list(range(0, len(masked[0]), cfg.block_size)), cfg, dist, run.ctx)
            results[split] = {'loss': loss, 'ppl': math.exp(loss), 'acc': accuracy, 'masked_tokens': masked_tokens}
        run.write_eval(results)
        return

    val = masked_split(cfg, meta, 'val')
    val_starts = quick_starts(len(val[0]), cfg)

    def micro_loss(model):
        x, y, weight = train_batch(open_split(cfg.data_dir, 'train', meta['dtype']), cfg, meta['vocab_size'],
                                   data_generator, dist)
        return model(x, y)[1] * weight  # weight: this rank's share of the masked tokens, see train_batch

    def evaluate_val(model):
        loss, accuracy, _ = evaluate(model, val, val_starts, cfg, dist, run.ctx)
        return {'val_loss': loss, 'val_acc': accuracy}

    run.train(micro_loss, evaluate_val, 'tokens_per_s', tokens_per_iter)


def main(argv):
    cfg_dict = training.apply_overrides(DEFAULTS, argv)
    if not cfg_dict['out_dir']:
        data = os.path.basename(os.path.normpath(cfg_dict['data_dir']))
        cfg_dict['out_dir'] = f"out-bert-{data}-{cfg_dict['attention']}"
    with training.distributed(cfg_dict['device']) as dist:
        run_training(SimpleNamespace(**cfg_dict), cfg_dict, dist)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
