"""The frame every quickstart shares (``deepretrieval quickstart`` and ``quickstart --agentic``).

:class:`Frame` owns what does not depend on the recipe: the output folder, torch threads, the
command that reproduces the run, the numbered progress lines, the results table, the training
curve (``training_curve.png`` in the output folder) and ``results.json`` with the timings and the
machine load. The recipes (:mod:`deepretrieval.train.quickstart` for single-shot,
:mod:`deepretrieval.train.agentic_quickstart` for the agent) only say which steps to run.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shlex
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core.io import save_figure, write_atomic

CURVE = "training_curve.png"
RESULTS = "results.json"


def set_threads(spec: str) -> int:
    """Apply ``--threads`` and return the thread count used."""
    import torch
    cores = os.cpu_count() or 1
    if spec == "auto":
        try:
            busy = os.getloadavg()[0] >= cores
        except OSError:
            busy = False
        n = 1 if busy else torch.get_num_threads()
    else:
        try:
            n = int(spec)
        except ValueError:
            raise ValueError(f"--threads must be a number or auto, not {spec!r}") from None
        if n < 1:
            raise ValueError("--threads must be >= 1")
    torch.set_num_threads(n)
    return n


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used so far. With one torch
    thread it is close to what the run takes on an idle machine, whatever else shares the CPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def command_line(args, options: Iterable[str], flags: Iterable[str] = (),
                 lead: Sequence[str] = ("deepretrieval", "quickstart")) -> str:
    """The command that reproduces a run: every option in ``options`` (namespace attribute names,
    spelled ``--attr-name``) with its value, then the true boolean ``flags``."""
    parts: list[str] = list(lead)
    for name in options:
        value = getattr(args, name)
        if value is not None:
            parts += ["--" + name.replace("_", "-"), str(value)]
    parts += ["--" + name.replace("_", "-") for name in flags if getattr(args, name)]
    return " ".join(shlex.quote(p) for p in parts)


def format_table(table: Sequence[dict], columns: Sequence[tuple[str, str]], *,
                 percent: Iterable[str] = (), digits: int = 4, first: int = 16, width: int = 14,
                 percent_digits: int = 1) -> str:
    """Rows (dicts with the row name under ``""``) as a fixed-width text table; ``percent``
    columns are shares printed as percentages; missing values print as —."""
    percent = set(percent)
    head = "".ljust(first) + "".join(label.rjust(width) for _, label in columns)
    lines = [head, "-" * len(head)]
    for row in table:
        cells = [str(row[""]).ljust(first)]
        for key, _ in columns:
            v = row.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("—".rjust(width))
            elif key in percent:
                cells.append(f"{v:.{percent_digits}%}".rjust(width))
            else:
                cells.append(f"{v:.{digits}f}".rjust(width))
        lines.append("".join(cells))
    return "\n".join(lines)


def plot_curve(history: list[dict], path: Path, original_reward: float | None = None,
               metric: str = "ndcg", title: str = "GRPO on SciFact",
               original_metric: float | None = None, metric_label: str | None = None) -> Path | None:
    """Two panels per GRPO step: the mean reward (with the original query's mean reward on the
    training rows as a dotted line) and the reward metric (with the original query's level),
    plus the format-error rate. None when the history has no step with a reward."""
    label = metric_label or metric
    logged = [h for h in history if "reward" in h]
    if not logged:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in logged]
    reward = [h["reward"] for h in logged]
    values = [h.get(f"deepretrieval/{metric}") for h in logged]
    fmt = [h.get("deepretrieval/format_error_rate") for h in logged]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, reward, marker=".", label="mean reward (policy samples)", color="tab:blue")
    if original_reward is not None and not math.isnan(original_reward):
        top.axhline(original_reward, color="tab:gray", linestyle=":",
                    label=f"original query ({original_reward:.3f})")
    top.set_ylabel("mean reward")
    top.legend(loc="best", fontsize=8)
    if all(v is not None for v in values):
        bottom.plot(steps, values, marker=".", color="tab:green", label=f"{label} (policy samples)")
    if original_metric is not None and not math.isnan(original_metric):
        bottom.axhline(original_metric, color="tab:gray", linestyle=":",
                       label=f"original query ({original_metric:.3f})")
    if all(v is not None for v in fmt):
        bottom.plot(steps, fmt, color="tab:red", linestyle="--", marker=".", label="format-error rate")
    bottom.set_ylabel(label)
    bottom.set_xlabel("GRPO step")
    bottom.legend(loc="best", fontsize=8)
    top.set_title(f"DeepRetrieval quickstart: {title}")
    fig.tight_layout()
    return save_figure(fig, path)


class Frame:
    """One quickstart run's frame: output folder, threads, reproducing command, progress lines,
    timing, curve and ``results.json``."""

    def __init__(self, args, *, title: str, steps: int, command: str):
        self.t_start = time.time()
        self.cpu_start = cpu_seconds()
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.total = steps
        self.done = 0
        self.threads = set_threads(args.threads)
        self.command = command
        self.load_start = load_average()
        print(f"DeepRetrieval {title} → {self.out.resolve()}  (torch threads: {self.threads}, "
              f"load average {self._load(self.load_start)})\n    reproduce: {command}", flush=True)

    @staticmethod
    def _load(load: list[float] | None) -> str:
        return " ".join(f"{x:.2f}" for x in load) if load else "unknown"

    def step(self, text: str) -> None:
        """Print the next numbered progress line."""
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {text}", flush=True)

    def curve(self, history: list[dict], **kwargs) -> Path | None:
        """``training_curve.png`` in the output folder (None with ``--no-plot`` or no steps)."""
        if self.args.no_plot:
            return None
        return plot_curve(history, self.out / CURVE, **kwargs)

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def finish(self, results: dict[str, Any], *, trained_model: str, plot: Path | None) -> int:
        """Write ``results.json`` (plus the command, threads, load and total time) and print where
        everything is."""
        load_end = load_average()
        results = {**results, "command": self.command, "threads": self.threads,
                   "load_average_start": self.load_start, "load_average_end": load_end,
                   "training_curve": str(plot) if plot else None,
                   "total_seconds": round(self.elapsed(), 1),
                   "cpu_seconds": round(cpu_seconds() - self.cpu_start, 1)}
        write_atomic(self.out / RESULTS, json.dumps(results, indent=2, default=str))
        print(f"\nresults: {self.out / RESULTS}" + (f"\ntraining curve: {plot}" if plot else "")
              + f"\ntrained model: {trained_model}\ntotal time: {self.elapsed():.0f}s, CPU time "
              f"{results['cpu_seconds']:.0f}s (torch threads {self.threads}; load average at start "
              f"{self._load(self.load_start)}, at end {self._load(load_end)})", flush=True)
        return 0
