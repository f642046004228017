"""``deepretrieval ask`` and the agentic branch of ``deepretrieval eval``."""
from __future__ import annotations

import json
import sys

from deepretrieval.agent.evaluate import evaluate_agent
from deepretrieval.agent.serve import SearchAgent
from deepretrieval.catalog import get_task
from deepretrieval.cli.inputs import print_report, texts_or_stdin
from deepretrieval.core.protocols import protocol_names
from deepretrieval.generation.api import LLMAPIError
from deepretrieval.tasks.agentic import settings_for


def register(sub) -> None:
    p = sub.add_parser(
        "ask", help="ask a search agent questions (model + retrieval service), print trajectories",
        description="Run the agent (a served model with --api-url, or a local --model) on each "
                    "question: it searches the index through the retrieval service (--search-url, "
                    "or DEEPRETRIEVAL_SEARCH_URL; in-process otherwise) and answers. Prints the "
                    "trajectory and the answer. Use '-' to read questions from stdin.")
    p.add_argument("questions", nargs="+", help="questions ('-': one per line from stdin)")
    p.add_argument("--api-url", help="OpenAI-compatible server of the agent, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key", help="API key (default: OPENAI_API_KEY)")
    p.add_argument("--model", help="served model name with --api-url (default: the first listed), "
                                   "or smollm2 / a local folder / hub name / .gguf")
    p.add_argument("--search-url", help="retrieval service (default: DEEPRETRIEVAL_SEARCH_URL)")
    p.add_argument("--task", default="agent_closedworld", help="agentic task the agent was trained on")
    p.add_argument("--index", help="index to search (default: the task's)")
    p.add_argument("--protocol", choices=protocol_names(), help="agent protocol (default: the task's)")
    p.add_argument("--max-turns", type=int)
    p.add_argument("--top-k", type=int)
    p.add_argument("--max-new-tokens", type=int, default=256, help="per turn")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--json", action="store_true", help="one JSON object per question")
    p.set_defaults(func=cmd_ask)


def agent_settings(task_name: str, args):
    """The task's agent settings with the --protocol/--max-turns/--top-k options applied."""
    from dataclasses import replace

    settings = settings_for(get_task(task_name))
    changes = {k: v for k, v in (("protocol", args.protocol), ("max_turns", args.max_turns),
                                 ("top_k", args.top_k)) if v is not None}
    return replace(settings, **changes) if changes else settings


def cmd_ask(args) -> int:

    questions = texts_or_stdin(args.questions, "questions")
    if not args.model and not args.api_url:
        raise ValueError("give --api-url of the served agent (or --model for a local one)")
    try:
        agent = SearchAgent(args.model, api_url=args.api_url, api_key=args.api_key,
                            search_url=args.search_url, task=args.task, index=args.index,
                            settings=agent_settings(args.task, args), max_new_tokens=args.max_new_tokens,
                            device=args.device, dtype=args.dtype)
        episodes = agent.ask_batch(questions)
    except LLMAPIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for question, ep in zip(questions, episodes):
        if args.json:
            print(json.dumps({"question": question, **ep.to_dict()}))
            continue
        print(f"question: {question}")
        print(ep.text.strip())
        note = {"answer": "", "no_answer": "   (the agent ended without an answer)",
                "max_turns": "   (out of turns)", "search_error": f"   (search failed: {ep.error})"}
        print(f"answer: {ep.answer if ep.answer is not None else '-'}{note[ep.finish]}")
        print(f"searches: {ep.n_search}, turns: {ep.turns}")
        print()
    return 0


def cmd_eval_agent(args, rows, out) -> int:
    """``deepretrieval eval`` on an agentic task (called by ``eval_cli.cmd_eval``)."""

    if args.n > 1:
        raise ValueError("--n is not supported for agentic tasks (one episode per question)")
    if args.max_turns is not None or args.top_k is not None:
        rows = [dict(r, extra_info={**(r.get("extra_info") or {}),
                                    **({"max_turns": args.max_turns} if args.max_turns is not None else {}),
                                    **({"top_k": args.top_k} if args.top_k is not None else {})})
                for r in rows]
    kwargs = {}
    if args.model.startswith("openai:"):
        kwargs.update(base_url=args.base_url, api_prefill="continue", use_cache=not args.no_cache,
                      cache_dir=args.cache_dir, max_retries=args.max_retries,
                      concurrency=args.concurrency)
    else:
        kwargs.update(backend=args.backend, device=args.device, dtype=args.dtype)
    try:
        report = evaluate_agent(args.model, rows, out_dir=out, max_new_tokens=args.max_new_tokens,
                                batch_size=args.batch_size, greedy=not args.sampling,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                resume=not args.no_resume, name=args.name,
                                references=not args.no_baseline, plot=not args.no_plot, **kwargs)
    except LLMAPIError as exc:
        print(f"error: {exc}\n(questions finished so far are kept in {out}; rerun to resume)",
              file=sys.stderr)
        return 1
    print_report(report, out, args.json)
    return 0
