"""The command line's flag vocabulary: one spelling per concept, across every command.

:data:`VOCABULARY` lists every flag a command shows in ``--help``: the concept it stands for and the
old spellings still accepted. An option's first spelling is the one ``--help`` shows
(:func:`show_first_spelling`); the others are hidden aliases. ``docs/cli.md`` is
:func:`render_markdown` of this table (written by :func:`write_docs`),
and ``tests/test_cli_vocabulary.py`` walks every command's parser against it.
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from dataclasses import dataclass

from deepretrieval.core.io import write_atomic


@dataclass(frozen=True)
class Concept:
    flag: str                    # the one spelling --help shows
    concept: str                 # what it stands for, wherever it appears
    old: tuple[str, ...] = ()    # earlier spellings, accepted as hidden aliases


def _c(flag: str, concept: str, *old: str) -> Concept:
    return Concept(flag, concept, tuple(old))


VOCABULARY: tuple[Concept, ...] = (
    # --- shared by many commands --------------------------------------------------------------
    _c("--verbose", "debug logging (global)", "-v"),
    _c("--version", "print the version (global)"),
    _c("--task", "task name (reward table, prompt and rows' kind)"),
    _c("--model", "the model: policy (train, eval, rewrite, ask, quickstart) or encoder (index-dense)"),
    _c("--out", "where the command writes: run folder, rows folder, index folder or file",
       "--output-dir", "--output_dir"),
    _c("--input", "input file or folder", "--in"),
    _c("--from", "where the input comes from: the rows' writer (convert), the source files (mirror)"),
    _c("--index", "index name or folder (to search, serve or build rows against); repeatable where "
                  "several are served"),
    _c("--index-dir", "folder for the indexes prepare builds", "--index_dir"),
    _c("--name", "name of what the command makes: index, dataset, database id, system in a report"),
    _c("--rows", "task rows (parquet) instead of the bundled data"),
    _c("--data", "folder of train/test rows (parquet)"),
    _c("--split", "split of the rows"),
    _c("--limit", "use only the first N rows"),
    _c("--train-limit", "use only the first N train rows (agentic quickstart)"),
    _c("--eval-limit", "evaluate on the first N test rows only"),
    _c("--json", "print JSON instead of text"),
    _c("--seed", "random seed"),
    _c("--threads", "torch CPU threads"),
    _c("--device", "torch device"),
    _c("--dtype", "compute precision (float32, bfloat16, float16)", "--precision"),
    _c("--batch-size", "sequences (or passages) per batch", "--eval-batch-size", "--gen-batch-size"),
    _c("--engine", "which engine: the trainer (train, quickstart) or the search engine (prepare pico, "
                   "cache export)"),
    _c("--token", "access token: the service's bearer token (serve) or the Hub's (download, "
                  "prepare qa)"),
    _c("--no-plot", "do not draw the PNG plots"),
    _c("--no-resume", "start over instead of resuming an interrupted run"),
    _c("--resume", "resume training from the newest checkpoint or the given one"),
    _c("--dry-run", "print what would run; do not train"),
    _c("--no-reason", "answer-only task variant (<task>_no_reason)", "--no-reasoning", "--no_reason"),
    # --- retrieval ----------------------------------------------------------------------------
    _c("--top-k", "passages per search", "--topk", "-k"),
    _c("--text", "print document text"),
    _c("--search-url", "URL of a running retrieval service"),
    _c("--corpus", "corpus file or BEIR folder"),
    _c("--queries", "queries.jsonl of a BEIR collection"),
    _c("--qrels", "qrels TSV file(s)"),
    _c("--k1", "BM25 k1"),
    _c("--b", "BM25 b"),
    _c("--shards", "split an index into N shards"),
    _c("--memory-mb", "memory budget of an index build"),
    _c("--workers", "worker processes or threads"),
    _c("--dense", "also build a dense index with this encoder"),
    _c("--query-prefix", "text put before every query for the encoder"),
    _c("--passage-prefix", "text put before every passage for the encoder"),
    _c("--no-normalize", "keep raw vectors (no L2 normalisation)"),
    _c("--hnsw", "HNSW graph instead of exact flat search"),
    _c("--hnsw-m", "HNSW M (links per node)"),
    _c("--ef-construction", "HNSW efConstruction"),
    _c("--ef-search", "HNSW efSearch"),
    _c("--max-seq-length", "truncate passages to N tokens for the encoder"),
    _c("--from-vectors", "take passage vectors from a faiss flat index file"),
    _c("--chunk-docs", "passages encoded between two checkpoints of a dense build"),
    _c("--placement", "how a dense index is held (flat, stream, GPU shards, ...)"),
    _c("--docs", "number of vectors (dense-plan)"),
    _c("--dim", "vector dimension (dense-plan)"),
    _c("--gpus", "GPUs: per node (train) or their numbers (dense-plan)"),
    _c("--db", "SQLite database file"),
    _c("--db-dir", "folder of the SQL databases"),
    _c("--db-root", "folder holding <db>/<db>.sqlite"),
    _c("--timeout", "per-query time limit in seconds"),
    _c("--cache", "search cache file"),
    _c("--overwrite", "replace entries that exist"),
    _c("--strict", "stop at the first malformed record"),
    # --- data ---------------------------------------------------------------------------------
    _c("--test-fraction", "share of the questions that go to the test split", "--test_fraction"),
    _c("--split-by", "field that decides the train/test split", "--split_by"),
    _c("--skip-failing", "leave out questions whose gold SQL fails", "--skip_failing"),
    _c("--questions", "questions file with gold SQL"),
    _c("--reviews", "systematic reviews file (PICO)"),
    _c("--spider-dir", "Spider folder"),
    _c("--bird-dir", "BIRD folder"),
    _c("--set", "standard QA set"),
    _c("--from-hub", "download from the Hugging Face Hub", "--from_hub"),
    _c("--repo-id", "Hugging Face dataset repository", "--repo_id"),
    _c("--revision", "branch, tag or commit of a Hub repository"),
    _c("--categories", "dataset categories to download"),
    _c("--datasets", "datasets to download"),
    _c("--include", "only files matching these globs"),
    _c("--list-only", "list categories and datasets; download nothing", "--list_only"),
    _c("--list-files", "list every file; download nothing", "--list_files"),
    _c("--no-progress", "no progress bars", "--no_progress"),
    _c("--keep-data-source", "keep the original data_source names", "--keep_data_source"),
    _c("--protocol", "agent protocol (tags, tool calls)"),
    _c("--max-turns", "model turns per agent episode", "--max_turns"),
    # --- models, generation, APIs -------------------------------------------------------------
    _c("--max-new-tokens", "longest completion in tokens"),
    _c("--eval-max-new-tokens", "longest completion while evaluating (quickstart)"),
    _c("--warm-start", "start from a supervised warm-up on oracle trajectories (agentic quickstart)"),
    _c("--warm-start-epochs", "epochs of that warm-up over the oracle trajectories (agentic quickstart)"),
    _c("--replay", "weight of the warm-up's seed trajectories replayed in each M-step (ExSearch)"),
    _c("--mstep-lr", "learning rate of the M-steps (ExSearch)"),
    _c("--mstep-optimizer", "optimizer of the M-steps: adamw or plain sgd (ExSearch)"),
    _c("--stop-guard", "what the M-steps learn of samples that stopped before their last turn (ExSearch)"),
    _c("--eval-split", "held-out rows to evaluate on: the test split or a validation split held out of train (quickstart)"),
    _c("--turn-tokens", "new tokens per agent turn"),
    _c("--temperature", "sampling temperature"),
    _c("--top-p", "nucleus sampling"),
    _c("--sampling", "sample instead of greedy decoding"),
    _c("--num-generations", "samples per prompt", "--samples", "--n"),
    _c("--lenient", "extract the query leniently"),
    _c("--prompt-format", "which prompt string the model sees"),
    _c("--backend", "generation backend"),
    _c("--api-url", "OpenAI-compatible endpoint (base URL) of the model", "--base-url"),
    _c("--api-key", "API key of the endpoint"),
    _c("--api-prefill", "send the answer prefill for the server to continue"),
    _c("--api-extra", "JSON merged into every API request body"),
    _c("--concurrency", "parallel API requests"),
    _c("--max-retries", "API retries on 429/5xx/connection errors"),
    _c("--cache-dir", "API response cache folder"),
    _c("--no-cache", "do not read or write the API cache"),
    _c("--field", "extra prompt field"),
    _c("--show-reasoning", "print the model's reasoning"),
    # --- evaluation ---------------------------------------------------------------------------
    _c("--no-baseline", "skip the original-query baseline"),
    _c("--show-raised", "list the cases where the original raised"),
    # --- serving ------------------------------------------------------------------------------
    _c("--host", "interface the service binds"),
    _c("--port", "port the service listens on"),
    _c("--open-route", "route answered without the token"),
    _c("--trust-network", "network whose clients need no token"),
    _c("--max-answer-bytes", "largest answer in bytes"),
    _c("--request-deadline-s", "backend compute time per request"),
    _c("--batch-wait-ms", "how long a request waits for others to batch with"),
    _c("--max-batch", "most queries per backend call"),
    _c("--max-queries", "queries per request"),
    _c("--max-query-chars", "characters per query"),
    _c("--max-k", "largest top-k a client may ask"),
    _c("--max-passage-chars", "characters per passage in answers"),
    _c("--max-connections", "open connections"),
    _c("--request-timeout-s", "seconds for a request to arrive"),
    _c("--max-header-bytes", "largest request head"),
    _c("--max-timeout-s", "largest backend timeout a client may ask"),
    _c("--no-warmup", "skip the warm-up query"),
    _c("--ray", "serve as a Ray Serve application"),
    _c("--ray-address", "an existing Ray cluster"),
    _c("--ray-num-cpus", "CPUs of the local Ray cluster"),
    _c("--app-name", "Ray Serve application name"),
    _c("--replicas", "replicas of each index"),
    _c("--index-replicas", "replicas of one index"),
    _c("--ingress-replicas", "replicas of the HTTP ingress"),
    _c("--replica-cpus", "CPUs reserved by each replica"),
    _c("--replica-gpus", "GPUs reserved by each replica"),
    _c("--shard-resource", "custom Ray resource each shard replica needs"),
    _c("--detach", "deploy and exit"),
    # --- training -----------------------------------------------------------------------------
    _c("--init-from", "start from another run's checkpoint"),
    _c("--no-service", "search in this process instead of through the service"),
    _c("--service-host", "interface the started service binds"),
    _c("--config", "verl preset or YAML file"),
    _c("--nodes", "number of nodes"),
    _c("--steps", "training steps"),
    _c("--lr", "learning rate"),
    _c("--prompts-per-step", "prompts per training step"),
    _c("--beta", "KL coefficient"),
    _c("--lora", "train LoRA adapters"),
    _c("--lora-r", "LoRA rank"),
    _c("--save-steps", "checkpoint every N steps"),
    _c("--report-to", "also log to tensorboard or wandb"),
    _c("--iterations", "EM iterations"),
    _c("--weight-temperature", "temperature of the importance weights"),
    _c("--evidence-filter", "which sampled trajectories the M-step trains on"),
    _c("--seeds", "warm-up trajectories' source"),
    _c("--teacher-model", "model name at the teacher endpoint"),
    _c("--teacher-url", "OpenAI-compatible base URL of the teacher (ExSearch seeds)"),
    _c("--warmup-epochs", "warm-up epochs"),
    _c("--epochs", "epochs per iteration"),
    _c("--questions-per-step", "questions per optimizer step"),
    _c("--micro-batch", "sequences per forward pass"),
    _c("--questions-per-iteration", "E-step questions per iteration"),
    _c("--max-hops", "only questions of at most N hops"),
    _c("--no-zero-shot", "skip the zero-shot evaluation"),
    _c("--references", "closed-book and naive RAG next to the agent"),
    _c("--agentic", "the agentic quickstart"),
    _c("--base-model", "base model of a LoRA adapter"),
)

BY_FLAG = {c.flag: c for c in VOCABULARY}
#: old spelling → its concept
BY_OLD = {old: c for c in VOCABULARY for old in c.old}


# ---------------------------------------------------------------------------------------------
# hidden aliases: --help shows an option's first spelling only

class _FirstSpelling:
    """Help formatter mixin: an option is shown by its first spelling; the others are old
    spellings (:data:`VOCABULARY`), accepted but not listed."""

    def _format_action_invocation(self, action):
        if len(action.option_strings) > 1 and not isinstance(action, argparse._HelpAction):
            action = copy.copy(action)
            action.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(action)


_FORMATTERS: dict[type, type] = {}


def _first_spelling(formatter: type) -> type:
    if issubclass(formatter, _FirstSpelling):
        return formatter
    if formatter not in _FORMATTERS:
        _FORMATTERS[formatter] = type(f"FirstSpelling{formatter.__name__}",
                                      (_FirstSpelling, formatter), {})
    return _FORMATTERS[formatter]


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's parser under ``parser``, with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def show_first_spelling(parser: argparse.ArgumentParser) -> None:
    """Make every (sub)command's ``--help`` show each option by its first spelling only."""
    for _, p in parsers(parser):
        p.formatter_class = _first_spelling(p.formatter_class)


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """A parser's options (not positionals, not --help)."""
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action


def render_markdown(parser: argparse.ArgumentParser) -> str:
    """docs/cli.md: the vocabulary table, each flag with the commands that have it."""
    where: dict[str, list[str]] = {}
    for path, p in parsers(parser):
        for action in options(p):
            where.setdefault(action.option_strings[0], []).append(" ".join(path) or "(all)")
    lines = [
        "# Command-line flags",
        "",
        "One spelling per concept across every `deepretrieval` command, hyphenated. The spellings in",
        "the last column are older ones: they still work everywhere they worked before, but `--help`",
        "does not list them. This page is generated from `deepretrieval/cli/vocabulary.py`",
        "(`python -c 'import deepretrieval.cli as c; c.vocabulary.write_docs(c.build_parser())'`);",
        "`tests/test_cli_vocabulary.py`",
        "checks every command's parser against it (no underscores, one shown spelling per concept,",
        "every flag listed here, defaults in help texts equal to the parser's).",
        "",
        "`deepretrieval train`'s engine flags and their defaults come from the engines' settings",
        "dataclasses (`deepretrieval/train/trainers.py`, `core/flags.py`); `train --help` lists",
        "which engines read a flag.",
        "",
        "| concept | flag | old spellings | commands |",
        "|---|---|---|---|",
    ]
    for c in sorted(VOCABULARY, key=lambda c: c.flag):
        old = ", ".join(f"`{o}`" for o in c.old)
        cmds = ", ".join(dict.fromkeys(where.get(c.flag, [])))
        lines.append(f"| {c.concept} | `{c.flag}` | {old} | {cmds} |")
    return "\n".join(lines) + "\n"


def write_docs(parser: argparse.ArgumentParser, path: str = "docs/cli.md") -> None:
    """Write :func:`render_markdown` of ``parser`` (the whole command line) to ``path``."""
    write_atomic(path, render_markdown(parser))
