"""SQL text helpers and defaults shared by the SQL backend (``search/sql.py``) and the SQL task
family (``tasks/sql.py``): statement splitting outside literals and comments, top-level ORDER BY,
the Spider/BIRD database layout."""
from __future__ import annotations

import os
import re
from pathlib import Path

#: Default per-query time limit (s) and row cap of a SQL search.
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ROWS = 10_000


def spider_database_path(root: str | os.PathLike, db_id: str) -> Path:
    """Spider/BIRD layout: ``<root>/<db_id>/<db_id>.sqlite``."""
    return Path(root) / db_id / f"{db_id}.sqlite"


# Statement splitting ------------------------------------------------------------------------

LITERAL = "\x00"


def _scan(sql: str):
    """Yield ``(position, char, depth)`` for the characters of ``sql`` outside string literals,
    quoted identifiers and comments (``depth`` = parenthesis depth). Comments are skipped; each
    literal or quoted identifier is yielded once as :data:`LITERAL`."""
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            yield i, LITERAL, depth  # a literal counts as one token
            i = j + 1
            continue
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        yield i, c, depth
        i += 1


def split_statements(sql: str) -> list[str]:
    """The non-empty statements of ``sql`` (split on ``;`` outside literals and comments)."""
    parts, start, content = [], 0, False
    for pos, c, _ in _scan(sql):
        if c == ";":
            if content:
                parts.append(sql[start:pos].strip())
            start, content = pos + 1, False
        elif not c.isspace():
            content = True
    if content:
        parts.append(sql[start:].strip())
    return parts


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost query has ORDER BY (not counting subqueries, literals, comments)."""
    text = "".join(c if depth == 0 and c != LITERAL else " " for _, c, depth in _scan(sql))
    return re.search(r"\border\s+by\b", text, re.IGNORECASE) is not None
