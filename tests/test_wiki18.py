"""Search-R1's wiki-18 corpus format → BEIR corpus (what `deepretrieval index` reads)."""
from __future__ import annotations

import gzip
import json

import pytest

from deepretrieval.core.beir_files import FormatError, load_corpus
from deepretrieval.data.wiki18 import split_contents, to_beir
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.service.app import ServerThread, create_app

# the first lines of wiki-18.jsonl have this shape (id, then the quoted title and the passage)
LINES = [{"id": "1", "contents": '"Aaron"\nAaron ( or ; "Ahärôn") is a prophet, high priest, '
                                 'and the brother of Moses.'},
         {"id": "2", "contents": '"Aaron"\nAccording to the Book of Exodus, Aaron first '
                                 'functioned as Moses\' assistant.'},
         {"id": "3", "contents": '"Zebra"\nZebras are African equines.\nSecond line.'}]


def test_split_contents():
    assert split_contents('"Aaron"\nAaron is a prophet.') == ("Aaron", "Aaron is a prophet.")
    assert split_contents('No quotes\ntext') == ("No quotes", "text")
    assert split_contents('"Quoted "inner" title"\na\nb') == ('Quoted "inner" title', "a\nb")


def test_to_beir_round_trip_through_the_service(tmp_path):
    src = tmp_path / "wiki-18.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(x) + "\n" for x in LINES))
    dst = tmp_path / "wiki18" / "corpus.jsonl.gz"
    assert to_beir(src, dst) == 3
    docs = list(load_corpus(dst))
    assert docs[0] == {"_id": "1", "title": "Aaron",
                       "text": 'Aaron ( or ; "Ahärôn") is a prophet, high priest, and the brother '
                               'of Moses.'}
    index = BM25Index.build(docs, name="wiki18", show_progress=False)
    import requests
    with ServerThread(create_app({"wiki18": index})) as srv:
        result = requests.post(srv.url + "/retrieve", timeout=30, json={
            "queries": ["zebras equines"], "topk": 1, "return_scores": False}).json()["result"]
    # Search-R1's contents come back exactly as they were in wiki-18.jsonl (url: the id, for
    # ASearcher's client)
    assert result == [[{"id": "3", "contents": LINES[2]["contents"], "url": "3"}]]


def test_bad_lines_name_file_and_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(LINES[0]) + "\n" + json.dumps({"id": "x", "text": "t"}) + "\n")
    with pytest.raises(FormatError, match=r"bad.jsonl:2: expected"):
        to_beir(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]
