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

__all__ = ["pubmed_from_env", "ctgov_from_env", "shared_cache", "api_key_from_env"]

_CACHES: dict[tuple[str, bool], Any] = {}
_CACHES_LOCK = threading.Lock()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def shared_cache(path: str | os.PathLike | None = None, frozen: bool | None = None):
    """The process-wide :class:`~.cache.SearchCache` for ``path`` (default from the
    environment); None when ``DEEPRETRIEVAL_CACHE=off``."""
    from .cache import SearchCache, default_cache_path
    if path is None:
        if os.environ.get("DEEPRETRIEVAL_CACHE", "").strip().lower() in ("off", "none", "0"):
            return None
        path = default_cache_path()
    frozen = _truthy("DEEPRETRIEVAL_CACHE_FROZEN") if frozen is None else bool(frozen)
    key = (str(Path(path).expanduser().resolve()), frozen)
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = SearchCache(Path(path).expanduser(), frozen=frozen)
        return _CACHES[key]


def api_key_from_env() -> str | None:
    key = os.environ.get("NCBI_API_KEY", "").strip()
    if key:
        return key
    key_file = os.environ.get("NCBI_API_KEY_FILE", "").strip()
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"NCBI_API_KEY_FILE={key_file}: no such file")
        return path.read_text().strip() or None
    return None


def _common() -> dict[str, Any]:
    from .governor import Backoff
    return {"cache": shared_cache(),
            "backoff": Backoff(retries=int(_env_float("DEEPRETRIEVAL_LIVE_RETRIES", 5)),
                               base=_env_float("DEEPRETRIEVAL_LIVE_BACKOFF", 0.5)),
            "timeout": _env_float("DEEPRETRIEVAL_LIVE_TIMEOUT", 30.0)}


def pubmed_from_env():
    from .pubmed import DEFAULT_URL, PubMedBackend
    key = api_key_from_env()
    rate = _env_float("DEEPRETRIEVAL_PUBMED_RPS", 10.0 if key else 3.0)
    return PubMedBackend(os.environ.get("DEEPRETRIEVAL_PUBMED_URL") or DEFAULT_URL, api_key=key,
                         tool=os.environ.get("NCBI_TOOL") or "deepretrieval",
                         email=os.environ.get("NCBI_EMAIL") or None, rate=rate, **_common())


def ctgov_from_env():
    from .ctgov import DEFAULT_URL, CTGovBackend
    return CTGovBackend(os.environ.get("DEEPRETRIEVAL_CTGOV_URL") or DEFAULT_URL,
                        rate=_env_float("DEEPRETRIEVAL_CTGOV_RPS", 1.0), **_common())
