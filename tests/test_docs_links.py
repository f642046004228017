"""The docs hold together: every relative link in README, ARCHITECTURE, benchmarks/README and
docs/ resolves to a file (and, for a Markdown target, to one of its headings when it names an
anchor); every ``docs/*.md`` page the code, tests or configs name exists; every flag of a
``deepretrieval <command>`` line in those pages is a flag of that command's parser; every
repository file they name exists; the names their Python examples import exist, and so does
every ``deepretrieval.x.y`` they or the package's docstrings name."""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

from deepretrieval.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    out = []
    for ch in text.lower():
        if ch in " -":
            out.append("-")
        elif ch == "_" or unicodedata.category(ch)[0] in "LN":
            out.append(ch)
    return "".join(out)


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path):
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for m in LINK.finditer(CODE_SPAN.sub(lambda c: c.group(0).strip("`"), line)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            yield number, target


def test_slug_follows_github():
    assert slug("The protocol (`deepretrieval/core/agent_protocol.py`)") == \
        "the-protocol-deepretrievalcoreagent_protocolpy"
    assert slug("Training presets: `ppo` = the original scripts") == \
        "training-presets-ppo--the-original-scripts"
    assert slug("Ray Serve — bench_ray_serve.py") == "ray-serve--bench_ray_servepy"


def test_every_relative_link_resolves():
    broken, checked = [], 0
    cache: dict[Path, set[str]] = {}
    for page in PAGES:
        for number, target in links(page):
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md":
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if anchor not in cache[dest]:
                    broken.append(f"{where} (no heading with anchor #{anchor} in {dest.name})")
    assert checked > 100  # the pages are read: README and the guides link to each other
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_broken_links_are_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n[ok](b.md#the-part) [bad](b.md#nope) [gone](c.md)\n"
                                   "```\n[inside a fence](missing.md)\n```\n")
    (tmp_path / "b.md").write_text("## The part\n")
    found = list(links(tmp_path / "a.md"))
    assert [t for _, t in found] == ["b.md#the-part", "b.md#nope", "c.md"]
    assert anchors(tmp_path / "b.md") == {"the-part"}


def test_docs_pages_named_in_code_exist():
    """Docstrings, error messages, configs and tests point users at docs pages that exist."""
    named = re.compile(r"docs/([A-Za-z0-9_/.-]+?\.md)")
    missing, checked = [], 0
    files = [*ROOT.joinpath("deepretrieval").rglob("*.py"), *ROOT.joinpath("deepretrieval").rglob("*.yaml"),
             *ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py"),
             *ROOT.joinpath("scripts").rglob("*.sh"), ROOT / "pyproject.toml"]
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            for m in named.finditer(line):
                checked += 1
                if not (ROOT / "docs" / m.group(1)).exists():
                    missing.append(f"{file.relative_to(ROOT)}:{number}: docs/{m.group(1)}")
    assert checked > 10
    assert not missing, "pages that do not exist:\n" + "\n".join(missing)


#: Paths the pages name in other projects (Search-R1's data scripts), not in this repository.
FOREIGN_PATHS = {"scripts/data_process/nq_search.py"}
REPO_PATH = re.compile(r"(?<![\w/.])((?:deepretrieval|tests|benchmarks|scripts)/[A-Za-z0-9_./-]+)")


def test_repository_paths_in_the_pages_exist():
    """``deepretrieval/…``, ``tests/…``, ``benchmarks/…`` and ``scripts/…`` files the pages name
    exist (a metric name such as ``deepretrieval/copy_rate`` has no suffix and is not a path)."""
    missing, checked = [], 0
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for m in REPO_PATH.finditer(line):
                path = m.group(1).rstrip(".,:;")
                if path in FOREIGN_PATHS or not (path.endswith("/") or Path(path).suffix):
                    continue
                checked += 1
                if not (ROOT / path).exists():
                    missing.append(f"{page.relative_to(ROOT)}:{number}: {path}")
    assert checked > 100
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_python_examples_import():
    """``from deepretrieval.… import …`` in the pages' Python examples names what exists."""
    missing, checked = [], 0
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for m in re.finditer(r"^\s*from (deepretrieval[\w.]*) import ([^\n#]+)", block, re.M):
                module = importlib.import_module(m.group(1))
                for name in (n.strip().split(" as ")[0] for n in m.group(2).strip("() ").split(",")):
                    if not name:
                        continue
                    checked += 1
                    submodule = hasattr(module, "__path__") and \
                        importlib.util.find_spec(f"{m.group(1)}.{name}") is not None
                    if not hasattr(module, name) and not submodule:
                        missing.append(f"{page.relative_to(ROOT)}: from {m.group(1)} import {name}")
    assert checked > 10
    assert not missing, "names the examples import that do not exist:\n" + "\n".join(missing)


DOTTED = re.compile(r"\bdeepretrieval(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _defined(body: list[ast.stmt]) -> dict[str, ast.AST | None]:
    """Names a module or class body binds (classes keep their node, to look inside)."""
    names: dict[str, ast.AST | None] = {}
    for node in body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = None
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names[leaf.id] = None
        elif isinstance(node, (ast.If, ast.Try)):  # names bound under `if TYPE_CHECKING`, try/except
            for block in (node.body, node.orelse, *(h.body for h in getattr(node, "handlers", []))):
                names.update(_defined(block))
    return names


def _resolves(dotted: str) -> bool:
    """``deepretrieval.a.b.c``, read from the source (nothing imported): the longest prefix that is
    a module file, then names its body binds (a class's body for a further name)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        path = _module_file(parts[:i])
        if path is None:
            continue
        rest = parts[i:]
        if not rest:
            return True
        if _module_file(parts[:i + 1]) is not None:
            return True
        names = _defined(ast.parse(path.read_text(encoding="utf-8")).body)
        for name in rest:
            if name not in names:
                return False
            node = names[name]
            if node is None:  # a function, a value or an imported name: nothing further to check
                return True
            names = _defined(node.body)
        return True
    return False


def test_dotted_names_in_pages_and_docstrings_resolve():
    """``deepretrieval.module.name`` in the pages and in the package's docstrings, comments and
    messages names a module or object that exists (stale names were the review's finding)."""
    files = [*PAGES, *sorted(ROOT.joinpath("deepretrieval").rglob("*.py"))]
    stale, checked = [], 0
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            for m in DOTTED.finditer(line):
                checked += 1
                if not _resolves(m.group(0)):
                    stale.append(f"{file.relative_to(ROOT)}:{number}: {m.group(0)}")
    assert checked > 300
    assert not stale, "names that do not exist:\n" + "\n".join(stale)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_lines(text: str):
    """(line number, words after ``deepretrieval``) for each command written in a page; a
    backslash-continued command is one line."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for number, line in enumerate(joined.splitlines(), 1):
        for m in re.finditer(r"(?:^|[`\s(])deepretrieval ([a-z][^`#\n]*)", line):
            yield number, m.group(1).split()


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_every_documented_flag_exists(parser):
    """``deepretrieval <command> --flag`` in README, ARCHITECTURE and docs/: the flag is one the
    command parses (old spellings kept as aliases count)."""
    unknown, commands = [], 0
    for page in PAGES:
        for number, words in command_lines(page.read_text(encoding="utf-8")):
            command, path = parser, []
            while words and words[0] in _subcommands(command):
                path.append(words[0])
                command = _subcommands(command)[words.pop(0)]
            if not path:  # prose ("deepretrieval package …"), not a command
                continue
            commands += 1
            known = {flag for action in command._actions for flag in action.option_strings}
            for word in words:
                flag = word.split("=")[0].strip("[]`'\",;)")
                if flag.startswith("--") and len(flag) > 2 and flag not in known:
                    unknown.append(f"{page.relative_to(ROOT)}:{number}: deepretrieval "
                                   f"{' '.join(path)} {flag}")
    assert commands > 100
    assert not unknown, "flags the commands do not have:\n" + "\n".join(unknown)
