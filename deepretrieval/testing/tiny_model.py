"""A tiny random chat model for tests and demos that must run offline on a CPU.

``build_tiny_model(out_dir, seed)`` writes a 2-layer Qwen2 causal LM (hidden size 64) with a
byte-level BPE tokenizer trained in-process (``tokenizers``) on the bundled SciFact claims and
the registered tasks' prompt text, plus a ChatML chat template (``<|im_start|>``/``<|im_end|>``).
``<think>``/``<answer>`` stay ordinary text. Everything is saved with ``save_pretrained`` so
``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)`` load it
offline. The build is deterministic for a seed and takes about a second; it is cached: a folder
that already holds the same (seed, version) is reused.

The weights are random, so the model writes gibberish: it exercises plumbing (generation,
templates, stop strings, training steps), not quality.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from deepretrieval.catalog import get_task, list_tasks
from deepretrieval.core import settings
from deepretrieval.core.beir_files import iter_jsonl, load_corpus
from deepretrieval.core.bundled import collection_dir

#: Bump when the architecture, tokenizer corpus or template changes (invalidates caches).
VERSION = 1

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MARKER = "tiny_model.json"
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

_DEFAULTS = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def _training_text() -> list[str]:
    """Real text the tokenizer learns from: SciFact claims, a slice of abstracts, task prompts."""

    folder = collection_dir("scifact")
    lines = [q["text"] for q in iter_jsonl(folder / "queries.jsonl", ("_id", "text"))]
    for i, doc in enumerate(load_corpus(folder)):
        if i >= 300:
            break
        lines.append(f"{doc.get('title', '')}\n{doc.get('text', '')}")
    try:
        for name in list_tasks():
            task = get_task(name)
            try:
                msgs = task.messages(query=lines[0], question=lines[0], claim=lines[0])
            except Exception:  # a family needing other fields: its system text still helps
                msgs = [{"role": "system", "content": task.system}]
            lines.append("".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
                         + "<|im_start|>assistant\n" + task.prefill)
    except Exception:  # pragma: no cover - tasks are optional for the tokenizer
        pass
    examples = ['<think>The claim is about {q}.</think>\n<answer>{{"query": "{q}"}}</answer>',
                '<answer>{{"query": "{q}"}}</answer>', '<answer>{{"sql": "SELECT * FROM t"}}</answer>']
    for claim in lines[:200]:
        lines += [e.format(q=claim.replace('"', "'")) for e in examples]
    return lines


def _train_tokenizer(vocab_size: int):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    # The same normalizer and pre-tokenizer as transformers' Qwen2Tokenizer (which AutoTokenizer
    # picks for a qwen2 config), so the saved and the reloaded tokenizer give identical ids.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, additional_special_tokens=["<|im_start|>"],
        model_max_length=_DEFAULTS["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE, padding_side="left")


def _is_built(path: Path, seed: int) -> bool:
    try:
        meta = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("seed") == seed and meta.get("version") == VERSION


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, *, force: bool = False) -> Path:
    """Build (or reuse) the tiny model in ``out_dir``; returns the folder.

    Deterministic: the same seed gives the same tokenizer and weights. The folder is written
    atomically (built next to it, then renamed), so concurrent builders do not clash.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if not force and _is_built(out, seed):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(_DEFAULTS["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2Config(**{**_DEFAULTS, "vocab_size": len(tokenizer)},
                         tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        do_sample=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"seed": seed, "version": VERSION,
                                              "parameters": sum(p.numel() for p in model.parameters())}))
        if out.exists():
            if _is_built(out, seed) and not force:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def tiny_model_path(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The tiny model for ``seed`` cached under ``cache_dir`` (default:
    ``<cache folder>/tiny-models``, see :mod:`deepretrieval.core.settings`), built on
    first use. The folder name carries the seed and the builder version."""
    if cache_dir is None:
        root = settings.cache_dir()
        cache_dir = Path(root) / "tiny-models"
    return build_tiny_model(Path(cache_dir) / f"tiny-qwen2-v{VERSION}-seed{seed}", seed=seed)
