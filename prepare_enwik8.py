"""
Prepare enwik8 (or any file) as bytes for train_gpt.py: one byte = one token, vocab 256.

    python prepare_enwik8.py                                  # download enwik8.zip into data/enwik8
    python prepare_enwik8.py --src=enwik8.zip                 # a local copy: the zip or the unzipped enwik8
    python prepare_enwik8.py --src=corpus/tinyshakespeare.txt --data_dir=data/shakespeare

enwik8 is the first 100,000,000 bytes of an English Wikipedia XML dump (Hutter Prize). It is verified
by its exact size and the MD5 Matt Mahoney publishes for the unzipped file (zip members are also
CRC-checked on reading), then split first 90M / next 5M / last 5M. A --src ending in .zip must hold
enwik8; any other file is split the same way, 90% / 5% / 5% of its bytes, so any byte or character
corpus works. Writes {train,val,test}.bin (uint8) and meta.json to --data_dir.

A re-run whose meta.json already describes the same source is skipped. A truncated or corrupt input
is refused with a one-line error before anything is written, and outputs are written to a temp dir
and moved into place at the end, so data_dir never holds a half-written set.

The download / verify / atomic-write helpers here are also used by prepare_wikitext103.py.
"""
import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile

URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_BYTES = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"  # of the unzipped file, as Matt Mahoney publishes it
SPLITS = ("train", "val", "test")
# some servers (wikitext.smerity.com) refuse Python's default User-Agent
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
# what a bad input, a failed download or a full disk raises: reported in one line, no traceback
ERRORS = (OSError, ValueError, zipfile.BadZipFile, http.client.HTTPException)


def progress(label, done, total):
    """a one-line text progress bar on stderr; total 0 means unknown"""
    if total:
        bar = "#" * (30 * done // total)
        print(f"\r{label} [{bar:<30}] {done / 1e6:.1f}/{total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)
    else:
        print(f"\r{label} {done / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)


def download(url, path):
    """fetch url to path unless it is already there; the bytes go to path.part, renamed when complete"""
    if os.path.exists(path):
        print(f"using {path} (delete it to download again)")
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    part, done = path + ".part", 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            while block := response.read(1 << 20):
                f.write(block)
                done += len(block)
                progress(f"downloading {url}", done, total)
        if total and done != total:
            raise OSError(f"download of {url} stopped at {done:,} of {total:,} bytes")
        os.replace(part, path)
    finally:
        if done:
            print(file=sys.stderr)  # end the progress line
        if os.path.exists(part):  # only left over when the download failed
            os.remove(part)
    return path


def open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a readable zip file ({e}): truncated or corrupt?") from None


def up_to_date(data_dir, meta):
    """True if data_dir holds a complete set whose meta.json agrees with every field of meta"""
    try:
        with open(os.path.join(data_dir, "meta.json")) as f:
            old = json.load(f)
        itemsize = {"uint8": 1, "uint16": 2}[old["dtype"]]
        sizes_ok = all(os.path.getsize(os.path.join(data_dir, f"{split}.bin")) == old["tokens"][split] * itemsize
                       for split in SPLITS)
    except (OSError, ValueError, KeyError):
        return False
    return sizes_ok and all(old.get(k) == v for k, v in meta.items())


def holds(meta):
    """what a meta.json says its folder holds, by the script that wrote it"""
    if "task" in meta:
        return f"LRA {meta['task']} examples (prepare_lra.py {meta['task']})"
    if meta.get("dataset") == "shapes":
        return "Shapes images (prepare_shapes.py)"
    if meta.get("tokenizer", "bytes") != "bytes":
        return f"{meta['tokenizer']} tokens (prepare_wikitext103.py)"
    return "a byte corpus (prepare_enwik8.py)"


def refuse_another_dataset(data_dir, meta, src=None):
    """ValueError, before anything is read or fetched, if data_dir cannot be a folder, src does not exist, or
    data_dir's meta.json says it holds another kind of data than meta describes: a prepare script never writes over
    another's data (a new source of the same kind replaces the old one, as a re-run should)"""
    existing = os.path.abspath(data_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"data_dir={data_dir!r}: {existing} is a file, not a folder; choose another --data_dir")
    if src is not None and not os.path.exists(src):
        raise ValueError(f"--src={src}: no such file or folder")
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        return
    fix = f"give another --data_dir, or delete {data_dir} first to replace it"
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        raise ValueError(f"{path} is not a meta.json of this project's prepare scripts: {fix}")
    if holds(old) != holds(meta):
        raise ValueError(f"{data_dir} holds {holds(old)}, not {holds(meta)}: {fix}")


@contextlib.contextmanager
def staging(data_dir):
    """a temp dir next to data_dir; when the block succeeds its files move into data_dir, meta.json last. The block
    holds data_dir alone (a second prepare of it stops with one line), so temp dirs a killed run left are removed."""
    data_dir = os.path.abspath(data_dir)
    prefix = f".{os.path.basename(data_dir)}.tmp-"
    from training import FolderBusy, FolderLock  # torch comes with it: imported only when there is data to write
    try:
        with FolderLock(data_dir, "wait for it to finish, or give another --data_dir"):
            for name in os.listdir(os.path.dirname(data_dir)):
                if name.startswith(prefix):
                    shutil.rmtree(os.path.join(os.path.dirname(data_dir), name), ignore_errors=True)
            tmp = tempfile.mkdtemp(prefix=prefix, dir=os.path.dirname(data_dir))
            try:
                yield tmp
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(data_dir, "meta.json"))  # no meta.json = not a complete set, while moving
                for name in sorted(os.listdir(tmp), key=lambda name: name == "meta.json"):
                    with open(os.path.join(tmp, name), "rb+") as f:  # on disk before it is published
                        os.fsync(f.fileno())
                    os.replace(os.path.join(tmp, name), os.path.join(data_dir, name))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except FolderBusy as busy:
        raise ValueError(str(busy)) from None


def write_meta(folder, meta):
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def read_source(src):
    """the bytes to split (all of src, or its enwik8 member) and their md5; enwik8 must be intact"""
    if os.path.isdir(src):
        raise ValueError(f"--src={src} is a folder: give a file (enwik8.zip, enwik8, or any file to split as bytes)")
    if src.lower().endswith(".zip"):
        with open_zip(src) as zf:
            if "enwik8" not in zf.namelist():
                raise ValueError(f"{src} has no member named enwik8")
            data = zf.read("enwik8")  # raises BadZipFile on a CRC mismatch
    else:
        with open(src, "rb") as f:
            data = f.read()
    md5 = hashlib.md5(data).hexdigest()
    if src.lower().endswith(".zip") or os.path.basename(src) == "enwik8":
        if len(data) != ENWIK8_BYTES:
            raise ValueError(f"{src}: enwik8 is {len(data):,} bytes, not {ENWIK8_BYTES:,} (truncated? fetch it again)")
        if md5 != ENWIK8_MD5:
            raise ValueError(f"{src}: enwik8 has md5 {md5}, not {ENWIK8_MD5} (corrupt? fetch it again)")
    return data, md5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--data_dir", default="data/enwik8", help="where {train,val,test}.bin and meta.json go")
    parser.add_argument("--src", help="local enwik8.zip, enwik8, or any file to split as bytes (default: download)")
    parser.add_argument("--min_split_tokens", type=int, default=1025,
                        help="refuse a source whose smallest split would hold fewer bytes (default: a 1024-byte "
                             "window and its next-byte target)")
    args = parser.parse_args(argv)
    try:
        refuse_another_dataset(args.data_dir, dict(tokenizer="bytes"), args.src)  # before a download into it
        data, md5 = read_source(args.src or download(URL, os.path.join(args.data_dir, "enwik8.zip")))
        meta = dict(source=args.src or URL, source_md5=md5, tokenizer="bytes", vocab_size=256, dtype="uint8")
        if up_to_date(args.data_dir, meta):
            print(f"{args.data_dir} already holds this source ({meta['source']}): nothing to do")
            return
        # first 90% / next 5% / last 5%: exactly 90M / 5M / 5M for enwik8
        n_train, n_val = len(data) * 90 // 100, len(data) * 5 // 100
        parts = dict(train=data[:n_train], val=data[n_train:n_train + n_val], test=data[n_train + n_val:])
        smallest = min(parts, key=lambda split: len(parts[split]))
        if len(parts[smallest]) < args.min_split_tokens:  # before anything is written: data_dir stays as it is
            raise ValueError(f"{args.src or URL} is {len(data):,} bytes: its {smallest} split would hold "
                             f"{len(parts[smallest]):,}, fewer than --min_split_tokens={args.min_split_tokens:,}; "
                             f"give a larger source (at least {20 * args.min_split_tokens:,} bytes)")
        meta["tokens"] = {split: len(part) for split, part in parts.items()}
        with staging(args.data_dir) as tmp:
            for split, part in parts.items():
                with open(os.path.join(tmp, f"{split}.bin"), "wb") as f:
                    f.write(part)
            write_meta(tmp, meta)
    except ERRORS as e:
        sys.exit(f"prepare_enwik8.py: error: {e}")
    print(f"wrote {args.data_dir}: " + ", ".join(f"{s} {n:,}" for s, n in meta["tokens"].items()) + " bytes")


if __name__ == "__main__":
    main()
