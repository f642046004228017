"""The original DeepRetrieval's command lines, accepted beside ours.

``python query_rewrite.py --query "…" --api_url http://localhost:8000/v1/chat/completions`` is the
original's documented call. :func:`original_rewrite_argv` turns it into ``deepretrieval rewrite``
arguments with the original's defaults: endpoint ``http://localhost:8000/v1/chat/completions``
(our client takes the ``/v1`` base, so the ``/chat/completions`` tail is dropped), model
``DeepRetrieval/DeepRetrieval-NQ-BM25-3B``, task ``nq`` (that model's task), sampling at
temperature 0.7, at most 512 new tokens. Our own flags may be mixed in and win over the defaults.
"""
from __future__ import annotations

import argparse

ORIGINAL_API_URL = "http://localhost:8000/v1/chat/completions"
ORIGINAL_MODEL = "DeepRetrieval/DeepRetrieval-NQ-BM25-3B"
ORIGINAL_DEFAULTS = {"--task": "nq", "--temperature": "0.7", "--max-new-tokens": "512"}
_ORIGINAL_FLAGS = ("--query", "--api_url")


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if url.endswith(tail):
            return url[: -len(tail)]
    return url


def original_rewrite_argv(argv: list[str]) -> list[str] | None:
    """``rewrite`` arguments for an original-style call; None when ``argv`` uses none of the
    original's flags (``--query``, ``--api_url``)."""
    if not any(a == f or a.startswith(f + "=") for a in argv for f in _ORIGINAL_FLAGS):
        return None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--query", action="append", default=[])
    p.add_argument("--api_url", default=None)
    known, rest = p.parse_known_args(argv)
    out = [*known.query, *rest]
    given = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    if "--api-url" not in given and "--model" not in given or known.api_url:
        out += ["--api-url", _api_base(known.api_url or ORIGINAL_API_URL)]
    if "--model" not in given:
        out += ["--model", ORIGINAL_MODEL]
    for flag, value in ORIGINAL_DEFAULTS.items():
        if flag not in given:
            out += [flag, value]
    if "--sampling" not in given:
        out.append("--sampling")
    return out
