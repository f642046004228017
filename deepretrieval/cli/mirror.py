"""``deepretrieval mirror pubmed|ctgov --from DIR``: ingest a local PubMed / ClinicalTrials.gov
mirror into a Boolean index (``pubmed_local`` / ``ctgov_local`` under the index root)."""
from __future__ import annotations

from pathlib import Path

from deepretrieval.core import settings
from deepretrieval.data.mirror import ingest


def register(sub) -> None:
    p = sub.add_parser("mirror", help="ingest a local PubMed / ClinicalTrials.gov mirror",
                       description="Parse MEDLINE/PubMed baseline XML (pubmed*.xml.gz) or the "
                                   "ClinicalTrials.gov bulk JSON into a Boolean index with PubMed "
                                   "query syntax. Resumable: rerun to continue after an "
                                   "interruption or to add new files.")
    p.add_argument("source", choices=["pubmed", "ctgov"])
    p.add_argument("--from", dest="src", required=True, metavar="DIR",
                   help="folder with pubmed*.xml.gz files (pubmed) or *.json study files (ctgov)")
    p.add_argument("--name", help="index name (default: <source>_local under the index root)")
    p.add_argument("--out", help="index directory (default: <index root>/<name>)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first malformed record or unreadable file (default: skip "
                        "them, named and counted, and index the rest)")
    p.set_defaults(func=cmd_mirror)


def cmd_mirror(args) -> int:
    src = Path(args.src)
    if not src.is_dir():
        raise ValueError(f"--from {src}: not a folder")
    name = args.name or f"{args.source}_local"
    index_dir = Path(args.out) if args.out else settings.index_dir() / name
    work = index_dir.with_name(index_dir.name + ".mirror")
    ingest(args.source, src, work, index_dir, name=name, strict=args.strict)
    return 0
