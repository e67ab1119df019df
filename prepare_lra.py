"""
Prepare the five Long Range Arena tasks (Tay et al. 2020, "Long Range Arena: A Benchmark for Efficient
Transformers", arXiv:2011.04006) for train_lra.py, at LRA's lengths.

    python prepare_lra.py listops       # generated offline by a seeded generator: data/lra/listops
    python prepare_lra.py text          # downloads aclImdb_v1.tar.gz; or --src=aclImdb_v1.tar.gz (or its aclImdb/)
    python prepare_lra.py retrieval     # downloads lra_release.gz; or --src=lra_release.gz (or the unpacked folder)
    python prepare_lra.py image         # CIFAR-10 through torchvision; --src=FOLDER holding cifar-10-batches-py/
    python prepare_lra.py pathfinder    # from lra_release.gz, as retrieval

What each task measures, its source, and how it becomes tokens:
- listops (2,000 tokens, 10 classes): the value of a nested expression of MIN, MAX, MED (median, rounded down)
  and SM (sum mod 10) over the digits 0-9, e.g. [MAX 2 9 [MIN 4 7 ] 0 ] = 9: hierarchical structure over long
  spans. Generated as LRA's generator does (lra_benchmarks/data/listops.py): a node below depth 10 is an
  operator with probability 0.25, otherwise a digit; an operator takes 2 to 10 arguments; an expression is
  kept when it has more than 500 and fewer than 2,000 tokens, and once; 96,000 / 2,000 / 2,000 expressions in
  the order drawn (random.Random(--seed)). 15 tokens: 0-9 the digits, 10-13 [MIN [MAX [MED [SM, 14 the closing
  ']'. The parentheses LRA's text files put around every node carry nothing and are left out, as in the S4
  pipeline most later LRA work uses.
- text (4,096 bytes, 2 classes): the sentiment of an IMDB movie review read byte by byte (Maas et al. 2011,
  aclImdb_v1.tar.gz, https://ai.stanford.edu/~amaas/data/sentiment/): 25,000 train (aclImdb/train/{neg,pos})
  and 25,000 test reviews (aclImdb/test/...; aclImdb/*/unsup is not used), label 1 = positive, the UTF-8 bytes
  cut to 4,096 (the paper's 4K; the LRA repository's config says 1,000). IMDB has no validation split and LRA
  validates on the test set: val is a copy of test.
- retrieval (2 x 4,000 bytes, 2 classes): whether one paper of the ACL Anthology Network cites the other, from
  two byte-level documents encoded separately (a two-tower model): lra_release.gz
  (https://storage.googleapis.com/long-range-arena/lra_release.gz), members tsv_data/new_aan_pairs.{train,
  eval,test}.tsv (eval is val), lines `label <tab> id1 <tab> id2 <tab> text1 <tab> text2`, each text's UTF-8
  bytes cut to 4,000 (LRA's max_length).
- image (1,024 pixels, 10 classes): CIFAR-10 as a sequence of grayscale pixels in raster order, through
  torchvision's datasets.CIFAR10 (which checks every file's md5): LRA's split, 45,000 train (the first 90% of
  the training set) / 5,000 val (the last 10%) / 10,000 test, and its grayscale: tf.image.rgb_to_grayscale,
  floor((0.2989 R + 0.5870 G + 0.1140 B) / 255 * 255.5). Tokens are the pixel values 0-255.
- pathfinder (1,024 pixels, 2 classes): whether two dots in a 32x32 image are joined by a dashed path, among
  distractor paths (Linsley et al. 2018; Kim et al. 2020): lra_release.gz, member
  pathfinder32/curv_contour_length_14 (the hard setting), metadata/<n>.npy text files with one line per image
  (`imgs/<n> sample_<k>.png <_> <label> ...`) and imgs/<n>/sample_<k>.png (8-bit grayscale). Metadata files in
  numeric order, lines in order; the first 80% train, the next 10% val, the last 10% test (LRA's tfds splits);
  empty image files are skipped, as LRA filters them out. Tokens are the pixel values.

Output in --data_dir (default data/lra/<task>), the same layout for every task:
    {train,val,test}.bin         uint8 token ids (0 .. vocab_size - 1) of every document, one after another
    {train,val,test}.index.bin   int64, documents + 1 offsets: document j is bin[index[j]:index[j + 1]]; example i
                                 is documents i * d .. i * d + d - 1, d = meta['documents'] (2 for retrieval, else 1)
    {train,val,test}.labels.bin  uint8, one class per example
    meta.json                    task, vocab_size, seq_len (the longest document), documents, num_classes, padded
                                 (whether documents can be shorter than seq_len), examples and tokens per split,
                                 the source and its md5 (ListOps: the generator's settings), skipped examples
train_lra.py memory-maps the .bin files and feeds token + 1, padding each document to seq_len with 0.

Sources: a download goes next to --data_dir (data/lra/), once; --src takes the archive (or the folder it unpacks
to) offline. The Google Cloud address of lra_release.gz has been reported to refuse downloads: fetch the archive
where you can and pass --src. An archive is read to its end (gzip's CRC and length checked), so a truncated or
corrupt one is refused with one line, and outputs are staged in a temporary folder and moved into place at the
end, so --data_dir never holds a half-written set. A re-run whose meta.json already describes the same source is
skipped. The download, staging and up-to-date helpers are prepare_enwik8.py's.
"""
import argparse
import gzip
import hashlib
import io
import os
import random
import re
import sys
import tarfile
import zlib

import numpy as np

from prepare_enwik8 import ERRORS, SPLITS, download, refuse_another_dataset, staging, up_to_date, write_meta

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LRA_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
TEXT_BYTES = 4096          # text: bytes kept of a review (LRA's "4K")
RETRIEVAL_BYTES = 4000     # retrieval: bytes kept of each document (LRA's matching config, max_length = 4000)
LISTOPS_OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")  # tokens 10-13; the digits are 0-9, ']' is 14
LISTOPS_END = 14
LISTOPS_OPERATOR_P = 0.25  # LRA's VALUE_P: a node below max_depth is an operator with this probability
MAX_MISSES = 1_000_000     # draws in a row without a new expression before the generator gives up
PATHFINDER = "pathfinder32/curv_contour_length_14/"
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale
# what a bad archive raises besides prepare_enwik8's ERRORS: reported in one line, no traceback
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class Splits:
    """The three splits of a task, written into folder as examples come: tokens to {split}.bin at once, offsets
    and labels kept until close() writes {split}.index.bin and {split}.labels.bin."""

    def __init__(self, folder, seq_len):
        self.folder, self.seq_len = folder, seq_len
        self.files = {split: open(os.path.join(folder, f"{split}.bin"), "wb") for split in SPLITS}
        self.offsets = {split: [0] for split in SPLITS}
        self.labels = {split: bytearray() for split in SPLITS}

    def add(self, split, documents, label):
        """one example: its documents (bytes-like token ids, each cut to seq_len) and its class"""
        for document in documents:
            document = document[:self.seq_len]
            self.files[split].write(document)
            self.offsets[split].append(self.offsets[split][-1] + len(document))
        self.labels[split].append(label)

    def close(self):
        """closes the files; returns (examples, tokens) per split"""
        for split in SPLITS:
            self.files[split].close()
            np.array(self.offsets[split], dtype=np.int64).tofile(os.path.join(self.folder, f"{split}.index.bin"))
            with open(os.path.join(self.folder, f"{split}.labels.bin"), "wb") as f:
                f.write(self.labels[split])
        return ({split: len(self.labels[split]) for split in SPLITS},
                {split: self.offsets[split][-1] for split in SPLITS})


# --- ListOps --------------------------------------------------------------------------------------------------


def listops_expression(rng, depth, max_depth, max_args, tokens, limit):
    """Appends the tokens of a random expression rooted at `depth` (the root is depth 1) to tokens and returns its
    value. Raises OverflowError once tokens reach `limit` (the expression would be rejected anyway)."""
    if depth < max_depth and rng.random() <= LISTOPS_OPERATOR_P:
        operator = rng.randrange(len(LISTOPS_OPERATORS))
        tokens.append(10 + operator)
        values = [listops_expression(rng, depth + 1, max_depth, max_args, tokens, limit)
                  for _ in range(rng.randint(2, max_args))]
        tokens.append(LISTOPS_END)
        if operator == 0:
            value = min(values)
        elif operator == 1:
            value = max(values)
        elif operator == 2:  # LRA's int(np.median(values)): the mean of the middle two, rounded down
            values.sort()
            value = (values[(len(values) - 1) // 2] + values[len(values) // 2]) // 2
        else:
            value = sum(values) % 10
    else:
        value = rng.randrange(10)
        tokens.append(value)
    if len(tokens) >= limit:
        raise OverflowError
    return value


def write_listops(folder, settings):
    """settings: seed, examples per split, min_length, max_length, max_depth, max_args. Distinct expressions with
    min_length < tokens < max_length, in the order drawn, first to train, then val, then test."""
    rng = random.Random(settings["seed"])
    splits = Splits(folder, settings["max_length"])
    seen = set()
    for split in SPLITS:
        count = misses = 0
        while count < settings["examples"][split]:
            misses += 1
            if misses > MAX_MISSES:
                raise ValueError(f"no new expression in {MAX_MISSES:,} draws: these settings cannot give "
                                 f"{sum(settings['examples'].values()):,} distinct expressions; widen the lengths")
            tokens = []
            try:
                value = listops_expression(rng, 1, settings["max_depth"], settings["max_args"], tokens,
                                           settings["max_length"])
            except OverflowError:
                continue
            digest = hashlib.blake2b(bytes(tokens), digest_size=16).digest()
            if len(tokens) <= settings["min_length"] or digest in seen:
                continue
            seen.add(digest)
            splits.add(split, [bytes(tokens)], value)
            count, misses = count + 1, 0
    return splits.close()


# --- archives ---------------------------------------------------------------------------------------------


def file_md5(path):
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            md5.update(block)
    return md5.hexdigest()


def source_md5(src, wanted):
    """md5 of an archive, or of the wanted files of a folder (names and contents, in name order)"""
    if not os.path.isdir(src):
        return file_md5(src)
    md5 = hashlib.md5()
    for name, path in sorted(folder_files(src, wanted)):
        md5.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            md5.update(f.read())
    return md5.hexdigest()


def folder_files(src, wanted):
    """(name with '/' separators relative to src, path) of every file in the folder src whose name wanted accepts"""
    for folder, _, files in os.walk(src):
        for file in files:
            name = os.path.relpath(os.path.join(folder, file), src).replace(os.sep, "/")
            if wanted(name):
                yield name, os.path.join(folder, file)


def scan(src, wanted, handle):
    """Calls handle(name, binary file) for every file of src whose name ('/' separators) wanted accepts: src is a
    .tar.gz (or .tar) archive, read to its very end so that a truncated or corrupt one raises ValueError, or a folder
    (then in name order)."""
    if os.path.isdir(src):
        for name, path in sorted(folder_files(src, wanted)):
            with open(path, "rb") as f:
                handle(name, f)
        return
    try:
        with open(src, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw  # GzipFile checks the CRC and length at the end
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    if member.isfile() and wanted(member.name):
                        handle(member.name, archive.extractfile(member))
            while stream.read(1 << 22):  # tar stops at its end-of-archive blocks: read the rest, so gzip checks it all
                pass
    except ARCHIVE_ERRORS as e:
        raise ValueError(f"{src} is not a readable tar archive ({type(e).__name__}: {e}): truncated or corrupt? "
                         "fetch it again") from None


# --- text, retrieval, pathfinder ------------------------------------------------------------------------------

IMDB_REVIEW = re.compile(r"(?:^|/)(train|test)/(neg|pos)/(\d+)_\d+\.txt$")  # in aclImdb/, or the folder itself


def write_text(folder, src):
    """IMDB reviews, byte level; val is a copy of test (LRA validates on the test set)"""
    reviews = {"train": [], "test": []}

    def keep(name, file):
        split, sentiment, number = IMDB_REVIEW.search(name).groups()
        reviews[split].append((sentiment == "pos", int(number), file.read()[:TEXT_BYTES]))

    scan(src, lambda name: IMDB_REVIEW.search(name) is not None, keep)
    for split in ("train", "test"):
        if not reviews[split] or len({label for label, _, _ in reviews[split]}) < 2:
            raise ValueError(f"{src} holds no aclImdb/{split}/neg and aclImdb/{split}/pos reviews: is it "
                             "aclImdb_v1.tar.gz (or the aclImdb folder it unpacks to)?")
    splits = Splits(folder, TEXT_BYTES)
    for split, source in (("train", "train"), ("val", "test"), ("test", "test")):
        for label, _, review in sorted(reviews[source]):  # negatives then positives, by review number
            splits.add(split, [review], int(label))
    return splits.close()


AAN_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}


def aan_split(name):
    """the split of an AAN pairs file (tsv_data/new_aan_pairs.*.tsv), or None"""
    for split, file in AAN_FILES.items():
        if name.endswith(f"tsv_data/{file}") or name == file:
            return split
    return None


def write_retrieval(folder, src):
    """AAN document pairs, byte level, two documents per example"""
    splits = Splits(folder, RETRIEVAL_BYTES)
    found = []

    def convert(name, file):
        split = aan_split(name)
        if split in found:
            raise ValueError(f"{src} holds two {AAN_FILES[split]} files; give the LRA release or its tsv_data folder")
        found.append(split)
        for number, line in enumerate(file, 1):
            fields = line.rstrip(b"\r\n").split(b"\t")
            try:
                label = int(float(fields[0]))
            except ValueError:
                label = None
            if len(fields) != 5 or label not in (0, 1):
                raise ValueError(f"{name} line {number} is not `label<tab>id1<tab>id2<tab>text1<tab>text2` with "
                                 f"label 0 or 1: the archive is damaged or not LRA's")
            splits.add(split, [fields[3][:RETRIEVAL_BYTES], fields[4][:RETRIEVAL_BYTES]], label)

    scan(src, lambda name: aan_split(name) is not None, convert)
    missing = [AAN_FILES[split] for split in SPLITS if split not in found]
    if missing:
        raise ValueError(f"{src} has no tsv_data/{missing[0]}: give lra_release.gz (or the folder it unpacks to)")
    return splits.close()


def write_pathfinder(folder, src):
    """Pathfinder 32x32, hard setting; 80% / 10% / 10% of the images in metadata order"""
    from PIL import Image  # torchvision's dependency; only this task needs it
    files = {}

    def keep(name, file):
        files[name[name.index(PATHFINDER) + len(PATHFINDER):]] = file.read()  # imgs/<n>/... and metadata/<n>.npy

    scan(src, lambda name: PATHFINDER in f"/{name}" and name.endswith((".png", ".npy")), keep)
    metadata = sorted((int(name[len("metadata/"):-len(".npy")]), name) for name in files
                      if re.fullmatch(r"metadata/\d+\.npy", name))
    if not metadata:
        raise ValueError(f"{src} has no {PATHFINDER}metadata/<n>.npy: give lra_release.gz (or the folder it unpacks "
                         "to)")
    examples, skipped = [], 0
    for _, name in metadata:
        for number, line in enumerate(files[name].decode().splitlines(), 1):
            fields = line.split()
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise ValueError(f"{PATHFINDER}{name} line {number} is not `imgs/<n> <file> <_> <label> ...`: the "
                                 "archive is damaged or not LRA's")
            image = files.get(f"{fields[0]}/{fields[1]}")
            if image is None:
                raise ValueError(f"{PATHFINDER}{name} line {number} names {fields[0]}/{fields[1]}, which {src} lacks")
            if not image:  # LRA filters out empty images
                skipped += 1
                continue
            examples.append((f"{fields[0]}/{fields[1]}", image, int(fields[3])))
    splits = Splits(folder, 32 * 32)
    n_train, n_val = len(examples) * 8 // 10, len(examples) // 10
    for i, (name, image, label) in enumerate(examples):
        pixels = Image.open(io.BytesIO(image))
        if pixels.mode != "L" or pixels.size != (32, 32):
            raise ValueError(f"{PATHFINDER}{name} is a {pixels.mode} image of {pixels.size}, not 32x32 grayscale")
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        splits.add(split, [pixels.tobytes()], label)
    return (*splits.close(), skipped)


# --- image ------------------------------------------------------------------------------------------------


def grayscale(images):
    """(N, 32, 32, 3) uint8 RGB -> (N, 1024) uint8, as tf.image.rgb_to_grayscale computes it (in float32, the
    result scaled by 255.5 and truncated)"""
    gray = (images.astype(np.float32) / 255) @ np.array(GRAY_WEIGHTS, dtype=np.float32)
    return (gray * np.float32(255.5)).astype(np.uint8).reshape(len(images), -1)


def load_cifar10(root):
    """(train images, train labels, test images, test labels) as numpy arrays, through torchvision (downloaded into
    root when missing; every file md5-checked)"""
    from torchvision import datasets  # only this task needs it
    try:
        train, test = (datasets.CIFAR10(root=root, train=train, download=True) for train in (True, False))
    except (OSError, RuntimeError) as e:  # offline (URLError is an OSError), or damaged files
        raise ValueError(f"CIFAR-10 is not in {root}/cifar-10-batches-py and could not be fetched ({e}); put "
                         f"{datasets.CIFAR10.url.rsplit('/', 1)[1]} from {datasets.CIFAR10.url} into {root}/") from None
    return train.data, np.array(train.targets), test.data, np.array(test.targets)


def write_image(folder, cifar):
    train_images, train_labels, test_images, test_labels = cifar
    n_train = len(train_images) * 9 // 10  # LRA: train[:90%], val = train[90%:]
    parts = {"train": (train_images[:n_train], train_labels[:n_train]),
             "val": (train_images[n_train:], train_labels[n_train:]), "test": (test_images, test_labels)}
    splits = Splits(folder, 32 * 32)
    for split, (images, labels) in parts.items():
        for pixels, label in zip(grayscale(images), labels.tolist()):
            splits.add(split, [pixels.tobytes()], label)
    return splits.close()


# --- the command ------------------------------------------------------------------------------------------

TASK_META = {  # vocab_size, seq_len, documents, num_classes, padded
    "listops": (15, None, 1, 10, True),  # seq_len: the generator's max_length
    "text": (256, TEXT_BYTES, 1, 2, True),
    "retrieval": (256, RETRIEVAL_BYTES, 2, 2, True),
    "image": (256, 1024, 1, 10, False),
    "pathfinder": (256, 1024, 1, 2, False),
}
WANTED = {"text": lambda name: IMDB_REVIEW.search(name) is not None,
          "retrieval": lambda name: aan_split(name) is not None,
          "pathfinder": lambda name: PATHFINDER in f"/{name}" and name.endswith((".png", ".npy"))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--data_dir", help="where the task's files go (default: data/lra/<task>)")
    parser.add_argument("--src", help="text: aclImdb_v1.tar.gz or its aclImdb folder; retrieval, pathfinder: "
                                      "lra_release.gz or the folder it unpacks to; image: a folder holding "
                                      "cifar-10-batches-py (default: download next to data_dir)")
    listops = parser.add_argument_group("listops: LRA's generator settings")
    listops.add_argument("--seed", type=int, default=0)
    listops.add_argument("--examples", default="96000,2000,2000", help="train,val,test")
    listops.add_argument("--min_length", type=int, default=500, help="keep expressions of more tokens than this")
    listops.add_argument("--max_length", type=int, default=2000, help="... and fewer than this (also seq_len)")
    listops.add_argument("--max_depth", type=int, default=10)
    listops.add_argument("--max_args", type=int, default=10)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or os.path.join("data", "lra", args.task)
    downloads = os.path.dirname(os.path.abspath(data_dir))
    vocab_size, seq_len, documents, num_classes, padded = TASK_META[args.task]
    try:
        meta = dict(task=args.task, vocab_size=vocab_size, dtype="uint8", seq_len=seq_len, documents=documents,
                    num_classes=num_classes, padded=padded)
        listops_options = [f"--{action.dest}" for action in listops._group_actions
                           if getattr(args, action.dest) != action.default]
        if args.task != "listops" and listops_options:
            raise ValueError(f"{', '.join(listops_options)}: listops settings, which {args.task} does not use; "
                             "leave them out")
        if args.task == "listops" and args.src:
            raise ValueError("listops is generated, it reads no --src: leave --src out")
        refuse_another_dataset(data_dir, meta, args.src)  # before a download next to it
        if args.task == "listops":
            settings = listops_settings(args)
            meta.update(source="generated by prepare_lra.py, LRA's ListOps generator", generator=settings,
                        seq_len=args.max_length)
        elif args.task == "image":
            cifar = load_cifar10(args.src or downloads)
            meta.update(source="CIFAR-10 through torchvision", source_md5=hashlib.md5(b"".join(
                np.ascontiguousarray(part).tobytes() for part in cifar)).hexdigest())
        else:
            url, file = (IMDB_URL, "aclImdb_v1.tar.gz") if args.task == "text" else (LRA_URL, "lra_release.gz")
            src = args.src or download(url, os.path.join(downloads, file))
            meta.update(source=args.src or url, source_md5=source_md5(src, WANTED[args.task]))
        if up_to_date(data_dir, meta):
            print(f"{data_dir} already holds this source ({meta['source']}): nothing to do")
            return
        with staging(data_dir) as tmp:
            if args.task == "listops":
                examples, tokens = write_listops(tmp, settings)
            elif args.task == "image":
                examples, tokens = write_image(tmp, cifar)
            elif args.task == "pathfinder":
                examples, tokens, meta["skipped_empty_images"] = write_pathfinder(tmp, src)
            else:
                examples, tokens = (write_text if args.task == "text" else write_retrieval)(tmp, src)
            meta.update(examples=examples, tokens=tokens)
            write_meta(tmp, meta)
    except ERRORS + ARCHIVE_ERRORS as e:
        sys.exit(f"prepare_lra.py: error: {e}")
    print(f"wrote {data_dir}: " + ", ".join(f"{s} {n:,}" for s, n in meta["examples"].items()) + " examples")


def listops_settings(args):
    """the generator's settings from the command line; ValueError for values it cannot meet"""
    try:
        counts = [int(n) for n in args.examples.split(",")]
    except ValueError:
        counts = []
    if len(counts) != 3 or min(counts) < 1:
        raise ValueError(f"--examples={args.examples}: give three positive counts, train,val,test (LRA: "
                         "96000,2000,2000)")
    if not 1 <= args.min_length < args.max_length - 1 or args.max_depth < 2 or args.max_args < 2:
        raise ValueError("--min_length, --max_length, --max_depth, --max_args: need 1 <= min_length < max_length - 1, "
                         "max_depth >= 2 and max_args >= 2 (LRA: 500, 2000, 10, 10)")
    if args.max_length > 2**16:
        raise ValueError(f"--max_length={args.max_length}: at most 65,536")
    return dict(seed=args.seed, examples=dict(zip(SPLITS, counts)), min_length=args.min_length,
                max_length=args.max_length, max_depth=args.max_depth, max_args=args.max_args)


if __name__ == "__main__":
    main()
