"""On-disk string columns (``core/docstore.py``): what is appended is read back by position,
one string or many at once, and a column cut short resumes at a given count."""
from __future__ import annotations

import pytest

from deepretrieval.core.docstore import StringColumn, StringColumnWriter, column_exists

STRINGS = ["g0", "", "café — naïve", "a\x00b", "x" * 200, "中文", "last"]


def test_append_and_extend_read_back_the_same_strings(tmp_path):
    w = StringColumnWriter(tmp_path, "c", buffer_bytes=16)   # small buffer: several writes
    w.append(STRINGS[0])
    w.extend(STRINGS[1:4])
    w.extend(iter(STRINGS[4:]))                              # any iterable
    w.extend([])
    w.close()
    assert column_exists(tmp_path, "c") and w.count == len(STRINGS)
    col = StringColumn(tmp_path, "c")
    assert len(col) == len(STRINGS) and list(col) == STRINGS
    assert [col[i] for i in range(len(STRINGS))] == STRINGS and col[-1] == "last"
    order = [6, 0, 3, 3, 2, 1]
    assert col.take(order) == [STRINGS[i] for i in order]   # holds a NUL: the general path
    assert col.take([0, 1, 6]) == ["g0", "", "last"]         # a few strings: the general path
    assert col.take([0, 1, 6] * 11) == ["g0", "", "last"] * 11  # many short: the gathered path
    assert col[1:3] == STRINGS[1:3] and col.take([]) == []
    with pytest.raises(IndexError):
        col.take([len(STRINGS)])


def test_resume_cuts_the_column_back_to_the_kept_strings(tmp_path):
    w = StringColumnWriter(tmp_path, "c")
    w.extend(STRINGS)
    w.close()
    w = StringColumnWriter(tmp_path, "c", resume_at=3)
    w.extend(["new"])
    w.close()
    assert list(StringColumn(tmp_path, "c")) == STRINGS[:3] + ["new"]


def test_a_column_cut_short_is_an_error(tmp_path):
    w = StringColumnWriter(tmp_path, "c")
    w.extend(STRINGS)
    w.close()
    with open(tmp_path / "c.bin", "r+b") as f:
        f.truncate(5)
    with pytest.raises(ValueError, match="cut short"):
        StringColumn(tmp_path, "c")
