"""``deepretrieval prepare qa``: agentic QA rows (``agent_<set>``) from a bundled set, the user's
JSONL, or the Hugging Face Hub."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    from deepretrieval.cli.core import prepare_targets
    from deepretrieval.data import qa_sets

    sets = ", ".join(f"{s.name}" + (f" (bundled: {'/'.join(s.bundled)})" if s.bundled else "")
                     for s in qa_sets.STANDARD_SETS.values())
    q = prepare_targets().add_parser(
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
    q.add_argument("--topk", type=int, default=qa_sets.DEFAULT_TOPK,
                   help=f"passages per search (default {qa_sets.DEFAULT_TOPK})")
    q.add_argument("--max-turns", "--max_turns", dest="max_turns", type=int,
                   default=qa_sets.DEFAULT_MAX_TURNS,
                   help=f"most assistant turns per episode (default {qa_sets.DEFAULT_MAX_TURNS})")
    q.add_argument("--limit", type=int, help="keep the first N questions")
    q.add_argument("--out", help="output folder (default: data/agent_<set>); writes <split>.parquet")
    q.set_defaults(func=cmd_prepare_qa)


def cmd_prepare_qa(args) -> int:
    from deepretrieval.data import qa_sets
    from deepretrieval.data.download import DownloadError
    from deepretrieval.data.prepare import write_parquet

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
