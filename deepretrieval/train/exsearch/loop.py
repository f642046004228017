"""ExSearch: a search agent trained by generalised EM instead of RL (arXiv 2505.20128) — the
settings, the E-step and the staged loop; training sequences in :mod:`.examples`, weights and
losses in :mod:`.objective`.

The agent's trajectory ``z`` (think, search, record, …) is a latent variable between the question
``x`` and the answer ``y``. One iteration:

* **E-step** — with the current policy, sample K trajectories per training question through the
  episode runner (real searches through the searcher / service). For each, the log-likelihood of
  the gold answer given the trajectory, ``log p(y | x, z_k)``: the trajectory with its final
  answer replaced by the gold one, summed over the gold answer's tokens. The importance weights are
  normalised per question:

      w_k = exp(log p(y|x,z_k) / tau) / sum_j exp(log p(y|x,z_j) / tau)

  With ``tau = 1`` this is self-normalised importance sampling of the posterior
  ``p(z | x, y) ∝ p(z | x) p(y | x, z)`` with the policy as the proposal: the trajectories
  sampled from ``p(z|x)`` are re-weighted by how well they support the gold answer, the
  best-supported one getting the largest weight. ``tau`` > 1 flattens, < 1 sharpens.
* **M-step** — weighted fine-tuning on the sampled trajectories (gold answer in place):
  ``L = 1/Q sum_q sum_k w_qk * NLL_qk`` with ``NLL`` the mean token negative log-likelihood over
  the model-written tokens (labels -100 on the prompt and on injected passages). By default
  (``evidence_filter="clean"``) only trajectories whose searches retrieved a passage holding the
  gold answer, that answered by themselves and made no invalid turn are weighted and trained on:
  with a weak policy, "the gold answer after passages that do not contain it" teaches guessing,
  and broken turns teach broken turns (see docs/experiments/exsearch.md). ``stop_guard``
  keeps the stop decision of samples that answered before their last allowed turn out of the
  M-step (``late``: not trained on; ``mask``: no loss on their answer turn): what an M-step
  otherwise teaches a small model is to answer after one search
  (docs/experiments/agentic_quickstart.md). ``mstep_optimizer="sgd"`` makes the M-step plain SGD,
  whose step is ``lr * gradient``: AdamW's first steps move every weight by about ``lr`` however
  small the weighted loss of samples the policy already writes.

A **warm-up** (the same loss, every seed trajectory of a question weighted equally) on seed
trajectories — the closed-world oracle, an OpenAI-compatible teacher, or a user JSONL
(:mod:`deepretrieval.agent.seeds`) — comes first. Every stage (zero-shot, warm-up, each
iteration) is evaluated with the agentic evaluation (EM/F1 on held-out rows) and written to
``<out>/stages/<stage>/`` atomically; a rerun resumes after the last finished stage. Each stage
is a function of the previous stage's model, the settings and the stage's seed (a fresh
optimizer per stage), so a stage interrupted and redone gives the same result.

Runs on CPU (small models) or GPUs through 🤗 Accelerate: ``accelerate launch -m
deepretrieval.cli train --engine exsearch ...``; each process samples its share of the questions,
gradients are averaged by Accelerate, the main process evaluates and saves.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from deepretrieval.agent.evaluate import evaluate_agent
from deepretrieval.agent.runner import (
    Episode,
    EpisodeRunner,
    episodes_from_rows,
)
from deepretrieval.agent.seeds import (
    SOURCES,
    gold_answers,
    jsonl_seeds,
    oracle_seeds,
    teacher_seeds,
)
from deepretrieval.catalog import get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.io import atomic_dir, save_figure, write_atomic
from deepretrieval.core.qa_metrics import exact_match
from deepretrieval.generation.decoding import Decoding
from deepretrieval.generation.local import TransformersGenerator
from deepretrieval.tasks.agentic import blocks_hold_answer
from deepretrieval.train.export import save_hf
from deepretrieval.train.exsearch.examples import (
    Example,
    answered_early,
    make_examples,
    mask_final_turn,
    question_key,
)
from deepretrieval.train.exsearch.objective import (
    answer_logliks,
    fit,
    importance_weights,
    mean_weighted_loss,
)
from deepretrieval.train.trl_engine import bf16_supported

log = logging.getLogger(__name__)

STAGES_DIR = "stages"
#: Settings that must match when a run is resumed (the rest — iterations, evaluation size,
#: progress — may change between runs).
RESUME_KEYS = ("model", "samples", "temperature", "top_p", "max_new_tokens", "weight_temperature",
               "learning_rate", "warmup_epochs", "epochs", "questions_per_step", "lora", "seeds",
               "seed", "questions_per_iteration", "max_turns", "top_k", "min_weight", "max_length",
               "evidence_filter", "micro_batch", "replay", "mstep_learning_rate", "stop_guard",
               "mstep_optimizer")
#: Of :data:`RESUME_KEYS`, those only the EM iterations read: a run none of whose iterations has
#: finished may change them (a new guard tried from a finished warm-up, say).
ITERATION_KEYS = ("samples", "temperature", "top_p", "weight_temperature", "epochs",
                  "evidence_filter", "replay", "mstep_learning_rate", "stop_guard",
                  "questions_per_iteration", "mstep_optimizer")
#: What a resumed run must train and evaluate on: the rows as given (after ``--task``,
#: ``--data``, ``--limit``, ``--max-hops``), fingerprinted. Key → what the message names.
RESUME_DATA = {"train_rows": "the training rows (--task, --data, --limit, --max-hops)",
               "eval_rows": "the evaluation rows (--task, --data, --eval-limit, --max-hops)"}
#: ``evidence_filter`` values: which sampled trajectories the M-step may train on.
EVIDENCE_FILTERS = ("correct", "clean", "trajectory", "question", "none")
#: ``stop_guard`` values: what the M-step learns of a sampled trajectory that answered on its own
#: before its last allowed turn (:func:`~.examples.answered_early`): everything (``none``), nothing
#: (``late``: only trajectories that answered on their last turn are trained on) or its turns
#: before the answer turn (``mask``).
STOP_GUARDS = ("none", "late", "mask")
#: ``mstep_optimizer`` values (the warm-up always uses AdamW): ``adamw`` (no weight decay; its
#: first steps move every weight by about the learning rate, whatever the gradient's size) or
#: ``sgd`` (plain, no momentum: a step is ``lr * gradient``, so a tiny weighted loss moves the
#: model a little).
MSTEP_OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ExSearchSettings:
    """ExSearch settings (defaults: a CPU run of a ~100M model; see docs/agentic.md, ExSearch). The
    fields with ``help`` are ``deepretrieval train --engine exsearch``'s flags (``core.flags``)."""

    model: str
    output_dir: str
    iterations: int = field(default=2, metadata={"help": "EM iterations"})
    samples: int = field(default=4, metadata={  # K trajectories per question in the E-step
        "help": "K trajectories per question", "flag": "--num-generations", "aliases": ("--samples",)})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})  # E-step
    top_p: float = field(default=1.0, metadata={"help": "E-step nucleus sampling"})
    max_new_tokens: int = field(default=64, metadata={  # per model turn
        "help": "agentic tasks: new tokens per model turn", "flag": "--turn-tokens"})
    max_turns: int | None = field(default=None, metadata={
        "help": "model turns per episode (default: the rows')"})
    top_k: int | None = field(default=None, metadata={
        "help": "passages per search (default: the rows')"})
    weight_temperature: float = field(default=1.0, metadata={
        "help": "tau of the importance weights softmax(log p(y|x,z) / tau)"})
    min_weight: float = 1e-4            # trajectories weighted below this are not trained on
    evidence_filter: str = field(default="clean", metadata={  # (evidence_kept)
        "choices": EVIDENCE_FILTERS,
        "help": "M-step data: correct (clean samples whose own answer is right), clean (sampled "
                "trajectories that retrieved a passage holding the gold answer, answered and made no "
                "invalid turn), trajectory (retrieved such a passage), question (every sample of a "
                "question with such a trajectory) or none (every sample)"})
    stop_guard: str = field(default="none", metadata={  # (e_step)
        "choices": STOP_GUARDS,
        "help": "M-step and the stop decision of samples that answered before their last allowed "
                "turn: none (trained as they are), late (left out: train only on samples that "
                "answered on their last turn) or mask (no loss on their answer turn)"})
    learning_rate: float = field(default=1e-5, metadata={"help": "learning rate", "flag": "--lr"})
    mstep_learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of the M-steps (unset: --lr, which the warm-up uses)",
        "flag": "--mstep-lr"})
    mstep_optimizer: str = field(default="adamw", metadata={
        "choices": MSTEP_OPTIMIZERS,
        "help": "optimizer of the M-steps (the warm-up uses adamw): adamw, or sgd (plain, no "
                "momentum: each step moves the weights by lr * gradient)"})
    replay: float = field(default=0.0, metadata={
        "help": "replay the seed trajectories of each iteration's questions in its M-step with this "
                "total weight per question (0: off)"})
    warmup_epochs: int = field(default=1, metadata={"help": "warm-up epochs over the seeds"})
    epochs: int = field(default=1, metadata={"help": "M-step epochs per iteration"})
    questions_per_step: int = field(default=4, metadata={
        "help": "questions (with all their samples) per optimizer step"})
    micro_batch: int = field(default=4, metadata={"help": "sequences per forward pass"})
    max_length: int = 2048              # longer training sequences are skipped (counted)
    questions_per_iteration: int | None = field(default=None, metadata={
        "help": "E-step questions per iteration (default: all; rotates through the rows)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = 32
    seeds: str = field(default="oracle", metadata={
        "help": "warm-up trajectories: oracle (closed world), teacher (--teacher-model, "
                "--teacher-url), jsonl:PATH, or none"})
    seed_keep: str = "correct"
    teacher_model: str | None = field(default=None, metadata={
        "help": "model name at the teacher endpoint"})
    teacher_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible base URL of the teacher"})
    eval_limit: int | None = field(default=None, metadata={
        "help": "evaluate on the first N test rows only"})
    eval_zero_shot: bool = field(default=True, metadata={
        "help": "skip the zero-shot evaluation", "flag": "--no-zero-shot", "negate": True})
    eval_references: bool = field(default=False, metadata={
        "help": "closed-book and naive RAG next to the zero-shot agent", "flag": "--references"})
    gen_batch_size: int = field(default=16, metadata={
        "help": "sequences per generation batch", "flag": "--batch-size",
        "aliases": ("--gen-batch-size",)})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume: bool = field(default=True, metadata={
        "help": "start over instead of resuming", "flag": "--no-resume", "negate": True})
    progress: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if self.samples < 1:
            raise ValueError("samples (K) must be >= 1")
        if self.weight_temperature <= 0:
            raise ValueError("weight_temperature must be > 0")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (the E-step samples)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.learning_rate <= 0 or (self.mstep_learning_rate is not None
                                       and self.mstep_learning_rate <= 0):
            raise ValueError("learning_rate and mstep_learning_rate must be > 0")
        if self.replay < 0:
            raise ValueError("replay must be >= 0")
        if self.replay > 0 and self.seeds == "none":
            raise ValueError("replay needs seed trajectories (seeds must not be none)")
        if self.questions_per_step < 1 or self.micro_batch < 1:
            raise ValueError("questions_per_step and micro_batch must be >= 1")
        if self.stop_guard not in STOP_GUARDS:
            raise ValueError(f"unknown stop_guard {self.stop_guard!r}; known: {', '.join(STOP_GUARDS)}")
        if self.mstep_optimizer not in MSTEP_OPTIMIZERS:
            raise ValueError(f"unknown mstep_optimizer {self.mstep_optimizer!r}; known: "
                             f"{', '.join(MSTEP_OPTIMIZERS)}")
        if self.evidence_filter not in EVIDENCE_FILTERS:
            raise ValueError(f"unknown evidence_filter {self.evidence_filter!r}; known: "
                             f"{', '.join(EVIDENCE_FILTERS)}")
        kind = self.seeds.split(":", 1)[0]
        if kind not in (*SOURCES, "none"):
            raise ValueError(f"unknown seed source {self.seeds!r}; known: oracle, teacher, "
                             f"jsonl:PATH, none")
        if kind == "teacher" and not (self.teacher_model and self.teacher_url):
            raise ValueError("seeds=teacher needs teacher_model and teacher_url")
        if kind == "jsonl" and not self.seeds.split(":", 1)[1:]:
            raise ValueError("seeds=jsonl:PATH needs the file path")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["extra"] = dict(self.extra)
        return data


# ---------------------------------------------------------------------------------------------
# the loop

@dataclass
class ExSearchResult:
    output_dir: Path
    model_dir: Path              # the last stage's model (Hugging Face folder)
    curve: list[dict[str, Any]]  # one row per stage: stage, em, f1, ...
    seconds: float
    main_process: bool = True    # False on the other processes of a distributed run


def _stage_names(settings: ExSearchSettings) -> list[str]:
    names = ["zero-shot"] if settings.eval_zero_shot else []
    if settings.seeds != "none":
        names.append("warmup")
    return names + [f"iter-{i}" for i in range(1, settings.iterations + 1)]


def _stage_order(name: str) -> int:
    """Fixed position of a stage (its seed derives from it, whichever stages a run has)."""
    fixed = {"zero-shot": 0, "warmup": 1}
    return fixed[name] if name in fixed else int(name.split("-", 1)[1]) + 1


def read_curve(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Finished stages of a run, in order (from ``stages/*/stage.json``)."""
    root = Path(output_dir) / STAGES_DIR
    stages = []
    for path in root.glob("*/stage.json"):
        stages.append(json.loads(path.read_text()))
    return sorted(stages, key=lambda s: s["order"])


def _curve_md(curve: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| stage | EM | F1 | searches | format errors | weighted loss before → after | seconds |",
             "|---|---|---|---|---|---|---|"]
    for s in curve:
        ev = s.get("eval") or {}
        loss = (f"{s['loss_before']:.3f} → {s['loss_after']:.3f}"
                if s.get("loss_before") is not None else "-")
        lines.append(f"| {s['stage']} | {ev.get('em', float('nan')):.3f} | {ev.get('f1', float('nan')):.3f} | "
                     f"{ev.get('n_search', float('nan')):.2f} | {ev.get('format_error_rate', float('nan')):.2f} | "
                     f"{loss} | {s['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _write_curve(out: Path) -> list[dict[str, Any]]:
    curve = read_curve(out)
    rows = [{"stage": s["stage"], **{k: (s.get("eval") or {}).get(k) for k in
                                     ("em", "f1", "n_search", "format_error_rate")},
             "loss_before": s.get("loss_before"), "loss_after": s.get("loss_after")} for s in curve]
    write_atomic(out / "curve.json", json.dumps(rows, indent=2))
    write_atomic(out / "curve.md", _curve_md(curve))
    return curve


def plot_stages(curve: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                title: str = "ExSearch on the closed world") -> Path:
    """EM and F1 of each stage's evaluation (left axis) and searches per question (right axis),
    the first trained stage's EM as a dotted level line: what a later stage must stay above."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["stage"] for s in curve]
    evals = [s.get("eval") or {} for s in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(names))
    ax.plot(xs, [e.get("em") for e in evals], marker="o", label="EM", color="tab:blue")
    ax.plot(xs, [e.get("f1") for e in evals], marker="s", label="F1", color="tab:green")
    first = next((e.get("em") for s, e in zip(curve, evals) if s["stage"] != "zero-shot"), None)
    if first is not None:
        ax.axhline(first, color="tab:gray", linestyle=":", label=f"first trained stage, EM {first:.3f}")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("EM / F1 (held-out questions)")
    ax2 = ax.twinx()
    ax2.plot(xs, [e.get("n_search") for e in evals], marker="^", linestyle="--", color="tab:red",
             label="searches per question")
    ax2.set_ylabel("searches per question")
    ax2.set_ylim(0, max([e.get("n_search") or 0 for e in evals] + [1]) * 1.2)
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _row_settings(rows, settings: ExSearchSettings) -> P.AgentSettings | None:
    if settings.max_turns is None and settings.top_k is None:
        return None
    base = episodes_from_rows(rows[:1])[0].settings
    changes = {k: v for k, v in (("max_turns", settings.max_turns), ("top_k", settings.top_k))
               if v is not None}
    return P.AgentSettings(**{**base.to_dict(), **changes})


def _seed_episodes(settings: ExSearchSettings, rows, searcher) -> tuple[list[Episode], dict]:
    kind, _, arg = settings.seeds.partition(":")
    if kind == "oracle":
        return oracle_seeds(rows, searcher, keep=settings.seed_keep)
    if kind == "teacher":
        return teacher_seeds(rows, settings.teacher_model, base_url=settings.teacher_url,
                             searcher=searcher, keep=settings.seed_keep,
                             max_new_tokens=max(settings.max_new_tokens, 256))
    if kind == "jsonl":
        return jsonl_seeds(arg, get_task(rows[0]["data_source"]), keep=settings.seed_keep)
    raise ValueError(f"unknown seed source {settings.seeds!r}")


def _load(path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return tokenizer, model


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy values of rows read from parquet
        return value.tolist()
    raise TypeError(f"row value of type {type(value).__name__} is not JSON")


def rows_fingerprint(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"count", "sha256"}`` of the rows (order and content): a resumed run must see the same."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=_plain).encode())
        digest.update(b"\n")
    return {"count": len(rows), "sha256": digest.hexdigest()}


def train_exsearch(train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]],
                   settings: ExSearchSettings, *, searcher=None,
                   hook: Callable[[str, str, int], None] | None = None) -> ExSearchResult:
    """Run warm-up and ``settings.iterations`` EM iterations (see the module docstring).

    ``hook(stage, phase, step)`` is called at ``("estep", 0)``, after each M-step optimizer step
    ``("mstep", n)`` and at ``("done", 0)`` (tests use it to interrupt a stage)."""
    import torch
    from accelerate import Accelerator

    train_rows, eval_rows = list(train_rows), list(eval_rows)
    if not train_rows:
        raise ValueError("no training rows")
    if not eval_rows:
        raise ValueError("no evaluation rows")
    if settings.eval_limit:
        eval_rows = eval_rows[:settings.eval_limit]
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STAGES_DIR).mkdir(exist_ok=True)
    saved = out / "exsearch_settings.json"
    record = {**settings.to_json(), "train_rows": rows_fingerprint(train_rows),
              "eval_rows": rows_fingerprint(eval_rows)}
    if saved.exists() and settings.resume and read_curve(out):
        old = json.loads(saved.read_text())
        iterated = any(s["stage"].startswith("iter-") for s in read_curve(out))
        keys = [k for k in RESUME_KEYS if iterated or k not in ITERATION_KEYS]
        # a key missing from an older run's file: that run had the setting's default
        defaults = {f.name: f.default for f in fields(ExSearchSettings)}
        diff = [k for k in keys if old.get(k, defaults[k]) != record[k]]
        diff += [RESUME_DATA[k] for k in RESUME_DATA if old.get(k) != record[k]]
        if diff:
            raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}); use "
                             f"another --out or start over (--no-resume)")
    if not settings.resume:
        shutil.rmtree(out / STAGES_DIR, ignore_errors=True)
        (out / STAGES_DIR).mkdir()
    write_atomic(saved, json.dumps(record, indent=2))

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and bf16_supported() else "no")
    main = accelerator.is_main_process
    agent_settings = _row_settings(train_rows, settings)
    names = _stage_names(settings)
    done = {s["stage"]: s for s in read_curve(out)}
    start_model = settings.model
    for name in names:
        if name in done and name != "zero-shot":
            start_model = str(out / STAGES_DIR / name / "model")
    tokenizer, model = _load(start_model)
    pad_id = tokenizer.pad_token_id
    t0 = time.time()
    n_train = len(train_rows)
    for name in names:
        order = _stage_order(name)
        if name in done:
            log.info("stage %s already done; skipping", name)
            continue
        stage_seed = settings.seed * 1_000 + order
        torch.manual_seed(stage_seed)
        started = time.time()
        info: dict[str, Any] = {"stage": name, "order": order, "seed": stage_seed}
        target = out / STAGES_DIR / name
        # only the main process writes the stage folder; the others work in a scratch folder
        with (atomic_dir(target) if main else tempfile.TemporaryDirectory()) as tmp_name:
            tmp = Path(tmp_name)
            samples: list[Example] = []
            replayed: list[Example] = []
            if name != "zero-shot":
                if name == "warmup":
                    if hook:
                        hook(name, "estep", 0)
                    share = _shard(train_rows, accelerator)
                    samples, report, skipped = seed_examples(tokenizer, share, settings, searcher,
                                                             weight=1.0)
                    info["seeds"] = report      # (distributed: the main process's share)
                    questions = {question_key(r) for r in share}
                    epochs = settings.warmup_epochs
                else:
                    iteration = int(name.split("-")[1])
                    rows = _iteration_rows(train_rows, settings, iteration, n_train)
                    rows = _shard(rows, accelerator)
                    questions = {question_key(r) for r in rows}
                    if hook:
                        hook(name, "estep", 0)
                    samples, skipped, estats = e_step(model, tokenizer, rows, settings, searcher,
                                                      agent_settings, accelerator,
                                                      seed=stage_seed)
                    info["estep"] = estats
                    if accelerator.num_processes == 1:
                        # steps only over the questions the evidence filter kept (a distributed
                        # run keeps every process's share so that all take the same steps)
                        questions = {e.group for e in samples}
                    if settings.replay > 0:
                        replayed, replay_report = replay_examples(tokenizer, rows, settings, searcher)
                        info["replay"] = {**replay_report, "examples": len(replayed),
                                          "questions": len({e.group for e in replayed})}
                        questions |= {e.group for e in replayed}
                    epochs = settings.epochs
                info["skipped_too_long"] = skipped
                train_on = [e for e in samples if e.weight >= settings.min_weight] + replayed
                info["examples"] = len(samples)
                info["examples_trained"] = len(train_on)
                warmup = name == "warmup"
                model, optimizer = _prepare(model, settings, accelerator,
                                            lr=settings.learning_rate if warmup
                                            else settings.mstep_learning_rate or settings.learning_rate,
                                            optimizer="adamw" if warmup else settings.mstep_optimizer)
                info["loss_before"] = mean_weighted_loss(model, samples, pad_id, settings.micro_batch) \
                    if samples else None
                steps = fit(model, train_on, pad_id, accelerator=accelerator, optimizer=optimizer,
                            epochs=epochs, questions_per_step=settings.questions_per_step,
                            micro_batch=settings.micro_batch, seed=stage_seed, groups=questions,
                            on_step=(lambda n, _name=name: hook(_name, "mstep", n)) if hook else None,
                            label=name if settings.progress and main else None)
                info["step_losses"] = steps
                info["loss_after"] = mean_weighted_loss(model, samples, pad_id, settings.micro_batch) \
                    if samples else None
                if name != "warmup" and samples:
                    after = answer_logliks(accelerator.unwrap_model(model), samples, pad_id,
                                           micro_batch=settings.micro_batch)
                    info["weights_after"] = importance_weights(
                        after, [e.group for e in samples], settings.weight_temperature)
                    info["weights"] = [e.weight for e in samples]
                model = _finish(model, accelerator, settings)
                if main:
                    save_hf(model, tokenizer, tmp / "model")
                    with open(tmp / "samples.jsonl", "w", encoding="utf-8") as fh:
                        for e in samples:
                            fh.write(json.dumps({**e.record, "group": e.group, "weight": e.weight,
                                                 "loglik": e.loglik}) + "\n")
            accelerator.wait_for_everyone()
            if main:
                report = evaluate_agent(
                    TransformersGenerator(model, tokenizer), eval_rows, out_dir=tmp / "eval",
                    max_new_tokens=settings.max_new_tokens, batch_size=settings.gen_batch_size,
                    references=settings.eval_references and name == "zero-shot", plot=False,
                    searcher=searcher, settings=_row_settings(eval_rows, settings),
                    progress=settings.progress, name=name)
                info["eval"] = report["summary"]
                if report.get("systems"):
                    info["systems"] = report["systems"]
                info["seconds"] = time.time() - started
                if hook:
                    hook(name, "done", 0)
                write_atomic(tmp / "stage.json", json.dumps(info, indent=2))
        accelerator.wait_for_everyone()
        if main:
            curve = _write_curve(out)
            ev = info.get("eval") or {}
            print(f"[exsearch] {name}: EM {ev.get('em', float('nan')):.3f}  F1 "
                  f"{ev.get('f1', float('nan')):.3f}  searches {ev.get('n_search', float('nan')):.2f}"
                  + (f"  weighted loss {info['loss_before']:.3f} → {info['loss_after']:.3f}"
                     if info.get("loss_before") is not None else "")
                  + f"  ({info['seconds']:.0f}s)", flush=True)
    curve = read_curve(out)
    if main and curve:
        plot_stages(curve, out / "curve.png")
    last = next((s["stage"] for s in reversed(curve) if s["stage"] != "zero-shot"), None)
    model_dir = out / STAGES_DIR / last / "model" if last else Path(settings.model)
    return ExSearchResult(out, model_dir, curve, time.time() - t0, main)


def _shard(rows, accelerator):
    """This process's rows: an equal share for every process (the remainder is left out)."""
    n = accelerator.num_processes
    rows = list(rows)[: len(rows) - len(rows) % n] if n > 1 else list(rows)
    return rows[accelerator.process_index::n]


def _iteration_rows(rows, settings: ExSearchSettings, iteration: int, n: int):
    per = settings.questions_per_iteration
    if not per or per >= n:
        return list(rows)
    start = ((iteration - 1) * per) % n
    return [rows[(start + i) % n] for i in range(per)]


def _prepare(model, settings: ExSearchSettings, accelerator, *, lr: float, optimizer: str = "adamw"):
    """The model (LoRA-wrapped if set) and a fresh ``optimizer`` (one of :data:`MSTEP_OPTIMIZERS`)
    for one stage, prepared by Accelerate."""
    import torch

    if optimizer not in MSTEP_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(MSTEP_OPTIMIZERS)}")
    if settings.lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        optim = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
    else:
        optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model, optim = accelerator.prepare(model, optim)
    return model, optim


def _finish(model, accelerator, settings: ExSearchSettings):
    """The plain model after a stage (unwrapped; LoRA merged)."""
    model = accelerator.unwrap_model(model)
    if settings.lora:
        model = model.merge_and_unload()
    accelerator.free_memory()
    return model


def retrieved_answer(episode: Episode) -> bool:
    """Did a search of the episode return a passage holding a gold answer?"""
    return blocks_hold_answer(episode.passages, gold_answers(episode.row))


def evidence_kept(episodes: Sequence[Episode], how: str,
                  found: Sequence[bool] | None = None) -> list[Episode]:
    """The episodes the M-step may learn from under ``evidence_filter`` = ``how`` (``found``:
    :func:`retrieved_answer` of each episode, when the caller has already computed it):

    * ``correct`` — ``clean`` trajectories whose own final answer is right (exact match): the
      M-step reinforces only what the policy already got right from its evidence, never the gold
      answer pasted after a search that stopped short (the measured failure of ``clean``:
      docs/agentic.md, ExSearch);
    * ``clean`` — trajectories that retrieved a passage holding a gold answer, ended with their
      own final answer (not the turn or token budget) and made no invalid turn: the M-step then
      learns only well-formed turns that lead to evidence and an answer;
    * ``trajectory`` — only trajectories whose searches retrieved a passage holding a gold
      answer (the gold answer then follows evidence for it, never passages without it);
    * ``question`` — every trajectory of a question for which at least one sample retrieved
      such a passage;
    * ``none`` — every trajectory (plain importance-weighted EM)."""
    if how not in EVIDENCE_FILTERS:
        raise ValueError(f"unknown evidence filter {how!r}; known: {', '.join(EVIDENCE_FILTERS)}")
    if how == "none":
        return list(episodes)
    if found is None:
        found = [retrieved_answer(ep) for ep in episodes]
    if how in ("clean", "correct"):
        clean = [ep for ep, f in zip(episodes, found)
                 if f and ep.finish == "answer" and all(a.kind != "invalid" for a in ep.actions)]
        if how == "clean":
            return clean
        return [ep for ep in clean if exact_match(ep.answer, gold_answers(ep.row))]
    if how == "trajectory":
        return [ep for ep, f in zip(episodes, found) if f]
    with_evidence = {question_key(ep.row) for ep, f in zip(episodes, found) if f}
    return [ep for ep in episodes if question_key(ep.row) in with_evidence]


def e_step(model, tokenizer, rows, settings: ExSearchSettings, searcher,
           agent_settings: P.AgentSettings | None, accelerator, *, seed: int
           ) -> tuple[list[Example], int, dict[str, Any]]:
    """Sample K trajectories per row with the current policy (:func:`sample_episodes`), keep
    those the evidence filter and the stop guard allow, score ``log p(y|x,z)`` with the gold
    answer in place, and weight them per question (:func:`weighted_examples`)."""
    episodes = sample_episodes(model, tokenizer, rows, settings, searcher, agent_settings,
                               accelerator, seed=seed)
    examples, skipped, stats = weighted_examples(model, tokenizer, episodes, settings, accelerator)
    return examples, skipped, {"questions": len(rows), **stats}


def sample_episodes(model, tokenizer, rows, settings: ExSearchSettings, searcher,
                    agent_settings: P.AgentSettings | None, accelerator, *, seed: int
                    ) -> list[Episode]:
    """The E-step's samples: K episodes per row from the current policy (T, top-p, seeded)."""
    generator = TransformersGenerator(accelerator.unwrap_model(model), tokenizer)
    decoding = Decoding(max_new_tokens=settings.max_new_tokens, greedy=False,
                        temperature=settings.temperature, top_p=settings.top_p, seed=seed)
    episodes = episodes_from_rows(rows, repeat=settings.samples, settings=agent_settings)
    EpisodeRunner(generator, searcher, decoding=decoding, batch_size=settings.gen_batch_size,
                  progress=settings.progress).run(episodes)
    return episodes


def weighted_examples(model, tokenizer, episodes: Sequence[Episode], settings: ExSearchSettings,
                      accelerator) -> tuple[list[Example], int, dict[str, Any]]:
    """The M-step's data of sampled ``episodes``: those the evidence filter keeps (episodes whose
    search failed are left out: the environment's failure, not the policy's), then the stop guard
    (``late``: only those that answered on their last allowed turn; ``mask``: the others lose the
    loss of their answer turn), as examples with the gold answer in place, weighted per question
    by ``log p(y|x,z)`` (computed before any masking). Returns the examples, how many were too
    long, and the E-step's statistics."""
    usable = [ep for ep in episodes if not ep.search_error]
    hits = [retrieved_answer(ep) for ep in usable]
    kept = evidence_kept(usable, settings.evidence_filter, hits)
    filtered = len(kept)
    if settings.stop_guard == "late":
        kept = [ep for ep in kept if not answered_early(ep)]
    examples, skipped = make_examples(tokenizer, kept, replace_answer=True,
                                      max_length=settings.max_length)
    logliks = answer_logliks(accelerator.unwrap_model(model), examples, tokenizer.pad_token_id,
                             micro_batch=settings.micro_batch)
    weights = importance_weights(logliks, [e.group for e in examples], settings.weight_temperature)
    for e, ll, w in zip(examples, logliks, weights):
        e.loglik, e.weight = ll, w
    masked = 0
    if settings.stop_guard == "mask":  # after log p(y|x,z): it is read through the labels
        for e in examples:
            if e.record["answered_early"]:
                mask_final_turn(e)
                e.record["stop_masked"] = True
                masked += 1
    em = [exact_match(ep.answer, gold_answers(ep.row)) for ep in episodes]
    early = [answered_early(ep) for ep in episodes]
    stats = {"episodes": len(episodes),
             "search_errors": len(episodes) - len(usable),
             "sample_em": sum(em) / max(len(em), 1),
             "sample_hit": sum(hits) / max(len(hits), 1),
             "mean_searches": sum(ep.n_search for ep in episodes) / max(len(episodes), 1),
             "answered_early": sum(early) / max(len(early), 1),
             "sample_em_early": _share(em, early),
             "sample_em_late": _share(em, [not e for e in early]),
             "evidence_filter": settings.evidence_filter,
             "episodes_filtered": filtered,
             "stop_guard": settings.stop_guard,
             "stop_masked": masked,
             "episodes_kept": len(kept),
             "questions_kept": len({question_key(ep.row) for ep in kept}),
             "mean_loglik": sum(logliks) / max(len(logliks), 1) if logliks else None,
             "max_weight_mean": _mean_max_weight(examples)}
    return examples, skipped, stats


def replay_examples(tokenizer, rows, settings: ExSearchSettings, searcher
                    ) -> tuple[list[Example], dict[str, Any]]:
    """The warm-up's seed trajectories of ``rows``, weighted ``settings.replay / n`` per question
    (``n`` = its seeds), replayed in an M-step beside the sampled ones: the seeds anchor the
    behaviour the warm-up taught (one search per hop) while the policy learns from its samples."""
    examples, report, skipped = seed_examples(tokenizer, rows, settings, searcher,
                                              weight=settings.replay)
    return examples, {"seeds": report, "skipped_too_long": skipped}


def seed_examples(tokenizer, rows, settings: ExSearchSettings, searcher, *, weight: float
                  ) -> tuple[list[Example], dict[str, Any], int]:
    """The seed trajectories of ``rows`` as training examples (their own answers kept), weighted
    ``weight / n`` per question (``n`` = its seeds): the warm-up's data (weight 1) and the M-steps'
    replay (``settings.replay``). Returns the examples, the seeds' report and how many were too long."""
    episodes, report = _seed_episodes(settings, rows, searcher)
    examples, skipped = make_examples(tokenizer, episodes, replace_answer=False,
                                      max_length=settings.max_length)
    sizes: dict[str, int] = {}
    for e in examples:
        sizes[e.group] = sizes.get(e.group, 0) + 1
    for e in examples:
        e.weight = weight / sizes[e.group]
    return examples, report, skipped


def _share(values: Sequence[float], where: Sequence[bool]) -> float | None:
    picked = [v for v, w in zip(values, where) if w]
    return sum(picked) / len(picked) if picked else None


def _mean_max_weight(examples: Sequence[Example]) -> float | None:
    top: dict[str, float] = {}
    for e in examples:
        top[e.group] = max(top.get(e.group, 0.0), e.weight)
    return sum(top.values()) / len(top) if top else None
