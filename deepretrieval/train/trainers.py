"""The trainer registry: every training engine ``deepretrieval train --engine NAME`` can run, with
the dataclasses whose fields are its flags (``core.flags``) and the function that runs it.

* ``trl`` — TRL's GRPO on one machine (CPU or one GPU): :class:`TRLSettings` + :class:`TRLRollout`;
* ``verl`` — verl's PPO / GRPO presets on GPUs (``main_ppo``): :class:`VerlSettings`;
* ``exsearch`` — ExSearch's EM for search agents: :class:`ExSearchSettings` + :class:`ExSearchRun`.

:func:`run` owns what every engine shares: the task's rows, the run folder, the retrieval service
(started on a free loopback port, stopped on exit, Ctrl-C, SIGTERM or failure) and the dispatch.
Adding a trainer: a settings dataclass (fields with ``metadata={"help": ...}``), a function
``run_x(job, launch, values) -> exit code`` and one :func:`register` call; the CLI picks it up.
"""
from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deepretrieval.catalog import get_task, read_rows
from deepretrieval.core import settings
from deepretrieval.core.flags import pick
from deepretrieval.generation.models import resolve_model
from deepretrieval.train import trl_agent
from deepretrieval.train import verl as launcher
from deepretrieval.train.exsearch import ExSearchSettings, train_exsearch
from deepretrieval.train.job import (
    TrainJob,
    check_indexes,
    default_indexes,
    init_model,
    key_values,
    rows_files,
)
from deepretrieval.train.service import ManagedService, service_env, signals_raise
from deepretrieval.train.trl_engine import TRLSettings, train_trl


@dataclass
class Launch:
    """What :func:`run` hands an engine: the task, the policy, the run folder and the service."""

    task: Any
    model: str
    out: Path
    url: str | None                    # the retrieval service's URL (None: search in process)
    service: ManagedService | None     # the service this run started (None: none started)


@dataclass(frozen=True)
class Trainer:
    """One training engine."""

    name: str
    summary: str                       # one line for --help
    settings: tuple[type, ...]         # dataclasses whose help-carrying fields are its flags
    run: Callable[[TrainJob, Launch, Mapping[str, Any]], int]
    default_model: str
    needs_service: bool = False        # its reward workers search through the service (no --no-service)
    imports: tuple[str, ...] = ()      # modules it needs, imported before a service starts


#: name → trainer, in the order of ``--help``
TRAINERS: dict[str, Trainer] = {}
#: ``deepretrieval train``'s engine when none is named
DEFAULT_TRAINER = "trl"


def register(trainer: Trainer) -> Trainer:
    if trainer.name in TRAINERS:
        raise ValueError(f"trainer {trainer.name!r} is registered already")
    TRAINERS[trainer.name] = trainer
    return trainer


def get_trainer(name: str) -> Trainer:
    try:
        return TRAINERS[name]
    except KeyError:
        raise KeyError(f"unknown trainer {name!r}; known: {', '.join(TRAINERS)}") from None


def run(engine: str, job: TrainJob, values: Mapping[str, Any] | None = None) -> int:
    """Train ``job.task`` with ``engine``: ``values`` are the engine's settings by field name
    (its flags; missing ones keep their defaults). Starts the retrieval service the task needs
    unless ``job.search_url`` / ``job.no_service``, stops it on the way out; returns the exit code."""
    trainer = get_trainer(engine)
    values = dict(values or {})
    if not job.verbose:  # one line per search request is noise here
        logging.getLogger("httpx").setLevel(logging.WARNING)
    task = get_task(job.task)
    if job.data:  # a wrong rows folder fails before anything starts (dry run too)
        rows_files(task.name, job.data, Path("."), job.dry_run)
    out = Path(job.out or f"runs/{task.name}-{engine}")
    out.mkdir(parents=True, exist_ok=True)
    model = job.model or trainer.default_model
    if trainer.needs_service and job.no_service:
        raise ValueError(f"--no-service is for the TRL engine; {engine}'s reward workers need the "
                         f"service")
    for module in trainer.imports:  # a missing extra: one error line with its pip install
        importlib.import_module(module)  # (cli.missing_extra), before a service starts
    indexes = job.index or default_indexes(task)
    use_service = not job.search_url and not job.no_service

    if use_service:
        check_indexes(task, indexes)
    service = ManagedService(indexes, host=job.service_host, log_path=out / "service.log") \
        if use_service else None
    with signals_raise():
        try:
            if service:
                print(f"starting the retrieval service ({', '.join(indexes)}) …", flush=True)
                t = time.time()
                service.start()
                print(f"retrieval service ready at {service.url} in {time.time() - t:.1f}s "
                      f"(log: {service.log_path})", flush=True)
            url = service.url if service else job.search_url
            with service_env(service, url=job.search_url,
                             token=settings.get_str("DEEPRETRIEVAL_SEARCH_TOKEN")):
                code = trainer.run(job, Launch(task, model, out, url, service), values)
        finally:
            if service:
                service.stop()
                print("retrieval service stopped", flush=True)
    return code


# ---------------------------------------------------------------------------------------------
# verl

@dataclass
class VerlSettings:
    """verl's launch settings (the rest of verl's config: a preset plus KEY=VALUE overrides)."""

    config: str | None = field(default=None, metadata={
        "help": "verl preset: ppo (paper), grpo, lora_3b_1gpu, search_r1 (search agents), or a "
                ".yaml file (default: search_r1 for agentic tasks, else ppo)"})
    gpus: int | None = field(default=None, metadata={"help": "GPUs per node"})
    nodes: int | None = field(default=None, metadata={"help": "number of nodes"})


def run_verl(job: TrainJob, launch: Launch, values: Mapping[str, Any]) -> int:
    verl = VerlSettings(**pick(VerlSettings, values))
    task, out = launch.task, launch.out
    model = init_model(job, launch.model, out)
    train, test = rows_files(task.name, job.data, out, job.dry_run)
    return launcher.launch(task.name, model=model, train_files=train, val_files=test, out_dir=out,
                           search_url=launch.url,
                           env=launch.service.env() if launch.service else {}, preset=verl.config,
                           n_gpus=verl.gpus, nnodes=verl.nodes, extra=job.overrides,
                           dry_run=job.dry_run)


# ---------------------------------------------------------------------------------------------
# TRL

@dataclass
class TRLRollout:
    """The agentic rollout of TRL training (agentic tasks only)."""

    turn_tokens: int = field(default=64, metadata={
        "help": "agentic tasks: new tokens per model turn"})


def run_trl(job: TrainJob, launch: Launch, values: Mapping[str, Any]) -> int:
    task, out = launch.task, launch.out
    train, _test = rows_files(task.name, job.data, out, job.dry_run)
    agentic = task.rollout.episodic
    rollout_settings = TRLRollout(**pick(TRLRollout, values))
    trl_settings = TRLSettings(model=launch.model, output_dir=str(out),
                               extra=key_values(job.overrides), progress=settings.progress_enabled(),
                               **pick(TRLSettings, values))
    budget = trl_settings.completion_budget(agentic)
    trl_settings = replace(trl_settings, max_completion_length=budget)
    print("TRL GRPO settings:")
    for key, value in trl_settings.to_json().items():
        print(f"  {key} = {value}")
    print(f"  train rows = {train}")
    if agentic:
        print(f"  agentic rollouts = episode runner, {rollout_settings.turn_tokens} tokens per turn, "
              f"{budget}-token episode budget, injected tokens masked")
    if job.dry_run:
        print("dry run: not training")
        return 0
    trl_settings.model = init_model(job, resolve_model(launch.model), out)
    rows = read_rows(train)
    if job.limit:
        rows = rows[:job.limit]
    rollout = trl_agent.AgentRollout(turn_tokens=rollout_settings.turn_tokens,
                                     seed=trl_settings.seed) if agentic else None
    result = train_trl(rows, trl_settings, rollout=rollout)
    print(f"trained {trl_settings.steps} steps in {result.seconds:.0f}s\nmodel: {result.model_dir}\n"
          f"checkpoints: {out}/checkpoint-*\nmetrics: {result.metrics_path}")
    return 0


# ---------------------------------------------------------------------------------------------
# ExSearch

@dataclass
class ExSearchRun:
    """What an ExSearch run trains and evaluates on, and its CPU threads."""

    max_hops: int | None = field(default=None, metadata={
        "help": "closed world: train and evaluate only on questions of at most N hops"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (default: torch's)"})


def run_exsearch(job: TrainJob, launch: Launch, values: Mapping[str, Any]) -> int:
    task, out = launch.task, launch.out
    if not task.rollout.episodic:
        raise ValueError(f"--engine exsearch trains search agents: {task.name} is not an agentic "
                         f"task (agent_closedworld, agent_nq, ...)")
    if job.overrides:
        raise ValueError(f"--engine exsearch takes no KEY=VALUE overrides (got {job.overrides})")
    train, test = rows_files(task.name, job.data, out, job.dry_run)
    options = ExSearchRun(**pick(ExSearchRun, values))
    ex = ExSearchSettings(model=launch.model, output_dir=str(out),
                          progress=settings.progress_enabled(), **pick(ExSearchSettings, values))
    print("ExSearch settings:")
    for key, value in ex.to_json().items():
        print(f"  {key} = {value}")
    print(f"  train rows = {train}\n  test rows = {test}")
    if job.dry_run:
        print("dry run: not training")
        return 0
    if options.threads:
        import torch
        torch.set_num_threads(options.threads)
    ex.model = init_model(job, resolve_model(launch.model), out)
    rows, test_rows = read_rows(train), read_rows(test)
    if options.max_hops:
        rows = [r for r in rows if (r.get("extra_info") or {}).get("hops", 0) <= options.max_hops]
        test_rows = [r for r in test_rows
                     if (r.get("extra_info") or {}).get("hops", 0) <= options.max_hops]
    if job.limit:
        rows = rows[:job.limit]
    result = train_exsearch(rows, test_rows, ex)
    if not result.main_process:
        return 0
    print(f"ExSearch: {len(result.curve)} stages in {result.seconds:.0f}s\nmodel: {result.model_dir}\n"
          f"curve: {out / 'curve.md'}\nstages: {out / 'stages'}")
    print((out / "curve.md").read_text())
    return 0


register(Trainer("trl", "TRL's GRPO, one machine (CPU or one GPU)", (TRLSettings, TRLRollout),
                 run_trl, default_model="smollm2"))
register(Trainer("verl", "verl's PPO / GRPO presets on GPUs", (VerlSettings,), run_verl,
                 default_model="Qwen/Qwen2.5-3B-Instruct", needs_service=True,
                 imports=("omegaconf",)))
register(Trainer("exsearch", "ExSearch for agentic tasks: warm-up + EM iterations of weighted "
                             "fine-tuning (docs/agentic.md)",
                 (ExSearchSettings, ExSearchRun), run_exsearch, default_model="smollm2"))
