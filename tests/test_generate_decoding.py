"""Generation: chat template + prefill, stops on decoded text, pinned decoding, seeded sampling."""
import json
import shutil

import pytest

from deepretrieval.generation.decoding import Decoding, Prompt, StopRule, apply_stops, stop_rules
from deepretrieval.generation.factory import make_generator
from deepretrieval.generation.local import TransformersGenerator, vllm_available
from deepretrieval.catalog import get_task

TASK = get_task("scifact_no_reason")
CLAIMS = ["Bone density falls with age.", "Statins lower cholesterol.", "p53 regulates apoptosis."]


def prompts(task=TASK):
    return [Prompt.of(task.messages(query=c), task.prefill) for c in CLAIMS]


def test_stop_rules_and_apply_stops():
    assert stop_rules("") == (StopRule("</answer>"),)
    assert stop_rules('<answer>{"query": "') == (StopRule('"}', "</answer>"), StopRule("</answer>"))
    assert stop_rules("<think>") == (StopRule("</answer>"),)
    rules = stop_rules('<answer>{"query": "')
    assert apply_stops('bone loss"}</answer> trailing', rules) == ('bone loss"}</answer>', True)
    assert apply_stops('bone loss"} and more', rules) == ('bone loss"}</answer>', True)
    assert apply_stops("never closed", rules) == ("never closed", False)
    # the earliest stop wins whatever the rule order
    assert apply_stops('x</answer> y"}', rules) == ("x</answer>", True)


def test_prompt_is_the_chat_template_plus_prefill(gen):
    p = prompts()[0]
    text = gen.render(p)
    expected = gen.tokenizer.apply_chat_template(list(p.messages), tokenize=False, add_generation_prompt=True)
    assert text == expected + '<answer>{"query": "'
    assert text.count("<|im_start|>") == 3 and text.endswith('<|im_start|>assistant\n<answer>{"query": "')


def test_decoding_validation():
    with pytest.raises(ValueError, match="sampling"):
        Decoding(n=2)
    with pytest.raises(ValueError, match="temperature"):
        Decoding(greedy=False, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Decoding(max_new_tokens=0)


def test_greedy_is_deterministic_and_batch_size_independent_of_order(gen):
    d = Decoding(max_new_tokens=12)
    a = gen.generate(prompts(), d, batch_size=3)
    b = gen.generate(prompts(), d, batch_size=3)
    assert a == b and len(a) == 3 and all(len(x) == 1 for x in a)


@pytest.mark.slow
def test_sampling_is_seeded(gen):
    d = Decoding(max_new_tokens=12, greedy=False, temperature=1.0, seed=3, n=3)
    a = gen.generate(prompts(), d)
    assert a == gen.generate(prompts(), d)
    assert a != gen.generate(prompts(), Decoding(**{**d.__dict__, "seed": 4}))
    assert all(len(x) == 3 for x in a) and len({t for x in a for t in x}) > 3


def test_stop_on_decoded_text(gen):
    """Pick a string the model really writes mid-way; generation must end right after it
    (the criterion sees decoded text, whatever the token boundaries)."""
    d = Decoding(max_new_tokens=24, greedy=False, temperature=1.0, seed=11)
    free = gen.generate(prompts()[:1], d, batch_size=1)[0][0]
    stop = free[8:11]
    assert len(free) > 14 and stop.strip()
    cut = gen.generate(prompts()[:1], Decoding(**{**d.__dict__, "stops": (StopRule(stop, "</answer>"),)}),
                       batch_size=1)[0][0]
    assert cut == free[: free.index(stop) + len(stop)] + "</answer>"
    # the model did stop early: fewer tokens than the free run
    tok = gen.tokenizer
    assert len(tok(cut[: -len("</answer>")]).input_ids) < len(tok(free).input_ids)


def test_checkpoint_sampling_defaults_do_not_leak(tiny, gen, tmp_path):
    """A checkpoint shipping sampling defaults decodes exactly like a clean one (pinned decoding)."""
    noisy = tmp_path / "noisy"
    shutil.copytree(tiny, noisy)
    cfg = json.loads((noisy / "generation_config.json").read_text())
    cfg.update(do_sample=True, temperature=3.0, top_k=5, top_p=0.5, repetition_penalty=1.8,
               no_repeat_ngram_size=2, min_new_tokens=12, suppress_tokens=list(range(30, 300)))
    (noisy / "generation_config.json").write_text(json.dumps(cfg))
    d = Decoding(max_new_tokens=12)
    assert TransformersGenerator(str(noisy)).generate(prompts(), d) == gen.generate(prompts(), d)


def test_make_generator_routes(tiny):
    if not vllm_available():  # CPU machine (or no vllm): transformers
        assert isinstance(make_generator(str(tiny)), TransformersGenerator)
    assert isinstance(make_generator(str(tiny), backend="transformers"), TransformersGenerator)
    api = make_generator("openai:gpt-x", base_url="http://127.0.0.1:9/v1", api_prefill="continue")
    assert api.name == "openai:gpt-x" and api.uses_prefill and api.model == "gpt-x"
    with pytest.raises(ValueError, match="backend"):
        make_generator(str(tiny), backend="nope")
    with pytest.raises(FileNotFoundError):
        make_generator("./no/such/model")


def test_loaded_model_object_generates_like_the_path(tiny, gen):
    """A model already in memory (e.g. right after training) goes through the same generator."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.train()
    loaded = make_generator(model, tokenizer=AutoTokenizer.from_pretrained(tiny))
    d = Decoding(max_new_tokens=10)
    assert loaded.generate(prompts(), d) == gen.generate(prompts(), d)
    assert model.training  # the caller's mode is restored
    with pytest.raises(ValueError, match="tokenizer"):
        make_generator(model)


def test_vllm_generator_maps_decoding(monkeypatch, tiny):
    """vLLM is not installable here (no GPU): check our side of the contract against a recording
    stand-in of the ``vllm`` module — prompts rendered with the chat template + prefill, pinned
    SamplingParams, stop strings kept in the output and completed like the transformers path."""
    import sys
    import types

    from transformers import AutoTokenizer

    from deepretrieval.generation.local import VLLMGenerator
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            seen["params"] = kw

    class LLM:
        def __init__(self, **kw):
            seen["engine"] = kw

        def get_tokenizer(self):
            return AutoTokenizer.from_pretrained(tiny)

        def generate(self, texts, params, use_tqdm=False):
            seen["texts"] = texts
            out = types.SimpleNamespace
            return [out(outputs=[out(text='bone loss"}</answer>'), out(text='x"} more')]) for _ in texts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    gen = VLLMGenerator(str(tiny), max_model_len=1024)
    d = Decoding(max_new_tokens=20, greedy=False, temperature=0.7, seed=5, n=2,
                 stops=stop_rules(TASK.prefill))
    outs = gen.generate(prompts(), d, seed_offset=10)
    assert outs == [['bone loss"}</answer>', 'x"}</answer>']] * 3
    tok = gen.tokenizer  # token ids with no special tokens added (the rendered text has its own)
    assert tok.decode(seen["texts"][0]["prompt_token_ids"]).endswith('<|im_start|>assistant\n<answer>{"query": "')
    assert seen["texts"][0]["prompt_token_ids"] == tok(gen.render(prompts()[0]), add_special_tokens=False)["input_ids"]
    assert seen["params"] == {"n": 2, "max_tokens": 20, "temperature": 0.7, "top_p": 1.0, "seed": 15,
                              "stop": ['"}', "</answer>"], "include_stop_str_in_output": True}
    gen.generate(prompts(), Decoding(max_new_tokens=5))
    assert seen["params"]["temperature"] == 0.0 and seen["params"]["seed"] is None
    assert seen["engine"]["max_model_len"] == 1024
    raw = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nclaim\nAssistant: Let me think. \n<think>\n"
    gen.generate([Prompt.of([{"role": "user", "content": "claim"}], "<think>\n", raw)], Decoding(max_new_tokens=5))
    assert seen["texts"] == [{"prompt_token_ids": tok(raw, add_special_tokens=False)["input_ids"]}]
