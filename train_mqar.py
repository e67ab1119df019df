"""
Multi-query associative recall (MQAR) with any causal attention in attention.py: the synthetic recall task of
Arora, Eyuboglu et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models"
(arXiv:2312.04927), which explains most of the quality gap between attention and its efficient replacements.
Everything but the attention is the same for every run.

    python train_mqar.py configs/mqar/cpu.py                           # (T, kv) = (64, 4) on CPU, softmax
    python train_mqar.py configs/mqar/cpu.py --attention=linear        # config files, then --key=value
    python train_mqar.py configs/mqar/cpu.py configs/mqar/t256_kv16.py # the harder setting, same recipe
    torchrun --standalone --nproc_per_node=8 train_mqar.py configs/linear.py
    python train_mqar.py configs/mqar/cpu.py --init_from=resume        # continue out_dir/ckpt.pt exactly
    python train_mqar.py configs/mqar/cpu.py --init_from=resume --eval_only=True  # val and test accuracy

An example (Zoology's generator): the vocabulary is split in two, keys 1 .. V/2 - 1 and values V/2 .. V - 1 (0 is
the filler). A sequence of T = block_size tokens starts with num_kv_pairs pairs `k_1 v_1 k_2 v_2 ...` (distinct
keys, distinct values); the rest holds (T - 2 kv) // 2 query slots, at every other position after the pairs, and
each key is asked once, in a slot drawn from the power law P(gap g) ~ g^(power_a - 1), g = 1 .. slots (power_a =
0.01: queries cluster soon after the pairs, as repeated bigrams do in text), the slots drawn without replacement in
the order of the keys. Every other position is filler: 0, or a uniform random token with random_filler.
The model reads the key at a query slot and must predict its value there: the loss and the accuracy count those
num_kv_pairs answer tokens only (targets are -100 elsewhere). For example, V = 12, T = 16, kv = 2:

    inputs   2  8  4  7  0  0  4  0  0  0  0  0  2  0  0  0
    targets  .  .  .  .  .  .  7  .  .  .  .  .  8  .  .  .        (. = -100: no loss)

Data: a fixed training set of train_examples examples drawn from seed (the same for every variant at that seed),
batches of random examples from the run's seeded generator (saved in the checkpoint: resume is exact), and two
held-out sets drawn from eval_seed alone, the same for every run: val (val_examples, evaluated every eval_interval
and for model selection) and test (test_examples). eval_only writes eval.json: per split, 'accuracy' (the fraction
of answer tokens whose argmax is the value), 'loss' (nats per answer token) and 'queries' (answer tokens scored).

One run writes out_dir/{config.json, log.jsonl, ckpt.pt} (and eval.json for eval_only), as train_gpt.py does.
A log.jsonl row: iter; val_loss and val_acc at evals (the whole val set); train_loss, lr, grad_norm, tokens_per_s,
peak_mem_mb every log_interval; elapsed_s. The model (RecallLM) imports without side effects.
"""
import math
import os
import sys
import time
import zlib
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import training
from attention import (LMConfig, TransformerLM, attention_pattern, fingerprint, redraw_random_features,
                       resolve_kernel, stack_name)
from training import ConfigError

# -----------------------------------------------------------------------------------------------
# config: every key below can be changed by configs/*.py files and --key=value, nothing else.
# The defaults are Zoology's Figure 2 recipe at (T, kv) = (64, 4), trev's block in place of theirs: vocabulary 8192,
# 100k training examples, 3k test examples, power_a 0.01, filler 0 (their random_non_queries=False), 2 layers,
# one head, batch 512 for 64 epochs (12.5k steps), AdamW with cosine decay to 0 and no warmup. Zoology trains
# d_model 64 to 512 and reports, per model, the best accuracy over learning rates 1e-4 .. 1e-2 (4 log-spaced
# values; sweeps/mqar_gpu.py). Their blocks have no MLP in that figure and they stop early at 0.99 accuracy; trev keeps
# its MLP (the same block for every task and variant) and a fixed budget, so that runs are compared at equal work.
# I/O
out_dir = ''               # '' = out-mqar-t<block_size>-kv<num_kv_pairs>-<attention>, e.g. out-mqar-t64-kv4-linear
init_from = 'scratch'      # 'scratch' or 'resume' (out_dir/ckpt.pt, same architecture)
eval_only = False          # evaluate the val and test sets, write out_dir/eval.json, exit
eval_interval = 500        # the whole val set; also how often ckpt.pt is written
log_interval = 10          # also how often Ctrl-C is acted on under DDP (the check is a sync)
# data
vocab_size = 8192          # keys 1 .. V/2 - 1, values V/2 .. V - 1, 0 the filler
block_size = 64            # T, the sequence length
num_kv_pairs = 4           # kv, key-value pairs per sequence, each queried once; needs T >= 4 kv
power_a = 0.01             # query slot g = 1, 2, ... is drawn with probability ~ g^(power_a - 1); 1 = uniform
random_filler = False      # filler tokens: 0 (False), or uniform random tokens of the whole vocabulary (True)
train_examples = 100000    # the fixed training set, drawn from seed
val_examples = 1000        # the held-out sets, drawn from eval_seed alone: the same for every run
test_examples = 3000
eval_seed = 1234           # keep it fixed across runs that are compared
batch_size = 512           # sequences per micro-step over ALL processes: each of N ranks takes batch_size / N
gradient_accumulation_steps = 1  # micro-steps per optimizer step, whatever the number of processes
# model
attention = 'softmax'      # a name in attention.ATTENTION; always run causally here
n_layer = 2
n_head = 1
n_embd = 128
dropout = 0.0
bias = False               # bias in linear layers and LayerNorm
norm = 'layernorm'         # 'layernorm', 'rmsnorm' or 'scalenorm' (one learned scale of the l2-normalised vector)
norm_position = 'pre'      # 'pre': x + f(norm(x)); 'post': norm(x + f(x)), as in the original transformer
chunk_size = 64            # linear-attention family: chunk length of the chunkwise-parallel kernel
local_window = 32          # local: keys per query; half the (64, 4) sequence, and the same at every setting
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
learning_rate = 1e-3
max_iters = 12500          # 64 epochs of 100,000 / 512
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0            # 0 = off
# schedule: linear warmup, cosine decay to min_lr at lr_decay_iters
warmup_iters = 0
lr_decay_iters = 12500
min_lr = 0.0
# system
device = 'auto'            # 'auto' = cuda if available, else cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'             # 'auto' = bfloat16 (float16 where unsupported) on cuda, float32 on cpu
compile = False            # torch.compile the model (off: compile support and speedups differ by variant)
seed = 1337
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
CAUSAL = True  # the attention's mode in this task (sweep.py checks each planned variant against it)
IGNORE = -100              # target of every token but the answers (F.cross_entropy's ignore_index)
# -----------------------------------------------------------------------------------------------


class RecallLM(TransformerLM):
    """The causal LM of attention.TransformerLM, scored at the answer positions only."""

    def __init__(self, config):
        assert config.causal, "recall is read left to right: causal must be True"
        super().__init__(config)

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids, T <= block_size. Without targets: logits (B, T, vocab) and None. With targets
        (B, T), IGNORE but at the answers: the head runs on the answer positions only, returning their logits
        (N, vocab) and the mean loss over them."""
        x = self.hidden(idx)
        if targets is None:
            return self.lm_head(x), None
        answers = targets != IGNORE
        logits = self.lm_head(x[answers])  # (N, vocab): kv of the T positions, a small part of the head's work
        return logits, F.cross_entropy(logits.float(), targets[answers])


# -----------------------------------------------------------------------------------------------
# data


def check_settings(cfg):
    """ConfigError unless the vocabulary and the sequence hold num_kv_pairs distinct keys, values and query slots
    (sweep.py calls it on every planned run before the first starts)."""
    for key in ('num_kv_pairs', 'train_examples', 'val_examples', 'test_examples'):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: must be at least 1; set --{key} to a positive value")
    if cfg.vocab_size // 2 - 1 < cfg.num_kv_pairs:
        raise ConfigError(f"vocab_size={cfg.vocab_size} leaves {max(cfg.vocab_size // 2 - 1, 0)} key tokens (1 .. "
                          f"V/2 - 1) for num_kv_pairs={cfg.num_kv_pairs} distinct keys; set vocab_size to "
                          f"{2 * cfg.num_kv_pairs + 2} or more")
    if cfg.block_size < 4 * cfg.num_kv_pairs:
        raise ConfigError(f"block_size={cfg.block_size} has no room for {cfg.num_kv_pairs} pairs and their queries; "
                          f"set block_size to 4 x num_kv_pairs = {4 * cfg.num_kv_pairs} or more")
    if not cfg.power_a > 0:
        raise ConfigError(f"power_a={cfg.power_a!r}: must be positive (Zoology's is 0.01; 1 = uniform query slots)")


def without_replacement(log_weights, n, k, generator):
    """n independent draws of k distinct indices of log_weights (M,), each as k successive picks with probability
    proportional to the weights of the indices not yet picked (numpy's choice(replace=False, p=...)), in the order
    picked. The Gumbel-top-k trick (Kool et al. 2019, arXiv:1903.06059): the k largest of log_weights + Gumbel
    noise, in decreasing order, have exactly that distribution. Time and memory O(n M). Returns (n, k) int64."""
    gumbel = -torch.log(-torch.log(torch.rand(n, len(log_weights), generator=generator)))  # rand = 0 gives -inf
    return (log_weights + gumbel).topk(k, dim=1).indices


def uniform_without_replacement(m, n, k, generator):
    """(n, k) int64: k distinct integers of [0, m) per row, every ordered k-tuple equally likely. Floyd's algorithm
    (Bentley & Floyd 1987, "A sample of brilliance") picks a uniform k-subset in k steps: step j = m - k .. m - 1
    draws t from 0 .. j and takes t, or j where t is taken already; a random permutation then orders it. Time
    O(n k^2), nothing of size m, which the Gumbel-top-k form (O(n m)) would need for a vocabulary of keys."""
    chosen = torch.empty(n, k, dtype=torch.long)
    for i, j in enumerate(range(m - k, m)):
        t = torch.randint(j + 1, (n,), generator=generator)
        taken = (chosen[:, :i] == t[:, None]).any(1)
        chosen[:, i] = torch.where(taken, j, t)
    return chosen.gather(1, torch.rand(n, k, generator=generator).argsort(1))


def mqar_examples(n, cfg, generator, chunk=4096):
    """n MQAR examples of cfg's setting (see the module docstring), drawn from generator in chunks of `chunk`
    examples. Time and memory O(n T). Returns inputs and targets, each (n, T) int32 (IGNORE where there is no
    answer); the caller widens a batch to int64."""
    T, kv, V = cfg.block_size, cfg.num_kv_pairs, cfg.vocab_size
    slots = (T - 2 * kv) // 2
    power_law = (cfg.power_a - 1) * torch.arange(1, slots + 1, dtype=torch.float64).log()  # log P(g), unnormalised
    inputs, targets = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        keys = 1 + uniform_without_replacement(V // 2 - 1, m, kv, generator)         # (m, kv) in 1 .. V/2 - 1
        values = V // 2 + uniform_without_replacement(V - V // 2, m, kv, generator)  # (m, kv) in V/2 .. V - 1
        gaps = without_replacement(power_law, m, kv, generator)  # (m, kv): the slot of each key's query, 0-based
        x = torch.randint(V, (m, T), generator=generator) if cfg.random_filler else torch.zeros(m, T, dtype=torch.long)
        x[:, 0:2 * kv:2], x[:, 1:2 * kv:2] = keys, values                            # k_1 v_1 k_2 v_2 ...
        query = 2 * kv + 2 * gaps                                                     # (m, kv) positions
        x.scatter_(1, query, keys)
        y = torch.full((m, T), IGNORE).scatter_(1, query, values)                    # the value, predicted at its key
        inputs.append(x.int())
        targets.append(y.int())
    return torch.cat(inputs), torch.cat(targets)


def stream(name, seed):
    """A generator for one data set, seeded by its name and a seed: train, val and test never share draws."""
    return torch.Generator().manual_seed(zlib.crc32(f'{name}:{seed}'.encode()))


def random_examples(n_examples, batch_size, generator, dist):
    """This rank's share of batch_size random example indices. The generator is the same on every rank, so all
    ranks draw the same global batch and each takes its own slice: the data does not depend on the rank count."""
    indices = torch.randint(n_examples, (batch_size,), generator=generator)
    share = batch_size // dist.world_size
    return indices[dist.rank * share:(dist.rank + 1) * share]


def get_batch(examples, indices, device):
    """x, y: the examples at indices, (len(indices), block_size) int64."""
    x, y = (t[indices].long() for t in examples)
    if device.startswith('cuda'):  # pinned memory makes the host-to-device copy asynchronous
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate(model, examples, cfg, dist, ctx):
    """Every answer of a held-out set, in batches of batch_size examples; ranks take every world_size-th batch and
    the sums are all-reduced. Returns (loss in nats per answer, accuracy, answers scored)."""
    starts = list(range(0, len(examples[0]), cfg.batch_size))[dist.rank::dist.world_size]
    nll = correct = count = 0.0
    for start in starts:
        x, y = get_batch(examples, torch.arange(start, min(start + cfg.batch_size, len(examples[0]))), dist.device)
        with ctx:
            logits, _ = model(x, y)
        y = y[y != IGNORE]
        nll += F.cross_entropy(logits.float(), y, reduction='sum').item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    nll, correct, count = training.all_reduce_sum([nll, correct, count], dist.device)
    return nll / count, correct / count, int(count)


# -----------------------------------------------------------------------------------------------
# the run


def build_model(model_args):
    try:
        return RecallLM(LMConfig(**model_args))
    except ValueError as e:  # unknown attention or norm, n_embd not divisible by n_head, a bidirectional-only variant
        raise ConfigError(str(e)) from None


def train(cfg, dist):
    """The run: checks, data, model, optimizer, resume, then eval_only or the training loop."""
    device, accumulation = dist.device, cfg.gradient_accumulation_steps
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    training.check_run(cfg, dist)
    dtype = training.resolve_dtype(device, cfg.dtype)
    cfg.device, cfg.dtype = device, dtype  # config.json records what actually ran
    ctx, scaler = training.mixed_precision(device, dtype)  # autocast, and fp16's loss scaling (a no-op otherwise)

    # data: the fixed training set (from seed) and held-out sets (from eval_seed), the same on every rank; batches
    # of random training examples drawn from a generator that is the same on every rank
    check_settings(cfg)
    train_set = mqar_examples(cfg.train_examples, cfg, stream('train', cfg.seed))
    held_out = {split: mqar_examples(n, cfg, stream(split, cfg.eval_seed))
                for split, n in (('val', cfg.val_examples), ('test', cfg.test_examples))}
    data_generator = torch.Generator().manual_seed(cfg.seed)
    tokens_per_iter = accumulation * cfg.batch_size * cfg.block_size

    # model: the same initial weights on every rank and for every variant (see attention.init_weights)
    model_args = {k: v for k, v in vars(cfg).items() if k in LMConfig.__dataclass_fields__}
    model_args.update(causal=CAUSAL)
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
    cfg.fingerprint = {'block': fingerprint(vars(cfg), causal=True), 'trainer': training.code_fingerprint(__file__)}
    if dist.master:
        print(f"{stack_name(cfg)}: {model.num_params():,} parameters ({attention_params:,} in attention), "
              f"{tokens_per_iter:,} tokens per iteration, {dist.world_size} process(es) on {device}, {dtype}, "
              f"{type(optimizer).__name__}")

    if cfg.eval_only:
        eval_model.eval()
        results = {'iter': iter_num}
        for split in ('val', 'test'):
            loss, accuracy, queries = evaluate(eval_model, held_out[split], cfg, dist, ctx)
            results[split] = {'loss': loss, 'accuracy': accuracy, 'queries': queries}
        if dist.master:
            training.write_eval(cfg.out_dir, results)
        return

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
                row['val_loss'], row['val_acc'], _ = evaluate(eval_model, held_out['val'], cfg, dist, ctx)
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
                    indices = random_examples(len(train_set[0]), cfg.batch_size, data_generator, dist)
                    x, y = get_batch(train_set, indices, device)
                    with ctx:
                        # every example has num_kv_pairs answers, so each rank's mean is over equally many
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
        cfg.out_dir = f"out-mqar-t{cfg.block_size}-kv{cfg.num_kv_pairs}-{stack_name(cfg)}"
    with training.distributed(cfg.device) as dist, training.hold_run_folder(cfg.out_dir, dist):
        train(cfg, dist)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        training.exit_with(e)
