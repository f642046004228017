"""Failure leaves no damage: index replacement is a swap (never a half-deleted index), killed
builds' temp folders are cleaned, damaged indexes are detected on load with a rebuild message
(built-ins rebuild themselves)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from deepretrieval.core import io as dio
from deepretrieval.core.io import atomic_dir, clean_stale
from deepretrieval.catalog import open_index, register_index
from deepretrieval.search import DamagedIndex


def _write(folder, text):
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text(text)


def test_interrupted_replacement_keeps_the_old_version(tmp_path, monkeypatch):
    target = tmp_path / "idx"
    with atomic_dir(target) as tmp:
        _write(tmp, "old")
    real_replace = os.replace
    calls = []

    def interrupted(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the rename that brings the new version in
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(dio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            _write(tmp, "new")
    monkeypatch.setattr(dio.os, "replace", real_replace)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    assert (target / "a.txt").read_text() == "old" == (target / "b.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]           # nothing left beside it


def test_interrupted_delete_of_the_old_version_leaves_the_new_one_whole(tmp_path, monkeypatch):
    target = tmp_path / "idx"
    with atomic_dir(target) as tmp:
        _write(tmp, "old")

    def rmtree(path, ignore_errors=False):
        os.remove(os.path.join(path, "a.txt"))   # half-way through the delete ...
        raise KeyboardInterrupt                  # ... Ctrl-C

    monkeypatch.setattr(dio.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            _write(tmp, "new")
    monkeypatch.undo()
    assert (target / "a.txt").read_text() == "new" == (target / "b.txt").read_text()
    clean_stale(target)                                               # the next writer tidies up
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


KILLED_BUILD = """
import sys, time
from deepretrieval.core.io import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "big.bin").write_bytes(b"x" * 1_000_000)
    print(tmp, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_temp_folder_of_a_killed_build_is_cleaned(tmp_path):
    target = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(target)], stdout=subprocess.PIPE,
                            text=True)
    left = proc.stdout.readline().strip()
    assert os.path.isdir(left)
    assert clean_stale(target) == []          # its writer is alive: not touched
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert os.path.isdir(left)                 # SIGKILL: no finally ran
    with atomic_dir(target) as tmp:            # the rerun cleans it
        _write(tmp, "new")
    assert not os.path.exists(left)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_damaged_index_is_detected_with_a_rebuild_message(scifact_index, tmp_path):
    copy = tmp_path / "mine"
    shutil.copytree(scifact_index.path, copy)
    (copy / "ids.idx").unlink()
    register_index("mine_damaged", copy)
    with pytest.raises(DamagedIndex, match="damaged or incomplete.*rebuild"):
        open_index("mine_damaged")
    (copy / "meta.json").write_text("[1, 2]")
    with pytest.raises(DamagedIndex, match="not a JSON object"):
        open_index("mine_damaged")


def test_damaged_builtin_rebuilds_itself(scifact_index, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(scifact_index.path, root / "scifact")
    (root / "scifact" / "ids.idx").unlink()      # what a cut-short delete used to leave
    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(root))
    index = open_index("scifact")
    assert len(index) == len(scifact_index)
    assert (root / "scifact" / "ids.idx").is_file()
    assert index.search(["stem cells"], 3)[0].ids == scifact_index.search(["stem cells"], 3)[0].ids
