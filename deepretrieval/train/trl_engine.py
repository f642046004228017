"""The single-machine engine: TRL's GRPO (CPU or one GPU) on the same task rows and reward as verl.

Prompts are rendered with the model's chat template and the task's assistant prefill (e.g.
``<answer>{"query": "``) appended as text, so the model continues the prefilled answer; the reward
(:class:`TRLRewardAdapter` over :class:`deepretrieval.rewards.TRLReward`, one batched search per
step; the same adapter scores agentic trajectories, :mod:`deepretrieval.train.trl_agent`) puts the
prefill back before the strict format check (``Task.parse``). Every metric key of the task is logged per step as
``deepretrieval/<key>`` (console, ``metrics.jsonl`` and tensorboard/wandb when asked), together
with ``deepretrieval/format_error_rate`` and ``deepretrieval/copy_rate`` (share of answers that
repeat the original query).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepretrieval.agent.runner import FINISH_REASONS
from deepretrieval.catalog import get_task, row_prefill
from deepretrieval.core.agent_protocol import RETRIEVED_KEY
from deepretrieval.core.io import write_atomic
from deepretrieval.core.tables import RewardTable
from deepretrieval.rewards import TRLReward
from deepretrieval.train.export import save_hf, save_merged
from deepretrieval.train.service import interrupt_received

log = logging.getLogger(__name__)

METRIC_PREFIX = "deepretrieval/"


@dataclass
class TRLSettings:
    """GRPO settings. The fields with ``help`` are ``deepretrieval train --engine trl``'s flags
    (``core.flags``: spelling, type and default come from here); the rest are library-only (or
    ``KEY=VALUE`` GRPOConfig fields through ``extra``). Defaults: the ``train`` command's recipe
    for a ~100M model on CPU (docs/training.md); the quickstarts set their own."""

    model: str
    output_dir: str
    steps: int = field(default=100, metadata={"help": "GRPO steps"})
    learning_rate: float = field(default=1e-5, metadata={"help": "learning rate", "flag": "--lr"})
    prompts_per_step: int = field(default=4, metadata={"help": "prompts per step"})
    num_generations: int = field(default=4, metadata={
        "help": "samples per prompt (the GRPO group)", "aliases": ("--samples",)})
    max_completion_length: int | None = field(default=None, metadata={
        "flag": "--max-new-tokens",
        "help": "longest completion (default: 64; agentic tasks: the whole episode's budget, 512)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = 1.0
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (0: no reference model)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    bf16: bool | None = None           # None: on where supported (CUDA bf16, CPUs with AVX512-BF16/AMX)
    save_steps: int = field(default=50, metadata={"help": "save a checkpoint every N steps (0: only "
                                                          "the final model)"})
    save_total_limit: int | None = 2
    seed: int = field(default=0, metadata={"help": "random seed"})
    report_to: Sequence[str] = field(default=(), metadata={
        "help": "also log to tensorboard or wandb (repeatable)", "choices": ("tensorboard", "wandb")})
    use_vllm: bool | None = None       # None: when vllm is installed and a GPU is present
    log_completions: bool = False
    resume: str | bool | None = field(default=None, metadata={
        "help": "resume from the newest checkpoint in --out, or from the given one",
        "type": str, "nargs": "?", "const": "last", "metavar": "CHECKPOINT"})
    progress: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)  # further GRPOConfig fields

    def completion_budget(self, agentic: bool) -> int:
        """``max_completion_length``, or its default: 64 tokens, or 512 for a whole episode."""
        if self.max_completion_length is not None:
            return self.max_completion_length
        return 512 if agentic else 64

    def to_json(self) -> dict:
        data = asdict(self)
        data["report_to"] = list(self.report_to)
        data["extra"] = dict(self.extra)
        return data


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path            # Hugging Face folder of the trained policy (merged when LoRA)
    metrics_path: Path         # one JSON object per logged step
    history: list[dict]
    seconds: float


def bf16_supported() -> bool:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def render_messages(tokenizer, messages: str | Sequence[Mapping[str, str]], prefill: str = "") -> str:
    """Chat messages through the tokenizer's chat template (a raw prompt string as it is), plus
    the assistant prefill the model continues."""
    if isinstance(messages, str):
        return messages + prefill
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use a chat (instruct) model")
    return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                         add_generation_prompt=True) + prefill


def render_prompt(tokenizer, row: Mapping[str, Any]) -> str:
    """A task row's prompt for the policy: its messages and its prefill (:func:`render_messages`)."""
    return render_messages(tokenizer, row["prompt"], row_prefill(row))


_NORM = re.compile(r"[\W_]+", re.UNICODE)


def normalize_query(text: str | None) -> str:
    return _NORM.sub(" ", (text or "").lower()).strip()


def is_copy(query: str | None, original: str | None) -> bool:
    """The answer repeats the original query (ignoring case, punctuation and spacing)."""
    return bool(query) and normalize_query(query) == normalize_query(original)


class TRLRewardAdapter:
    """The one TRL reward function, single-shot and agentic: scores each rollout's text with its
    row's task (:class:`deepretrieval.rewards.TRLReward` over :func:`~deepretrieval.rewards.score_batch`),
    or with ``table``, and keeps per-step means for the log (:meth:`drain`, called by the
    trainer's ``log``).

    ``text_column``: what is scored, ``"completions"`` (single-shot: the completion continues the
    row's prefill) or a column the rollout returns (agentic: ``"trajectory"``). A rollout's
    ``agent_passages`` column (its record of real searches) goes into each row's ``extra_info``;
    its ``finish`` column adds the per-step share of each finish reason (``finish_<reason>``).
    Logged per step as ``deepretrieval/<key>``: the mean of every numeric metric (only those in
    ``logged`` when given), ``format_error_rate`` and, with ``copy_rate``, the share of answers
    that repeat the row's original query. ``mode``: the reward's mode (None: from each row's
    split); ``name``: the reward's name in TRL's logs (``rewards/<name>/mean``)."""

    def __init__(self, *, searcher=None, table: RewardTable | None = None, text_column: str = "completions",
                 mode: str | None = None, logged: Sequence[str] | None = None, copy_rate: bool = True,
                 name: str = "deepretrieval"):
        self.scorer = TRLReward(searcher=searcher, **({"mode": mode} if mode is not None else {}))
        self.table, self.text_column, self.copy_rate = table, text_column, copy_rate
        self.logged = tuple(logged) if logged is not None else None
        self.__name__ = name
        self.pending: dict[str, list[float]] = {}
        self.last_metrics: list[dict] = []

    def __call__(self, prompts=None, completions=None, data_source=None, reward_model=None,
                 extra_info=None, finish=None, **columns) -> list[float]:
        if interrupt_received() is not None:
            raise KeyboardInterrupt(f"signal {interrupt_received()}")
        texts = completions if self.text_column == "completions" else columns.get(self.text_column)
        if texts is None:
            raise ValueError(f"this reward scores the rollout's {self.text_column!r} column, which the "
                             f"batch does not have (agentic rewards: the column AgentRollout returns)")
        n = len(texts)
        extra = list(extra_info or [None] * n)
        passages = columns.get(RETRIEVED_KEY)
        if passages is not None:  # the rollout's record of real searches (the `hit` metric reads it)
            extra = [{**(e or {}), RETRIEVED_KEY: p} if p is not None else e for e, p in zip(extra, passages)]
        scores = self.scorer(prompts=prompts, completions=texts, data_source=data_source,
                             reward_model=reward_model, extra_info=extra)
        metrics = self.scorer.last_metrics
        if self.table is not None:
            scores = [self.table.score_of(m) for m in metrics]
            for m, s in zip(metrics, scores):
                m["score"] = s
        self.last_metrics = metrics
        self._log_step(metrics, texts, data_source, extra, finish)
        return scores

    def _log_step(self, metrics, texts, data_source, extra, finish) -> None:
        step: dict[str, list[float]] = {}
        for m in metrics:
            for key, value in m.items():
                if self.logged is not None and key not in self.logged:
                    continue
                if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
                    step.setdefault(key, []).append(float(value))
        for key, values in step.items():
            self.pending.setdefault(key, []).append(sum(values) / len(values))
        if "format_ok" in step:
            fmt = step["format_ok"]
            self.pending.setdefault("format_error_rate", []).append(1 - sum(fmt) / len(fmt))
        if self.copy_rate:
            copies = []
            for text, source, info in zip(texts, data_source, extra):
                parsed = get_task(source).parse(text, info or {})
                copies.append(float(parsed.ok and is_copy(parsed.value, (info or {}).get("query"))))
            self.pending.setdefault("copy_rate", []).append(sum(copies) / max(len(copies), 1))
        if finish is not None:
            for reason in FINISH_REASONS:
                share = sum(f == reason for f in finish) / max(len(finish), 1)
                self.pending.setdefault(f"finish_{reason}", []).append(share)

    def drain(self) -> dict[str, float]:
        out = {METRIC_PREFIX + k: sum(v) / len(v) for k, v in self.pending.items() if v}
        self.pending.clear()
        return out


def _trainer_class():
    from trl import GRPOTrainer

    class DeepRetrievalGRPOTrainer(GRPOTrainer):
        """GRPO with the task metrics merged into every log record."""

        reward_logger: TRLRewardAdapter | None = None
        metrics_path: Path | None = None
        history_logger: Any = None

        def log(self, logs, start_time=None):
            if self.reward_logger is not None and self.model.training:
                logs.update(self.reward_logger.drain())
            super().log(logs, start_time)

    return DeepRetrievalGRPOTrainer


def _callbacks(metrics_path: Path, progress: bool, total: int):
    from transformers import TrainerCallback

    class JsonlLogger(TrainerCallback):
        """Appends each log record (with the step) to metrics.jsonl and prints a short line."""

        def __init__(self):
            self.history: list[dict] = []
            self.t0 = time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            record = {"step": state.global_step, "time_s": round(time.time() - self.t0, 2)}
            record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str)) or v is None})
            self.history.append(record)
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if progress and "reward" in logs:
                fmt = logs.get(METRIC_PREFIX + "format_error_rate")
                line = (f"[train] step {state.global_step}/{total}  reward {logs['reward']:.3f}"
                        + (f"  format errors {fmt:.0%}" if fmt is not None else "")
                        + "".join(f"  {k[len(METRIC_PREFIX):]} {v:.3f}" for k, v in logs.items()
                                  if k in (METRIC_PREFIX + "ndcg", METRIC_PREFIX + "copy_rate",
                                           METRIC_PREFIX + "recall", METRIC_PREFIX + "f1",
                                           METRIC_PREFIX + "hit", METRIC_PREFIX + "n_search"))
                        + f"  ({record['time_s']:.0f}s)")
                print(line, flush=True)

    return JsonlLogger()


def _interrupt_check():
    """Re-raises KeyboardInterrupt at the next step boundary once a signal was received
    (:func:`~deepretrieval.train.service.signals_raise`), in case the first one was swallowed."""
    from transformers import TrainerCallback

    class InterruptCheck(TrainerCallback):
        def _check(self, *args, **kwargs):
            signum = interrupt_received()
            if signum is not None:
                raise KeyboardInterrupt(f"signal {signum}")

        on_step_begin = on_step_end = on_substep_end = on_log = on_save = _check

    return InterruptCheck()


def _quiet_console(trainer) -> None:
    """Keep the progress bar but drop transformers' printing of whole log dicts (our callback
    prints one short line per step; everything is in metrics.jsonl)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    had_progress = any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if had_progress:
        trainer.add_callback(QuietProgress())


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Newest ``checkpoint-N`` folder under ``output_dir``."""
    best = None
    for path in Path(output_dir).glob("checkpoint-*"):
        try:
            step = int(path.name.split("-", 1)[1])
        except ValueError:
            continue
        if path.is_dir() and (best is None or step > best[0]):
            best = (step, path)
    return best[1] if best else None


def train_trl(rows: Sequence[Mapping[str, Any]], settings: TRLSettings, *, searcher=None,
              rollout=None) -> TrainResult:
    """Run GRPO on task rows. Checkpoints go to ``output_dir/checkpoint-N``, the final policy to
    ``output_dir/model`` (a Hugging Face folder; LoRA adapters are merged), per-step metrics to
    ``output_dir/metrics.jsonl``. ``rollout``: a multi-turn rollout
    (:class:`deepretrieval.train.trl_agent.AgentRollout`) that builds the dataset records, generates
    the completions as TRL's ``rollout_func`` and brings its own reward."""
    trainer, resume = build_trainer(rows, settings, searcher=searcher, rollout=rollout)
    out, tokenizer = Path(settings.output_dir), trainer.processing_class
    write_atomic(out / "train_settings.json", json.dumps(settings.to_json(), indent=2))
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.time() - t0

    final = out / "model"
    if settings.lora:
        save_merged(trainer.model, tokenizer, final)
    else:
        save_hf(trainer.model, tokenizer, final)
    return TrainResult(output_dir=out, model_dir=final, metrics_path=trainer.metrics_path,
                       history=trainer.history_logger.history, seconds=seconds)


def build_trainer(rows: Sequence[Mapping[str, Any]], settings: TRLSettings, *, searcher=None,
                  rollout=None):
    """The configured GRPO trainer of :func:`train_trl` (not yet trained) and the checkpoint to
    resume from (None: a fresh run)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    if not rows:
        raise ValueError("no training rows")
    if settings.steps < 1:
        raise ValueError("steps must be >= 1")
    if settings.num_generations < 2:
        raise ValueError("GRPO needs num_generations >= 2 (advantages are relative within a group)")
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    bf16 = bf16_supported() if settings.bf16 is None else settings.bf16
    use_vllm = settings.use_vllm
    if use_vllm is None:
        import importlib.util
        use_vllm = cuda and importlib.util.find_spec("vllm") is not None and rollout is None
    if use_vllm and rollout is not None:
        raise ValueError("agentic rollouts generate with transformers; vLLM is not used for them")

    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

    if rollout is None:
        records = []
        for row in rows:
            records.append({"prompt": render_prompt(tokenizer, row), "data_source": row["data_source"],
                            "reward_model": dict(row.get("reward_model") or {}),
                            "extra_info": dict(row.get("extra_info") or {})})
    else:
        records = rollout.records(tokenizer, rows)
    dataset = Dataset.from_list(records)

    resume = settings.resume
    if resume in (True, "last", "auto"):
        resume = str(last_checkpoint(out)) if last_checkpoint(out) else None
        if resume:
            log.info("resuming from %s", resume)
    elif resume:
        resume = str(resume)
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"checkpoint to resume from not found: {resume}")

    batch = settings.prompts_per_step * settings.num_generations
    config = GRPOConfig(
        output_dir=str(out),
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=settings.num_generations,
        max_completion_length=settings.completion_budget(rollout is not None),
        temperature=settings.temperature,
        top_p=settings.top_p,
        beta=settings.beta,
        bf16=bf16,
        use_cpu=not cuda,
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=1,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=settings.save_total_limit,
        report_to=list(settings.report_to) or "none",
        disable_tqdm=not settings.progress,
        log_completions=settings.log_completions,
        use_vllm=use_vllm,
        **({"vllm_mode": "colocate"} if use_vllm else {}),
        dataloader_num_workers=0,
        **dict(settings.extra),
    )
    peft_config = None
    if settings.lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                 lora_dropout=settings.lora_dropout, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=torch.float32)
    reward = TRLRewardAdapter(searcher=searcher) if rollout is None else rollout.reward
    metrics_path = out / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    logger_cb = _callbacks(metrics_path, settings.progress, settings.steps)
    trainer_cls = _trainer_class()
    trainer = trainer_cls(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[logger_cb, _interrupt_check()],
                          **({} if rollout is None else {"rollout_func": rollout}))
    trainer.reward_logger = reward
    trainer.metrics_path, trainer.history_logger = metrics_path, logger_cb
    _quiet_console(trainer)
    return trainer, resume


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The per-step records of a run's ``metrics.jsonl``."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
