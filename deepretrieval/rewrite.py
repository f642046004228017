"""Query rewriting with a trained model, for RAG pipelines and the ``rewrite`` command.

>>> rw = QueryRewriter("path/to/model", task="scifact")                 # local (vLLM or transformers)
>>> rw = QueryRewriter("my-model", task="scifact", api_url="http://localhost:8000/v1")  # vllm_host.sh
>>> rw.rewrite("Vitamin D lowers fracture risk.").query
>>> [r.query for r in rw.rewrite_batch(claims)]

The model gets the task's own chat messages (system + user, exactly as in training) — rendered once
by its chat template, locally or by the server — and the task's answer prefill. The answer is
extracted strictly first, then leniently (:func:`deepretrieval.core.answer.extract_answer_lenient`, plus:
reasoning cut off before any answer is no answer, and a JSON answer cut off by the token limit
gives the string it started);
with ``fallback=True`` (default) a completion with no usable answer returns the original query, so a
pipeline never searches for garbage.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deepretrieval.catalog import get_task
from deepretrieval.core.answer import (
    extract_answer_lenient,
    parse_answer,
    salvage_truncated_value,
)
from deepretrieval.generation.api import OpenAIChatGenerator, served_models
from deepretrieval.generation.decoding import Decoding, Generator, Prompt, stop_rules
from deepretrieval.generation.factory import make_generator


@dataclass(frozen=True)
class Rewrite:
    original: str
    query: str                 # the rewritten query (the original one on fallback)
    ok: bool                   # an answer could be extracted
    strict: bool               # the completion followed the strict answer format
    reasoning: str | None
    completion: str            # raw model text (after the prefill)
    error: str | None = None   # why the strict parse failed, if it did


class QueryRewriter:
    """Rewrite queries with a model trained on ``task``.

    ``model``: local folder / hub name / ``.gguf`` file, or the served model name when ``api_url``
    is given (``None``: the first model the server lists). ``generator``: any
    :class:`~deepretrieval.generation.decoding.Generator` (overrides ``model``)."""

    def __init__(self, model: str | Any = None, task: str = "scifact", *, api_url: str | None = None,
                 api_key: str | None = None, api_prefill: str = "continue", max_new_tokens: int = 256,
                 batch_size: int = 8, greedy: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, fallback: bool = True, backend: str = "auto", device: str | None = None,
                 dtype: str | None = None, tokenizer: Any = None, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = False, generator: Generator | None = None, **generator_kw: Any):

        self.task = get_task(task)
        self.batch_size = max(1, batch_size)
        self.fallback = fallback
        self.decoding = Decoding(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                                 top_p=top_p, seed=seed)
        if generator is not None:
            self.generator = generator
        elif api_url:
            name = model or served_models(api_url, api_key)[0]
            self.generator = OpenAIChatGenerator(str(name), base_url=api_url, api_key=api_key,
                                                 prefill=api_prefill, cache_dir=cache_dir,
                                                 use_cache=use_cache, **generator_kw)
        elif model is None:
            raise ValueError("give a model (local path or hub name), or api_url of a served model")
        else:
            self.generator = make_generator(model, backend=backend, tokenizer=tokenizer, device=device,
                                            dtype=dtype, **generator_kw)
        self.prefill_used = bool(self.generator.uses_prefill)

    def messages(self, query: str, **fields: Any) -> list[dict[str, str]]:
        """The task's chat messages for ``query`` (what the model is sent)."""
        try:
            return self.task.messages(query=query, **fields)
        except KeyError as exc:
            raise ValueError(f"task {self.task.name!r} needs the prompt field {exc.args[0]!r}; "
                             f"pass it as a keyword (e.g. rewrite(query, {exc.args[0]}=...))") from None

    def rewrite_batch(self, queries: Sequence[str], fields: Sequence[Mapping[str, Any]] | None = None,
                      *, progress: bool = False) -> list[Rewrite]:
        """Rewrite many queries, ``batch_size`` at a time (``fields``: extra prompt fields per query)."""
        queries = [str(q) for q in queries]
        fields = list(fields) if fields is not None else [{}] * len(queries)
        if len(fields) != len(queries):
            raise ValueError("fields must have one mapping per query")
        prefill = self.task.prefill if self.prefill_used else ""
        decoding = Decoding(**{**self.decoding.__dict__, "stops": stop_rules(prefill, self.task.answer_key)})
        prompts = [Prompt.of(self.messages(q, **f), self.task.prefill) for q, f in zip(queries, fields)]
        results: list[Rewrite] = []
        for start in range(0, len(prompts), self.batch_size):
            outs = self.generator.generate(prompts[start: start + self.batch_size], decoding,
                                           batch_size=self.batch_size, seed_offset=start,
                                           progress=progress)
            for query, texts in zip(queries[start: start + self.batch_size], outs):
                results.append(self._extract(query, texts[0] if texts else "", prefill))
        return results

    def rewrite(self, query: str, **fields: Any) -> Rewrite:
        return self.rewrite_batch([query], [fields])[0]

    def __call__(self, query: str, **fields: Any) -> str:
        return self.rewrite(query, **fields).query

    def _extract(self, original: str, completion: str, prefill: str) -> Rewrite:
        completion = completion if isinstance(completion, str) else ""
        full = prefill + completion
        key = self.task.answer_key
        parsed = parse_answer(full, key, reasoning=self.task.reasoning)
        if parsed.ok:
            return Rewrite(original, parsed.value, True, True, parsed.reasoning, completion)
        unfinished = "<think>" in full and "</think>" not in full and "<answer>" not in full
        value = None if unfinished else salvage_truncated_value(extract_answer_lenient(full, key), key)
        reasoning = None
        if "</think>" in full:
            reasoning = full.split("</think>", 1)[0].replace("<think>", "").strip() or None
        if value:
            return Rewrite(original, value, True, False, reasoning, completion, parsed.error)
        if not self.fallback:
            raise ValueError(f"no answer in the model output: {completion[:200]!r}")
        return Rewrite(original, original, False, False, reasoning, completion, parsed.error)
