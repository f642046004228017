"""Command-line inputs and outputs shared by several commands."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from deepretrieval.evaluation.report import summary_markdown


def texts_or_stdin(items: list[str], what: str) -> list[str]:
    """Positional texts, where ``-`` reads one per non-blank line of standard input; ValueError
    when none is given or one is blank."""
    texts: list[str] = []
    for item in items:
        texts += [line.strip() for line in sys.stdin if line.strip()] if item == "-" else [item]
    if not texts or not all(t.strip() for t in texts):
        raise ValueError(f"give non-empty {what}")
    return texts


def print_report(report: dict[str, Any], out: Path, as_json: bool) -> None:
    """An evaluation report on standard output: the summary JSON (``--json``) or the markdown
    summary and the run folder."""
    if as_json:
        json.dump({k: report[k] for k in ("task", "split", "name", "rows", "systems")}, sys.stdout, indent=2)
        print()
    else:
        print(summary_markdown(report))
        print(f"run folder: {out}")
