"""``deepretrieval eval``, ``eval-compare`` and ``rewrite`` sub-commands."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from deepretrieval.catalog import bundled_rows, get_task, read_rows
from deepretrieval.cli.agent import cmd_eval_agent
from deepretrieval.cli.inputs import print_report, texts_or_stdin
from deepretrieval.core import settings
from deepretrieval.evaluation.report import compare_runs, summary_markdown
from deepretrieval.evaluation.single_shot import evaluate_model
from deepretrieval.generation.api import LLMAPIError
from deepretrieval.rewrite import QueryRewriter


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model (or an LLM API) on a task split, with the original-query baseline",
        description="Generate a query per task row with pinned decoding, search and score it exactly "
                    "like the training reward, and write a resumable run folder: generations.jsonl, "
                    "original_query.jsonl, summary.json, summary.md, comparison.png.")
    p.add_argument("--model", required=True,
                   help="smollm2 (the shipped SmolLM2-135M-Instruct), local folder, hub name, .gguf "
                        "file, or openai:NAME (with --api-url)")
    p.add_argument("--task", default=None, help="task name (default: the rows' task, else scifact)")
    p.add_argument("--split", default="test")
    p.add_argument("--rows", help="task rows (parquet) instead of the task's bundled data")
    p.add_argument("--out", help="run folder (default: runs/eval/<task>-<split>-<model>)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--no-reason", "--no-reasoning", dest="no_reasoning", action="store_true",
                   help="use the task's answer-only variant (<task>_no_reason)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--sampling", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-generations", "--n", dest="n", type=int, default=1,
                   help="completions per row (needs --sampling)")
    p.add_argument("--lenient", action="store_true",
                   help="extract the query leniently (models not trained on the answer format)")
    p.add_argument("--prompt-format", choices=("auto", "original", "ours"), default="auto",
                   help="original: generate from the original DeepRetrieval prompt string of each row "
                        "(rows of an original parquet file), as the released checkpoints were trained; "
                        "ours: the task's chat messages; auto (default): original for an original "
                        "checkpoint (DeepRetrieval/... or .../actor/global_step_N) on original rows")
    p.add_argument("--api-url", "--base-url", dest="base_url", metavar="URL",
                   help="OpenAI-compatible endpoint for openai:NAME (key: OPENAI_API_KEY)")
    p.add_argument("--api-prefill", choices=("none", "continue"), default="none",
                   help="send the answer prefill for the server to continue (vLLM) or not (default)")
    p.add_argument("--api-extra", help="JSON object merged into every API request body")
    p.add_argument("--concurrency", type=int, default=8, help="parallel API requests")
    p.add_argument("--max-retries", type=int, default=4, help="API retries on 429/5xx/connection errors")
    p.add_argument("--cache-dir", help="API response cache (default ~/.cache/deepretrieval/llm_api)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the API cache")
    p.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    p.add_argument("--device", help="torch device for transformers (default: cuda if present, else cpu)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 or auto")
    p.add_argument("--name", help="system name in the report (default: the model)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("--no-baseline", action="store_true", help="skip the original-query baseline")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--max-turns", type=int, help="agentic tasks: model turns per episode (default: the rows')")
    p.add_argument("--top-k", type=int, help="agentic tasks: passages per search (default: the rows')")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("eval-compare", help="put several eval run folders side by side (table + plot)")
    p.add_argument("runs", nargs="+", help="run folders written by `deepretrieval eval`")
    p.add_argument("--out", help="write comparison.{json,md,png} here")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "rewrite", help="rewrite queries with a trained model (local or served by vllm_host.sh)",
        description="Send the task's own chat messages to the model, extract the answer robustly and "
                    "print the original and the rewritten query. Use '-' to read queries from stdin.")
    p.add_argument("queries", nargs="+", help="queries to rewrite ('-': one per line from stdin)")
    p.add_argument("--task", default="scifact")
    p.add_argument("--model", help="smollm2 (the shipped SmolLM2-135M-Instruct), local folder / hub "
                                   "name, or the served model name with --api-url")
    p.add_argument("--api-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key", help="API key (default: OPENAI_API_KEY)")
    p.add_argument("--max-retries", type=int, default=4, help="API retries on 429/5xx/connection errors")
    p.add_argument("--api-prefill", choices=("none", "continue"), default="continue",
                   help="send the task's answer prefill for the server to continue (default, vLLM)")
    p.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                   help="extra prompt field for tasks whose prompt needs more than the query")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sampling", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--show-reasoning", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    p.set_defaults(func=cmd_rewrite)


# ---------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_")[-80:] or "model"


def _load_rows(args) -> tuple[list[dict], str]:

    task = args.task
    if args.no_reasoning:
        if not task:
            raise ValueError("--no-reason needs --task")
        task = task if task.endswith("_no_reason") else f"{task}_no_reason"
        get_task(task)  # clear error when there is no such variant
    if args.rows:
        if not Path(args.rows).exists():
            raise FileNotFoundError(f"rows file {args.rows} does not exist")
        rows = read_rows(args.rows)
        sources = sorted({r.get("data_source") for r in rows})
        if task and sources != [task]:
            raise ValueError(f"{args.rows} holds rows of {sources}, not of task {task!r}")
        task = sources[0] if sources else task
    else:
        task = task or "scifact"
        rows = bundled_rows(task, args.split)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be >= 1")
        rows = rows[: args.limit]
    if not rows:
        raise ValueError(f"no rows for task {task!r} split {args.split!r}")
    return rows, task


def cmd_eval(args) -> int:

    if args.n > 1 and not args.sampling:
        raise ValueError("--n > 1 needs --sampling")
    if args.model.startswith("openai:") and not args.base_url:
        if not settings.get_str("OPENAI_BASE_URL") and not settings.get_str("OPENAI_API_KEY"):
            raise ValueError("openai:NAME needs --api-url (or OPENAI_API_KEY for api.openai.com)")
    rows, task = _load_rows(args)
    out = args.out or str(Path("runs") / "eval" / f"{task}-{args.split}-{_slug(args.model)}")
    if get_task(task).rollout.episodic:
        return cmd_eval_agent(args, rows, out)
    extra_body = None
    if args.api_extra:
        try:
            extra_body = json.loads(args.api_extra)
        except ValueError as exc:
            raise ValueError(f"--api-extra is not JSON: {exc}") from None
        if not isinstance(extra_body, dict):
            raise ValueError("--api-extra must be a JSON object")
    kwargs: dict[str, Any] = {}
    if args.model.startswith("openai:"):
        kwargs.update(concurrency=args.concurrency, extra_body=extra_body, use_cache=not args.no_cache,
                      max_retries=args.max_retries)
    try:
        report = evaluate_model(
            args.model, rows, out_dir=out, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            greedy=not args.sampling, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            n=args.n, extract="lenient" if args.lenient else "strict", resume=not args.no_resume,
            base_url=args.base_url, api_prefill=args.api_prefill, cache_dir=args.cache_dir,
            backend=args.backend, device=args.device, dtype=args.dtype, name=args.name,
            baseline=not args.no_baseline, plot=not args.no_plot, prompt_format=args.prompt_format,
            **kwargs)
    except LLMAPIError as exc:
        print(f"error: {exc}\n(rows finished so far are kept in {out}; rerun to resume)", file=sys.stderr)
        return 1
    print_report(report, out, args.json)
    return 0


def cmd_compare(args) -> int:
    report = compare_runs(args.runs, args.out)
    print(summary_markdown(report))
    return 0


def _fields(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--field expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def cmd_rewrite(args) -> int:

    queries = texts_or_stdin(args.queries, "queries to rewrite")
    if not args.model and not args.api_url:
        raise ValueError("give --model (local path / hub name) or --api-url of a served model")
    try:
        rewriter = QueryRewriter(args.model, task=args.task, api_url=args.api_url, api_key=args.api_key,
                                 api_prefill=args.api_prefill, max_new_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size, greedy=not args.sampling,
                                 temperature=args.temperature, seed=args.seed, device=args.device,
                                 dtype=args.dtype,
                                 **({"max_retries": args.max_retries} if args.api_url else {}))
        fields = _fields(args.field)
        results = rewriter.rewrite_batch(queries, [fields] * len(queries))
    except LLMAPIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        if args.json:
            print(json.dumps({"original": r.original, "rewritten": r.query, "ok": r.ok, "strict": r.strict,
                              "reasoning": r.reasoning, "completion": r.completion}))
            continue
        print(f"original:  {r.original}")
        if args.show_reasoning and r.reasoning:
            print(f"reasoning: {r.reasoning}")
        note = "" if r.ok else "   (no answer in the model output; original kept)"
        print(f"rewritten: {r.query}{note}")
    return 0
