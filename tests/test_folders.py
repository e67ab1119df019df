"""Nothing a script has written is lost to another: one live process per run or data folder (training.FolderLock,
taken over when its holder dies), no prepare script writing over another's data, no trainer reading data prepared
for another task, no log row appended to a cut line, no staging folder left behind by a killed prepare."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prepare_enwik8
import prepare_lra
import training
from training import ConfigError, FolderBusy, FolderLock

ROOT = Path(__file__).resolve().parent.parent
SMALL_LISTOPS = ["--examples=300,40,40", "--min_length=20", "--max_length=120", "--seed=3"]
HOLD = """import sys, time
from training import FolderLock
with FolderLock(sys.argv[1], 'wait'):
    print('held', flush=True)
    time.sleep(120)
"""


def snapshot(folder):
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


def corpus(tmp_path):
    src = tmp_path / 'corpus.txt'
    src.write_bytes(b'the cat sat on the mat. ' * 2000)
    data_dir = tmp_path / 'corpus'
    prepare_enwik8.main([f'--src={src}', f'--data_dir={data_dir}'])
    return data_dir


def holder(folder):
    """A process holding folder's lock (it says 'held' once it does)."""
    process = subprocess.Popen([sys.executable, '-c', HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == 'held\n'
    return process


def test_a_folder_is_held_by_one_process_and_taken_over_when_it_dies(tmp_path):
    folder = tmp_path / 'run'
    process = holder(folder)
    try:
        with pytest.raises(FolderBusy, match=rf"run is in use by another process \(pid {process.pid}\): wait"):
            with FolderLock(str(folder), 'wait'):
                pass
    finally:
        process.kill()  # no clean-up runs: the OS drops the lock
        process.wait(timeout=60)
    assert os.listdir(folder) == ['.lock']  # the dead holder's file, no longer locked
    with FolderLock(str(folder), 'wait'):
        assert (folder / '.lock').read_text() == f'{os.getpid()}\n'
    assert os.listdir(folder) == []  # a folder the claim found is kept, without the claim


def test_a_claim_that_wrote_nothing_removes_the_folder_it_created(tmp_path):
    with FolderLock(str(tmp_path / 'new' / 'run'), 'wait'):
        assert os.listdir(tmp_path / 'new' / 'run') == ['.lock']
    assert os.listdir(tmp_path / 'new') == []


def test_a_released_folder_keeps_what_was_written(tmp_path):
    folder = tmp_path / 'run'
    with FolderLock(str(folder), 'wait'):
        (folder / 'log.jsonl').write_text('{"iter": 0}\n')
    assert sorted(os.listdir(folder)) == ['log.jsonl']


def test_a_busy_folder_exits_with_its_own_code(capsys):
    with pytest.raises(SystemExit) as stopped:
        training.exit_with(FolderBusy('out is in use by another process (pid 1): wait'))
    assert stopped.value.code == training.EXIT_BUSY
    assert capsys.readouterr().err == 'error: out is in use by another process (pid 1): wait\n'


def test_a_row_is_never_appended_to_a_cut_line(tmp_path):
    (tmp_path / 'log.jsonl').write_text('{"iter": 0, "val_loss": 2.0}\n{"iter": 10, "val_lo')  # killed mid-append
    training.Log(str(tmp_path)).write({'iter': 10, 'val': {'loss': 1.5}})
    assert training.read_log_rows(str(tmp_path / 'log.jsonl')) == [{'iter': 0, 'val_loss': 2.0},
                                                                   {'iter': 10, 'val': {'loss': 1.5}}]


def test_a_prepare_script_never_writes_over_another_s_data(tmp_path):
    data_dir = corpus(tmp_path)
    before = snapshot(data_dir)
    with pytest.raises(SystemExit, match=r"corpus holds a byte corpus \(prepare_enwik8.py\), not LRA listops examples "
                                         r"\(prepare_lra.py listops\): give another --data_dir, or delete"):
        prepare_lra.main(['listops', f'--data_dir={data_dir}', *SMALL_LISTOPS])
    assert snapshot(data_dir) == before
    listops = tmp_path / 'listops'
    prepare_lra.main(['listops', f'--data_dir={listops}', *SMALL_LISTOPS])
    before = snapshot(listops)
    with pytest.raises(SystemExit, match=r"listops holds LRA listops examples \(prepare_lra.py listops\), not a byte "
                                         r"corpus"):
        prepare_enwik8.main([f'--src={tmp_path / "corpus.txt"}', f'--data_dir={listops}'])
    assert snapshot(listops) == before


def test_an_unreadable_meta_json_is_not_written_over(tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'meta.json').write_text('[1, 2]')
    (tmp_path / 'corpus.txt').write_bytes(b'x' * 40000)
    with pytest.raises(SystemExit, match=r"meta.json is not a meta.json of this project's prepare scripts"):
        prepare_enwik8.main([f'--src={tmp_path / "corpus.txt"}', f'--data_dir={tmp_path / "data"}'])


@pytest.mark.parametrize('args, message', [
    (['listops', '--src=x.tar.gz'], "listops is generated, it reads no --src: leave --src out"),
    (['text', '--seed=4', '--max_depth=3'], "--seed, --max_depth: listops settings, which text does not use"),
])
def test_prepare_lra_refuses_settings_its_task_ignores(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        prepare_lra.main([*args, f'--data_dir={tmp_path / "task"}'])
    assert not (tmp_path / 'task').exists()


def test_a_prepare_waits_for_no_one_and_a_killed_one_leaves_nothing_behind(tmp_path):
    data_dir = corpus(tmp_path)
    stale = tmp_path / '.corpus.tmp-killed'  # what a prepare killed while staging leaves
    stale.mkdir()
    (stale / 'train.bin').write_bytes(b'half')
    process = holder(data_dir)
    try:
        with pytest.raises(SystemExit, match=r"corpus is in use by another process .*: wait for it to finish, or give "
                                             r"another --data_dir"):
            prepare_enwik8.main([f'--src={ROOT / "corpus" / "tinyshakespeare.txt"}', f'--data_dir={data_dir}'])
        assert stale.exists()  # its owner might still be running: left alone
    finally:
        process.kill()
        process.wait(timeout=60)
    prepare_enwik8.main([f'--src={ROOT / "corpus" / "tinyshakespeare.txt"}', f'--data_dir={data_dir}'])
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ['corpus', 'corpus.txt']
    assert json.loads((data_dir / 'meta.json').read_text())['tokens']['train'] == 1115394 * 90 // 100


def test_a_corpus_trainer_refuses_lra_data(tmp_path):
    prepare_lra.main(['listops', f'--data_dir={tmp_path / "listops"}', *SMALL_LISTOPS])
    with pytest.raises(ConfigError, match=r"listops holds LRA listops examples from prepare_lra.py, not a corpus: give "
                                          r"--data_dir a folder from prepare_enwik8.py or prepare_wikitext103.py"):
        training.load_meta(str(tmp_path / 'listops'))


@pytest.mark.parametrize('main, args', [(prepare_enwik8.main, []), (prepare_lra.main, ['text'])])
def test_a_prepare_names_the_option_it_cannot_use(tmp_path, main, args):
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(SystemExit, match=r"data_dir='.*afile/data': .*afile is a file, not a folder; choose another "
                                         r"--data_dir"):
        main([*args, f'--data_dir={tmp_path / "afile" / "data"}', f'--src={tmp_path / "afile"}'])
    with pytest.raises(SystemExit, match=r"--src=.*missing: no such file or folder"):
        main([*args, f'--data_dir={tmp_path / "data"}', f'--src={tmp_path / "missing"}'])
    assert sorted(os.listdir(tmp_path)) == ['afile']
