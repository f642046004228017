"""Data sub-commands: ``download``, ``convert`` and the bring-your-own ``prepare beir|sql|pico``."""
from __future__ import annotations


def register(sub) -> None:
    from ..commands import prepare_targets
    from . import download

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

    targets = prepare_targets()
    q = targets.add_parser("beir", help="your own BEIR-format collection → index(es) + rows",
                           description="Build a BM25 index (and optionally a dense one) from your "
                                       "corpus and write train/test task rows from your queries "
                                       "and qrels.")
    q.add_argument("--corpus", required=True, help="corpus.jsonl(.gz): {_id, title?, text}")
    q.add_argument("--queries", required=True, help="queries.jsonl: {_id, text}")
    q.add_argument("--qrels", required=True, nargs="+", metavar="[SPLIT=]PATH",
                   help="qrels TSV (query-id, corpus-id, score); several as split=path "
                        "(e.g. train=qrels/train.tsv test=qrels/test.tsv); a bare path is 'test'")
    q.add_argument("--name", required=True, help="collection / index / task name")
    q.add_argument("--dense", metavar="MODEL", help="also build a dense index with this encoder")
    q.add_argument("--out", help="folder for the rows (default: data/<name>)")
    q.add_argument("--index_dir", "--index-dir", dest="index_dir",
                   help="folder for the index(es) (default: <index root>/<name>[_dense])")
    q.add_argument("--no_reason", "--no-reason", dest="no_reason", action="store_true",
                   help="answer-only task variant")
    q.set_defaults(func=_cmd_prepare_beir)

    q = targets.add_parser("sql", help="your own SQLite database + questions → rows",
                           description="Write text-to-SQL task rows for your SQLite database from a "
                                       "JSON list of {question, sql[, split]} (or Spider-style "
                                       "{question, query}).")
    q.add_argument("--db", required=True, help="SQLite file")
    q.add_argument("--questions", required=True, help="JSON list (or JSONL) of questions + gold SQL")
    q.add_argument("--name", help="database id (default: the file's stem)")
    q.add_argument("--out", help="folder for the rows (default: data/<name>)")
    q.add_argument("--task", default="spider", help="task (reward table): spider or bird")
    q.add_argument("--test_fraction", "--test-fraction", dest="test_fraction", type=float, default=0.2,
                   help="share of questions without a split that go to test (default 0.2)")
    q.set_defaults(func=_cmd_prepare_sql)

    q = targets.add_parser("pico", help="your own systematic reviews (PICO + included ids) → rows",
                           description="Write PubMed / ClinicalTrials.gov search task rows from a JSON "
                                       "list (or JSONL) of reviews {P, I, C, O, included: [ids], "
                                       "pub_date?, split?}.")
    q.add_argument("--reviews", required=True, help="JSON list or JSONL of reviews")
    q.add_argument("--engine", default="pubmed", choices=("pubmed", "ctgov"))
    q.add_argument("--out", help="folder for the rows (default: data/<engine>_<file stem>)")
    q.add_argument("--test_fraction", "--test-fraction", dest="test_fraction", type=float, default=0.2)
    q.set_defaults(func=_cmd_prepare_pico)


def _cmd_convert(args) -> int:
    from .original import convert_file
    stats = convert_file(args.inp, args.out, keep_data_source=args.keep_data_source)
    print(f"converted {stats['rows']} rows → {args.out}; tasks: "
          + ", ".join(f"{k} ({v})" for k, v in sorted(stats["tasks"].items())))
    return 0


def _cmd_prepare_beir(args) -> int:
    from .byo import parse_qrels_args, prepare_beir
    out = prepare_beir(corpus=args.corpus, queries=args.queries, qrels=parse_qrels_args(args.qrels),
                       name=args.name, out=args.out, index_dir=args.index_dir, dense=args.dense,
                       no_reason=args.no_reason)
    for line in out["report"]:
        print(line)
    return 0


def _cmd_prepare_sql(args) -> int:
    from .byo import prepare_sql
    out = prepare_sql(db=args.db, questions=args.questions, name=args.name, out=args.out,
                      task=args.task, test_fraction=args.test_fraction)
    for line in out["report"]:
        print(line)
    return 0


def _cmd_prepare_pico(args) -> int:
    from .byo import prepare_pico
    out = prepare_pico(reviews=args.reviews, engine=args.engine, out=args.out,
                       test_fraction=args.test_fraction)
    for line in out["report"]:
        print(line)
    return 0
