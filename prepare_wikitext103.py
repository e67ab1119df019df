"""
Prepare WikiText-103 (raw) for train_gpt.py: GPT-2 BPE tokens (tiktoken) as uint16.

    python prepare_wikitext103.py                                   # download the zip into data/wikitext103
    python prepare_wikitext103.py --src=wikitext-103-raw-v1.zip     # a local copy of that zip
    python prepare_wikitext103.py --src=path/to/wikitext-103-raw    # a folder with wiki.{train,valid,test}.raw

The zip comes from wikitext.smerity.com (the original S3 link is dead; the server refuses Python's
default User-Agent, so a browser-like one is sent). The same text is also on the Hugging Face hub as
Salesforce/wikitext (wikitext-103-raw-v1) parquet files; reading those needs pyarrow, so this script
takes only the zip or the three .raw files. Zip members are CRC-checked and the text must be UTF-8.

Tokenization: each line (newline included) is encoded on its own with encode_ordinary, in parallel
over chunks of lines (--num_proc processes). The tokens of a split decode back to its exact text, but
can differ slightly from encoding the whole file as one string (a run of spaces and newlines that
crosses a line end is cut there); no end-of-text token is added. Writes {train,val,test}.bin (uint16)
and meta.json to --data_dir.

Word-level perplexity: meta.json records, per split, the number of words: the whitespace-separated
tokens of the raw text (Python's str.split(); no end-of-line token is counted, as word-level models
that predict <eos> would). Word-level ppl = exp(total NLL of the split's BPE tokens, in nats / words),
comparable across tokenizers; token-level ppl divides by the number of tokens instead.

tiktoken downloads the GPT-2 vocab once (into its cache, TIKTOKEN_CACHE_DIR if set); offline, point
TIKTOKEN_CACHE_DIR at a cache copied from a machine that has it. --tokenizer takes any tiktoken encoding (or plugin) whose ids fit in uint16.

Re-runs, errors and atomic writes behave as in prepare_enwik8.py, whose helpers this script uses.
"""
import argparse
import hashlib
import itertools
import os
import sys
from multiprocessing import Pool

import numpy as np

from prepare_enwik8 import (ERRORS, SPLITS, download, open_zip, progress, refuse_another_dataset, staging,
                            up_to_date, write_meta)
from training import load_encoding

URL = "https://wikitext.smerity.com/wikitext-103-raw-v1.zip"
RAW_FILES = dict(train="wiki.train.raw", val="wiki.valid.raw", test="wiki.test.raw")
LINES_PER_CHUNK = 4096  # one unit of work for the pool


def open_raw(src, filename):
    """(binary file, size in bytes) of one wiki.*.raw file in the zip or folder src"""
    if os.path.isdir(src):
        path = os.path.join(src, filename)
        return open(path, "rb"), os.path.getsize(path)
    zf = open_zip(src)
    names = [name for name in zf.namelist() if os.path.basename(name) == filename]  # wikitext-103-raw/<filename>
    if len(names) != 1:
        raise ValueError(f"{src} should hold one {filename}, holds {len(names)}")
    return zf.open(names[0]), zf.getinfo(names[0]).file_size


def init_worker(encoding_):
    global encoding
    encoding = encoding_


def tokenize(lines):
    """tokens, word count and byte count of a chunk of raw lines (bytes, newline included)"""
    text = [line.decode("utf-8") for line in lines]
    tokens = [token for line in text for token in encoding.encode_ordinary(line)]
    return np.array(tokens, dtype=np.uint16), sum(len(line.split()) for line in text), sum(map(len, lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--data_dir", default="data/wikitext103", help="where {train,val,test}.bin and meta.json go")
    parser.add_argument("--src", help="local wikitext-103-raw-v1.zip or folder of wiki.*.raw (default: download)")
    parser.add_argument("--tokenizer", default="gpt2", help="tiktoken encoding name")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="tokenizer processes")
    args = parser.parse_args(argv)
    try:
        refuse_another_dataset(args.data_dir, dict(tokenizer=args.tokenizer), args.src)  # before a download into it
        src = args.src or download(URL, os.path.join(args.data_dir, os.path.basename(URL)))
        # fingerprint the source first: this also CRC-checks every zip member before anything is written
        md5 = hashlib.md5()
        for filename in RAW_FILES.values():
            raw, _ = open_raw(src, filename)
            with raw:
                for block in iter(lambda: raw.read(1 << 20), b""):
                    md5.update(block)
        meta = dict(source=args.src or URL, source_md5=md5.hexdigest(), tokenizer=args.tokenizer, dtype="uint16")
        if up_to_date(args.data_dir, meta):
            print(f"{args.data_dir} already holds this source ({meta['source']}): nothing to do")
            return
        encoding = load_encoding(args.tokenizer)
        meta.update(vocab_size=encoding.n_vocab, tokens={}, words={},
                    word_perplexity="exp(sum of token NLLs over a split, in nats / words[split])")
        with staging(args.data_dir) as tmp, Pool(args.num_proc, init_worker, (encoding,)) as pool:
            for split in SPLITS:
                raw, size = open_raw(src, RAW_FILES[split])
                n_tokens = n_words = done = 0
                with raw, open(os.path.join(tmp, f"{split}.bin"), "wb") as out:
                    try:
                        chunks = iter(lambda: list(itertools.islice(raw, LINES_PER_CHUNK)), [])
                        for tokens, words, n_bytes in pool.imap(tokenize, chunks):  # in order
                            out.write(tokens.tobytes())
                            n_tokens, n_words, done = n_tokens + len(tokens), n_words + words, done + n_bytes
                            progress(f"tokenizing {RAW_FILES[split]}", done, size)
                    finally:
                        if done:
                            print(file=sys.stderr)  # end the progress line
                meta["tokens"][split], meta["words"][split] = n_tokens, n_words
            write_meta(tmp, meta)
    except ERRORS as e:
        sys.exit(f"prepare_wikitext103.py: error: {e}")
    print(f"wrote {args.data_dir}: " + ", ".join(
        f"{s} {meta['tokens'][s]:,} tokens / {meta['words'][s]:,} words" for s in SPLITS))


if __name__ == "__main__":
    main()
