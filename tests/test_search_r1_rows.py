"""Search-R1's and verl's rows as written (issue 23 item 2).

* verl's ``searchR1_<set>`` rows score exactly as verl 0.9.1's own ``search_r1_like_qa_em``
  (called here, installed with the ``[dev]`` extra) on well-formed completions;
* Search-R1's own rows (tests/data/search_r1, written from its data scripts' format) convert with
  ``deepretrieval convert --from search-r1 IN --out DIR`` and then score as Search-R1's
  ``compute_score_em`` rule scores the originals — written here from the rule: the reward manager
  decodes prompt + response, takes the last ``<answer>…</answer>`` when there are at least two (the
  prompt holds the example answer), SQuAD v1.1 exact match, 1 or 0;
* ``train`` / ``eval`` refuse unconverted Search-R1 rows and print the command.
"""
import re
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deepretrieval.cli import main
from deepretrieval.core import agent_protocol as P
from deepretrieval.data import search_r1
from deepretrieval.rewards import compute_score

DATA = Path(__file__).parent / "data" / "search_r1"
SETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
GOLD = ["Bono", "Paul David Hewson", "Washington, D.C.", "the Beatles", "1939-1945", "Henry's"]


# ---- the peers' rules, written from their definitions ------------------------------------------

def squad_normalise(text):
    text = text.lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def search_r1_em(prompt, response, golds):
    """Search-R1's compute_score_em on what its reward manager decodes (prompt + response)."""
    answers = re.findall(r"<answer>(.*?)</answer>", prompt + response, re.DOTALL)
    if len(answers) <= 1:
        return 0.0
    last = squad_normalise(answers[-1].strip())
    return 1.0 if any(last == squad_normalise(g) for g in golds) else 0.0


# Well-formed completions: an answer, possibly after searches whose results hold no answer tags.
# (Answers inside injected blocks, and answer spam, are the documented differences below.)
SEARCHED = ("<think>I need to look this up.</think><search> U2 lead singer </search>"
            + P.information('Doc 1: "U2" U2 are an Irish rock band. Doc 2: "Bono" Paul Hewson, known as Bono.')
            + "<think>Doc 2 says it.</think>")
COMPLETIONS = [
    "<answer>Bono</answer>",
    "<answer> bono </answer>",
    "<answer>BONO.</answer>",
    "<think>easy</think><answer>Paul David Hewson</answer>",
    SEARCHED + "<answer>Bono</answer>",
    SEARCHED + "<answer>Paul Hewson</answer>",
    "<answer>Washington DC</answer>",
    "<answer>washington d c</answer>",
    "<answer>Beatles</answer>",
    "<answer>A Beatles</answer>",
    "<answer>Henrys</answer>",
    "<answer>1939-1945</answer>",
    "<answer>1939–1945</answer>",                  # en dash: not ASCII punctuation → 0 everywhere
    "<answer>“Bono”</answer>",                     # Unicode quotes → 0 everywhere (SQuAD)
    "<answer>Bono\u0301</answer>",                  # a combining accent: kept by SQuAD → 0
    "<answer>U2</answer>",
    "<answer>Bono</answer> then <answer>U2</answer>",   # several: the last one
    "<answer>U2</answer> then <answer>Bono</answer>",
    "<answer></answer>",
    "<answer>Bono</answer><answer>  </answer>",    # the last answer is empty: 0 everywhere
    "Bono",
    "<answer>Bono",                                # unclosed
    "<ANSWER>Bono</ANSWER>",
    "The answer is Bono.",
    SEARCHED,                                      # searched, never answered
    "<answer>It is Bono, the singer</answer>",
    "<answer>Bono</answer><|im_end|>",
]


def _verl_compute_score():
    verl_em = pytest.importorskip("verl.utils.reward_score.search_r1_like_qa_em")
    return verl_em.compute_score


@pytest.mark.parametrize("data_source", [f"searchR1_{s}" for s in SETS])
def test_verl_rows_score_as_verls_own_scorer(data_source):
    verl_score = _verl_compute_score()
    gt = {"target": GOLD}
    for completion in COMPLETIONS:
        ours = compute_score(data_source, completion, gt, {"split": "train", "index": 0})
        assert ours["score"] == float(verl_score(completion, gt)), (data_source, completion)


def test_answer_spam_is_verls_rule_as_an_option():
    verl_score = _verl_compute_score()
    gt = {"target": ["Bono"]}
    spam = "<answer>U2</answer>" * 11 + "<answer>Bono</answer>"
    assert verl_score(spam, gt) == 0.25
    assert compute_score("searchR1_nq", spam, gt)["score"] == 1.0            # our default: EM
    out = compute_score("searchR1_nq", spam, gt, table="agent_em_verl")
    assert out["score"] == 0.25 and out["answer_spam"] == 1.0
    ten = "<answer>U2</answer>" * 9 + "<answer>Bono</answer>"
    assert verl_score(ten, gt) == compute_score("searchR1_nq", ten, gt, table="agent_em_verl")["score"] == 1.0
    for completion in COMPLETIONS:  # on everything else the option is verl's scorer too
        assert (compute_score("searchR1_hotpotqa", completion, {"target": GOLD}, table="agent_em_verl")["score"]
                == verl_score(completion, {"target": GOLD}))
    with pytest.raises(ValueError, match="not a table of the agentic family"):
        compute_score("searchR1_nq", spam, gt, table="agent_nope")
    with pytest.raises(ValueError, match="scored by the paper profile"):
        compute_score("nq_serini", spam, gt, table="agent_em_verl")


def test_documented_differences_from_search_r1_and_verl():
    """docs/agentic.md lists these side by side: answers inside injected blocks never score."""
    verl_score = _verl_compute_score()
    gt = {"target": ["Bono"]}
    for completion, peers in [
        ("<search>q</search>" + P.information("Doc 1: <answer>Bono</answer>"), 1),
        ("<search>q</search>" + P.tool_response("<answer>Bono</answer>"), 1),
        ("<answer>Bono</answer><search>q</search>" + P.information("<answer>U2</answer>"), 0),
        ("<information>unclosed <answer>Bono</answer>", 1),
    ]:
        assert verl_score(completion, gt) == peers
        assert compute_score("searchR1_nq", completion, gt)["score"] == 1 - peers


# ---- Search-R1's own rows --------------------------------------------------------------------

def _convert(tmp_path, name):
    out = tmp_path / "converted"
    assert main(["convert", "--from", "search-r1", str(DATA / name), "--out", str(out)]) == 0
    return pq.read_table(out / name).to_pylist()


def test_convert_search_r1_rows(tmp_path, capsys):
    original = pq.read_table(DATA / "merged_train.parquet").to_pylist()
    rows = _convert(tmp_path, "merged_train.parquet")
    printed = capsys.readouterr().out
    assert "converted 9 rows" in printed and "agent_hotpotqa (4)" in printed
    assert [r["data_source"] for r in rows] == [f"agent_{r['data_source']}" for r in original]
    assert len({r["extra_info"]["query_id"] for r in rows}) == len(rows)  # ids restart per set
    for row, src in zip(rows, original):
        info = row["extra_info"]
        assert info["question"] == info["query"] == src["question"]
        assert row["reward_model"]["ground_truth"]["target"] == src["golden_answers"]
        assert info["split"] == "train" and info["index"] == src["extra_info"]["index"]
        assert info["query_id"] == f"{src['data_source']}/{src['id']}"
        assert info["search_index"] == search_r1.DEFAULT_INDEX
        assert row["agent_name"] == "deepretrieval_agent"
        assert src["question"] in row["prompt"][-1]["content"]
        assert row["prompt"] == P.messages(src["question"], "tags")
    # the question comes from the prompt when FlashRAG's columns were dropped
    bare = [{k: v for k, v in r.items() if k not in ("id", "question", "golden_answers")} for r in original]
    again = search_r1.convert_rows(bare, "wiki18")
    assert [r["extra_info"]["question"] for r in again] == [r["question"] for r in original]


def test_converted_rows_score_as_search_r1_scores_the_originals(tmp_path):
    original = pq.read_table(DATA / "nq_test.parquet").to_pylist()
    rows = _convert(tmp_path, "nq_test.parquet")
    assert {r["data_source"] for r in rows} == {"agent_nq"}
    checked = 0
    for src, row in zip(original, rows):
        golds = src["reward_model"]["ground_truth"]["target"]
        prompt = src["prompt"][0]["content"]
        templates = [c.replace("Bono", golds[0]).replace("U2", "not " + golds[-1]) for c in COMPLETIONS]
        for response in templates:
            expected = search_r1_em(prompt, response, golds)
            got = compute_score(row["data_source"], response, row["reward_model"]["ground_truth"],
                                row["extra_info"])["score"]
            assert got == expected, (response, golds)
            checked += 1
    assert checked == len(original) * len(COMPLETIONS)


def test_convert_errors(tmp_path, capsys):
    assert main(["convert", "--from", "search-r1", str(tmp_path / "nope.parquet"), "--out", str(tmp_path)]) == 2
    assert "error: no such file" in capsys.readouterr().err
    bad = [dict(r, data_source="my_set") for r in pq.read_table(DATA / "nq_test.parquet").to_pylist()]
    with pytest.raises(ValueError, match="row 0: data_source 'my_set' is not one of Search-R1's sets"):
        search_r1.convert_rows(bad)
    assert main(["convert", "--from", "search-r1", str(DATA / "nq_test.parquet"), "--out",
                 str(tmp_path), "--keep-data-source"]) == 2
    assert "--keep-data-source is for --from deepretrieval" in capsys.readouterr().err


def _search_r1_folder(tmp_path):
    folder = tmp_path / "search_r1_data"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.parquet").write_bytes((DATA / "nq_test.parquet").read_bytes())
    return folder


@pytest.mark.parametrize("argv", [
    ["train", "--engine", "trl", "--task", "agent_nq", "--data", "{data}", "--out", "{out}", "--dry-run"],
    ["train", "--engine", "trl", "--task", "nq", "--data", "{data}", "--out", "{out}", "--dry-run"],
    ["eval", "--rows", "{data}/test.parquet", "--model", "none", "--out", "{out}"],
])
def test_train_and_eval_refuse_unconverted_rows(tmp_path, capsys, argv):
    data = _search_r1_folder(tmp_path)
    argv = [a.format(data=data, out=tmp_path / "run") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Search-R1's own rows" in err and "Traceback" not in err
    assert "deepretrieval convert --from search-r1" in err


def test_verl_rows_are_refused_by_the_tag_protocol_loop():
    """verl's preprocessed rows (tool_agent, <tool_call> prompt) do not run silently as the tag
    protocol in our episode runner (eval / TRL / ExSearch)."""
    from deepretrieval.agent.runner import episodes_from_rows
    from deepretrieval.catalog import bundled_rows

    (row,) = bundled_rows("agent_closedworld", "test")[:1]
    verl_row = dict(row, data_source="searchR1_nq", agent_name="tool_agent",
                    prompt=[{"role": "system", "content": "Call the tool inside <tool_call></tool_call>."},
                            {"role": "user", "content": "Question: capital of Goudemar?"}])
    with pytest.raises(ValueError, match="written for tool calls"):
        episodes_from_rows([verl_row])
    assert len(episodes_from_rows([row])) == 1  # our tag rows run
