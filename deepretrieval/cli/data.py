"""Data sub-commands: ``download`` and ``convert``."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deepretrieval.catalog import get_task
from deepretrieval.data import download
from deepretrieval.data import search_r1
from deepretrieval.data.original import convert_file


def register(sub) -> None:

    p = sub.add_parser("download", help="download datasets from the Hugging Face Hub",
                       description="Download DeepRetrieval datasets (default repo "
                                   f"{download.DEFAULT_REPO}) or any dataset repo. Files land at "
                                   "<output_dir>/<category>/<dataset>/...; an interrupted run is "
                                   "resumed by running the same command again.")
    add_download_arguments(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("convert", help="convert other projects' parquet rows to ours "
                                       "(the original DeepRetrieval, Search-R1)",
                       description="--from deepretrieval (default): rows as published by the "
                                   "original project (raw prompt strings with model special tokens, "
                                   "original data_source names and ground-truth shapes) → chat-message "
                                   "task rows; --out is the output parquet file. --from search-r1: "
                                   "rows written by Search-R1's data scripts (data_source nq, "
                                   "hotpotqa, ... one user message, reward_model.ground_truth.target; "
                                   "merged multi-set files too) → rows of the agentic tasks "
                                   "agent_<set> (question in extra_info.question); --out is a folder, "
                                   "the file keeps its name.")
    p.add_argument("input", nargs="?", help="input parquet file (or --input)")
    p.add_argument("--input", "--in", dest="inp", help="input parquet file")
    p.add_argument("--from", dest="source", choices=CONVERT_SOURCES, default="deepretrieval",
                   help="who wrote the rows (default: deepretrieval, the original project)")
    p.add_argument("--out", required=True,
                   help="output parquet file (--from deepretrieval) or folder (--from search-r1)")
    p.add_argument("--keep-data-source", "--keep_data_source", dest="keep_data_source",
                   action="store_true", help="keep the original data_source names (--from deepretrieval)")
    p.add_argument("--index", default=None,
                   help=f"--from search-r1: the index the converted rows search (default "
                        f"{search_r1.DEFAULT_INDEX}, Search-R1's corpus; build it as docs/agentic_corpora.md says)")
    p.set_defaults(func=_cmd_convert)


CONVERT_SOURCES = ("deepretrieval", "search-r1")


def _cmd_convert(args) -> int:
    if args.input and args.inp and args.input != args.inp:
        raise ValueError(f"two inputs given ({args.input!r} and --input {args.inp!r}); give one")
    inp = args.input or args.inp
    if not inp:
        raise ValueError("no input file: `deepretrieval convert [--from SOURCE] IN.parquet --out OUT`")
    if args.source == "search-r1":
        if args.keep_data_source:
            raise ValueError("--keep-data-source is for --from deepretrieval; Search-R1's bare "
                             "names (nq, hotpotqa, ...) mean other tasks here")
        stats = search_r1.convert_file(inp, args.out, args.index or search_r1.DEFAULT_INDEX)
        out = stats["out"]
    else:
        if args.index is not None:
            raise ValueError("--index is for --from search-r1")
        stats = convert_file(inp, args.out, get_task, keep_data_source=args.keep_data_source)
        out = args.out
    print(f"converted {stats['rows']} rows → {out}; tasks: "
          + ", ".join(f"{k} ({v})" for k, v in sorted(stats["tasks"].items())))
    return 0


def add_download_arguments(p) -> None:
    p.add_argument("--repo-id", "--repo_id", dest="repo_id", default=download.DEFAULT_REPO,
                   help=f"Hugging Face dataset repository (default: {download.DEFAULT_REPO})")
    p.add_argument("--out", "--output-dir", "--output_dir", dest="output_dir", default="./data",
                   help="where files land, as <out>/<category>/<dataset>/... (default: ./data)")
    p.add_argument("--categories", nargs="+", default=["all"],
                   help=f"categories to download: {', '.join(download.CATEGORIES)} or all (default: all)")
    p.add_argument("--datasets", nargs="+", default=[],
                   help="datasets (second path component) to download, e.g. fever hotpotqa")
    p.add_argument("--include", nargs="+", default=[], metavar="GLOB",
                   help="only files whose repository path matches one of these globs")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--token", default=None,
                   help="Hugging Face token for private/gated repos (default: HF_TOKEN / saved login)")
    p.add_argument("--list-only", "--list_only", dest="list_only", action="store_true",
                   help="list categories and datasets with file counts; download nothing")
    p.add_argument("--list-files", "--list_files", dest="list_files", action="store_true",
                   help="list every file in the repository; download nothing")
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true",
                   help="no per-file progress bars")


def cmd_download(args) -> int:
    token = args.token or None
    if args.no_progress:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    try:
        files = download.list_files(args.repo_id, token=token, revision=args.revision)
        if args.list_files:
            for f in files:
                print(f"{f.path}\t{f.size if f.size is not None else '?'}")
            print(f"{len(files)} files", file=sys.stderr)
            return 0
        if args.list_only:
            for category, by_dataset in download.group(files).items():
                n = sum(len(v) for v in by_dataset.values())
                print(f"{category or '(root)'} ({n} files)")
                for dataset, dfiles in by_dataset.items():
                    if dataset:
                        size = sum(f.size or 0 for f in dfiles) / 1e6
                        print(f"  - {dataset} ({len(dfiles)} files, {size:.1f} MB)")
            return 0
        result = download.download(args.repo_id, args.output_dir, categories=args.categories,
                          datasets=args.datasets, patterns=args.include, token=token,
                          revision=args.revision, files=files, progress=not args.no_progress)
    except download.DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"downloaded {len(result['downloaded'])}, already present {len(result['skipped'])}, "
          f"failed {len(result['failed'])} → {args.output_dir}", file=sys.stderr)
    for path, msg in result["failed"].items():
        print(f"failed: {path}: {msg}", file=sys.stderr)
    if result["failed"]:
        print("rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


def download_main(argv: Sequence[str] | None = None) -> int:
    """``python download_datasets.py``: the original project's script, same flags."""
    parser = argparse.ArgumentParser(
        prog="download_datasets.py",
        description="Download DeepRetrieval datasets (or any dataset repo) from the Hugging Face Hub.")
    add_download_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return cmd_download(args)
