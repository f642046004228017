"""The ExSearch objective: importance weights of the E-step, ``log p(y|x,z)``, the weighted
M-step loss and the weighted fine-tuning loop (:func:`fit`). torch is imported where it is used."""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from deepretrieval.train.exsearch.examples import IGNORE, Example


def importance_weights(logliks: Sequence[float], groups: Sequence[Any], temperature: float = 1.0
                       ) -> list[float]:
    """Per-group softmax of ``loglik / temperature`` (see the module docstring): the weights of a
    group sum to 1, a larger log-likelihood gets a larger weight, a group of one gets 1. A
    trajectory with log-likelihood ``-inf`` gets 0 unless every one of its group is ``-inf``
    (then they share the weight equally)."""
    if len(logliks) != len(groups):
        raise ValueError("one group per log-likelihood")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(logliks)
    for idx in members.values():
        scaled = [float(logliks[i]) / temperature for i in idx]
        if any(math.isnan(s) for s in scaled):
            raise ValueError("a log-likelihood is NaN")
        top = max(scaled)
        if top == -math.inf:
            for i in idx:
                out[i] = 1.0 / len(idx)
            continue
        exps = [math.exp(s - top) for s in scaled]
        total = sum(exps)
        for i, e in zip(idx, exps):
            out[i] = e / total
    return out


def _batch(examples: Sequence[Example], pad_id: int, device):
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    answer = torch.zeros((len(examples), width), dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        answer[i, :n] = torch.tensor(e.answer_mask)
        attention[i, :n] = 1
    return ids.to(device), labels.to(device), answer.to(device), attention.to(device)


def token_logprobs(model, ids, attention, labels):
    """Log-probability of each label token given the tokens before it: ``[B, T-1]`` (0 where the
    label is -100), and the mask of scored positions."""
    import torch

    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def answer_logliks(model, examples: Sequence[Example], pad_id: int, *, micro_batch: int = 4
                   ) -> list[float]:
    """``log p(y | x, z)`` of each example: the summed log-probability of its gold-answer tokens."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(examples), micro_batch):
                chunk = examples[start:start + micro_batch]
                ids, labels, answer, attention = _batch(chunk, pad_id, device)
                logp, _ = token_logprobs(model, ids, attention, labels)
                picked = (logp * answer[:, 1:]).sum(-1)
                out += [float(v) for v in picked]
    finally:
        model.train(was_training)
    return out


def weighted_loss(model, examples: Sequence[Example], pad_id: int, *, n_questions: int,
                  micro_batch: int = 4, backward: Callable | None = None) -> float:
    """``1/n_questions * sum_i w_i * mean-token NLL_i`` over ``examples`` (labels -100 excluded).
    With ``backward``, each micro-batch's share is back-propagated (gradients accumulate)."""
    import torch

    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(examples), micro_batch):
        chunk = examples[start:start + micro_batch]
        ids, labels, _, attention = _batch(chunk, pad_id, device)
        weights = torch.tensor([e.weight for e in chunk], dtype=torch.float32, device=device)
        if backward is None:
            with torch.no_grad():
                logp, mask = token_logprobs(model, ids, attention, labels)
        else:
            logp, mask = token_logprobs(model, ids, attention, labels)
        nll = -(logp.sum(-1)) / mask.sum(-1).clamp(min=1)
        loss = (weights * nll).sum() / n_questions
        if backward is not None:
            backward(loss)
        total += float(loss.detach())
    return total


def mean_weighted_loss(model, examples: Sequence[Example], pad_id: int, micro_batch: int = 4) -> float:
    """The M-step objective over a whole set of examples (no gradients): per question the
    weighted NLL, averaged over questions."""
    if not examples:
        return float("nan")
    n_questions = len({e.group for e in examples})
    was = model.training
    model.eval()
    try:
        return weighted_loss(model, examples, pad_id, n_questions=n_questions, micro_batch=micro_batch)
    finally:
        model.train(was)


class Interrupt(Exception):
    """Raised by a test hook to simulate a crash in the middle of a stage."""


def fit(model, examples: Sequence[Example], pad_id: int, *, accelerator, optimizer, epochs: int,
        questions_per_step: int, micro_batch: int, seed: int, groups: Sequence[str] | None = None,
        on_step: Callable[[int], None] | None = None, label: str | None = None) -> list[float]:
    """Weighted fine-tuning: per epoch, questions shuffled (seeded), one optimizer step per
    ``questions_per_step`` questions with all their examples. Returns the step losses.

    ``groups``: the questions this process was given (default: those of the examples). Every
    process of a distributed run is given as many, so all take the same number of steps; a step
    whose questions left no example runs a zero-loss forward (gradients are still averaged).
    ``label``: print a progress line per optimizer step under this name."""
    by_group: dict[str, list[Example]] = {}
    for e in examples:
        by_group.setdefault(e.group, []).append(e)
    groups = sorted(set(groups) if groups is not None else by_group)
    rng = random.Random(seed)
    losses: list[float] = []
    model.train()
    step = 0
    total = max(0, epochs) * math.ceil(len(groups) / questions_per_step)
    started = time.time()
    for _ in range(max(0, epochs)):
        order = groups[:]
        rng.shuffle(order)
        for start in range(0, len(order), questions_per_step):
            chosen = order[start:start + questions_per_step]
            batch = [e for g in chosen for e in by_group.get(g, ())]
            if not batch:
                batch = [Example([pad_id, pad_id], [IGNORE, IGNORE], [0, 0], "", 0.0)]
            optimizer.zero_grad(set_to_none=True)
            loss = weighted_loss(model, batch, pad_id, n_questions=len(chosen),
                                 micro_batch=micro_batch, backward=accelerator.backward)
            optimizer.step()
            step += 1
            losses.append(loss)
            if label:
                print(f"[exsearch] {label}: step {step}/{total}  weighted loss {loss:.3f}  "
                      f"({time.time() - started:.0f}s)", flush=True)
            if on_step is not None:
                on_step(step)
    optimizer.zero_grad(set_to_none=True)
    return losses
