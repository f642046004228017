"""What every generator shares: a prompt (chat messages + assistant prefill), pinned decoding
settings and stop rules applied to the decoded text."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class Prompt:
    """Chat messages plus the text the assistant turn starts with.

    ``raw``: the exact model input instead (an original DeepRetrieval prompt string, already
    templated and ending with its own assistant prefix): local generators tokenize it as it is —
    no chat template, no prefill appended, no special tokens added — as the original trainer did.
    ``messages``/``prefill`` still describe the same prompt for records and for chat APIs, which
    cannot take a raw string and refuse such a prompt."""

    messages: tuple[Mapping[str, str], ...]
    prefill: str = ""
    raw: str | None = None

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]], prefill: str | None = "",
           raw: str | None = None) -> "Prompt":
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)
        return cls(msgs, prefill or "", raw)


@dataclass(frozen=True)
class StopRule:
    """Stop when the decoded completion contains ``text``; keep it and append ``suffix``."""

    text: str
    suffix: str = ""


@dataclass(frozen=True)
class Decoding:
    """Pinned decoding settings. ``greedy`` ignores temperature/top_p; ``n`` > 1 needs sampling."""

    max_new_tokens: int = 256
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    n: int = 1
    stops: tuple[StopRule, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.n > 1 and self.greedy:
            raise ValueError("n > 1 needs sampling (greedy decoding would repeat one completion)")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("sampling needs temperature > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "greedy": self.greedy,
                "temperature": None if self.greedy else self.temperature,
                "top_p": None if self.greedy else self.top_p, "seed": self.seed, "n": self.n,
                "stops": [[s.text, s.suffix] for s in self.stops]}


@runtime_checkable
class Generator(Protocol):
    """What every generator implements — :class:`~deepretrieval.generation.local.TransformersGenerator`,
    :class:`~deepretrieval.generation.local.VLLMGenerator`,
    :class:`~deepretrieval.generation.api.OpenAIChatGenerator`, and scripted policies (the closed
    world's oracle, tests). ``name``: how reports call it. ``uses_prefill``: whether the assistant
    prefill of a prompt reaches the model (an API without continuation drops it, so the answer
    parser must not put it back). ``generate``: ``decoding.n`` completions per prompt (the text
    after the prefill, stop rules applied), in order; ``seed_offset`` shifts the per-prompt seeds
    of sampled decoding."""

    name: str
    uses_prefill: bool

    def generate(self, prompts: Sequence[Prompt], decoding: Decoding, *, batch_size: int = 8,
                 seed_offset: int = 0, progress: bool = False) -> list[list[str]]: ...


def stop_rules(prefill: str = "", answer_key: str = "query") -> tuple[StopRule, ...]:
    """Stops for the answer contract. Always stop after ``</answer>``. When the prefill leaves
    the model inside the JSON string of the answer (``<answer>{"query": "``), also stop at the
    closing ``"}`` and complete it with ``</answer>`` — a model that closed the JSON object has
    nothing else to say, and small models ramble on otherwise."""
    rules = [StopRule(ANSWER_CLOSE)]
    tail = prefill.rstrip()
    if ANSWER_OPEN in tail and ANSWER_CLOSE not in tail.rsplit(ANSWER_OPEN, 1)[1] and tail.endswith('"'):
        rules.insert(0, StopRule('"}', ANSWER_CLOSE))
    return tuple(rules)


def apply_stops(text: str, stops: Sequence[StopRule]) -> tuple[str, bool]:
    """Cut ``text`` after the earliest stop string (kept) and add that rule's suffix.
    Returns (text, stopped)."""
    best: tuple[int, StopRule] | None = None
    for rule in stops:
        pos = text.find(rule.text)
        if pos >= 0 and (best is None or pos + len(rule.text) < best[0]):
            best = (pos + len(rule.text), rule)
    if best is None:
        return text, False
    return text[: best[0]] + best[1].suffix, True
