"""The tiny offline test model: loads with Auto* classes, deterministic, chat template works."""
import hashlib

from deepretrieval.testing.tiny_model import VERSION, build_tiny_model, tiny_model_path


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())
            if f.is_file()}


def test_tiny_model_loads_and_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = build_tiny_model(tmp_path / "a", seed=0)
    b = build_tiny_model(tmp_path / "b", seed=0)
    c = build_tiny_model(tmp_path / "c", seed=1)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]
    assert _digest(a)["tokenizer.json"] == _digest(c)["tokenizer.json"]  # tokenizer is seed-free

    tok = AutoTokenizer.from_pretrained(a)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Claim: X"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nClaim: X<|im_end|>\n<|im_start|>assistant\n"
    # <think>/<answer> are ordinary text: split into several pieces, decoded back verbatim
    answer = '<think>t</think>\n<answer>{"query": "bone cells"}</answer>'
    ids = tok(answer).input_ids
    assert tok.decode(ids) == answer
    assert all(tok.convert_ids_to_tokens(i) not in ("<think>", "<answer>") for i in ids)
    assert tok.convert_tokens_to_ids("<|im_start|>") in tok(text).input_ids


def test_tiny_model_cache_reuses_folder(tmp_path):
    path = tiny_model_path(tmp_path, seed=3)
    assert path.name == f"tiny-qwen2-v{VERSION}-seed3"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path(tmp_path, seed=3) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
