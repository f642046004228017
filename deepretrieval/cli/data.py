"""Data sub-commands: ``download`` and ``convert``."""
from __future__ import annotations

from deepretrieval.data import download
from deepretrieval.data.original import convert_file


def register(sub) -> None:

    p = sub.add_parser("download", help="download datasets from the Hugging Face Hub",
                       description="Download DeepRetrieval datasets (default repo "
                                   f"{download.DEFAULT_REPO}) or any dataset repo. Files land at "
                                   "<output_dir>/<category>/<dataset>/...; an interrupted run is "
                                   "resumed by running the same command again.")
    download.add_arguments(p)
    p.set_defaults(func=download.run)

    p = sub.add_parser("convert", help="convert the original DeepRetrieval parquet rows to ours",
                       description="Turn rows as published by the original project (raw prompt "
                                   "strings with model special tokens, original data_source names and "
                                   "ground-truth shapes) into chat-message task rows.")
    p.add_argument("--in", dest="inp", required=True, help="original parquet file")
    p.add_argument("--out", required=True, help="output parquet file")
    p.add_argument("--keep_data_source", "--keep-data-source", dest="keep_data_source",
                   action="store_true", help="keep the original data_source names")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    stats = convert_file(args.inp, args.out, keep_data_source=args.keep_data_source)
    print(f"converted {stats['rows']} rows → {args.out}; tasks: "
          + ", ".join(f"{k} ({v})" for k, v in sorted(stats["tasks"].items())))
    return 0
