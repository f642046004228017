"""Command-line inputs shared by several commands."""
from __future__ import annotations

import sys


def texts_or_stdin(items: list[str], what: str) -> list[str]:
    """Positional texts, where ``-`` reads one per non-blank line of standard input; ValueError
    when none is given or one is blank."""
    texts: list[str] = []
    for item in items:
        texts += [line.strip() for line in sys.stdin if line.strip()] if item == "-" else [item]
    if not texts or not all(t.strip() for t in texts):
        raise ValueError(f"give non-empty {what}")
    return texts
