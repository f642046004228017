"""Live search engines (PubMed, ClinicalTrials.gov) behind a rate governor and a persistent cache.

The built-in index names ``pubmed`` and ``ctgov`` are built by :func:`pubmed_from_env` and
:func:`ctgov_from_env` from environment variables:

=============================== ==========================================================
``DEEPRETRIEVAL_PUBMED_URL``    E-utilities base (default ``https://eutils.ncbi.nlm.nih.gov/entrez/eutils``)
``DEEPRETRIEVAL_CTGOV_URL``     API v2 base (default ``https://clinicaltrials.gov/api/v2``)
``NCBI_API_KEY``                NCBI API key (or ``NCBI_API_KEY_FILE``: a file holding it)
``NCBI_EMAIL`` / ``NCBI_TOOL``  sent as ``email`` / ``tool`` (tool default ``deepretrieval``)
``DEEPRETRIEVAL_PUBMED_RPS``    requests/s (default 10 with a key, 3 without)
``DEEPRETRIEVAL_CTGOV_RPS``     requests/s (default 1)
``DEEPRETRIEVAL_CACHE``         cache file (default ``~/.cache/deepretrieval/live_cache.sqlite``);
                                ``off`` disables the cache
``DEEPRETRIEVAL_CACHE_FROZEN``  ``1``: serve only from the cache, a miss is a search error
``DEEPRETRIEVAL_LIVE_RETRIES``  retries after the first attempt (default 5)
``DEEPRETRIEVAL_LIVE_BACKOFF``  first backoff bound in seconds (default 0.5; doubles, cap 30)
``DEEPRETRIEVAL_LIVE_TIMEOUT``  per-request timeout in seconds (default 30)
=============================== ==========================================================
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.search.live import ctgov, pubmed
from deepretrieval.search.live.cache import SearchCache
from deepretrieval.search.live.ctgov import CTGovBackend
from deepretrieval.search.live.governor import Backoff
from deepretrieval.search.live.pubmed import PubMedBackend

__all__ = ["pubmed_from_env", "ctgov_from_env", "shared_cache", "api_key_from_env"]

_CACHES: dict[tuple[str, bool], Any] = {}
_CACHES_LOCK = threading.Lock()


def shared_cache(path: str | os.PathLike | None = None, frozen: bool | None = None):
    """The process-wide :class:`~.cache.SearchCache` for ``path`` (default from the
    environment); None when ``DEEPRETRIEVAL_CACHE=off``."""
    if path is None:
        path = settings.live_cache_file()
        if path is None:
            return None
    frozen = settings.get_bool("DEEPRETRIEVAL_CACHE_FROZEN", False) if frozen is None else bool(frozen)
    key = (str(Path(path).expanduser().resolve()), frozen)
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = SearchCache(Path(path).expanduser(), frozen=frozen)
        return _CACHES[key]


def api_key_from_env() -> str | None:
    key = settings.get_str("NCBI_API_KEY")
    if key:
        return key
    key_file = settings.get_str("NCBI_API_KEY_FILE")
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"NCBI_API_KEY_FILE={key_file}: no such file")
        return path.read_text().strip() or None
    return None


def _common() -> dict[str, Any]:
    return {"cache": shared_cache(),
            "backoff": Backoff(retries=settings.get_int("DEEPRETRIEVAL_LIVE_RETRIES", 5),
                               base=settings.get_float("DEEPRETRIEVAL_LIVE_BACKOFF", 0.5)),
            "timeout": settings.get_float("DEEPRETRIEVAL_LIVE_TIMEOUT", 30.0)}


def pubmed_from_env():
    key = api_key_from_env()
    rate = settings.get_float("DEEPRETRIEVAL_PUBMED_RPS", 10.0 if key else 3.0)
    return PubMedBackend(settings.get_str("DEEPRETRIEVAL_PUBMED_URL", pubmed.DEFAULT_URL), api_key=key,
                         tool=settings.get_str("NCBI_TOOL", "deepretrieval"),
                         email=settings.get_str("NCBI_EMAIL"), rate=rate, **_common())


def ctgov_from_env():
    return CTGovBackend(settings.get_str("DEEPRETRIEVAL_CTGOV_URL", ctgov.DEFAULT_URL),
                        rate=settings.get_float("DEEPRETRIEVAL_CTGOV_RPS", 1.0), **_common())
