"""Fixtures shared by the test files.

* the session's index folder (``_index_dir``, autouse) and the built-in ``scifact_index``;
* SciFact's text: ``scifact_queries`` (id → text, every claim), ``scifact_claims`` (every claim, in
  file order), ``scifact_test_claims`` (the 300 test claims, in qrels order), ``scifact_corpus``
  (id → document);
* task rows: ``rows``, the bundled rows a module names with ``pytest.mark.rows(task, split,
  limit=..., where=...)`` (one fresh list per module);
* the tiny local model: ``tiny`` (its folder), ``tok`` (its tokenizer), ``gen`` (a
  ``TransformersGenerator`` on it), ``warm_tiny`` (a factory teaching it the answer-only format,
  for GRPO runs that need reward spread), ``one_torch_thread`` (torch on one thread for a module);
* ``pubmed_fake``: the loopback fake of NCBI E-utilities;
* ``bad_inputs``: malformed (and a few good) input files for the CLI's error tests.

Heavy modules (torch, transformers, the package itself) are imported inside the fixtures, so
collecting the suite stays cheap.
"""
import os
import types

import pytest

# Tests never touch the network or the user's home: indexes go to a per-session temp dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["DEEPRETRIEVAL_PROGRESS"] = "0"
# Ray clusters the tests start stay on 127.0.0.1 (Ray's single-node mode; read when ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session", autouse=True)
def _index_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("indexes")
    old = os.environ.get("DEEPRETRIEVAL_INDEX_DIR")
    os.environ["DEEPRETRIEVAL_INDEX_DIR"] = str(path)
    # live-engine cache (PubMed / CT.gov) also stays inside the session temp dir
    os.environ.setdefault("DEEPRETRIEVAL_CACHE", str(path / "live-cache.sqlite"))
    os.environ.pop("DEEPRETRIEVAL_SEARCH_URL", None)
    yield path
    if old is None:
        os.environ.pop("DEEPRETRIEVAL_INDEX_DIR", None)
    else:
        os.environ["DEEPRETRIEVAL_INDEX_DIR"] = old


@pytest.fixture(scope="session")
def scifact_index(_index_dir):
    from deepretrieval.catalog import open_index
    return open_index("scifact")


# --- SciFact text ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _scifact_queries():
    from deepretrieval.core.beir_files import load_queries
    from deepretrieval.core.bundled import collection_dir
    return types.MappingProxyType(load_queries(collection_dir("scifact")))


@pytest.fixture(scope="session")
def _scifact_test_ids():
    from deepretrieval.core.beir_files import load_qrels
    from deepretrieval.core.bundled import collection_dir
    return tuple(load_qrels(collection_dir("scifact"), "test"))


@pytest.fixture(scope="module")
def scifact_queries(_scifact_queries):
    """Every SciFact claim, id → text (a fresh dict per module)."""
    return dict(_scifact_queries)


@pytest.fixture(scope="module")
def scifact_claims(_scifact_queries):
    """Every SciFact claim's text, in the queries file's order."""
    return list(_scifact_queries.values())


@pytest.fixture(scope="module")
def scifact_test_claims(_scifact_queries, _scifact_test_ids):
    """The 300 SciFact test claims' texts, in the test qrels' order."""
    return [_scifact_queries[qid] for qid in _scifact_test_ids]


@pytest.fixture(scope="module")
def scifact_corpus():
    """SciFact's documents, id → {"_id", "title", "text"}."""
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    return {d["_id"]: d for d in load_corpus(collection_dir("scifact"))}


# --- task rows ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows(request):
    """The bundled rows the module names: ``pytestmark = pytest.mark.rows(task, split, limit=N,
    where=predicate)`` (``where`` filters before ``limit`` cuts)."""
    from deepretrieval.catalog import bundled_rows

    marker = request.node.get_closest_marker("rows")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: the rows fixture needs "
                                "pytest.mark.rows(task, split, limit=..., where=...) on the module")
    task, split = marker.args
    unknown = set(marker.kwargs) - {"limit", "where"}
    if unknown:
        raise pytest.UsageError(f"pytest.mark.rows: unknown {sorted(unknown)}; known: limit, where")
    out = bundled_rows(task, split)
    if marker.kwargs.get("where") is not None:
        out = [r for r in out if marker.kwargs["where"](r)]
    return out[:marker.kwargs.get("limit")]


# --- the tiny local model ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Folder of the tiny random Qwen2 chat model (seed 0), built once per session. Read-only:
    a test that writes a model writes it elsewhere."""
    from deepretrieval.testing.tiny_model import tiny_model_path
    return str(tiny_model_path(tmp_path_factory.getbasetemp() / "tiny-models"))


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def gen(tiny):
    from deepretrieval.generation.local import TransformersGenerator
    return TransformersGenerator(tiny)


@pytest.fixture(scope="module")
def one_torch_thread():
    """A 100k-parameter model gains nothing from threads; on a shared CPU they only contend."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def warm_tiny(tiny):
    """``warm_tiny(rows, folder)``: the tiny model taught, for 60 supervised steps, the answer-only
    recipe of the rows (after the prompt with its answer prefill, a few query words and the
    closing ``"}</answer>``), saved to ``folder``. Its samples then parse sometimes, so GRPO sees
    rewards that differ within a group (a random model is always wrong, every advantage is zero
    and nothing would move) — but only when the prompt really carries the prefill."""

    def make(rows, folder):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from deepretrieval.train.trl_engine import render_prompt

        tok = AutoTokenizer.from_pretrained(tiny)
        model = AutoModelForCausalLM.from_pretrained(tiny)
        torch.manual_seed(0)
        seqs = []
        for row in rows:  # target: the query's first words, then the closing of the prefilled answer
            target = " ".join(row["extra_info"]["query"].split()[:4]) + '"}</answer>' + tok.eos_token
            seqs.append((tok(render_prompt(tok, row), add_special_tokens=False)["input_ids"],
                         tok(target, add_special_tokens=False)["input_ids"]))
        width = max(len(p) + len(t) for p, t in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        labels = torch.full((len(seqs), width), -100)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (p, t) in enumerate(seqs):
            ids[i, :len(p) + len(t)] = torch.tensor(p + t)
            labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
            mask[i, :len(p) + len(t)] = 1
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(60):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        return folder

    return make


# --- loopback fakes and bad inputs -------------------------------------------------------------

@pytest.fixture(scope="module")
def pubmed_fake():
    from deepretrieval.testing.fake_engines import FakePubMed
    with FakePubMed() as fake:
        yield fake


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Bad (and a few good) inputs for the CLI's error tests, made once per module; no test writes
    to them."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepretrieval.catalog import bundled_rows
    from deepretrieval.data.rows import write_parquet

    tmp_path = tmp_path_factory.mktemp("inputs")
    f = {}
    f["plain"] = tmp_path / "plain.txt"
    f["plain"].write_text("not a database, not gzip, not parquet\n" * 20)
    f["empty"] = tmp_path / "empty.jsonl"
    f["empty"].write_text("")
    f["emptydir"] = tmp_path / "emptydir"
    f["emptydir"].mkdir()
    f["badgz"] = tmp_path / "corpus.jsonl.gz"
    f["badgz"].write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    for name, meta in {"listmeta": "[1, 2, 3]", "badmeta": "{not json", "typemeta": '{"type": "nope"}',
                       "nodbmeta": '{"type": "sqlite", "path": "/no/such/db.sqlite"}',
                       "notdbmeta": json.dumps({"type": "sqlite", "path": str(f["plain"])}),
                       "bm25meta": '{"type": "bm25", "name": "x"}',
                       "strmeta": '"scifact"', "nopathmeta": '{"type": "sqlite"}'}.items():
        f[name] = tmp_path / name
        f[name].mkdir()
        (f[name] / "meta.json").write_text(meta)
    f["badjson_corpus"] = tmp_path / "c.jsonl"
    f["badjson_corpus"].write_text('{"_id": "1", "text": "a"}\n{not json\n')
    f["list_corpus"] = tmp_path / "l.jsonl"
    f["list_corpus"].write_text('[1, 2]\n')
    f["noid_corpus"] = tmp_path / "n.jsonl"
    f["noid_corpus"].write_text('{"text": "no id here"}\n')
    f["corpus"] = tmp_path / "good.jsonl"
    f["corpus"].write_text('{"_id": "d1", "title": "t", "text": "heart attack risk"}\n'
                           '{"_id": "d2", "title": "u", "text": "aspirin and stroke"}\n')
    rows = bundled_rows("scifact", "test")[:3]
    f["rows"] = write_parquet(rows, tmp_path / "rows.parquet")
    data = f["rows"].read_bytes()
    f["truncated"] = tmp_path / "truncated.parquet"
    f["truncated"].write_bytes(data[: len(data) // 2])
    f["garbled"] = tmp_path / "garbled.parquet"
    f["garbled"].write_bytes(data[:4] + b"\x00" * (len(data) - 8) + data[-4:])
    f["nocols"] = write_parquet([{"a": 1}, {"a": 2}], tmp_path / "nocols.parquet")
    f["emptyrows"] = tmp_path / "emptyrows.parquet"
    pq.write_table(pa.table({"data_source": pa.array([], pa.string())}), f["emptyrows"])
    f["badrun"] = tmp_path / "badrun"
    f["badrun"].mkdir()
    (f["badrun"] / "run.json").write_text("{truncated")
    f["listrun"] = tmp_path / "listrun"
    f["listrun"].mkdir()
    (f["listrun"] / "run.json").write_text("[]")
    f["badjsonl"] = tmp_path / "export.jsonl"
    f["badjsonl"].write_text('{"engine": "pubmed"}\nnot json\n')
    return f
