"""Where the data shipped inside the package lives (``deepretrieval/bundled/*``, each folder with
its SOURCE.md: license and origin)."""
from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
#: BEIR-format collections shipped with the package (built into BM25 indexes on first use).
COLLECTIONS = ("scifact",)


def bundled_path(*parts: str) -> Path:
    """A path under the bundled data folder."""
    return BUNDLED_DIR.joinpath(*parts)


def collection_dir(name: str) -> Path:
    if name not in COLLECTIONS:
        raise KeyError(f"no bundled collection {name!r} (bundled: {list(COLLECTIONS)})")
    return BUNDLED_DIR / name
