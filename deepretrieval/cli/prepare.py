"""``deepretrieval prepare DATASET``: write task rows (parquet) for a dataset — the bundled ones
(scifact, pubmed, ctgov, nq, spider), public downloads (spider, bird, nq, triviaqa, squad) and your
own (beir, sql, pico). Each command calls the library function of the data it prepares."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from deepretrieval.catalog import AmbiguousTask, bundled_rows, collection_name_clashes, get_task
from deepretrieval.cli.agent import agent_settings
from deepretrieval.core import settings
from deepretrieval.core.protocols import protocol_names
from deepretrieval.data import qa_sets
from deepretrieval.data.byo_beir import parse_qrels_args, prepare_beir
from deepretrieval.data.byo_pico import prepare_pico
from deepretrieval.data.byo_sql import prepare_sql
from deepretrieval.data.closed_world import SPLITS, closed_world_rows
from deepretrieval.data.download import DownloadError
from deepretrieval.data.rows import write_parquet
from deepretrieval.data.sql import BUNDLED_DIR, load_examples, sql_rows
from deepretrieval.tasks.evidence import (
    _DATASETS,
    EVIDENCE,
    NQ_SPLITS,
    load_qa_jsonl,
    nq_examples,
    qa_rows,
)
from deepretrieval.tasks.sql import SQL


def register(sub) -> None:
    p = sub.add_parser("prepare", help="write task rows (parquet) for a dataset")
    targets = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    q = targets.add_parser("scifact", help="bundled BEIR SciFact → train/test parquet")
    q.add_argument("--out", default="data/scifact", help="output folder (default: data/scifact)")
    q.add_argument("--task", default="scifact", help="task name (e.g. scifact_no_reason)")
    q.set_defaults(func=cmd_prepare_scifact)

    q = targets.add_parser("beir", help="your own BEIR-format collection → index(es) + rows",
                           description="Build a BM25 index (and optionally a dense one) from your "
                                       "corpus and write train/test task rows from your queries "
                                       "and qrels. One qrels file can be split into train and "
                                       "test with --test-fraction / --split-by. Documents with "
                                       "an empty title and text are kept (with a warning). The "
                                       "task is named after --name (answer-only: "
                                       "NAME_no_reason, answer prefilled); a name that already "
                                       "means a task, a built-in index or an original "
                                       "DeepRetrieval dataset name (e.g. nfcorpus_test) is refused.")
    q.add_argument("--corpus", required=True, help="corpus.jsonl(.gz): {_id, title?, text}")
    q.add_argument("--queries", required=True, help="queries.jsonl: {_id, text}")
    q.add_argument("--qrels", required=True, nargs="+", metavar="[SPLIT=]PATH",
                   help="qrels TSV (query-id, corpus-id, score); several as split=path "
                        "(e.g. train=qrels/train.tsv test=qrels/test.tsv); a bare path is 'test'")
    q.add_argument("--name", required=True, help="collection / index / task name")
    q.add_argument("--dense", metavar="MODEL", help="also build a dense index with this encoder")
    q.add_argument("--out", help="folder for the rows (default: data/<name>)")
    q.add_argument("--index-dir", "--index_dir", dest="index_dir",
                   help="folder for the index(es) (default: <index root>/<name>[_dense])")
    q.add_argument("--no-reason", "--no_reason", dest="no_reason", action="store_true",
                   help="answer-only task variant NAME_no_reason, with the answer prefilled "
                        "(<answer>{\"query\": \", as scifact_no_reason): the small-model recipe")
    q.add_argument("--test-fraction", "--test_fraction", dest="test_fraction", type=float,
                   help="split the one --qrels file: this share of the queries to test.parquet, "
                        "the rest to train.parquet (stable hash; default 0.2 with --split-by)")
    q.add_argument("--split-by", "--split_by", dest="split_by", metavar="FIELD",
                   help="with one --qrels file: split by this field of queries.jsonl (queries "
                        "with the same value stay together; dotted for nested fields, e.g. "
                        "metadata.topic; default _id)")
    q.set_defaults(func=_cmd_prepare_beir)

    q = targets.add_parser("sql", help="your own SQLite database + questions → rows",
                           description="Write text-to-SQL task rows for your SQLite database from a "
                                       "JSON list (or JSONL) of {question, sql[, split]} (or "
                                       "Spider-style {question, query}); sql may be a list of "
                                       "equivalent gold queries (a match with any counts). split: "
                                       "train, test, val or dev; questions without one are split "
                                       "with --test-fraction / --split-by. Every gold query is "
                                       "run first and every failing one is reported.")
    q.add_argument("--db", required=True, help="SQLite file")
    q.add_argument("--questions", required=True, help="JSON list (or JSONL) of questions + gold SQL")
    q.add_argument("--name", help="database id (default: the file's stem)")
    q.add_argument("--out", help="folder for the rows (default: data/<name>)")
    q.add_argument("--task", default="spider", help="task (reward table): spider or bird (or "
                                                    "spider_no_reason / bird_no_reason)")
    q.add_argument("--no-reason", "--no_reason", dest="no_reason", action="store_true",
                   help="answer-only rows (TASK_no_reason), answer prefilled with <answer>{\"sql\": \"")
    q.add_argument("--test-fraction", "--test_fraction", dest="test_fraction", type=float, default=0.2,
                   help="share of questions without a split that go to test (default 0.2)")
    q.add_argument("--split-by", "--split_by", dest="split_by", default="question", metavar="FIELD",
                   help="field of the question items that decides the split of the questions "
                        "without one; the same value stays in one split (default: question)")
    q.add_argument("--skip-failing", "--skip_failing", dest="skip_failing", action="store_true",
                   help="leave out questions whose gold SQL fails (listed) instead of stopping")
    q.set_defaults(func=_cmd_prepare_sql)

    q = targets.add_parser("pico", help="your own systematic reviews (PICO + included ids) → rows",
                           description="Write PubMed / ClinicalTrials.gov search task rows from a JSON "
                                       "list (or JSONL) of reviews {P, I, C, O, included: [ids], "
                                       "pub_date?, split?}.")
    q.add_argument("--reviews", required=True, help="JSON list or JSONL of reviews")
    q.add_argument("--engine", default="pubmed", choices=("pubmed", "ctgov"))
    q.add_argument("--out", help="folder for the rows (default: data/<engine>_<file stem>)")
    q.add_argument("--test-fraction", "--test_fraction", dest="test_fraction", type=float, default=0.2)
    q.set_defaults(func=_cmd_prepare_pico)


    for name, what, splits in (("pubmed", "PubMed rows: train = CLEF TAR 2018 topics, test = "
                                          "TrialMind-SLR reviews", ("train", "test")),
                               ("ctgov", "ClinicalTrials.gov rows: test = TrialMind-SLR reviews "
                                         "with NCT ids", ("test",))):
        q = targets.add_parser(name, help=what, description=what)
        q.add_argument("--out", default=f"data/{name}", help=f"output folder (default: data/{name})")
        q.add_argument("--task", default=name, help=f"task name (e.g. {name}_no_reason)")
        q.add_argument("--index", help=f"search this index instead of the live engine, e.g. "
                                       f"{name}_local (`deepretrieval mirror {name}`)")
        q.set_defaults(func=cmd_prepare, splits=splits)


    for dataset in _DATASETS:
        bundled = dataset == "nq"
        q = targets.add_parser(
            dataset, help=f"{_DATASETS[dataset][0]} questions → evidence-seeking rows"
                          + (" (bundled NQ-open or --input)" if bundled else " (--input)"),
            description="Write evidence-seeking task rows (parquet). Passages are searched in "
                        "the index given with --index (build it from your passage corpus with "
                        "`deepretrieval index` or `deepretrieval index-dense`).")
        q.add_argument("--index", required=True,
                       help="passage index the rows search (extra_info.search_index)")
        q.add_argument("--input", required=not bundled,
                       help="question/answer JSONL(.gz): {\"question\", \"answer\": [...]} per line"
                            + (" (default: the bundled NQ-open split)" if bundled else ""))
        q.add_argument("--split", default="dev",
                       help="split name written into the rows ('train' rows are scored in "
                            "training mode)" + (f"; without --input one of {list(NQ_SPLITS)}"
                                                if bundled else ""))
        q.add_argument("--task", default=dataset, help=f"task name (e.g. {dataset}_no_reason)")
        q.add_argument("--limit", type=int, help="keep the first N questions")
        q.add_argument("--out", default=f"data/{dataset}",
                       help=f"output folder (default: data/{dataset}); writes <split>.parquet")
        q.set_defaults(func=cmd_prepare_qa)


    p = targets.add_parser(
        "spider", help="Spider text-to-SQL → test (dev) / train parquet",
        description="Write Spider task rows. Default: the bundled 110 dev questions (flight_2, singer). "
                    "With --spider-dir (a full Spider download: dev.json, train_spider.json, "
                    "tables.json, database/) every question whose database exists; those databases "
                    "are registered as indexes spider/<db_id> under the index root.")
    p.add_argument("--spider-dir", help="Spider folder (default: the bundled subset)")
    p.add_argument("--db-dir", help="database folder (default: <spider-dir>/database)")
    p.add_argument("--out", default="data/spider", help="output folder (default: data/spider)")
    p.add_argument("--task", default="spider", help="task name (e.g. spider_no_reason)")
    p.set_defaults(func=cmd_prepare_spider)

    p = targets.add_parser(
        "bird", help="BIRD text-to-SQL → test (dev) / train parquet",
        description="Write BIRD task rows from a BIRD download (dev.json + dev_databases/, "
                    "train.json + train_databases/); databases are registered as indexes bird/<db_id>.")
    p.add_argument("--bird-dir", required=True, help="BIRD folder")
    p.add_argument("--out", default="data/bird", help="output folder (default: data/bird)")
    p.add_argument("--task", default="bird", help="task name (e.g. bird_no_reason)")
    p.set_defaults(func=cmd_prepare_bird)

    q = targets.add_parser(
        "closedworld", help="the generated closed-world multi-hop questions → agentic rows",
        description="Write train/test rows of agent_closedworld (the generated corpus; its BM25 "
                    "index `closedworld` is built in, on first use).")
    q.add_argument("--out", default="data/agent_closedworld",
                   help="output folder (default: data/agent_closedworld)")
    q.add_argument("--task", default="agent_closedworld", help="task (e.g. agent_closedworld_f1)")
    q.add_argument("--protocol", choices=protocol_names(), help="agent protocol (default: tags)")
    q.add_argument("--max-turns", type=int)
    q.add_argument("--top-k", type=int)
    q.set_defaults(func=cmd_prepare_closedworld)

    sets = ", ".join(f"{s.name}" + (f" (bundled: {'/'.join(s.bundled)})" if s.bundled else "")
                     for s in qa_sets.STANDARD_SETS.values())
    q = targets.add_parser(
        "qa", help="QA questions → agentic search rows (agent_<set>)",
        description="Write agentic-search task rows (parquet, verl's agentic schema) for a "
                    f"standard QA set ({sets}) or your own JSONL of "
                    '{"question", "answers" | "golden_answers" | "answer", "id"?}. '
                    "Sets that are not bundled come from --input or --from-hub "
                    f"({qa_sets.HUB_REPO}).")
    q.add_argument("--set", dest="qa_set", choices=list(qa_sets.STANDARD_SETS),
                   help="standard set (task agent_<set>)")
    q.add_argument("--input", help="question JSONL(.gz) (instead of the bundled copy)")
    q.add_argument("--name", help="name of your own set (task agent_<name>; with --input)")
    q.add_argument("--from-hub", "--from_hub", dest="from_hub", action="store_true",
                   help=f"download the set's split from the Hub ({qa_sets.HUB_REPO})")
    q.add_argument("--repo-id", "--repo_id", dest="repo_id", default=qa_sets.HUB_REPO,
                   help=f"Hub dataset repository with <set>/<split>.jsonl (default {qa_sets.HUB_REPO})")
    q.add_argument("--token", help="Hub token (default: $HF_TOKEN)")
    q.add_argument("--split", help="split: the bundled or Hub split to read, and the split "
                                   "written into the rows (default: the set's evaluation split; "
                                   "'test' for --input)")
    q.add_argument("--index", required=True, help="index the agent searches (extra_info.search_index)")
    q.add_argument("--top-k", "--topk", dest="topk", type=int, default=qa_sets.DEFAULT_TOPK,
                   help=f"passages per search (default {qa_sets.DEFAULT_TOPK})")
    q.add_argument("--max-turns", "--max_turns", dest="max_turns", type=int,
                   default=qa_sets.DEFAULT_MAX_TURNS,
                   help=f"most assistant turns per episode (default {qa_sets.DEFAULT_MAX_TURNS})")
    q.add_argument("--limit", type=int, help="keep the first N questions")
    q.add_argument("--out", help="output folder (default: data/agent_<set>); writes <split>.parquet")
    q.set_defaults(func=cmd_prepare_agent_qa)


def cmd_prepare_scifact(args) -> int:
    for split in ("train", "test"):
        rows = bundled_rows(args.task, split)
        path = write_parquet(rows, Path(args.out) / f"{split}.parquet")
        print(f"{split}: {len(rows)} rows → {path}")
    return 0


def _cmd_prepare_beir(args) -> int:
    qrels = parse_qrels_args(args.qrels)
    clashes = collection_name_clashes(args.name, dense=bool(args.dense))
    if clashes:
        raise AmbiguousTask(f"--name {args.name!r} would be shadowed or ambiguous: "
                            + "; ".join(clashes) + ". Pick another --name")
    out = prepare_beir(corpus=args.corpus, queries=args.queries, qrels=qrels,
                       name=args.name, out=args.out, index_dir=args.index_dir, dense=args.dense,
                       no_reason=args.no_reason, test_fraction=args.test_fraction,
                       split_by=args.split_by)
    for line in out["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    for line in out["report"]:
        print(line)
    return 0


def _cmd_prepare_sql(args) -> int:
    out = prepare_sql(db=args.db, questions=args.questions, name=args.name, out=args.out,
                      task=f"{args.task}_no_reason" if args.no_reason and not
                      args.task.endswith("_no_reason") else args.task,
                      test_fraction=args.test_fraction, split_by=args.split_by,
                      skip_failing=args.skip_failing)
    for line in out["report"]:
        print(line)
    return 0


def _cmd_prepare_pico(args) -> int:
    out = prepare_pico(reviews=args.reviews, engine=args.engine, out=args.out,
                       test_fraction=args.test_fraction)
    for line in out["report"]:
        print(line)
    return 0


def cmd_prepare(args) -> int:
    for split in args.splits:
        rows = bundled_rows(args.task, split)
        if args.index:
            for row in rows:
                row["extra_info"]["search_index"] = args.index
        path = write_parquet(rows, Path(args.out) / f"{split}.parquet")
        print(f"{split}: {len(rows)} rows → {path}")
    return 0


def cmd_prepare_qa(args) -> int:

    task = get_task(args.task)
    if task.family is not EVIDENCE:
        raise ValueError(f"task {args.task!r} is not an evidence-seeking task")
    examples = load_qa_jsonl(args.input) if args.input else nq_examples(args.split)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be >= 1")
        examples = examples[:args.limit]
    rows = qa_rows(task, examples, args.split, search_index=args.index)
    path = write_parquet(rows, Path(args.out) / f"{args.split}.parquet")
    print(f"{args.split}: {len(rows)} rows → {path} (index {args.index})")
    return 0


def _write(rows, path: Path, label: str) -> None:
    write_parquet(rows, path)
    print(f"{label}: {len(rows)} rows → {path}")


def _report_skipped(skipped: Mapping[str, int], label: str) -> None:
    if skipped:
        n = sum(skipped.values())
        names = ", ".join(sorted(skipped)[:8]) + (" …" if len(skipped) > 8 else "")
        print(f"{label}: skipped {n} questions whose database is missing ({len(skipped)} DBs: {names})")


def cmd_prepare_spider(args) -> int:
    task = get_task(args.task)
    if task.family is not SQL:
        raise SystemExit(f"--task {args.task!r} is not a SQL task")
    root = Path(args.spider_dir) if args.spider_dir else BUNDLED_DIR
    db_root = Path(args.db_dir) if args.db_dir else root / "database"
    if not db_root.is_dir():
        raise SystemExit(f"no database folder {db_root} (expected <spider-dir>/database/<db_id>/<db_id>.sqlite)")
    bundled = root.resolve() == BUNDLED_DIR.resolve()
    splits = [("test", ["dev.json"]), ("train", ["train_spider.json", "train_others.json"])]
    written = 0
    for split, names in splits:
        files = [root / n for n in names if (root / n).is_file()]
        if not files:
            if split == "test":
                raise SystemExit(f"{root / 'dev.json'} does not exist")
            continue
        examples = [ex for f in files for ex in load_examples(f, "query")]
        rows, skipped = sql_rows(task, examples, db_root, split, register_indexes=not bundled)
        _report_skipped(skipped, split)
        if not rows:
            raise SystemExit(f"{split}: none of the {len(examples)} questions has its database under {db_root}")
        _write(rows, Path(args.out) / f"{split}.parquet", split)
        written += 1
    if not bundled:
        print(f"databases registered as indexes {task.index}/<db_id> under {settings.index_dir() / task.index}")
    return 0 if written else 1


def cmd_prepare_bird(args) -> int:
    task = get_task(args.task)
    if task.family is not SQL:
        raise SystemExit(f"--task {args.task!r} is not a SQL task")
    root = Path(args.bird_dir)
    found = False
    for split, json_name, db_dir in (("test", "dev.json", "dev_databases"),
                                     ("train", "train.json", "train_databases")):
        if not (root / json_name).is_file():
            continue
        found = True
        examples = load_examples(root / json_name, "SQL")
        rows, skipped = sql_rows(task, examples, root / db_dir, split, sql_key="SQL",
                                 id_key="question_id", register_indexes=True)
        _report_skipped(skipped, split)
        if not rows:
            raise SystemExit(f"{split}: none of the {len(examples)} questions has its database under {root / db_dir}")
        _write(rows, Path(args.out) / f"{split}.parquet", split)
    if not found:
        raise SystemExit(f"{root} has neither dev.json nor train.json (BIRD layout: dev.json + dev_databases/)")
    return 0


def cmd_prepare_closedworld(args) -> int:
    task = get_task(args.task)
    if not task.rollout.episodic or task.options.get("dataset") != "closedworld":
        raise ValueError(f"task {args.task!r} is not a closed-world agentic task (agent_closedworld, "
                         f"agent_closedworld_f1)")
    settings = agent_settings(args.task, args)
    for split in SPLITS:
        rows = closed_world_rows(task, split, settings=settings)
        path = write_parquet(rows, Path(args.out) / f"{split}.parquet")
        print(f"{split}: {len(rows)} rows → {path}")
    return 0


def cmd_prepare_agent_qa(args) -> int:

    if args.input and args.from_hub:
        raise ValueError("give either --input or --from-hub, not both")
    if args.qa_set and args.name:
        raise ValueError("give either --set (a standard set) or --name (your own set), not both")
    if args.qa_set:
        task = qa_sets.standard_set(args.qa_set).task_name
        split = args.split or ("test" if args.input else qa_sets.default_split(args.qa_set))
        if args.input:
            questions = qa_sets.load_questions(args.input)
        elif args.from_hub:
            try:
                questions = qa_sets.hub_questions(args.qa_set, split, repo_id=args.repo_id,
                                                  token=args.token)
            except DownloadError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        else:
            questions = qa_sets.bundled_questions(args.qa_set, split)
    elif args.name:
        if args.name in qa_sets.STANDARD_SETS:
            raise ValueError(f"{args.name!r} is a standard set: use --set {args.name} "
                             f"(with --input FILE for your copy of it)")
        if not args.input:
            raise ValueError("--name needs --input (your question JSONL)")
        if args.from_hub:
            raise ValueError("--from-hub reads standard sets only (use --set)")
        task = qa_sets.task_name(args.name)
        split = args.split or "test"
        questions = qa_sets.load_questions(args.input)
    else:
        raise ValueError(f"give --set (one of {list(qa_sets.STANDARD_SETS)}) or --name with "
                         f"--input")
    questions = qa_sets.limit(questions, args.limit)
    rows = qa_sets.qa_rows(questions, task, args.index, split, topk=args.topk,
                           max_turns=args.max_turns)
    out = Path(args.out or f"data/{task}")
    path = write_parquet(rows, out / f"{split}.parquet")
    print(f"{task} {split}: {len(rows)} rows → {path} (index {args.index}, topk {args.topk}, "
          f"max_turns {args.max_turns})")
    return 0
