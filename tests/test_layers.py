"""The package's layers (ARCHITECTURE.md): no import cycles (function-level imports included),
the import-linter layer contract holds, nothing registers itself on import, and task names
resolve in the documented order."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deepretrieval"
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                # the most specific package module the import names
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "deepretrieval":
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _imports()
    assert len(graph) > 50
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_family_modules_do_not_import_backends_or_upper_layers():
    graph = _imports()
    for module, deps in graph.items():
        if module.startswith("deepretrieval.tasks."):
            bad = {d for d in deps if not d.startswith(("deepretrieval.core", "deepretrieval.tasks"))}
            assert not bad, f"{module} imports {bad}"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_layer_contract():
    out = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_importing_a_family_registers_nothing():
    """Importing modules has no effect on which tasks exist: only the catalog lists them."""
    code = ("import deepretrieval.tasks.beir, deepretrieval.data.byo_beir, deepretrieval.data.original;"
            "import deepretrieval.catalog as c; print(len(c.TASKS))")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    code2 = "import deepretrieval.catalog as c; print(len(c.TASKS))"
    second = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, check=True)
    assert first.stdout == second.stdout


# --- name resolution order ----------------------------------------------------------------------

def _fake_index(root: Path, name: str, kind: str = "bm25") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "meta.json").write_text(json.dumps({"type": kind, "name": name}))


def test_resolution_order(tmp_path, monkeypatch):
    from deepretrieval import catalog
    from deepretrieval.tasks import UnknownTask

    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(tmp_path))
    monkeypatch.setattr(catalog, "_RESOLVED", {})
    _fake_index(tmp_path, "my_collection")
    _fake_index(tmp_path, "nfcorpus_test")      # also an original DeepRetrieval name
    _fake_index(tmp_path, "scifact")            # a defined task's name

    # 1. defined tasks exactly: a collection named like one changes nothing
    assert catalog.get_task("scifact") is catalog.TASKS["scifact"]
    # 2. a user collection resolves to a BEIR task over it
    task = catalog.get_task("my_collection")
    assert (task.name, task.index, task.family.name) == ("my_collection", "my_collection", "beir")
    no_reason = catalog.get_task("my_collection_no_reason")
    assert not no_reason.reasoning
    # an original name resolves when no user collection has it
    assert catalog.get_task("fever_test").index == "fever"
    # a user collection that is also an original name is shadowed by nothing: it is an error
    # naming both meanings
    with pytest.raises(catalog.AmbiguousTask) as info:
        catalog.get_task("nfcorpus_test")
    message = str(info.value)
    assert "original DeepRetrieval data_source name" in message and "user collection" in message
    assert "'nfcorpus'" in message and "'nfcorpus_test'" in message
    # 3. unknown: the known names are listed, user collections included
    with pytest.raises(UnknownTask) as info:
        catalog.get_task("no_such_thing")
    assert "scifact" in str(info.value) and "my_collection" in str(info.value)
    assert "my_collection" in catalog.local_collections()
    assert "scifact" not in catalog.local_collections()
