"""The README's results are generated, not typed: every table between `<!-- python report.py ARGS -->` and
`<!-- end of generated table -->` is what that command prints from the committed run folders in results/, and the
plots it names are committed. `python report.py --readme=README.md` regenerates them."""
import re
import subprocess
from pathlib import Path

import pytest

import report
from test_report import EXPECTED, sweep  # noqa: F401 (sweep is a fixture)
from training import ConfigError

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text(encoding='utf-8')
TABLES = report.generated_tables(README)
OUTPUTS = ('--plots=', '--csv=', '--markdown=')


def tracked(path):
    return subprocess.run(['git', 'ls-files', '--error-unmatch', path], cwd=ROOT, capture_output=True,
                          timeout=60).returncode == 0


@pytest.mark.parametrize('argv', [argv for argv, _ in TABLES], ids=lambda argv: ' '.join(argv))
def test_readme_table_is_what_its_command_prints(argv, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    table = dict((tuple(a), t) for a, t in TABLES)[tuple(argv)]
    for arg in argv:  # the files the command writes are committed with the table
        if arg.startswith('--plots='):
            for name in ('val_loss.png', 'quality_vs_throughput.png'):
                assert tracked(str(Path(arg.split('=', 1)[1]) / name)), f"{arg}: {name} is not committed"
    # rebuilt without touching the repository: the outputs go to tmp_path
    rebuilt = report.report([arg if not arg.startswith(OUTPUTS) else f"{arg.split('=')[0]}={tmp_path / str(i)}"
                             for i, arg in enumerate(argv)])
    assert rebuilt == table, "regenerate with: python report.py --readme=README.md"


def test_results_hold_no_checkpoints():
    listed = subprocess.run(['git', 'ls-files', 'results'], cwd=ROOT, capture_output=True, text=True,
                            timeout=60).stdout.split()
    assert not [name for name in listed if not re.search(r'/(config\.json|log\.jsonl|eval\.json|[\w.]+\.png)$', name)]


def test_update_readme_rewrites_each_table_and_only_the_tables(sweep, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    readme = tmp_path / 'README.md'
    block = f'<!-- python report.py {sweep.relative_to(tmp_path)} --plots=plots -->\n'
    readme.write_text(f'# results\n\n{block}stale\n<!-- end of generated table -->\n\ntext after\n', encoding='utf-8')
    assert report.update_readme(str(readme)) == 1
    assert readme.read_text(encoding='utf-8') == \
        f'# results\n\n{block}{EXPECTED}<!-- end of generated table -->\n\ntext after\n'
    assert (tmp_path / 'plots' / 'val_loss.png').is_file()
    assert report.update_readme(str(readme)) == 0  # regenerating changes nothing


def test_update_readme_without_tables_is_one_line(tmp_path):
    (tmp_path / 'README.md').write_text('# nothing generated here\n')
    with pytest.raises(ConfigError, match=r"README.md has no generated table"):
        report.update_readme(str(tmp_path / 'README.md'))
    with pytest.raises(ConfigError, match=r"--readme regenerates .*: give it alone"):
        report.main([str(tmp_path), f'--readme={tmp_path / "README.md"}'])
