"""Download datasets from a Hugging Face dataset repository (default ``DeepRetrieval/datasets``).

One implementation behind ``deepretrieval download`` and ``python download_datasets.py``, with the
original project's flags. Files land at ``<output_dir>/<path in repo>``; in the DeepRetrieval repo
that is ``<output_dir>/<category>/<dataset>/…``.

Built on ``huggingface_hub``: the file list comes from :meth:`HfApi.list_repo_tree` (endpoint
``/api/datasets/{repo}/tree/{revision}``), each file from its ``/{repo}/resolve/{revision}/{path}``
URL (:func:`hf_hub_url`) through :func:`huggingface_hub.file_download.http_get`.

Resume: ``hf_hub_download`` (huggingface_hub 1.x) resumes a broken transfer only inside one call and
deletes its process-unique ``*.incomplete`` file on failure, so an interrupted run starts each file
over. Here every file is written to ``<dest>.incomplete`` beside its destination and kept when the
run fails; the next run continues it with an HTTP ``Range`` request (``http_get(resume_size=…)``),
and the finished file is renamed into place. Files already complete (same size, same blob id as
recorded in ``.deepretrieval-download.json``) are skipped.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deepretrieval.core import settings
from deepretrieval.core.io import write_atomic

log = logging.getLogger(__name__)

DEFAULT_REPO = "DeepRetrieval/datasets"
CATEGORIES = ("local_index_search", "search_engine", "sql", "raw_data")
MANIFEST = ".deepretrieval-download.json"
#: Bytes per read while streaming a file. What was received before a failure is only on disk in
#: whole chunks, so this is the resume granularity (huggingface_hub's own default is 10 MB).
CHUNK_BYTES = settings.get_int("DEEPRETRIEVAL_DOWNLOAD_CHUNK_BYTES", 1 << 20)
INCOMPLETE = ".incomplete"


class DownloadError(RuntimeError):
    """A download failed for a reason the user can act on; the message says which."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    oid: str | None

    @property
    def category(self) -> str | None:
        parts = self.path.split("/")
        return parts[0] if len(parts) > 1 else None

    @property
    def dataset(self) -> str | None:
        parts = self.path.split("/")
        return parts[1] if len(parts) > 2 else None


def _explain(exc: BaseException, repo_id: str, what: str) -> DownloadError:
    """Turn a huggingface_hub / httpx exception into a message a user can act on."""
    import httpx
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError):
        msg = (f"{repo_id} is gated: accept its terms on the Hub and pass --token (or set HF_TOKEN)")
    elif isinstance(exc, errors.RepositoryNotFoundError) or status == 401:
        msg = (f"dataset repository {repo_id!r} was not found or needs authentication "
               f"(HTTP {status}); check --repo_id, and pass --token (or set HF_TOKEN) for a private repo")
    elif isinstance(exc, errors.RevisionNotFoundError):
        msg = f"revision not found in {repo_id!r}: {exc}"
    elif isinstance(exc, errors.RemoteEntryNotFoundError) or status == 404:
        msg = f"{what} not found in {repo_id!r} (HTTP 404)"
    elif status == 403:
        msg = f"access to {repo_id!r} denied (HTTP 403); check that your token may read it"
    elif isinstance(exc, errors.OfflineModeIsEnabled):
        msg = "HF_HUB_OFFLINE is set: unset it to download"
    elif status is not None and status >= 500:
        msg = f"the Hub answered HTTP {status} while fetching {what}; try again later"
    elif isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        msg = (f"network error while fetching {what} from the Hub ({type(exc).__name__}: {exc}); "
               f"check your connection (and HF_ENDPOINT); rerun to resume")
    else:
        msg = f"failed to fetch {what} from {repo_id!r}: {type(exc).__name__}: {exc}"
    return DownloadError(msg)


def list_files(repo_id: str = DEFAULT_REPO, *, token: str | None = None, revision: str | None = None,
               repo_type: str = "dataset", endpoint: str | None = None) -> list[RemoteFile]:
    """All files of the repository (recursive), with size and blob id."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    try:
        entries = list(api.list_repo_tree(repo_id, recursive=True, revision=revision,
                                          repo_type=repo_type, token=token))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a clear message
        raise _explain(exc, repo_id, "the file list") from exc
    out = []
    for entry in entries:
        if isinstance(entry, RepoFile):
            lfs = entry.lfs or {}
            oid = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) or entry.blob_id
            out.append(RemoteFile(entry.path, entry.size, oid))
    return sorted(out, key=lambda f: f.path)


def group(files: Iterable[RemoteFile]) -> dict[str, dict[str, list[RemoteFile]]]:
    """{category: {dataset: [files]}}; files directly in a category go under dataset ``""``,
    files at the repository root under category ``""``."""
    out: dict[str, dict[str, list[RemoteFile]]] = {}
    for f in files:
        out.setdefault(f.category or "", {}).setdefault(f.dataset or "", []).append(f)
    return out


def select(files: Sequence[RemoteFile], categories: Sequence[str] | None = None,
           datasets: Sequence[str] | None = None, patterns: Sequence[str] | None = None,
           known_categories: Sequence[str] | None = CATEGORIES) -> list[RemoteFile]:
    """Filter files by category (``all`` = every category; for the DeepRetrieval repo, the four
    main ones), dataset (second path component) and glob patterns. Unknown names raise
    :class:`DownloadError` listing the valid ones."""
    grouped = group(files)
    present = sorted(c for c in grouped if c)
    cats = list(categories or ["all"])
    if "all" in cats:
        # the DeepRetrieval repo: its four main categories; any other repo: everything, root included
        wanted = [c for c in (known_categories or ()) if c in grouped] or sorted(grouped)
    else:
        unknown = [c for c in cats if c not in grouped]
        if unknown:
            raise DownloadError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                                f"{', '.join(unknown)}; valid: {', '.join(present) or '(none)'}")
        wanted = cats
    chosen = [f for f in files if (f.category or "") in wanted]
    if datasets:
        available = sorted({f.dataset for f in chosen if f.dataset})
        unknown = [d for d in datasets if d not in available]
        if unknown:
            raise DownloadError(f"unknown dataset{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                                f"in {', '.join(wanted)}; valid: {', '.join(available) or '(none)'}")
        chosen = [f for f in chosen if f.dataset in datasets]
    if patterns:
        chosen = [f for f in chosen if any(fnmatch.fnmatch(f.path, p) for p in patterns)]
    return chosen


def _load_manifest(output_dir: Path) -> dict[str, str]:
    try:
        return json.loads((output_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _save_manifest(output_dir: Path, manifest: dict[str, str]) -> None:
    write_atomic(output_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def _safe_dest(output_dir: Path, path: str) -> Path:
    dest = (output_dir / path).resolve()
    if output_dir.resolve() not in dest.parents:
        raise DownloadError(f"refusing to write {path!r} outside {output_dir}")
    return dest


def download_file(repo_id: str, f: RemoteFile, output_dir: Path, *, token: str | None = None,
                  revision: str | None = None, repo_type: str = "dataset", endpoint: str | None = None,
                  progress: bool = True) -> Path:
    """Download one file to ``output_dir/f.path`` via ``<dest>.incomplete``, resuming a partial
    ``.incomplete`` left by an earlier run."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    dest = _safe_dest(output_dir, f.path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + INCOMPLETE)
    url = hf_hub_url(repo_id, f.path, repo_type=repo_type, revision=revision, endpoint=endpoint)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"  # byte ranges must refer to the stored bytes
    resume = partial.stat().st_size if partial.exists() else 0
    if f.size is not None and resume > f.size:  # stale partial of another version
        partial.unlink()
        resume = 0
    if resume:
        log.info("resuming %s at byte %d", f.path, resume)
    # http_get reads this module constant on each call; smaller reads keep more of a broken transfer
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, max(CHUNK_BYTES, 1024))
    try:
        with open(partial, "ab") as fh:
            http_get(url, fh, resume_size=resume, headers=headers, expected_size=f.size,
                     displayed_filename=f.path if progress else None)
    except Exception as exc:  # noqa: BLE001
        if partial.exists() and partial.stat().st_size == 0:
            partial.unlink()  # nothing received: leave nothing behind
        raise _explain(exc, repo_id, f"file {f.path!r}") from exc
    os.replace(partial, dest)
    return dest


def download(repo_id: str = DEFAULT_REPO, output_dir: str | os.PathLike = "./data", *,
             categories: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
             patterns: Sequence[str] | None = None, token: str | None = None,
             revision: str | None = None, repo_type: str = "dataset", endpoint: str | None = None,
             files: Sequence[RemoteFile] | None = None, progress: bool = True) -> dict:
    """Download the selected files. Returns ``{"downloaded": [...], "skipped": [...],
    "failed": {path: message}}``. Raises :class:`DownloadError` when nothing can be listed or
    selected, or when the repository itself is unreachable."""
    output_dir = Path(output_dir)
    files = list(files) if files is not None else list_files(
        repo_id, token=token, revision=revision, repo_type=repo_type, endpoint=endpoint)
    known = CATEGORIES if repo_id == DEFAULT_REPO else None
    chosen = select(files, categories, datasets, patterns, known_categories=known)
    if not chosen:
        raise DownloadError(f"no files selected in {repo_id!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(output_dir)
    result: dict = {"downloaded": [], "skipped": [], "failed": {}}
    total = sum(f.size or 0 for f in chosen)
    print(f"{len(chosen)} file(s), {total / 1e6:.1f} MB from {repo_id} → {output_dir}", file=sys.stderr)
    for i, f in enumerate(chosen, start=1):
        dest = _safe_dest(output_dir, f.path)
        if (dest.exists() and (f.size is None or dest.stat().st_size == f.size)
                and manifest.get(f.path) in (None, f.oid)):
            result["skipped"].append(f.path)
            continue
        print(f"[{i}/{len(chosen)}] {f.path} ({(f.size or 0) / 1e6:.1f} MB)", file=sys.stderr)
        try:
            download_file(repo_id, f, output_dir, token=token, revision=revision, repo_type=repo_type,
                          endpoint=endpoint, progress=progress)
        except DownloadError as exc:
            result["failed"][f.path] = str(exc)
            log.error("%s", exc)
            # an unreachable repository or a broken network fails every file: stop early
            if "not found or needs authentication" in str(exc) or "network error" in str(exc):
                break
            continue
        manifest[f.path] = f.oid or ""
        _save_manifest(output_dir, manifest)
        result["downloaded"].append(f.path)
    return result


# ---------------------------------------------------------------------------------------------
# command line (shared by ``deepretrieval download`` and ``download_datasets.py``)
