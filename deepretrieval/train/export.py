"""Checkpoints → Hugging Face model folders that evaluation and serving load.

* TRL checkpoints (``checkpoint-N`` or a run's ``model``): full weights are copied with their
  tokenizer; LoRA adapters (``adapter_config.json``) are merged into their base model.
* verl FSDP checkpoints (a run's ``default_local_dir``, a ``global_step_N`` folder or its
  ``actor``): verl's own model merger (``python -m verl.model_merger merge --backend fsdp``).

Every export is written to a temporary folder beside the target and renamed into place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deepretrieval.core.io import atomic_dir

log = logging.getLogger(__name__)


def save_hf(model, tokenizer, out: str | os.PathLike) -> Path:
    """Save a (non-PEFT) model and its tokenizer atomically."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)


def save_merged(model, tokenizer, out: str | os.PathLike) -> Path:
    """Merge a PEFT model's adapters into a copy of the base weights and save it."""
    import copy
    merged = copy.deepcopy(model)
    if hasattr(merged, "merge_and_unload"):
        merged = merged.merge_and_unload()
    return save_hf(merged, tokenizer, out)


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``hf`` (full weights), ``lora`` (PEFT adapter), ``verl`` (FSDP shards) — or raises."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / "adapter_config.json").is_file():
        return "lora"
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        return "hf"
    if verl_actor_dir(path, must_exist=False) is not None:
        return "verl"
    raise ValueError(f"{path} is neither a Hugging Face / TRL checkpoint (config.json + weights), a "
                     "LoRA adapter (adapter_config.json) nor a verl checkpoint (global_step_N/actor)")


def verl_actor_dir(path: str | os.PathLike, must_exist: bool = True) -> Path | None:
    """The ``actor`` folder of a verl checkpoint given the run folder (newest step, from
    ``latest_checkpointed_iteration.txt``), a ``global_step_N`` folder or the actor folder."""
    path = Path(path)

    def is_actor(p: Path) -> bool:
        return p.is_dir() and any(p.glob("model_world_size_*_rank_*.pt"))

    candidates = [path, path / "actor"]
    marker = path / "latest_checkpointed_iteration.txt"
    if marker.is_file():
        step = marker.read_text().strip()
        candidates.append(path / f"global_step_{step}" / "actor")
    steps = sorted(path.glob("global_step_*/actor"),
                   key=lambda p: int(p.parent.name.rsplit("_", 1)[1]) if p.parent.name.rsplit("_", 1)[1].isdigit() else -1)
    candidates += list(reversed(steps))
    for cand in candidates:
        if is_actor(cand):
            return cand
    if must_exist:
        raise FileNotFoundError(f"no verl actor checkpoint (model_world_size_*_rank_*.pt) under {path}")
    return None


def verl_merge_command(actor_dir: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(actor_dir), "--target_dir", str(target)]


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                      base_model: str | None = None) -> Path:
    """Export ``checkpoint`` to a Hugging Face folder ``out`` (see the module docstring).
    ``base_model`` overrides the base recorded in a LoRA adapter's config."""
    kind = checkpoint_kind(checkpoint)
    checkpoint = Path(checkpoint)
    if kind == "verl":
        actor = verl_actor_dir(checkpoint)
        with atomic_dir(out) as tmp:
            cmd = verl_merge_command(actor, tmp)
            log.info("running %s", " ".join(cmd))
            subprocess.run(cmd, check=True)
            hf = actor / "huggingface"  # tokenizer + config saved by verl next to the shards
            for name in os.listdir(hf) if hf.is_dir() else []:
                if "token" in name or name.endswith((".jinja", "vocab.json", "merges.txt")):
                    if not (tmp / name).exists():
                        shutil.copy2(hf / name, tmp / name)
        return Path(out)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    if kind == "lora":
        from peft import PeftModel
        adapter_cfg = json.loads((checkpoint / "adapter_config.json").read_text())
        base = base_model or adapter_cfg.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{checkpoint}: the adapter does not name its base model; pass --base-model")
        model = AutoModelForCausalLM.from_pretrained(base)
        model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
        tok_src = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else base
    else:
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
        tok_src = checkpoint
    if not (Path(tok_src) / "tokenizer_config.json").is_file() and Path(tok_src).is_dir():
        raise FileNotFoundError(f"no tokenizer in {tok_src}")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_src))
    return save_hf(model, tokenizer, out)
