"""
prepare_enwik8.py and prepare_wikitext103.py on small inputs in the real formats (zip members named as in
the real archives), in process and through the command line. WikiText is tokenized with a small byte-level
tiktoken encoding registered as a tiktoken plugin, since the real GPT-2 vocab needs a download.
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

import prepare_enwik8
import training

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")

# a tiktoken plugin module: a byte-level BPE with three merges, so that some ids (256-258) need more than a byte
PLUGIN = f"""
def trev_test_bytes():
    ranks = {{bytes([i]): i for i in range(256)}} | {{b" =": 256, b"@-": 257, b"@-@": 258}}
    return dict(name="trev_test_bytes", pat_str={r50k_pat_str!r}, mergeable_ranks=ranks,
                special_tokens={{"<|endoftext|>": 259}})

ENCODING_CONSTRUCTORS = {{"trev_test_bytes": trev_test_bytes}}
"""
plugin = {}
exec(PLUGIN, plugin)
TEST_ENCODING = tiktoken.Encoding(**plugin["trev_test_bytes"]())


def run(script, *args, env=None):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60)


def assert_one_line_error(result, script, message):
    """a failure reported as one line on stderr (no traceback), with a non-zero exit status"""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{script}: error: ") and message in lines[-1], result.stderr


def read_bins(data_dir, dtype):
    return {split: np.fromfile(data_dir / f"{split}.bin", dtype=dtype) for split in SPLITS}


def read_meta(data_dir):
    return json.loads((data_dir / "meta.json").read_text())


# --- enwik8 --------------------------------------------------------------------------------------------

@pytest.fixture
def enwik8(monkeypatch):
    """random bytes standing in for enwik8: the expected size and md5 shrink to match them"""
    data = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    monkeypatch.setattr(prepare_enwik8, "ENWIK8_BYTES", len(data))
    monkeypatch.setattr(prepare_enwik8, "ENWIK8_MD5", hashlib.md5(data).hexdigest())
    return data


def zip_bytes(members, compression=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_zip(path, members):
    path.write_bytes(zip_bytes(members))
    return path


def check_enwik8_outputs(data_dir, data, source):
    """first 90% / next 5% / last 5% of the bytes, uint8, and a meta.json that says so"""
    n = len(data)
    bins = read_bins(data_dir, np.uint8)
    expected = dict(train=data[:n * 90 // 100], val=data[n * 90 // 100:n * 95 // 100], test=data[n * 95 // 100:])
    for split in SPLITS:
        assert bins[split].tobytes() == expected[split]
    assert read_meta(data_dir) == dict(source=source, source_md5=hashlib.md5(data).hexdigest(), tokenizer="bytes",
                                       vocab_size=256, dtype="uint8",
                                       tokens={split: len(expected[split]) for split in SPLITS})


def test_enwik8_zip_and_unzipped(tmp_path, enwik8):
    src = make_zip(tmp_path / "enwik8.zip", {"enwik8": enwik8})
    prepare_enwik8.main([f"--src={src}", f"--data_dir={tmp_path / 'a'}"])
    check_enwik8_outputs(tmp_path / "a", enwik8, str(src))
    assert [len(read_bins(tmp_path / "a", np.uint8)[split]) for split in SPLITS] == [36_000, 2000, 2000]
    (tmp_path / "enwik8").write_bytes(enwik8)
    prepare_enwik8.main(["--src", str(tmp_path / "enwik8"), "--data_dir", str(tmp_path / "b")])  # --key value
    check_enwik8_outputs(tmp_path / "b", enwik8, str(tmp_path / "enwik8"))


def test_enwik8_download(tmp_path, enwik8, monkeypatch):
    """the default path: fetch URL (here a file:// URL) into data_dir/enwik8.zip via a .part file"""
    url = make_zip(tmp_path / "served.zip", {"enwik8": enwik8}).as_uri()
    monkeypatch.setattr(prepare_enwik8, "URL", url)
    data_dir = tmp_path / "enwik8"
    prepare_enwik8.main([f"--data_dir={data_dir}"])
    check_enwik8_outputs(data_dir, enwik8, url)
    assert sorted(os.listdir(data_dir)) == ["enwik8.zip", "meta.json", "test.bin", "train.bin", "val.bin"]
    assert sorted(os.listdir(tmp_path)) == ["enwik8", "served.zip"]  # no temp dir left behind


def test_enwik8_rerun_is_skipped_until_source_changes(tmp_path, enwik8, monkeypatch, capsys):
    src = make_zip(tmp_path / "enwik8.zip", {"enwik8": enwik8})
    data_dir = tmp_path / "enwik8_data"
    prepare_enwik8.main([f"--src={src}", f"--data_dir={data_dir}"])
    stamps = {name: os.stat(data_dir / name).st_mtime_ns for name in os.listdir(data_dir)}
    capsys.readouterr()
    prepare_enwik8.main([f"--src={src}", f"--data_dir={data_dir}"])
    assert "nothing to do" in capsys.readouterr().out
    assert {name: os.stat(data_dir / name).st_mtime_ns for name in os.listdir(data_dir)} == stamps
    # a different (valid) source is written over the old set
    other = enwik8[::-1]
    monkeypatch.setattr(prepare_enwik8, "ENWIK8_MD5", hashlib.md5(other).hexdigest())
    make_zip(src, {"enwik8": other})
    prepare_enwik8.main([f"--src={src}", f"--data_dir={data_dir}"])
    check_enwik8_outputs(data_dir, other, str(src))


def test_any_file_cli(tmp_path):
    """any file other than enwik8 is split 90/5/5 as bytes, through the command line"""
    data = ("First Citizen:\nBefore we proceed any further, hear me speak. ünïcödé\n" * 20).encode()[:1001]
    (tmp_path / "input.txt").write_bytes(data)
    data_dir = tmp_path / "shakespeare"
    result = run("prepare_enwik8.py", f"--src={tmp_path / 'input.txt'}", f"--data_dir={data_dir}",
                 "--min_split_tokens=50")
    assert result.returncode == 0, result.stderr
    check_enwik8_outputs(data_dir, data, str(tmp_path / "input.txt"))
    assert read_meta(data_dir)["tokens"] == dict(train=900, val=50, test=51)


@pytest.mark.parametrize("size", [0, 1, 20_000])
def test_a_source_too_small_is_refused_and_the_folder_kept(tmp_path, size):
    """an empty or tiny --src over an already prepared folder used to replace its splits with empty files"""
    data = bytes(range(256)) * 100
    (tmp_path / "good.txt").write_bytes(data)
    data_dir = tmp_path / "prepared"
    prepare_enwik8.main([f"--src={tmp_path / 'good.txt'}", f"--data_dir={data_dir}"])
    before = {path.name: path.read_bytes() for path in data_dir.iterdir()}
    (tmp_path / "small.txt").write_bytes(data[:size])
    result = run("prepare_enwik8.py", f"--src={tmp_path / 'small.txt'}", f"--data_dir={data_dir}")
    assert_one_line_error(result, "prepare_enwik8.py", "fewer than --min_split_tokens=1,025")
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == before


def test_shakespeare_readme_command(tmp_path):
    """the README's quick-start corpus, shipped in the repository, run from the repo root (into tmp_path rather than
    data/shakespeare)"""
    corpus = (REPO / "corpus" / "tinyshakespeare.txt").read_bytes()
    assert hashlib.md5(corpus).hexdigest() == "6fb458f1232090904fb40fe944165e91"  # as recorded in the README
    result = run("prepare_enwik8.py", "--src=corpus/tinyshakespeare.txt", f"--data_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert read_meta(tmp_path)["tokens"] == dict(train=1_003_854, val=55_769, test=55_771)


GOOD_ZIP = zip_bytes({"enwik8": b"abc" * 1000}, zipfile.ZIP_STORED)
BAD_ZIPS = {
    "truncated": (GOOD_ZIP[:len(GOOD_ZIP) // 2], "not a readable zip file"),
    "short member": (zip_bytes({"enwik8": b"x" * 1000}), "enwik8 is 1,000 bytes, not 100,000,000"),
    "bad crc": (GOOD_ZIP.replace(b"abcabc", b"abcabX", 1), "Bad CRC-32"),
}


@pytest.mark.parametrize("bad, message", BAD_ZIPS.values(), ids=BAD_ZIPS)
def test_enwik8_corrupt_zip_refused(tmp_path, bad, message):
    (tmp_path / "enwik8.zip").write_bytes(bad)
    result = run("prepare_enwik8.py", f"--src={tmp_path / 'enwik8.zip'}", f"--data_dir={tmp_path / 'enwik8'}")
    assert_one_line_error(result, "prepare_enwik8.py", message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == ["enwik8.zip"]  # no data_dir, no temp dir


# --- WikiText-103 --------------------------------------------------------------------------------------

WIKI_TEXT = dict(
    train=" \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : <unk> Chronicles "
          "( Japanese : 戦場のヴァルキュリア3 ) is a tactical role @-@ playing video game . \n \n = = Gameplay = = \n \n"
          + "".join(f" line {i} : 1 @,@ 000 <unk> words and an <|endoftext|> marker . \n" for i in range(9000)),
    val=" \n = Homarus gammarus = \n \n Homarus gammarus is a species of clawed lobster — 60 cm long . \n",
    test=" \n = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . \n",
)
WIKI_FILES = dict(train="wiki.train.raw", val="wiki.valid.raw", test="wiki.test.raw")


@pytest.fixture
def plugin_env(tmp_path):
    """environment in which tiktoken finds the trev_test_bytes encoding, as a plugin"""
    (tmp_path / "plugin" / "tiktoken_ext").mkdir(parents=True)
    (tmp_path / "plugin" / "tiktoken_ext" / "trev_test_bytes.py").write_text(PLUGIN)
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "plugin"),
                                                                     os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def wiki_zip(tmp_path):
    return make_zip(tmp_path / "wikitext-103-raw-v1.zip",
                    {f"wikitext-103-raw/{WIKI_FILES[split]}": WIKI_TEXT[split] for split in SPLITS})


def prepare_wikitext(src, data_dir, env, *args):
    return run("prepare_wikitext103.py", f"--src={src}", f"--data_dir={data_dir}", "--tokenizer=trev_test_bytes",
               "--num_proc=2", *args, env=env)


def test_wikitext_zip_cli(tmp_path, wiki_zip, plugin_env):
    data_dir = tmp_path / "wikitext103"
    result = prepare_wikitext(wiki_zip, data_dir, plugin_env)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(data_dir)) == ["meta.json", "test.bin", "train.bin", "val.bin"]
    bins, meta = read_bins(data_dir, np.uint16), read_meta(data_dir)
    for split in SPLITS:  # train spans three chunks of lines, tokenized by two processes
        assert TEST_ENCODING.decode(bins[split].tolist()) == WIKI_TEXT[split]
        assert meta["tokens"][split] == len(bins[split])
        assert meta["words"][split] == len(WIKI_TEXT[split].split())
    assert bins["train"].max() == 258  # ids above 255 survive: uint16
    assert meta["words"]["val"] == 17  # counted by hand
    assert meta["source"] == str(wiki_zip) and meta["tokenizer"] == "trev_test_bytes"
    assert meta["vocab_size"] == 260 and meta["dtype"] == "uint16" and "word_perplexity" in meta


@pytest.mark.slow
def test_wikitext_folder_matches_zip_and_rerun_is_skipped(tmp_path, wiki_zip, plugin_env):
    folder = tmp_path / "wikitext-103-raw"
    folder.mkdir()
    for split in SPLITS:
        (folder / WIKI_FILES[split]).write_text(WIKI_TEXT[split])
    assert prepare_wikitext(wiki_zip, tmp_path / "from_zip", plugin_env).returncode == 0
    assert prepare_wikitext(folder, tmp_path / "from_folder", plugin_env).returncode == 0
    for name in os.listdir(tmp_path / "from_zip"):
        if name != "meta.json":  # meta differs in source only
            assert (tmp_path / "from_zip" / name).read_bytes() == (tmp_path / "from_folder" / name).read_bytes()
    result = prepare_wikitext(folder, tmp_path / "from_folder", plugin_env)
    assert result.returncode == 0 and "nothing to do" in result.stdout


@pytest.mark.parametrize("broken, message", [("missing", "should hold one wiki.test.raw, holds 0"),
                                             ("not_utf8", "can't decode byte 0xff")])
def test_wikitext_bad_source_refused(tmp_path, plugin_env, broken, message):
    """refused in one line; a failure while tokenizing (val is bad, train already written) leaves nothing"""
    members = {f"wikitext-103-raw/{WIKI_FILES[split]}": WIKI_TEXT[split].encode() for split in SPLITS}
    if broken == "missing":
        del members["wikitext-103-raw/wiki.test.raw"]
    else:
        members["wikitext-103-raw/wiki.valid.raw"] += b" caf\xff \n"
    src = make_zip(tmp_path / "wikitext-103-raw-v1.zip", members)
    result = prepare_wikitext(src, tmp_path / "wikitext103", plugin_env)
    assert_one_line_error(result, "prepare_wikitext103.py", message)
    assert sorted(os.listdir(tmp_path)) == ["plugin", "wikitext-103-raw-v1.zip"]


def test_wikitext_unknown_tokenizer(tmp_path, wiki_zip):
    result = run("prepare_wikitext103.py", f"--src={wiki_zip}", f"--data_dir={tmp_path / 'w'}", "--tokenizer=nope")
    assert_one_line_error(result, "prepare_wikitext103.py", "unknown tokenizer nope: tiktoken has ")
    assert not (tmp_path / "w").exists()


def test_gpt2_unavailable_says_so(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ValueError, match="could not load tiktoken's gpt2 encoding .*TIKTOKEN_CACHE_DIR"):
        training.load_encoding("gpt2")
