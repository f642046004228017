"""Pick a generator for a model name: an OpenAI-compatible endpoint, vLLM or transformers."""
from __future__ import annotations

import os
from typing import Any

from deepretrieval.generation.api import OpenAIChatGenerator
from deepretrieval.generation.local import (
    TransformersGenerator,
    VLLMGenerator,
    vllm_available,
)
from deepretrieval.generation.models import resolve_model


def make_generator(model: str | Any, *, backend: str = "auto", base_url: str | None = None,
                   api_key: str | None = None, tokenizer: Any = None, device: str | None = None,
                   dtype: str | None = None, cache_dir: str | os.PathLike | None = None,
                   api_prefill: str = "none", **kwargs: Any):
    """A generator for ``model``: ``openai:NAME`` (or ``backend="openai"``) → an OpenAI-compatible
    chat endpoint at ``base_url``; otherwise a local path / hub name → vLLM when importable and a
    GPU is present (``backend="auto"``), else transformers. A loaded model object (with
    ``tokenizer``) goes to transformers."""
    if isinstance(model, str) and (model.startswith("openai:") or backend == "openai"):
        name = model.split(":", 1)[1] if model.startswith("openai:") else model
        return OpenAIChatGenerator(name, base_url=base_url, api_key=api_key, cache_dir=cache_dir,
                                   prefill=api_prefill, **kwargs)
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"unknown backend {backend!r} (auto, vllm, transformers, openai)")
    if not isinstance(model, (str, os.PathLike)):
        return TransformersGenerator(model, tokenizer)
    model = resolve_model(str(model))  # `smollm2` etc.: the cached local folder, as training uses
    if backend == "vllm" or (backend == "auto" and vllm_available() and not str(model).endswith(".gguf")):
        if not vllm_available():
            raise ValueError("backend 'vllm' needs the vllm package and a GPU")
        return VLLMGenerator(str(model), **kwargs)
    return TransformersGenerator(str(model), device=device, dtype=dtype)
