"""Writes the Search-R1-shaped fixtures in this folder (run from the repository root:
``python tests/data/search_r1/make_fixture.py``).

Written from the row format Search-R1's data scripts produce (``scripts/data_process/nq_search.py``
and ``qa_search_train_merge.py`` at PeterGriffinJin/Search-R1 a14dc3a): FlashRAG's columns
(``id``, ``question`` with a ``?`` appended when missing, ``golden_answers``) plus
``data_source`` (the bare set name), ``prompt`` (one user message: Search-R1's ``base`` template
ending in ``Question: <question>\\n``), ``ability`` ``fact-reasoning``, ``reward_model`` =
``{"style": "rule", "ground_truth": {"target": golden_answers}}`` and ``extra_info`` =
``{"split", "index"}``, saved with ``datasets.Dataset.to_parquet`` as Search-R1 does. The
questions and answers are real: NQ-open dev and R1-Searcher's HotpotQA / Bamboogle subsets (the
copies bundled in ``deepretrieval/bundled``; licenses in README.md here).
"""
import gzip
import json
from pathlib import Path

import datasets

HERE = Path(__file__).parent
BUNDLED = HERE.parents[2] / "deepretrieval" / "bundled"

# Search-R1's `base` template (a fact about its data: the text its models were trained on)
TEMPLATE = ("Answer the given question. You must conduct reasoning inside <think> and </think> first "
            "every time you get new information. After reasoning, if you find you lack some "
            "knowledge, you can call a search engine by <search> query </search> and it will return "
            "the top searched results between <information> and </information>. You can search as "
            "many times as your want. If you find no further external knowledge needed, you can "
            "directly provide the answer inside <answer> and </answer>, without detailed "
            "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n")


def _jsonl(path, n):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def _row(data_source, split, idx, flashrag_id, question, answers):
    question = question.strip()
    if question[-1] != "?":
        question += "?"
    return {"id": flashrag_id, "question": question, "golden_answers": answers,
            "data_source": data_source,
            "prompt": [{"role": "user", "content": TEMPLATE.format(question=question)}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
            "extra_info": {"split": split, "index": idx}}


def main():
    nq = _jsonl(BUNDLED / "nq_open" / "NQ-open.dev.jsonl.gz", 6)
    hotpot = _jsonl(BUNDLED / "multihop_qa" / "hotpotqa_500.jsonl.gz", 4)
    bamboogle = _jsonl(BUNDLED / "multihop_qa" / "bamboogle.jsonl.gz", 2)
    # nq_search.py: one set, its test split
    test = [_row("nq", "test", i, f"test_{i}", q["question"], q["answer"]) for i, q in enumerate(nq)]
    datasets.Dataset.from_list(test).to_parquet(str(HERE / "nq_test.parquet"))
    # qa_search_train_merge.py: several sets concatenated; FlashRAG ids and indexes restart per set
    merged = ([_row("nq", "train", i, f"train_{i}", q["question"], q["answer"]) for i, q in enumerate(nq[:3])]
              + [_row("hotpotqa", "train", i, f"train_{i}", q["question"], [q["answer"]])
                 for i, q in enumerate(hotpot)]
              + [_row("bamboogle", "train", i, f"train_{i}", q["question"], [q["answer"]])
                 for i, q in enumerate(bamboogle)])
    datasets.Dataset.from_list(merged).to_parquet(str(HERE / "merged_train.parquet"))


if __name__ == "__main__":
    main()
