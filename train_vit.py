"""
Image classification with a Vision Transformer and any attention in attention.py run bidirectionally
(causal=False): CIFAR-10 through torchvision's dataset class, ImageNet-style folders through ImageFolder, or Shapes,
generated offline by prepare_shapes.py. Everything but the attention is the same for every run.

    python train_vit.py                                          # the CIFAR-10 baseline below, softmax attention
    python train_vit.py configs/linear.py                    # the same recipe with linear attention
    python train_vit.py configs/vit/cpu_small.py --attention=retention    # config files, then --key=value
    torchrun --standalone --nproc_per_node=8 train_vit.py configs/linear.py
    python train_vit.py configs/vit/cpu_small.py --init_from=resume       # continue out_dir/ckpt.pt exactly
    python train_vit.py configs/vit/cpu_small.py --init_from=resume --eval_only=True  # the full eval split
    python train_vit.py --dataset=imagefolder --data_dir=data/imagenet --image_size=224 --patch_size=16
    python prepare_shapes.py && python train_vit.py configs/vit/shapes_cpu.py  # offline: minutes on a CPU

Data: CIFAR-10 is downloaded into data_dir when it is not there (train 50k, test 10k; CIFAR-10 has no
validation split, so the test split is the one evaluated, as in the usual from-scratch ViT recipes). An
ImageFolder tree has data_dir/train/<class>/* and data_dir/val/<class>/*; val is evaluated, as for Shapes (four
shapes an image, the class is the kind that appears twice: see prepare_shapes.py). Training augmentation:
RandomCrop(padding 4) for CIFAR-10, RandomResizedCrop for folders, then a horizontal flip; Shapes both flips;
evaluation uses no augmentation (folders: resize to image_size / 0.875 and center crop) and scores every image
of the split in a fixed order: loss (without label smoothing) and top-1 accuracy.

Exact resume: epoch e is a permutation drawn from (seed, e), cut into batches, so what an iteration loads
depends on the iteration alone; each image's augmentation is drawn with torch's RNG seeded from
(seed, epoch, index), so it depends neither on the DataLoader workers nor on where a run was resumed.
One run writes out_dir/{config.json, log.jsonl, ckpt.pt} (and eval.json for eval_only), as train_gpt.py does.
The model (ViT, ViTConfig) imports without side effects.
"""
import atexit
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, Subset
from PIL import Image
from torchvision import datasets, transforms

import training
from attention import (Block, LayerConfig, attention_pattern, fingerprint, init_weights, layer_configs,
                       make_final_norm, redraw_random_features, resolve_kernel, stack_name)
from training import ConfigError

# -----------------------------------------------------------------------------------------------
# config: every key below can be changed by configs/*.py files and --key=value, nothing else.
# The defaults are the common CIFAR-10 ViT-from-scratch baseline: 4x4 patches (64 tokens + a class token),
# 7 layers, 384 wide, 6 heads, AdamW with weight decay 0.05, batch 128, 5 epochs of warmup then cosine decay
# over 200 epochs (390 steps each), label smoothing 0.1, random crop + flip.
# I/O
out_dir = ''               # '' = out-vit-<cifar10 or image folder>-<attention>, e.g. out-vit-cifar10-linear
init_from = 'scratch'      # 'scratch' or 'resume' (out_dir/ckpt.pt, same architecture)
eval_only = False          # evaluate the full eval split, write out_dir/eval.json, exit
eval_interval = 1950       # every 5 epochs: the full eval split; also how often ckpt.pt is written
log_interval = 50          # also how often Ctrl-C is acted on under DDP (the check is a sync)
# data
dataset = 'cifar10'        # 'cifar10', 'imagefolder' or 'shapes' (generated offline by prepare_shapes.py)
data_dir = 'data'          # cifar10: holds cifar-10-batches-py/ (downloaded if missing); imagefolder: train/ and val/;
                           # shapes: prepare_shapes.py's train.npz, val.npz and meta.json
image_size = 32            # images are cropped to image_size x image_size (CIFAR-10: 32)
batch_size = 128           # images per micro-step over ALL processes: each of N ranks takes batch_size / N
gradient_accumulation_steps = 1  # micro-steps per optimizer step, whatever the number of processes
num_workers = 4            # DataLoader processes per rank; augmentation is seeded per image, so no result depends on it
label_smoothing = 0.1      # on the training loss only
# model
attention = 'softmax'      # a name in attention.ATTENTION with a bidirectional form (the causal-only ones, gla,
                           # deltanet, mamba2, fox, ..., are refused with the list of those accepted); run bidirectionally
patch_size = 4
pool = 'cls'               # 'cls': classify the class token; 'mean': the mean of the patch tokens
n_layer = 7
n_head = 6
n_embd = 384
dropout = 0.1
bias = False               # bias in linear layers and LayerNorm
norm = 'layernorm'         # 'layernorm', 'rmsnorm' or 'scalenorm' (one learned scale of the l2-normalised vector)
norm_position = 'pre'      # 'pre': x + f(norm(x)); 'post': norm(x + f(x)), as in the original transformer
chunk_size = 64            # linear-attention family: chunk length of the chunkwise-parallel kernel
local_window = 16          # local: keys per query; 8 on each side = the patches above and below on an 8x8 grid
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
# optimizer: weight decay on matrices, convolutions and embeddings only
optimizer = 'adamw'        # 'adamw', 'sgd' (Nesterov momentum beta1) or 'adafactor' (see training.build_optimizer)
learning_rate = 1e-3
max_iters = 78000          # 200 epochs of 50,000 / 128 = 390 steps
weight_decay = 0.05
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0            # 0 = off
# schedule: linear warmup, cosine decay to min_lr at lr_decay_iters
warmup_iters = 1950
lr_decay_iters = 78000
min_lr = 1e-5
# system
device = 'auto'            # 'auto' = cuda if available, else cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'             # 'auto' = bfloat16 (float16 where unsupported) on cuda, float32 on cpu
compile = False            # torch.compile the model (off: compile support and speedups differ by variant)
seed = 1337
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
CAUSAL = False  # the attention's mode in this task (sweep.py checks each planned variant against it)
PATCH_GRID = True  # the layers see each image's 2D grid of patches (vicinity and sra need it; the others ignore it)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHAPES_MEAN, SHAPES_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # to [-1, 1]: every image is drawn, none typical
# -----------------------------------------------------------------------------------------------


@dataclass
class ViTConfig(LayerConfig):
    """The block's LayerConfig plus the ViT's own fields; block_size (tokens per image) follows from them."""
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    n_layer: int = 7
    pool: str = 'cls'
    causal: bool = False
    block_size: int = field(init=False)
    patch_grid_width: int = field(init=False)
    class_tokens: int = field(init=False)

    def __post_init__(self):
        # the tokens: the class token (pool='cls'), then the patches in raster order, image_size / patch_size a row;
        # vicinity and sra read this grid, every other variant sees a sequence
        self.patch_grid_width = self.image_size // self.patch_size
        self.class_tokens = int(self.pool == 'cls')
        self.block_size = self.patch_grid_width ** 2 + self.class_tokens


class ViT(nn.Module):
    """Patch embedding (a Conv2d with stride = kernel = patch_size), optional class token, learned positions,
    n_layer bidirectional Blocks, final norm (pre-norm), pooling (class token or mean), linear head."""

    def __init__(self, config):
        super().__init__()
        if config.causal:
            raise ValueError("a ViT attends over the whole image: causal must be False")
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size={config.image_size} is not divisible by patch_size={config.patch_size}")
        if config.pool not in ('cls', 'mean'):
            raise ValueError(f"unknown pool '{config.pool}'; choose 'cls' or 'mean'")
        self.config = config
        self.patch_embedding = nn.Conv2d(config.in_channels, config.n_embd, config.patch_size, stride=config.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.n_embd)) if config.pool == 'cls' else None
        self.position_embedding = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(layer) for layer in layer_configs(config, config.n_layer)])
        self.norm = make_final_norm(config)
        self.head = nn.Linear(config.n_embd, config.num_classes)
        init_weights(self, config.n_layer, also=('position_embedding',))

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, images):
        """images: (B, in_channels, image_size, image_size) -> logits (B, num_classes)."""
        x = self.patch_embedding(images).flatten(2).transpose(1, 2)  # (B, N, C), patches in raster order
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1 + N, C)
        x = self.drop(x + self.position_embedding)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.class_token is not None else x.mean(dim=1))


# -----------------------------------------------------------------------------------------------
# data


def cifar10(root, train, transform=None, download=False):
    """torchvision's CIFAR10; download=True fetches and verifies it when missing (a no-op when it is there)."""
    try:
        return datasets.CIFAR10(root=root, train=train, transform=transform, download=download)
    except (OSError, RuntimeError) as e:  # offline (URLError is an OSError), or missing / corrupted files
        raise ConfigError(f"CIFAR-10 is not in {root}/cifar-10-batches-py and could not be fetched ({e}); "
                          f"put {datasets.CIFAR10.url.rsplit('/', 1)[1]} from {datasets.CIFAR10.url} "
                          f"into {root}/ and run again") from None


def load_data(cfg, dist):
    """(train set without transform, its augmentation, eval split name, eval set with its transform, classes)."""
    if cfg.dataset == 'cifar10':
        if cfg.image_size != 32:
            raise ConfigError(f"image_size={cfg.image_size}: CIFAR-10 images are 32x32")
        if dist.master:  # one process downloads, the others wait for it
            cifar10(cfg.data_dir, train=True, download=True)
        if torch_dist.is_initialized():
            torch_dist.barrier()
        normalise = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
        train_set = cifar10(cfg.data_dir, train=True)
        augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), normalise])
        eval_set = cifar10(cfg.data_dir, train=False, transform=transforms.Compose([transforms.ToTensor(), normalise]))
        return train_set, augment, 'test', eval_set, train_set.classes
    if cfg.dataset == 'imagefolder':
        for split in ('train', 'val'):
            if not os.path.isdir(os.path.join(cfg.data_dir, split)):
                raise ConfigError(f"{cfg.data_dir}/{split} not found: dataset='imagefolder' reads "
                                  f"data_dir/train/<class>/* and data_dir/val/<class>/*")
        normalise = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_set = image_folder(os.path.join(cfg.data_dir, 'train'))
        augment = transforms.Compose([transforms.RandomResizedCrop(cfg.image_size), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), normalise])
        eval_set = image_folder(os.path.join(cfg.data_dir, 'val'), transform=transforms.Compose([
            transforms.Resize(round(cfg.image_size / 0.875)), transforms.CenterCrop(cfg.image_size),
            transforms.ToTensor(), normalise]))
        if eval_set.classes != train_set.classes:
            raise ConfigError(f"{cfg.data_dir}/train and {cfg.data_dir}/val have different class folders")
        return train_set, augment, 'val', eval_set, train_set.classes
    if cfg.dataset == 'shapes':
        if cfg.image_size != 32:
            raise ConfigError(f"image_size={cfg.image_size}: Shapes images are 32x32")
        classes = shapes_meta(cfg.data_dir)['classes']
        normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(SHAPES_MEAN, SHAPES_STD)])
        # flips keep the class (which kind appears twice): the augmentation of a task whose images are all drawn
        augment = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(), normalise])
        train_set, eval_set = (ArrayImages(cfg.data_dir, split, len(classes)) for split in ('train', 'val'))
        eval_set.transform = normalise
        return train_set, augment, 'val', eval_set, classes
    raise ConfigError(f"dataset={cfg.dataset!r}; choose 'cifar10', 'imagefolder' or 'shapes'")


def shapes_meta(data_dir):
    """meta.json of a prepare_shapes.py folder; a ConfigError naming the command where it is missing or another's."""
    path = os.path.join(data_dir, 'meta.json')
    meta = training.read_json(path) if os.path.exists(path) else None
    if not isinstance(meta, dict) or meta.get('dataset') != 'shapes':
        raise ConfigError(f"{data_dir} holds no Shapes images: run `python prepare_shapes.py --data_dir={data_dir}`")
    return meta


class ArrayImages(Dataset):
    """A split of prepare_shapes.py's images, held in memory: (PIL image, label) items, through transform if set.
    A file that is not the split's arrays, or a label past the classes, is a ConfigError naming it."""

    def __init__(self, data_dir, split, n_classes, transform=None):
        path = os.path.join(data_dir, f'{split}.npz')
        try:
            with np.load(path) as arrays:
                self.images, self.labels = arrays['images'], arrays['labels']
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read {path} ({e}); run `python prepare_shapes.py --data_dir={data_dir}` "
                              "again") from None
        if (self.images.ndim != 4 or self.images.shape[3] != 3 or len(self.labels) != len(self.images)
                or self.labels.max(initial=0) >= n_classes):
            raise ConfigError(f"{path} is not a Shapes split (images (N, H, W, 3), labels below {n_classes}); run "
                              f"`python prepare_shapes.py --data_dir={data_dir}` again")
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def image_folder(root, transform=None):
    """torchvision's ImageFolder over root/<class>/*, reading images with load_image; a class folder without
    images is a ConfigError."""
    try:
        return datasets.ImageFolder(root, transform=transform, loader=load_image)
    except FileNotFoundError as e:  # "Found no valid file for the classes ..."
        raise ConfigError(f"{root}: {str(e).split('. ')[0]}; add images there or remove the empty folders") from None


def load_image(path):
    """ImageFolder's default loader (an RGB PIL image); a file it cannot read is a ConfigError naming it. The
    folder is not scanned up front (ImageNet has 1.3M files): a damaged image stops the run where it is met."""
    try:
        return datasets.folder.default_loader(path)
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ConfigError(f"cannot read image {path} ({e}); replace or remove it") from None


class SeededAugmentation(Dataset):
    """Items are (epoch, index) keys: dataset[index] through transform with torch's RNG seeded from
    (seed, epoch, index), so an image's augmentation depends on nothing else (not on the worker that loads it,
    the number of processes, or where a run resumed). fork_rng leaves the caller's RNG (dropout's) untouched."""

    def __init__(self, dataset, transform, seed):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            # the CPU generator, which the transforms draw from (torch.manual_seed also seeds every GPU: 100x slower);
            # the hash of a tuple of ints is the same in every process
            torch.default_generator.manual_seed(hash((self.seed, epoch, index)))
            return self.transform(image), label


class EpochBatches:
    """Batch sampler for iterations start_iter .. max_iters - 1. Epoch e is a permutation of the training set drawn
    from (seed, e), its remainder dropped, cut into optimizer steps of batch_size x gradient_accumulation_steps
    images; yields this rank's share of each micro-step as (epoch, index) keys. The same on every rank, and a
    function of the iteration alone, so a resumed run loads exactly what the uninterrupted run would have."""

    def __init__(self, n_images, cfg, dist, start_iter):
        self.n_images, self.seed, self.rank, self.world_size = n_images, cfg.seed, dist.rank, dist.world_size
        self.batch_size, self.micro_steps = cfg.batch_size, cfg.gradient_accumulation_steps
        self.start_iter, self.max_iters = start_iter, cfg.max_iters
        self.steps_per_epoch = n_images // (self.batch_size * self.micro_steps)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{n_images} training images: fewer than one step of "
                              f"batch_size x gradient_accumulation_steps = {self.batch_size * self.micro_steps}")

    def __len__(self):
        return (self.max_iters - self.start_iter) * self.micro_steps

    def __iter__(self):
        step_size = self.batch_size * self.micro_steps
        epoch = None
        for it in range(self.start_iter, self.max_iters):
            if it // self.steps_per_epoch != epoch:
                epoch = it // self.steps_per_epoch
                order = torch.randperm(self.n_images, generator=torch.Generator().manual_seed(hash((self.seed, epoch))))
            k = it % self.steps_per_epoch
            step = order[k * step_size:(k + 1) * step_size]
            step = step.view(self.micro_steps, self.world_size, -1)  # (micro-step, rank, image)
            for indices in step[:, self.rank].tolist():
                yield [(epoch, i) for i in indices]


def ignore_signals(worker_id):
    """DataLoader workers ignore Ctrl-C / SIGTERM: the main process handles them, finishing its step, which may
    still need the workers' batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def kill_workers():
    """At exit, end the DataLoader workers still up. multiprocessing's own exit handler stops them with SIGTERM,
    which they ignore (ignore_signals), then waits for them: after an error, with the loaders still referenced
    by its traceback, the process would never exit."""
    if hasattr(signal, 'SIGCHLD'):  # POSIX: torch's handler would report each worker's end as an error
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for process in multiprocessing.active_children():
        process.kill()


def make_loader(dataset, cfg, device, **kwargs):
    # generator: the loader's own seed draw comes from here, not from torch's global RNG (dropout's), so creating
    # a loader never shifts dropout; augmentation does not use it (SeededAugmentation seeds each image)
    return DataLoader(dataset, num_workers=cfg.num_workers, pin_memory=device.startswith('cuda'),
                      worker_init_fn=ignore_signals, persistent_workers=cfg.num_workers > 0,
                      generator=torch.Generator(), **kwargs)


@torch.no_grad()
def evaluate(model, loader, device, ctx):
    """Sums over every image the loader yields (ranks take every world_size-th image), all-reduced.
    Returns (mean loss, top-1 accuracy, images)."""
    nll = correct = count = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with ctx:
            logits = model(images)
        nll += F.cross_entropy(logits.float(), labels, reduction='sum').item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += labels.numel()
    nll, correct, count = training.all_reduce_sum([nll, correct, count], device)
    return nll / count, correct / count, int(count)


# -----------------------------------------------------------------------------------------------
# the run


def build_model(model_args):
    try:
        return ViT(ViTConfig(**model_args))
    except ValueError as e:  # unknown attention, norm or pool, n_embd not divisible by n_head, patch mismatch
        raise ConfigError(str(e)) from None


def train(cfg, dist):
    """The run: checks, data, model, optimizer, resume, then eval_only or the training loop."""
    device, accumulation = dist.device, cfg.gradient_accumulation_steps
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    training.check_run(cfg, dist)
    dtype = training.resolve_dtype(device, cfg.dtype)
    cfg.device, cfg.dtype = device, dtype  # config.json records what actually ran
    ctx, scaler = training.mixed_precision(device, dtype)  # autocast, and fp16's loss scaling (a no-op otherwise)

    # data: what an iteration loads depends on the iteration alone (EpochBatches, SeededAugmentation)
    train_set, augment, eval_split, eval_set, classes = load_data(cfg, dist)
    images_per_iter = accumulation * cfg.batch_size

    # model: the same initial weights on every rank and for every variant (see attention.init_weights)
    model_args = {k: v for k, v in vars(cfg).items() if k in ViTConfig.__dataclass_fields__}
    model_args.update(num_classes=len(classes), causal=CAUSAL)
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
    # the layers' sequence length and patch grid, derived from image_size, patch_size and pool, recorded with the rest
    cfg.block_size, cfg.patch_grid_width, cfg.class_tokens = (model.config.block_size, model.config.patch_grid_width,
                                                              model.config.class_tokens)
    cfg.fingerprint = {'block': fingerprint(vars(cfg), causal=CAUSAL), 'trainer': training.code_fingerprint(__file__)}
    if dist.master:
        print(f"{stack_name(cfg)} (bidirectional): {model.num_params():,} parameters ({attention_params:,} in "
              f"attention), {model.config.block_size} tokens per image, {images_per_iter:,} images per iteration, "
              f"{dist.world_size} process(es) on {device}, {dtype}, {type(optimizer).__name__}")
    atexit.register(kill_workers)
    eval_loader = make_loader(Subset(eval_set, range(dist.rank, len(eval_set), dist.world_size)), cfg, device,
                              batch_size=cfg.batch_size)

    if cfg.eval_only:
        eval_model.eval()
        loss, accuracy, images = evaluate(eval_model, eval_loader, device, ctx)
        results = {'iter': iter_num, eval_split: {'loss': loss, 'acc': accuracy, 'images': images}}
        if dist.master:
            training.write_eval(cfg.out_dir, results)
        return

    train_loader = make_loader(SeededAugmentation(train_set, augment, cfg.seed), cfg, device,
                               batch_sampler=EpochBatches(len(train_set), cfg, dist, iter_num))
    batches = iter(train_loader)
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
                loss, accuracy, _ = evaluate(eval_model, eval_loader, device, ctx)
                row.update({f'{eval_split}_loss': loss, f'{eval_split}_acc': accuracy})
                eval_model.train()
                if not math.isfinite(loss):
                    training.exit_nonfinite(iter_num, f'{eval_split} loss', last_saved, ckpt_path)
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
                lr = training.get_lr(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
                for group in optimizer.param_groups:
                    group['lr'] = lr
                # performer: new random features every performer_redraw_interval steps, the same on every rank
                redraw_random_features(model, iter_num, cfg.seed)
                train_loss = torch.zeros((), device=device)
                for micro_step in range(accumulation):
                    if dist.world_size > 1:  # sync gradients on the last micro-step only: one all-reduce per step
                        train_model.require_backward_grad_sync = micro_step == accumulation - 1
                    images, labels = (t.to(device, non_blocking=True) for t in next(batches))
                    with ctx:
                        logits = train_model(images)
                        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
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
                               images_per_s=iters_since_log * images_per_iter / (now - t_last),
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
        data = cfg.dataset
        if data != 'cifar10':
            data = os.path.basename(os.path.normpath(cfg.data_dir))
        cfg.out_dir = f"out-vit-{data}-{stack_name(cfg)}"
    with training.distributed(cfg.device) as dist, training.hold_run_folder(cfg.out_dir, dist):
        train(cfg, dist)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        training.exit_with(e)
