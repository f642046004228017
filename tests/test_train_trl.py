"""TRL engine on CPU with the tiny Qwen2 model: GRPO steps move the weights with finite losses and
log our metric keys; resume continues a run; export round trip generates the same tokens."""
from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from deepretrieval.train.trl_engine import (  # noqa: E402
    METRIC_PREFIX, TRLSettings, is_copy, last_checkpoint, read_metrics, render_prompt, train_trl)

TASK = "scifact_no_reason"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.rows(TASK, "train", limit=8)]


@pytest.fixture(scope="module")
def warm_model(warm_tiny, rows, tmp_path_factory):
    """The tiny model taught the answer format (conftest ``warm_tiny``): GRPO sees reward spread."""
    return warm_tiny(rows, tmp_path_factory.mktemp("warm"))


def _settings(model, out, **kw):
    base = dict(model=str(model), output_dir=str(out), steps=3, prompts_per_step=2, num_generations=4,
                max_completion_length=24, temperature=1.0, learning_rate=1e-3, progress=False,
                bf16=False, seed=0, save_steps=0)
    base.update(kw)
    return TRLSettings(**base)


def _state(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


def test_grpo_steps_change_weights_finite_losses_and_metric_keys(warm_model, rows, tmp_path):
    from deepretrieval.catalog import get_task

    result = train_trl(rows, _settings(warm_model, tmp_path / "run"))
    before, after = _state(warm_model), _state(result.model_dir)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "GRPO did not change any weight"
    steps = [h for h in read_metrics(result.metrics_path) if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    for h in steps:
        assert math.isfinite(h["loss"]) and math.isfinite(h["reward"])
    keys = get_task(TASK).family.metric_keys(get_task(TASK))
    for key in keys + ["score", "format_ok", "search_error", "format_error_rate", "copy_rate"]:
        assert all(METRIC_PREFIX + key in h for h in steps), key
    # the logged reward is our reward: its mean equals the mean task score
    for h in steps:
        assert h["reward"] == pytest.approx(h[METRIC_PREFIX + "score"], abs=1e-5)
        assert h[METRIC_PREFIX + "format_error_rate"] == pytest.approx(1 - h[METRIC_PREFIX + "format_ok"])
    assert any(h["reward_std"] > 0 for h in steps), "rewards never differed within a batch"
    assert (tmp_path / "run" / "train_settings.json").is_file()
    # the exported policy loads and carries the tokenizer with its chat template
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(result.model_dir).chat_template


def test_resume_from_checkpoint(warm_model, rows, tmp_path):
    out = tmp_path / "run"
    train_trl(rows, _settings(warm_model, out, steps=2, save_steps=1, save_total_limit=None))
    assert last_checkpoint(out).name == "checkpoint-2"
    result = train_trl(rows, _settings(warm_model, out, steps=4, save_steps=1, save_total_limit=None,
                                       resume=True))
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    logged = [h["step"] for h in read_metrics(result.metrics_path) if "loss" in h]
    assert logged == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 after resuming
    with pytest.raises(FileNotFoundError):
        train_trl(rows, _settings(warm_model, tmp_path / "other", resume=str(tmp_path / "missing")))


def _greedy(model_dir, prompt, n=12):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_export_round_trip_full_and_lora(warm_model, rows, tmp_path):
    from transformers import AutoTokenizer

    from deepretrieval.cli import main
    from deepretrieval.train.export import checkpoint_kind

    prompt = render_prompt(AutoTokenizer.from_pretrained(warm_model), rows[0])
    out = tmp_path / "full"
    train_trl(rows, _settings(warm_model, out, steps=1, save_steps=1))
    ckpt = out / "checkpoint-1"
    assert checkpoint_kind(ckpt) == "hf"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "exported")]) == 0
    assert _greedy(tmp_path / "exported", prompt) == _greedy(ckpt, prompt)

    lora = tmp_path / "lora"
    train_trl(rows, _settings(warm_model, lora, steps=1, save_steps=1, lora=True, lora_r=8,
                              learning_rate=5e-2))
    adapter = lora / "checkpoint-1"
    assert checkpoint_kind(adapter) == "lora"
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = _greedy(tmp_path / "merged", prompt)
    # the same adapter applied on the fly by peft generates the same tokens as the merged export
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    tok = AutoTokenizer.from_pretrained(warm_model)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(warm_model),
                                           str(adapter)).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        gen = peft_model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert merged == gen[0, ids["input_ids"].shape[1]:].tolist()
    # the run's final model folder is the merged policy too
    assert _greedy(lora / "model", prompt) == merged
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_copy_detection():
    assert is_copy("Vitamin D, reduces   fracture risk.", "vitamin d reduces fracture risk")
    assert not is_copy("vitamin d fracture", "vitamin d reduces fracture risk")
    assert not is_copy("", "")
    assert not is_copy(None, "x")
