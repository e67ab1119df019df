"""RESULTS.md is generated, not typed: every table between `<!-- python report.py ARGS -->` and
`<!-- end of generated table -->` is what that command prints from the committed run folders in results/ (or a
bench.py JSON), and the plots it names are committed and linked. `python report.py --readme=RESULTS.md` regenerates
them."""
import re
import subprocess
from pathlib import Path

import pytest

import report
from report_runs import EXPECTED, FRONTIER, sweep  # noqa: F401 (sweep is a fixture)
from training import ConfigError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = (ROOT / 'RESULTS.md').read_text(encoding='utf-8')
TABLES = report.generated_tables(RESULTS, 'RESULTS.md')
OUTPUTS = ('--plots=', '--csv=', '--markdown=')


def tracked(path):
    return subprocess.run(['git', 'ls-files', '--error-unmatch', path], cwd=ROOT, capture_output=True,
                          timeout=60).returncode == 0


@pytest.mark.parametrize('argv', [argv for argv, _ in TABLES], ids=lambda argv: ' '.join(argv))
def test_results_table_is_what_its_command_prints(argv, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    table = dict((tuple(a), t) for a, t in TABLES)[tuple(argv)]
    for arg in argv:  # the plots the command writes are committed with the table, and shown in RESULTS.md
        if arg.startswith('--plots='):
            for name in report.PLOTS:
                path = f"{arg.split('=', 1)[1]}/{name}"
                assert tracked(path), f"{arg}: {name} is not committed"
                assert f']({path})' in RESULTS, f"RESULTS.md shows no {path}: link it under its table"
    # rebuilt without touching the repository: the outputs go to tmp_path
    rebuilt = report.report([arg if not arg.startswith(OUTPUTS) else f"{arg.split('=')[0]}={tmp_path / str(i)}"
                             for i, arg in enumerate(argv)])
    assert rebuilt == table, "regenerate with: python report.py --readme=RESULTS.md"


# the tables with runs that predate fingerprints and ran uncommitted code (git_dirty), so that no fingerprint could be
# verified for them: stale until re-run on today's code; the mark goes when they are (strict: the test then fails).
# Each entry is a table's command, or its start.
AWAITING_RERUNS = ('results/ablation_heads', 'results/ablation_norm')


@pytest.mark.parametrize('argv, table', [
    pytest.param(argv, table, marks=pytest.mark.xfail(
        ' '.join(argv).startswith(AWAITING_RERUNS), strict=True, reason=f"stale runs in {', '.join(AWAITING_RERUNS)}: re-run them"))
    for argv, table in TABLES], ids=[' '.join(argv) for argv, _ in TABLES])
def test_no_table_holds_a_stale_run(argv, table):
    """Every row of RESULTS.md is what today's code would reproduce: no run report.py marks stale (its fingerprint is
    missing or not today's code's)."""
    assert ' (stale) |' not in table and "Stale, to re-run" not in table


def test_results_hold_no_checkpoints():
    listed = subprocess.run(['git', 'ls-files', 'results'], cwd=ROOT, capture_output=True, text=True,
                            timeout=60).stdout.split()
    assert not [name for name in listed if not re.search(r'/(config\.json|log\.jsonl|eval\.json|[\w.]+\.png)$', name)]


def test_update_readme_rewrites_each_table_and_only_the_tables(sweep, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    readme = tmp_path / 'RESULTS.md'
    block = f'<!-- python report.py {sweep.relative_to(tmp_path)} --plots=plots -->\n'
    readme.write_text(f'# results\n\n{block}stale\n<!-- end of generated table -->\n\ntext after\n', encoding='utf-8')
    assert report.update_readme(str(readme)) == 1
    assert readme.read_text(encoding='utf-8') == \
        f'# results\n\n{block}{EXPECTED}{FRONTIER}<!-- end of generated table -->\n\ntext after\n'
    assert all((tmp_path / 'plots' / name).is_file() for name in report.PLOTS)
    assert report.update_readme(str(readme)) == 0  # regenerating changes nothing


def test_update_readme_without_tables_is_one_line(tmp_path):
    (tmp_path / 'README.md').write_text('# nothing generated here\n')
    with pytest.raises(ConfigError, match=r"README.md has no generated table"):
        report.update_readme(str(tmp_path / 'README.md'))
    with pytest.raises(ConfigError, match=r"--readme regenerates .*: give it alone"):
        report.main([str(tmp_path), f'--readme={tmp_path / "README.md"}'])


def test_update_readme_refuses_a_table_without_its_end_line(sweep, tmp_path):  # noqa: F811
    """A block left open would run on to the next block's end line, and regenerating it would replace the text and
    the block in between: it is refused in one line and the file is left as it was."""
    first = f'<!-- python report.py {sweep} -->\nold\n'
    second = f'<!-- python report.py {sweep} -->\nold\n<!-- end of generated table -->\n'
    results = tmp_path / 'RESULTS.md'
    results.write_text(f'# results\n\n{first}\ntext between\n\n{second}', encoding='utf-8')
    before = results.read_bytes()
    with pytest.raises(ConfigError, match=r"RESULTS.md, line 3: this generated table has no '<!-- end of generated "
                                          r"table -->' line before the next table or the end; add it"):
        report.update_readme(str(results))
    assert results.read_bytes() == before
    results.write_text(f'{second}\ntext after\n{first}', encoding='utf-8')  # the last block open
    with pytest.raises(ConfigError, match=r"RESULTS.md, line 6: this generated table has no"):
        report.update_readme(str(results))
