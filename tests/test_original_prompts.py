"""Original prompts kept: rows of an original DeepRetrieval parquet file carry their raw prompt
string verbatim, local generators feed it to the model as it is (no chat template, as the original
trainer did), and the completion is scored the same way in both profiles.

The rows are real: ``tests/data/original_rows/`` (the original's preprocessing output on real
SciFact, NQ-open and TrialMind-SLR inputs; see its README)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepretrieval.catalog import bundled_rows, get_task, read_rows, row_prefill
from deepretrieval.cli import main
from deepretrieval.core.beir_files import load_corpus
from deepretrieval.core.bundled import collection_dir
from deepretrieval.data.original import convert_file, original_prompt
from deepretrieval.evaluation.single_shot import (
    evaluate_model,
    is_original_checkpoint,
    resolve_prompt_format,
)
from deepretrieval.generation.api import OpenAIChatGenerator
from deepretrieval.generation.decoding import Decoding, Prompt
from deepretrieval.rewards import compute_score

ROWS = Path(__file__).resolve().parent / "data" / "original_rows" / "rows.jsonl"
RELEASED = "DeepRetrieval/DeepRetrieval-SciFact-3B"  # a released checkpoint's hub id (never loaded)


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines()]


# one parquet file per original file the rows come from (tests/data/original_rows/README.md)
FILES = {"scifact": slice(0, 3), "scifact_no_reason": slice(3, 5), "nq_serini": slice(5, 8), "pubmed": slice(8, 10)}


@pytest.fixture
def original_files(tmp_path):
    rows, paths = fixture_rows(), {}
    for name, part in FILES.items():
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[part]), paths[name])
    return paths


def read_all(paths) -> list[dict]:
    return [row for path in paths.values() for row in read_rows(path)]


def test_converted_rows_keep_the_raw_prompt_verbatim(original_files, tmp_path):
    raws = [r["prompt"][0]["content"] for r in fixture_rows()]
    assert all(raw.startswith("<|im_start|>system\n") for raw in raws)
    rows = read_all(original_files)
    assert [r["data_source"] for r in rows] == ["scifact"] * 5 + ["nq"] * 3 + ["pubmed"] * 2
    assert [original_prompt(r) for r in rows] == raws
    # the prefill the scorer puts back is the end of the raw prompt, i.e. what the model continues
    assert [r["extra_info"]["prefill"] for r in rows] == ["<think>\n"] * 3 + ["<answer>\n"] * 2 + ["<think>\n"] * 5
    assert all(raw.endswith(r["extra_info"]["prefill"]) for raw, r in zip(raws, rows))
    # the chat messages are ours: no special tokens, no inline assistant turn
    for r in rows:
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert not any("<|im_" in m["content"] or "\nAssistant:" in m["content"] for m in r["prompt"])
    assert rows[8]["extra_info"]["assistant_prefix"] == "Assistant: Let me solve this step by step. \n<think>\n"
    # a file written by `deepretrieval convert` keeps them, and reads back unchanged
    out = tmp_path / "ours.parquet"
    convert_file(original_files["pubmed"], out, get_task)
    again = read_rows(out)
    assert [original_prompt(r) for r in again] == raws[8:]
    # our own rows carry none
    assert original_prompt(bundled_rows("scifact", "test")[0]) is None


class Scripted:
    """A generator that records the prompts it gets and answers with one fixed completion."""

    uses_prefill = True
    name = "scripted"

    def __init__(self, completion: str):
        self.completion, self.seen = completion, []

    def generate(self, prompts, decoding, **kw):
        self.seen += list(prompts)
        return [[self.completion] * decoding.n for _ in prompts]


def _title(doc_id: str) -> str:
    for doc in load_corpus(collection_dir("scifact")):
        if str(doc["_id"]) == doc_id:
            return doc["title"]
    raise AssertionError(doc_id)


def test_eval_generates_from_the_original_prompt_and_scores_like_the_reward(original_files, scifact_index):
    rows = read_rows(original_files["scifact"])
    title = _title(rows[0]["reward_model"]["ground_truth"]["target"][0])
    completion = f"The claim names the material.\n</think>\n<answer>{json.dumps({'query': title})}</answer>"
    gen = Scripted(completion)
    report = evaluate_model(gen, rows, prompt_format="original", baseline=False, plot=False, progress=False)
    assert report["prompt_format"] == "original" and report["prefill_used"] is True
    assert [p.raw for p in gen.seen] == [r["prompt"][0]["content"] for r in fixture_rows()[:3]]
    first = report["records"][0]
    assert first["format_ok"] and first["prefill"] == "<think>\n" and first["query"] == title
    expected = compute_score("scifact", completion, rows[0]["reward_model"]["ground_truth"], rows[0]["extra_info"])
    assert first["metrics"]["score"] == pytest.approx(expected["score"])
    assert first["metrics"]["score"] > 0.1  # the claim's own document is found

    # the paper profile reads the same completion as the original reward read prompt + completion
    raw = original_prompt(rows[0])
    original_row = fixture_rows()[0]
    original_view = compute_score(original_row["data_source"], raw + completion,
                                  original_row["reward_model"]["ground_truth"], original_row["extra_info"])
    ours = compute_score("scifact", completion, rows[0]["reward_model"]["ground_truth"], rows[0]["extra_info"],
                         profile="paper")
    assert ours["score"] == pytest.approx(original_view["score"]) and ours["format_ok"]
    assert ours["score"] > 0.1  # the converted row keeps its one-id target (extra_info.original_target)

    # the same rows with our chat prompt: messages + prefill, no raw text
    gen2 = Scripted(completion)
    report2 = evaluate_model(gen2, rows, prompt_format="ours", baseline=False, plot=False, progress=False)
    assert report2["prompt_format"] == "ours" and all(p.raw is None for p in gen2.seen)
    assert [p.prefill for p in gen2.seen] == ["<think>\n"] * 3
    assert report2["records"][0]["metrics"]["score"] == pytest.approx(first["metrics"]["score"])


def test_local_model_gets_the_raw_prompt_as_is(original_files, gen):
    import torch
    from transformers import GenerationConfig

    row = read_rows(original_files["pubmed"])[0]  # PubMed: closed user turn, assistant turn opened
    raw = original_prompt(row)
    prompt = Prompt.of(row["prompt"], row_prefill(row), raw)
    assert gen.render(prompt) == raw
    assert gen.render(Prompt.of(row["prompt"], row_prefill(row))) != raw  # our chat template differs
    [[text]] = gen.generate([prompt], Decoding(max_new_tokens=8))
    tok = gen.tokenizer
    ids = tok(raw, return_tensors="pt", add_special_tokens=False)  # what the original trainer fed
    with torch.inference_mode():
        out = gen.model.generate(**ids, generation_config=GenerationConfig(
            max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    assert text == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_auto_picks_the_original_prompt_for_original_checkpoints(original_files, caplog):
    rows, ours = read_rows(original_files["scifact"]), bundled_rows("scifact", "test")[:2]
    assert is_original_checkpoint(RELEASED) and is_original_checkpoint("deepretrieval/DeepRetrieval-PubMed-3B")
    assert is_original_checkpoint("/ckpt/pubmed_search_3b/actor/global_step_900")  # original trainer layout
    for name in ("/ckpt/run/global_step_900/actor", "Qwen/Qwen2.5-3B-Instruct", "openai:gpt-4o", "runs/trl/final"):
        assert not is_original_checkpoint(name)
    assert resolve_prompt_format(RELEASED, rows) == "original"
    assert resolve_prompt_format("Qwen/Qwen2.5-3B-Instruct", rows) == "ours"
    assert resolve_prompt_format(RELEASED, rows, "ours") == "ours"
    assert resolve_prompt_format("Qwen/Qwen2.5-3B-Instruct", rows, "original") == "original"
    with caplog.at_level(logging.WARNING):
        assert resolve_prompt_format(RELEASED, ours) == "ours"
    assert "--rows" in caplog.text
    with pytest.raises(ValueError, match="2 of 2 rows carry no original prompt"):
        resolve_prompt_format(RELEASED, ours, "original")
    with pytest.raises(ValueError, match="chat API"):
        resolve_prompt_format("openai:gpt-4o", rows, "original")
    with pytest.raises(ValueError, match="known: auto, original, ours"):
        resolve_prompt_format(RELEASED, rows, "raw")


def test_chat_api_refuses_a_raw_prompt():
    gen = OpenAIChatGenerator("m", base_url="http://127.0.0.1:9/v1", use_cache=False)
    with pytest.raises(ValueError, match="raw"):
        gen.body(Prompt.of([{"role": "user", "content": "q"}], "", "<|im_start|>user\nq"), Decoding(), 0, 1)


def test_cli_original_prompt_on_rows_without_one_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", "--model", RELEASED, "--task", "scifact", "--limit", "2", "--prompt-format",
                 "original", "--out", str(tmp_path / "run"), "--no-plot"])
    err = capsys.readouterr().err
    assert code == 2 and "carry no original prompt" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_cli_eval_with_original_prompts(original_files, tmp_path, tiny, capsys, scifact_index):
    """`deepretrieval eval --rows ORIGINAL.parquet --prompt-format original` with a local model (what
    scripts/eval/*.sh run with ROWS, or with the original's file in place)."""
    out = tmp_path / "run"
    code = main(["eval", "--model", tiny, "--rows", str(original_files["scifact"]), "--prompt-format", "original",
                 "--max-new-tokens", "4", "--no-baseline", "--no-plot", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["prompt_format"] == "original" and run["task"] == "scifact"
    assert "prompt: original" in (out / "summary.md").read_text()
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["prefill"] == "<think>\n" for r in records)
    # the same folder with the other prompt format is another run: refused, not mixed
    assert main(["eval", "--model", tiny, "--rows", str(original_files["scifact"]), "--prompt-format", "ours",
                 "--max-new-tokens", "4", "--no-baseline", "--no-plot", "--out", str(out)]) == 2
    assert "prompt_format" in capsys.readouterr().err
