"""Every environment variable the package reads, in one place, with one parsing rule.

A variable that is unset or blank means "use the default". A value that does not parse is a
configuration error: :class:`SettingError` names the variable and what it expects (never a silent
fallback). Each variable is read when asked for, so tests and launchers can set it at run time.

Paths:
* ``DEEPRETRIEVAL_CACHE_DIR``: the cache *folder* (tiny test model, LLM-API responses, exported
  models); default ``~/.cache/deepretrieval``.
* ``DEEPRETRIEVAL_CACHE``: the live-engine cache *file* (SQLite); default
  ``<cache folder>/live_cache.sqlite``; ``off`` disables it.
* ``DEEPRETRIEVAL_INDEX_DIR``: where named indexes live; default ``<cache folder>/indexes``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class SettingError(ValueError):
    """An environment variable holds a value that does not parse."""


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str          # "str" | "int" | "float" | "bool" | "path"
    help: str


#: The variables, by name (documentation and the single source of the known names).
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("DEEPRETRIEVAL_CACHE_DIR", "path", "cache folder (tiny model, LLM-API cache, models)"),
    Setting("DEEPRETRIEVAL_CACHE", "str", "live-engine cache file, or 'off'"),
    Setting("DEEPRETRIEVAL_CACHE_FROZEN", "bool", "live cache answers only from what it holds"),
    Setting("DEEPRETRIEVAL_INDEX_DIR", "path", "folder of named indexes"),
    Setting("DEEPRETRIEVAL_INDEXES", "str", "extra named indexes: name=path,name=path"),
    Setting("DEEPRETRIEVAL_SEARCH_URL", "str",
            "retrieval service URL, or ray://APP (a Ray Serve application's handles); rewards "
            "search through it"),
    Setting("DEEPRETRIEVAL_SEARCH_TOKEN", "str", "bearer token of the retrieval service"),
    Setting("DEEPRETRIEVAL_PROGRESS", "bool", "progress bars (default on)"),
    Setting("DEEPRETRIEVAL_BM25_THREADS", "int", "threads of the BM25 top-k kernel"),
    Setting("DEEPRETRIEVAL_DENSE_PLACEMENT", "str", "dense placement for every dense index, "
            "e.g. torch:gpus=0-3 (default: the index's own, else flat)"),
    Setting("DEEPRETRIEVAL_DENSE_RAM_GB", "float", "RAM a dense placement may use (default: "
            "MemAvailable)"),
    Setting("DEEPRETRIEVAL_DENSE_BLOCK_MB", "int", "vectors read per block when building, "
            "loading or streaming a dense index (default 256)"),
    Setting("DEEPRETRIEVAL_BM25_TOPK", "str",
            "BM25 top-k kernel: auto (pruned for small k on large indexes), exhaustive, pruned"),
    Setting("DEEPRETRIEVAL_BM25_BUILD_MB", "int", "BM25 build memory budget in MB (default 1024)"),
    Setting("DEEPRETRIEVAL_BM25_BUILD_WORKERS", "int",
            "BM25 build tokenizer processes (default: CPU count; 0: in the main process)"),
    Setting("DEEPRETRIEVAL_DOWNLOAD_CHUNK_BYTES", "int", "download chunk size"),
    Setting("DEEPRETRIEVAL_SEARCH_TIMEOUT", "float", "service client timeout (s)"),
    Setting("DEEPRETRIEVAL_SEARCH_RETRIES", "int", "service client retries"),
    Setting("DEEPRETRIEVAL_PUBMED_URL", "str", "E-utilities base URL"),
    Setting("DEEPRETRIEVAL_PUBMED_RPS", "float", "PubMed requests per second"),
    Setting("DEEPRETRIEVAL_CTGOV_URL", "str", "ClinicalTrials.gov API base URL"),
    Setting("DEEPRETRIEVAL_CTGOV_RPS", "float", "ClinicalTrials.gov requests per second"),
    Setting("DEEPRETRIEVAL_LIVE_TIMEOUT", "float", "live-engine request timeout (s)"),
    Setting("DEEPRETRIEVAL_LIVE_RETRIES", "int", "live-engine retries"),
    Setting("DEEPRETRIEVAL_LIVE_BACKOFF", "float", "live-engine first backoff (s)"),
    Setting("DEEPRETRIEVAL_SQL_HEAP_LIMIT", "int", "SQLite heap ceiling per process (bytes)"),
    Setting("DEEPRETRIEVAL_SQL_DB_ROOT", "path", "paper profile: where original rows' SQL databases are"),
    Setting("DEEPRETRIEVAL_PROFILE", "str", "scoring profile for every row: default or paper"),
    Setting("DEEPRETRIEVAL_LIFELINE", "str", "internal: the pipe a managed service watches"),
    Setting("NCBI_API_KEY", "str", "NCBI API key (never logged or cached)"),
    Setting("NCBI_API_KEY_FILE", "path", "file holding the NCBI API key"),
    Setting("NCBI_TOOL", "str", "E-utilities tool name"),
    Setting("NCBI_EMAIL", "str", "E-utilities contact e-mail"),
    Setting("OPENAI_BASE_URL", "str", "OpenAI-compatible API base URL"),
    Setting("OPENAI_API_KEY", "str", "OpenAI-compatible API key"),
)}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise KeyError(f"unknown setting {name!r}; known: {sorted(SETTINGS)}")
    return SETTINGS[name]


def raw(name: str) -> str | None:
    """The stripped value of a known variable, None when unset or blank."""
    _setting(name)
    value = os.environ.get(name, "").strip()
    return value or None


def get_str(name: str, default: str | None = None) -> str | None:
    value = raw(name)
    return default if value is None else value


def get_int(name: str, default: int) -> int:
    value = raw(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {value!r}") from None


def get_float(name: str, default: float) -> float:
    value = raw(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SettingError(f"{name} must be a number, got {value!r}") from None


def get_bool(name: str, default: bool) -> bool:
    value = raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise SettingError(f"{name} must be one of {_TRUE + _FALSE}, got {value!r}")


def get_path(name: str, default: Path) -> Path:
    value = raw(name)
    return Path(value).expanduser() if value else default


def progress_enabled(requested: bool = True) -> bool:
    """Progress bars: when the caller asks for them and ``DEEPRETRIEVAL_PROGRESS`` allows."""
    return bool(requested) and get_bool("DEEPRETRIEVAL_PROGRESS", True)


def cache_dir() -> Path:
    """The cache folder: ``$DEEPRETRIEVAL_CACHE_DIR`` or ``~/.cache/deepretrieval``."""
    return get_path("DEEPRETRIEVAL_CACHE_DIR", Path.home() / ".cache" / "deepretrieval")


def live_cache_file() -> Path | None:
    """The live-engine cache file: ``$DEEPRETRIEVAL_CACHE`` (None when ``off``), else
    ``<cache folder>/live_cache.sqlite``."""
    value = raw("DEEPRETRIEVAL_CACHE")
    if value is None:
        return cache_dir() / "live_cache.sqlite"
    if value.lower() in ("off", "none", "0"):
        return None
    return Path(value).expanduser()


def index_dir() -> Path:
    """Where named indexes live: ``$DEEPRETRIEVAL_INDEX_DIR`` or ``<cache folder>/indexes``."""
    return get_path("DEEPRETRIEVAL_INDEX_DIR", cache_dir() / "indexes")


def named_indexes() -> dict[str, Path]:
    """``DEEPRETRIEVAL_INDEXES="scifact=/data/idx/scifact,nq=/data/idx/nq"`` as a mapping."""
    out = {}
    for item in filter(None, (get_str("DEEPRETRIEVAL_INDEXES") or "").split(",")):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise SettingError(f"DEEPRETRIEVAL_INDEXES entries are name=path, got {item!r}")
        out[name.strip()] = Path(path.strip()).expanduser()
    return out
