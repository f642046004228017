"""wiki-18 (DPR's 21M 100-word Wikipedia passages, Dec. 2018 dump) as Search-R1 distributes it,
turned into a BEIR-style corpus for ``deepretrieval index`` / ``index-dense``.

Search-R1's ``wiki-18.jsonl`` (Hub dataset ``PeterJinGo/wiki-18-corpus``) has one passage per line,
``{"id": "0", "contents": "\\"Title\\"\\ntext"}``. :func:`to_beir` writes ``{"_id", "title",
"text"}`` lines (title without its quotes), so the service answers Search-R1's format with the
same ``contents`` again. See ``docs/agentic_corpora.md`` for the download and index commands.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

from deepretrieval.core.beir_files import FormatError, iter_jsonl

SEARCH_R1_CORPUS_REPO = "PeterJinGo/wiki-18-corpus"
SEARCH_R1_CORPUS_FILE = "wiki-18.jsonl.gz"


def split_contents(contents: str) -> tuple[str, str]:
    """``"Title"\\ntext`` → (title, text); a first line without quotes is kept as it is."""
    first, _, rest = contents.partition("\n")
    title = first.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, rest.strip()


def convert_line(obj: Any, where: str) -> dict[str, str]:

    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("contents"), str):
        raise FormatError(f"{where}: expected {{\"id\", \"contents\": str}} (Search-R1's corpus)")
    title, text = split_contents(obj["contents"])
    return {"_id": str(obj["id"]), "title": title, "text": text}


def to_beir(src: str | Path, dst: str | Path, *, progress_every: int = 1_000_000) -> int:
    """Convert Search-R1's corpus JSONL(.gz) ``src`` into BEIR JSONL(.gz) ``dst`` (gzipped when it
    ends in ``.gz``), atomically; returns the number of passages."""
    import os
    import tempfile


    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    n = 0
    try:
        opener = gzip.open if dst.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as out:
            for lineno, obj in iter_jsonl(src, required=(), with_lines=True):
                out.write(json.dumps(convert_line(obj, f"{src}:{lineno}"), ensure_ascii=False))
                out.write("\n")
                n += 1
                if progress_every and n % progress_every == 0:
                    print(f"{n:,} passages", file=sys.stderr, flush=True)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
