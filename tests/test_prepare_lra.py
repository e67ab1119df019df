"""
prepare_lra.py on small inputs in the real formats: ListOps from the seeded generator (every label checked by an
evaluator written here from LRA's definition), IMDB as an aclImdb_v1.tar.gz, the AAN pairs and Pathfinder images as
an lra_release.gz with LRA's folder layout and metadata format, CIFAR-10 in torchvision's on-disk format; archives
or the folders they unpack to, downloads (file:// URLs), re-runs, and damaged archives refused in one line.
"""
import gzip
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prepare_lra
from conftest import write_cifar10

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
SMALL_LISTOPS = ["--examples=300,40,40", "--min_length=20", "--max_length=120", "--seed=3"]


def run(*args):
    return subprocess.run([sys.executable, str(REPO / "prepare_lra.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def assert_one_line_error(result, message):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prepare_lra.py: error: "), result.stderr
    assert message in result.stderr, result.stderr


def read_task(data_dir):
    """meta.json and, per split, the list of examples: (tuple of documents as bytes, label)"""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    splits = {}
    for split in SPLITS:
        tokens = (data_dir / f"{split}.bin").read_bytes()
        index = np.fromfile(data_dir / f"{split}.index.bin", dtype=np.int64)
        labels = (data_dir / f"{split}.labels.bin").read_bytes()
        d = meta["documents"]
        assert len(index) == d * len(labels) + 1 and index[0] == 0 and index[-1] == len(tokens)
        assert meta["examples"][split] == len(labels) and meta["tokens"][split] == len(tokens)
        splits[split] = [(tuple(tokens[index[i * d + j]:index[i * d + j + 1]] for j in range(d)), labels[i])
                         for i in range(len(labels))]
    return meta, splits


def tar_gz(members):
    """a .tar.gz archive (bytes) of {name: bytes}"""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(members, folder):
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


# --- ListOps ----------------------------------------------------------------------------------------------

OPERATORS = {10: min, 11: max, 12: lambda values: int(statistics.median(values)), 13: lambda values: sum(values) % 10}


def evaluate_listops(tokens, max_depth, max_args):
    """The value of a token sequence, by a recursive parse written from LRA's definition (operators MIN, MAX, MED,
    SM over digits, ']' closing), checking depth and argument counts; AssertionError on a malformed sequence."""
    def parse(position, depth):
        assert depth <= max_depth
        token = tokens[position]
        if token < 10:
            return token, position + 1
        assert token in OPERATORS, token
        values, position = [], position + 1
        while tokens[position] != 14:
            value, position = parse(position, depth + 1)
            values.append(value)
        assert 2 <= len(values) <= max_args
        return OPERATORS[token](values), position + 1

    value, end = parse(0, 1)
    assert end == len(tokens)
    return value


def listops_mismatches(splits, min_length, max_length, max_depth=10, max_args=10):
    """examples whose label is not the value of their expression, or whose length is out of range"""
    return [(split, i) for split, examples in splits.items() for i, ((tokens,), label) in enumerate(examples)
            if not min_length < len(tokens) < max_length or evaluate_listops(tokens, max_depth, max_args) != label]


def test_listops_is_lra_generator_offline(tmp_path):
    result = run("listops", f"--data_dir={tmp_path / 'a'}", *SMALL_LISTOPS)
    assert result.returncode == 0, result.stderr
    meta, splits = read_task(tmp_path / "a")
    assert {k: meta[k] for k in ("task", "vocab_size", "seq_len", "documents", "num_classes", "padded")} == dict(
        task="listops", vocab_size=15, seq_len=120, documents=1, num_classes=10, padded=True)
    assert meta["generator"] == dict(seed=3, examples=dict(train=300, val=40, test=40), min_length=20, max_length=120,
                                     max_depth=10, max_args=10)
    assert [len(splits[split]) for split in SPLITS] == [300, 40, 40]
    assert listops_mismatches(splits, 20, 120) == []
    expressions = [tokens for examples in splits.values() for (tokens,), _ in examples]
    assert len(set(expressions)) == len(expressions)  # distinct, across splits too
    assert len({label for examples in splits.values() for _, label in examples}) == 10
    # the check can fail: one wrong label is found
    (tokens,), label = splits["val"][7]
    splits["val"][7] = ((tokens,), (label + 1) % 10)
    assert listops_mismatches(splits, 20, 120) == [("val", 7)]


def test_listops_is_seeded_and_a_rerun_is_skipped(tmp_path, capsys):
    prepare_lra.main(["listops", f"--data_dir={tmp_path / 'a'}", *SMALL_LISTOPS])
    prepare_lra.main(["listops", f"--data_dir={tmp_path / 'b'}", *SMALL_LISTOPS])
    prepare_lra.main(["listops", f"--data_dir={tmp_path / 'c'}", *SMALL_LISTOPS, "--seed=4"])
    files = sorted(os.listdir(tmp_path / "a"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "train.bin").read_bytes() != (tmp_path / "c" / "train.bin").read_bytes()
    stamps = {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files}
    capsys.readouterr()
    prepare_lra.main(["listops", f"--data_dir={tmp_path / 'a'}", *SMALL_LISTOPS])
    assert "nothing to do" in capsys.readouterr().out
    assert {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files} == stamps


def test_listops_lengths_follow_lra_at_its_defaults(tmp_path):
    """LRA's limits (more than 500, fewer than 2,000 tokens) on a few examples of the real settings"""
    prepare_lra.main(["listops", f"--data_dir={tmp_path}", "--examples=30,5,5"])
    meta, splits = read_task(tmp_path)
    assert meta["seq_len"] == 2000 and listops_mismatches(splits, 500, 2000) == []


@pytest.mark.parametrize("args, message", [
    (["--examples=10,0,5"], "--examples=10,0,5: give three positive counts"),
    (["--min_length=50", "--max_length=51"], "need 1 <= min_length < max_length - 1"),
    (["--min_length=1", "--max_length=4", "--examples=5000,1,1"], "cannot give 5,002 distinct expressions"),
])
def test_listops_impossible_settings_are_one_line(tmp_path, args, message, monkeypatch):
    monkeypatch.setattr(prepare_lra, "MAX_MISSES", 2000)
    with pytest.raises(SystemExit) as error:
        prepare_lra.main(["listops", f"--data_dir={tmp_path / 'x'}", *args])
    assert message in str(error.value.code)
    assert os.listdir(tmp_path) == []


# --- text: aclImdb_v1.tar.gz -------------------------------------------------------------------------------

LONG_REVIEW = ("Ünïcödé review, far too long. <br /><br />" * 200).encode()  # over 4,096 bytes, multi-byte chars


def imdb_members():
    """aclImdb's layout: {train,test}/{neg,pos}/<id>_<stars>.txt, plus files that are not reviews"""
    members = {"aclImdb/README": b"readme", "aclImdb/imdb.vocab": b"the\nand\n",
               "aclImdb/train/unsup/0_0.txt": b"unlabelled", "aclImdb/train/urls_pos.txt": b"http://x"}
    for split in ("train", "test"):
        for sentiment, stars in (("neg", 2), ("pos", 9)):
            for number in (10, 2, 0):  # numeric order differs from the archive's
                text = f"{split} {sentiment} review {number}.".encode()
                members[f"aclImdb/{split}/{sentiment}/{number}_{stars}.txt"] = text
    members["aclImdb/test/pos/3_10.txt"] = LONG_REVIEW
    return members


def test_text_from_archive_folder_and_download(tmp_path, monkeypatch):
    members = imdb_members()
    archive = tmp_path / "aclImdb_v1.tar.gz"
    archive.write_bytes(tar_gz(members))
    prepare_lra.main(["text", f"--src={archive}", f"--data_dir={tmp_path / 'a'}"])
    meta, splits = read_task(tmp_path / "a")
    assert (meta["vocab_size"], meta["seq_len"], meta["documents"], meta["num_classes"]) == (256, 4096, 1, 2)
    assert meta["source"] == str(archive)
    expected = {split: [((f"{split} {s} review {n}.".encode(),), int(s == "pos")) for s in ("neg", "pos")
                        for n in (0, 2, 10)] for split in ("train", "test")}
    expected["test"].insert(5, ((LONG_REVIEW[:4096],), 1))  # positives by review number: 0, 2, 3, 10
    assert splits["train"] == expected["train"] and splits["test"] == expected["test"]
    assert splits["val"] == splits["test"]  # LRA validates on the test set
    unpack(members, tmp_path / "unpacked")
    prepare_lra.main(["text", f"--src={tmp_path / 'unpacked' / 'aclImdb'}", f"--data_dir={tmp_path / 'b'}"])
    assert read_task(tmp_path / "b")[1] == splits
    monkeypatch.setattr(prepare_lra, "IMDB_URL", archive.as_uri())
    prepare_lra.main(["text", f"--data_dir={tmp_path / 'lra' / 'text'}"])  # downloaded next to data_dir
    assert read_task(tmp_path / "lra" / "text")[1] == splits
    assert sorted(os.listdir(tmp_path / "lra")) == ["aclImdb_v1.tar.gz", "text"]


# --- retrieval and pathfinder: lra_release.gz ---------------------------------------------------------------

def png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def lra_release(n_per_file=10):
    """An lra_release.gz with LRA's layout: lra_release/lra_release/{tsv_data, listops-1000, pathfinder32, ...}.
    Returns (members, AAN rows per split, pathfinder examples (pixels, label) in metadata order)."""
    root = "lra_release/lra_release/"
    rng = np.random.default_rng(0)
    members = {root + "listops-1000/basic_train.tsv": b"Source\tTarget\n"}
    rows = {}
    for split, file in (("train", "train"), ("val", "eval"), ("test", "test")):
        rows[split] = [(i % 2, f"doc {i} of {split} " .encode() * (1 + 700 * (i == 1)), f"other {i}".encode())
                       for i in range(5)]
        members[f"{root}tsv_data/new_aan_pairs.{file}.tsv"] = b"".join(
            b"%s\tP%d\tQ%d\t%s\t%s\n" % ((b"%d" if i % 2 else b"%d.0") % label, i, i, one, two)
            for i, (label, one, two) in enumerate(rows[split]))
    examples = []
    for number in (0, 2, 10):  # numeric order, not the archive's or the alphabet's
        lines = []
        for k in range(n_per_file):
            pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            label = int(rng.integers(2))
            name = f"imgs/{number}/sample_{k}.png"
            empty = number == 2 and k == 3
            members[f"{root}pathfinder32/curv_contour_length_14/{name}"] = b"" if empty else png(pixels)
            lines.append(f"imgs/{number} sample_{k}.png 0 {label} 14 1.5 2\n")
            if not empty:
                examples.append((pixels, label))
        members[f"{root}pathfinder32/curv_contour_length_14/metadata/{number}.npy"] = "".join(lines).encode()
    for decoy in ("pathfinder32/curv_baseline", "pathfinder64/curv_contour_length_14"):  # other settings: ignored
        members[f"{root}{decoy}/metadata/0.npy"] = b"imgs/0 sample_0.png 0 1\n"
        members[f"{root}{decoy}/imgs/0/sample_0.png"] = png(np.zeros((32, 32), dtype=np.uint8))
    return dict(reversed(members.items())), rows, examples


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    members, rows, examples = lra_release()
    (folder / "lra_release.gz").write_bytes(tar_gz(members))
    unpack(members, folder / "unpacked")
    return folder, rows, examples


def test_retrieval_pairs(release, tmp_path, monkeypatch):
    folder, rows, _ = release
    prepare_lra.main(["retrieval", f"--src={folder / 'lra_release.gz'}", f"--data_dir={tmp_path / 'a'}"])
    meta, splits = read_task(tmp_path / "a")
    assert (meta["vocab_size"], meta["seq_len"], meta["documents"], meta["num_classes"]) == (256, 4000, 2, 2)
    for split in SPLITS:
        assert splits[split] == [((one[:4000], two), label) for label, one, two in rows[split]]
    assert len(rows["train"][1][1]) > 4000  # one document was cut
    prepare_lra.main(["retrieval", f"--src={folder / 'unpacked'}", f"--data_dir={tmp_path / 'b'}"])
    assert read_task(tmp_path / "b")[1] == splits
    monkeypatch.setattr(prepare_lra, "LRA_URL", (folder / "lra_release.gz").as_uri())
    prepare_lra.main(["retrieval", f"--data_dir={tmp_path / 'lra' / 'retrieval'}"])
    assert read_task(tmp_path / "lra" / "retrieval")[1] == splits
    assert sorted(os.listdir(tmp_path / "lra")) == ["lra_release.gz", "retrieval"]


def test_pathfinder_images(release, tmp_path):
    folder, _, examples = release
    prepare_lra.main(["pathfinder", f"--src={folder / 'lra_release.gz'}", f"--data_dir={tmp_path / 'a'}"])
    meta, splits = read_task(tmp_path / "a")
    assert (meta["vocab_size"], meta["seq_len"], meta["documents"], meta["num_classes"], meta["padded"]) == (
        256, 1024, 1, 2, False)
    assert meta["skipped_empty_images"] == 1 and len(examples) == 29
    expected = [((pixels.tobytes(),), label) for pixels, label in examples]
    assert splits["train"] + splits["val"] + splits["test"] == expected  # metadata 0, 2, 10 in order
    assert [len(splits[split]) for split in SPLITS] == [23, 2, 4]  # 80% / 10% / the rest
    prepare_lra.main(["pathfinder", f"--src={folder / 'unpacked'}", f"--data_dir={tmp_path / 'b'}"])
    assert read_task(tmp_path / "b")[1] == splits


def test_rerun_of_an_archive_is_skipped(release, tmp_path):
    folder, _, _ = release
    args = ["retrieval", f"--src={folder / 'lra_release.gz'}", f"--data_dir={tmp_path}"]
    assert run(*args).returncode == 0
    result = run(*args)
    assert result.returncode == 0 and "nothing to do" in result.stdout


def damaged(kind):
    good = tar_gz(lra_release(n_per_file=40)[0])
    if kind == "truncated":
        return good[:len(good) // 2]
    if kind == "cut trailer":  # every member complete, only gzip's CRC and length are missing
        return good[:-6]
    if kind == "flipped byte":
        middle = len(good) // 2
        return good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:]
    return b"this is not an archive at all" * 100


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "pathfinder"])
@pytest.mark.parametrize("kind", ["truncated", "cut trailer", "flipped byte", "not an archive"])
def test_a_damaged_archive_is_refused_in_one_line(tmp_path, task, kind):
    (tmp_path / "lra_release.gz").write_bytes(damaged(kind))
    result = run(task, f"--src={tmp_path / 'lra_release.gz'}", f"--data_dir={tmp_path / task}")
    assert_one_line_error(result, "is not a readable tar archive")
    assert "truncated or corrupt" in result.stderr
    assert os.listdir(tmp_path) == ["lra_release.gz"]  # no data_dir, no temp dir


def test_a_damaged_archive_leaves_a_prepared_folder_as_it_was(release, tmp_path):
    folder, _, _ = release
    data_dir = tmp_path / "retrieval"
    prepare_lra.main(["retrieval", f"--src={folder / 'lra_release.gz'}", f"--data_dir={data_dir}"])
    before = {path.name: path.read_bytes() for path in data_dir.iterdir()}
    (tmp_path / "cut.gz").write_bytes((folder / "lra_release.gz").read_bytes()[:-6])
    assert_one_line_error(run("retrieval", f"--src={tmp_path / 'cut.gz'}", f"--data_dir={data_dir}"),
                          "not a readable tar archive")
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == before


@pytest.mark.parametrize("task, drop, message", [
    ("retrieval", "tsv_data/new_aan_pairs.test.tsv", "has no tsv_data/new_aan_pairs.test.tsv"),
    ("pathfinder", "pathfinder32/curv_contour_length_14/metadata/", "has no pathfinder32/curv_contour_length_14/meta"),
    ("pathfinder", "pathfinder32/curv_contour_length_14/imgs/10/sample_4.png", "names imgs/10/sample_4.png, which"),
    ("text", None, "holds no aclImdb/train/neg and aclImdb/train/pos reviews"),  # LRA's archive is not IMDB's
])
def test_a_member_missing_is_one_line(tmp_path, task, drop, message):
    members = {name: data for name, data in lra_release()[0].items() if drop is None or drop not in name}
    (tmp_path / "archive.tar.gz").write_bytes(tar_gz(members))
    assert_one_line_error(run(task, f"--src={tmp_path / 'archive.tar.gz'}", f"--data_dir={tmp_path / task}"), message)
    assert not (tmp_path / task).exists()


def test_a_damaged_aan_line_is_one_line(tmp_path):
    members = {"tsv_data/new_aan_pairs.train.tsv": b"1\ta\tb\tx\ty\n", "tsv_data/new_aan_pairs.eval.tsv":
               b"0\ta\tb\tx\ty\n", "tsv_data/new_aan_pairs.test.tsv": b"1\ta\tb\tx\ty\n2\ta\tb\tx\n"}
    unpack(members, tmp_path / "tsv")
    result = run("retrieval", f"--src={tmp_path / 'tsv'}", f"--data_dir={tmp_path / 'r'}")
    assert_one_line_error(result, "new_aan_pairs.test.tsv line 2 is not `label<tab>id1<tab>id2<tab>text1<tab>text2`")


# --- image: CIFAR-10 through torchvision ----------------------------------------------------------------------

def test_image_is_lra_grayscale_cifar10(tmp_path, made_up_cifar):
    images, labels = write_cifar10(tmp_path / "cifar", n_train=60, n_test=20)
    prepare_lra.main(["image", f"--src={tmp_path / 'cifar'}", f"--data_dir={tmp_path / 'image'}"])
    meta, splits = read_task(tmp_path / "image")
    assert (meta["vocab_size"], meta["seq_len"], meta["num_classes"], meta["padded"]) == (256, 1024, 10, False)
    assert [len(splits[split]) for split in SPLITS] == [54, 6, 20]  # LRA: train[:90%], train[90%:], test
    order = list(range(54)) + list(range(54, 60)) + list(range(60, 80))
    got = np.array([np.frombuffer(tokens, dtype=np.uint8) for split in SPLITS for (tokens,), _ in splits[split]])
    assert [label for split in SPLITS for _, label in splits[split]] == [labels[i] for i in order]
    # tf.image.rgb_to_grayscale, written out in float64: equal up to float32 rounding at a boundary
    reference = np.floor(images[order].astype(np.float64) @ [0.2989, 0.5870, 0.1140] / 255 * 255.5).reshape(80, -1)
    assert np.abs(got - reference).max() <= 1 and np.mean(got == reference) > 0.99
    assert got.std() > 10  # not a constant image


def test_image_that_cannot_be_fetched_is_one_line(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", (tmp_path / "missing.tar.gz").as_uri())
    with pytest.raises(SystemExit) as error:
        prepare_lra.main(["image", f"--src={tmp_path}", f"--data_dir={tmp_path / 'image'}"])
    assert "CIFAR-10 is not in" in str(error.value.code) and "could not be fetched" in str(error.value.code)


def test_gzip_reader_sees_what_tar_ignores():
    """the reason the archive is read to its end: tarfile alone accepts an archive whose gzip trailer is cut"""
    good = tar_gz({"a.txt": b"hello" * 100})
    with tarfile.open(fileobj=io.BytesIO(good[:-6]), mode="r|gz") as archive:
        assert [member.name for member in archive] == ["a.txt"]
    with pytest.raises(EOFError):
        gzip.decompress(good[:-6])
