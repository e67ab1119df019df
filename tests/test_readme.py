"""The README stays true: its variant table matches the registry and CI runs its own commands."""
import re
from pathlib import Path

from attention import ATTENTION

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()


def test_variant_table_matches_registry():
    section = README.split('## Attention variants')[1].split('\n## ')[0]
    names = re.findall(r'^\| `(\w+)` \|', section, flags=re.MULTILINE)
    assert names == list(ATTENTION)


def test_ci_runs_the_readme_commands():
    commands = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
                if line and not line.startswith(('#', 'set ', 'cd '))]
    for command in commands:
        assert f'\n{command}\n' in README, f"README does not give: {command}"


def test_every_variant_has_a_config():
    for name in ATTENTION:
        assert (ROOT / 'configs' / f'{name}.py').exists(), f"configs/{name}.py is missing"
