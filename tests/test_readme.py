"""The README stays true and the repository stands alone: the variant table matches the registry, CI runs the
README's own commands, every variant's config serves every trainer, every link of the markdown files leads to a file
(and a heading) that exists, and no file points outside the repository."""
import ast
import re
import subprocess
from pathlib import Path

import pytest

import train_bert
import train_gpt
import train_lra
import train_mqar
import train_vit
import training
from attention import ATTENTION

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()


def test_variant_table_matches_registry():
    section = README.split('## Attention variants')[1].split('\n#')[0]  # up to the next heading
    names = re.findall(r'^\| `(\w+)` \|', section, flags=re.MULTILINE)
    assert names == list(ATTENTION)


def test_ci_runs_the_readme_commands():
    commands = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
                if line and not line.startswith(('#', 'set ', 'cd '))]
    for command in commands:
        assert f'\n{command}\n' in README, f"README does not give: {command}"


@pytest.mark.parametrize('trainer', [train_gpt, train_bert, train_vit, train_lra, train_mqar],
                         ids=lambda m: m.__name__)
def test_every_variant_has_one_config_for_every_trainer(trainer):
    for name in ATTENTION:
        path = ROOT / 'configs' / f'{name}.py'
        assert path.exists(), f"configs/{name}.py is missing"
        assert training.apply_overrides(trainer.DEFAULTS, [str(path)])['attention'] == name


def test_scripts_import_only_the_model_and_the_plumbing():
    """nanoGPT's import graph: a script imports attention.py (with its kernels.py) and training.py, never another script."""
    scripts = {path.stem for path in ROOT.glob('*.py')}
    for path in ROOT.glob('*.py'):
        if path.stem.startswith('prepare_'):  # the prepare scripts share their download and staging code
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert imported & scripts <= {'attention', 'kernels', 'training'}, f"{path.name} imports {imported & scripts}"


def test_no_file_refers_outside_the_repository():
    """A relative path may climb out of its folder (docs/ links to ../attention.py) but not out of the repository."""
    climbing = re.compile(r'(?:\.\./)+[\w./-]*')
    tracked = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=60).stdout.split()
    for name in tracked:
        path = ROOT / name
        if path.suffix in ('.py', '.md', '.txt', '') and path.is_file() and not name.startswith('corpus/'):
            text = path.read_text(errors='replace')
            assert 'DESIGN' + '.md' not in text, f"{name} refers outside the repository"  # in pieces: not this file
            for climb in climbing.findall(text):
                assert (path.parent / climb).resolve().is_relative_to(ROOT), f"{name}: {climb} leaves the repository"


def heading_anchors(text):
    """The anchors GitHub gives a markdown file's headings: lowercased, punctuation but - and _ dropped, spaces to -,
    a repeated one numbered -1, -2, ... Headings inside code blocks are not headings."""
    anchors = []
    for heading in re.findall(r'^#+ (.+)$', re.sub(r'^```.*?^```', '', text, flags=re.M | re.S), flags=re.M):
        anchor = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
        count = sum(a == anchor or re.fullmatch(re.escape(anchor) + r'-\d+', a) is not None for a in anchors)
        anchors.append(f'{anchor}-{count}' if count else anchor)
    return anchors


def broken_links(path):
    """The relative links [text](target) and ![alt](target) of markdown file `path` that lead nowhere: a file that
    does not exist, or an #anchor that is not a heading of its markdown file. Links in code are not links."""
    text = re.sub(r'^```.*?^```', '', path.read_text(encoding='utf-8'), flags=re.M | re.S)
    text = re.sub(r'`[^`\n]*`', '', text)
    broken = []
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition('#')
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists() or anchor and (linked.suffix != '.md' or
                                              anchor not in heading_anchors(linked.read_text(encoding='utf-8'))):
            broken.append(target)
    return broken


@pytest.mark.parametrize('name', ['README.md', 'RESULTS.md', *(f'docs/{p.name}' for p in (ROOT / 'docs').glob('*.md'))])
def test_every_link_leads_somewhere(name):
    assert broken_links(ROOT / name) == [], f"{name} links to missing files or headings"


def test_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'RESULTS.md').write_text('# Results\n\n## Causal LM: every variant\n\n## Causal LM: every variant\n')
    page = tmp_path / 'docs' / 'page.md'
    page.write_text('[ok](../RESULTS.md#causal-lm-every-variant) [ok](../RESULTS.md#causal-lm-every-variant-1) '
                    '[ok](#a-heading) `[code](missing.md)`\n\n# A heading\n\n[gone](missing.md) '
                    '[gone](../RESULTS.md#no-such-heading) ![gone](../plots/none.png) [gone](#nowhere)\n')
    assert broken_links(page) == ['missing.md', '../RESULTS.md#no-such-heading', '../plots/none.png', '#nowhere']


def test_quick_start_needs_nothing_outside_the_repository():
    """The quick start's files are in the repository: the corpus (with the md5 the README records) and configs."""
    section = README.split('## Quick start')[1].split('\n## ')[0]
    command = re.search(r'```\n(.*?)\n```', section, flags=re.S).group(1)
    paths = re.findall(r'(?:corpus|configs)/[\w/]+\.(?:py|txt)', command)
    assert 'corpus/tinyshakespeare.txt' in paths and 'configs/cpu_small.py' in paths
    for path in paths:
        assert (ROOT / path).is_file(), path
    assert 'md5 6fb458f1232090904fb40fe944165e91' in README
