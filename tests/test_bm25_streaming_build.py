"""The streaming BM25 build (format 2), its kernels, shards and the evidence option.

* the build's impacts are bm25s's ``lucene`` impacts bit for bit (SciFact, against bm25s itself);
* a build in many chunks over worker processes equals a one-chunk build (same files);
* an interrupted build resumes after its last complete chunk and ends equal;
* the build's peak memory is bounded by its setting, not by the corpus (subprocess, ru_maxrss);
* the pruned (MaxScore) kernel equals the exhaustive one exactly, ties included;
* shards built with global statistics merge into exactly one index's results;
* the ``answers`` option gives the evidence reward's first answer-bearing rank;
* format-1 indexes (bm25s files) still load and give the same results.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deepretrieval.core.beir_files import load_corpus
from deepretrieval.core.bundled import collection_dir
from deepretrieval.search import load_index_dir
from deepretrieval.search.answer_ranks import ANSWERS_HITS
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.bm25_build import build_index, tokenize_chunk

MATRIX = ("data", "indices", "indptr", "term_max", "block_max", "block_ptr")


@pytest.fixture(scope="module")
def scifact_docs():
    return list(load_corpus(collection_dir("scifact")))


def generated_docs(n: int, vocab: int = 300, seed: int = 0) -> list[dict]:
    """Zipfian pseudo-words (few distinct words: many exactly tied scores), some titles, some
    documents of stopwords only (bm25s's empty-document token), non-ASCII text."""
    rng = np.random.default_rng(seed)
    words = ["the", "of", "and", "a"] + [f"w{i}x" for i in range(vocab)] + ["café", "naïve"]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    docs = []
    for i in range(n):
        if i % 97 == 5:
            text = "the of and a"
        else:
            text = " ".join(words[j] for j in rng.choice(len(words), size=int(rng.integers(3, 40)), p=p))
        docs.append({"_id": f"d{i}", "title": f"Title {i % 7}" if i % 3 == 0 else "", "text": text})
    return docs


def same_index(a: Path, b: Path) -> None:
    for name in MATRIX:
        assert np.array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")), name
    assert json.loads((a / "vocab.json").read_text()) == json.loads((b / "vocab.json").read_text())
    for col in ("ids", "texts", "titles"):
        for ext in ("bin", "idx"):
            fa, fb = a / f"{col}.{ext}", b / f"{col}.{ext}"
            assert fa.exists() == fb.exists()
            if fa.exists():
                assert fa.read_bytes() == fb.read_bytes(), fa


# ---- exactness against bm25s -----------------------------------------------------------------

@pytest.mark.slow
def test_impacts_equal_bm25s_lucene_bit_for_bit(scifact_docs, tmp_path):
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenizer

    build_index(scifact_docs, tmp_path / "ours", name="s", show_progress=False)
    ours = BM25Index.load(tmp_path / "ours")
    texts = [f"{(d.get('title') or '').strip()} {(d.get('text') or '').strip()}".strip()
             for d in scifact_docs]
    tok = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en", splitter=r"(?u)\b\w\w+\b")
    ref = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    ref.index(tok.tokenize(texts, show_progress=False, return_as="tuple"), show_progress=False)
    s = ref.scores
    vocab = tok.get_vocab_dict()
    assert set(vocab) - {""} == set(ours.tokenizer.vocab) - {""}
    for stem, sid in vocab.items():
        a, z = s["indptr"][sid], s["indptr"][sid + 1]
        g = ours.tokenizer.vocab.get(stem)
        if g is None:
            assert a == z
            continue
        assert np.array_equal(s["data"][a:z], ours.data[ours.indptr[g]:ours.indptr[g + 1]]), stem
        assert np.array_equal(s["indices"][a:z], ours.indices[ours.indptr[g]:ours.indptr[g + 1]])


def test_tokenizer_equals_bm25s_on_hard_text():
    import Stemmer
    from bm25s.tokenization import Tokenizer

    texts = ["Ünïcödé ZZ zz CAFÉS l'été naïvement 3D x2 __init__ ΟΔΟΣ ὀδός İstanbul",
             "the and of", "", "a", "running RUNS ran runner's", "日本語のテキスト 中文", "ǅemal ß SS"]
    tok = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en", splitter=r"(?u)\b\w\w+\b")
    ref = tok.tokenize(texts, show_progress=False, return_as="tuple")
    inv = {i: s for s, i in ref.vocab.items()}
    post = tokenize_chunk(texts, __import__("bm25s").stopwords.STOPWORDS_EN, batch=3)
    for d, ids in enumerate(ref.ids):
        expected = {}
        for t in ids:
            expected[inv[t]] = expected.get(inv[t], 0) + 1
        mine = {post.stems[t]: int(f) for t, dd, f in zip(post.terms, post.docs, post.tfs) if dd == d}
        assert mine == expected, texts[d]
        assert post.lengths[d] == len(ids)


def test_chunk_postings_are_the_counts_sorted_by_term_then_document(monkeypatch):
    """tokenize_chunk's postings (counting sort by term, runs of a document counted): every
    (term, document) pair once with its count, sorted by term then document — also for the ""
    term of documents without tokens when words are stemmed to "" as well (a stemmer that
    does so for one word here)."""
    import re

    from bm25s.stopwords import STOPWORDS_EN

    from deepretrieval.search import bm25_build

    texts = [bm25_build.doc_text(d) for d in generated_docs(700)]
    assert sum(t.lower().split() and all(w in STOPWORDS_EN for w in t.lower().split())
               for t in texts) >= 5  # documents of stopwords only: the "" token
    monkeypatch.setattr(bm25_build, "_STEM_CACHE", {})
    monkeypatch.setattr(bm25_build, "_stem_fn", lambda stem: lambda w: "" if w == "w3x" else w)
    post = tokenize_chunk(texts, STOPWORDS_EN, batch=64)
    term = {stem: i for i, stem in enumerate(post.stems)}
    want = []
    for d, text in enumerate(texts):
        words = [w for w in re.findall(r"(?u)\b\w\w+\b", text.lower()) if w not in STOPWORDS_EN]
        counts: dict[int, int] = {}
        for w in words or [""]:
            t = term["" if w == "w3x" else w]
            counts[t] = counts.get(t, 0) + 1
        want += [(t, d, c) for t, c in counts.items()]
    want.sort()
    assert want == list(zip(post.terms.tolist(), post.docs.tolist(), post.tfs.tolist()))
    empty = term[""]
    assert len({d for t, d, _ in want if t == empty}) > 5 + 10  # both kinds under one term


# ---- chunks, workers, resume, memory ----------------------------------------------------------

def test_tokenize_chunk_equals_a_plain_reference_on_mixed_texts(scifact_docs):
    """ASCII texts go through the numba scan, the others through the regex: every document's
    term counts and length, and the order of the stems (first occurrence over the texts in
    order, whichever path a text took), equal a plain per-text reference — on SciFact (~1 in 4
    texts not ASCII), shuffled, and with 20,000 distinct words (the scan's table grows)."""
    import random
    import re
    from collections import Counter

    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    from deepretrieval.search import bm25_build

    rng = random.Random(0)
    sci = [bm25_build.doc_text(d, d.get("title")) for d in scifact_docs[:1500]]
    many = [" ".join(f"Q{rng.randrange(20_000)}_{'é' if k % 50 == 0 else 'e'}"
                     for _ in range(60)) for k in range(1000)]
    rng.shuffle(sci)
    texts = sci[:750] + many + sci[750:] + ["", "of the", "ZZ zz Zz __ a1 ______", "é"]
    assert 200 < sum(not t.isascii() for t in texts) < 1000
    stem = Stemmer.Stemmer("english").stemWord
    order: dict[str, int] = {}
    want = []
    for t in texts:
        toks = [stem(w) for w in re.findall(r"(?u)\b\w\w+\b", t.lower()) if w not in STOPWORDS_EN]
        for st in toks:
            order.setdefault(st, len(order))
        want.append(Counter(toks) if toks else Counter([None]))
    if any(None in c for c in want):
        order.setdefault("", len(order))
    post = tokenize_chunk(texts, STOPWORDS_EN, batch=97)
    assert len(post.stems) > 20_000
    assert post.stems == list(order)
    got = [Counter() for _ in texts]
    for t, d, f in zip(post.terms.tolist(), post.docs.tolist(), post.tfs.tolist()):
        got[d][post.stems[t] or None] = f
    assert got == want
    assert post.lengths.tolist() == [sum(c.values()) for c in want]


def test_merge_impact_kernel_equals_the_numpy_impacts():
    """The merge's numba kernel gives :func:`impacts`'s float32 values bit for bit, each term's
    largest impact and the maxima of its blocks of postings (terms with no posting included)."""
    from deepretrieval.search import bm25_build

    rng = np.random.default_rng(1)
    df = rng.integers(0, 400, size=300)
    df[::17] = 0
    ptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
    n = int(ptr[-1])
    dl = rng.integers(1, 3000, size=5000).astype(np.int32)
    docs = rng.integers(0, len(dl), size=n).astype(np.int32)
    tfs = rng.integers(1, 200, size=n).astype(np.int32)
    idf = rng.uniform(0.01, 12, size=len(df)).astype(np.float32)
    for k1, b in ((0.9, 0.4), (1.2, 0.75), (0.5, 1.0)):
        avgdl = float(np.float64(dl.astype(np.int64).sum()) / len(dl))
        want = bm25_build.impacts(tfs, dl[docs], np.repeat(idf, df), k1, b, avgdl)
        block = 7
        nblocks = (df + block - 1) // block
        scores = np.empty(n, np.float32)
        term_max = np.full(len(df), -1.0, np.float32)
        bmax = np.empty(int(nblocks.sum()), np.float32)
        nb = bm25_build._term_impacts()(tfs, docs, dl, idf, ptr, k1, b, avgdl, block, scores,
                                        term_max, bmax)
        assert nb == len(bmax)
        assert np.array_equal(scores.view(np.uint32), want.view(np.uint32))
        full = df > 0
        assert np.array_equal(term_max[full], np.maximum.reduceat(want, ptr[:-1][full]))
        assert (term_max[~full] == 0).all()
        starts = np.concatenate([np.arange(ptr[t], ptr[t + 1], block) for t in range(len(df))])
        assert np.array_equal(bmax, np.maximum.reduceat(want, starts))


@pytest.mark.slow
def test_chunked_build_in_workers_equals_one_chunk(scifact_docs, tmp_path):
    build_index(scifact_docs, tmp_path / "one", name="s", workers=0, show_progress=False,
                chunk_bytes=1 << 40)
    build_index(scifact_docs, tmp_path / "many", name="s", workers=2, show_progress=False,
                chunk_bytes=300_000, merge_postings=5_000)   # many chunks, many merge ranges
    same_index(tmp_path / "one", tmp_path / "many")
    docs = generated_docs(3000)
    build_index(docs, tmp_path / "g1", name="g", workers=0, show_progress=False, chunk_bytes=1 << 40)
    build_index(docs, tmp_path / "g2", name="g", workers=2, show_progress=False, chunk_bytes=5_000)
    same_index(tmp_path / "g1", tmp_path / "g2")
    index = BM25Index.load(tmp_path / "g2")
    assert index.titles is not None and index.titles[3] == "Title 3" and index.titles[1] == ""
    assert index.texts[0].startswith("Title 0 ") and index.doc_ids[2999] == "d2999"


@pytest.mark.slow
def test_interrupted_build_resumes_from_its_chunks(tmp_path):
    docs = generated_docs(3000, seed=3)
    build_index(docs, tmp_path / "whole", name="g", workers=0, show_progress=False,
                chunk_bytes=1 << 40)
    out = tmp_path / "resumed"
    assert build_index(docs, out, name="g", workers=2, show_progress=False, chunk_bytes=4_000,
                       stop_after_chunks=5) is None
    partial = out.with_name("resumed.partial")
    kept = sorted(p.name for p in (partial / "chunks").iterdir())
    assert 1 <= len(kept) <= 5 and not out.exists()
    seen = []
    real = tokenize_chunk

    def counting(texts, *a, **kw):
        seen.append(len(texts))
        return real(texts, *a, **kw)

    import deepretrieval.search.bm25_build as bb
    old, bb.tokenize_chunk = bb.tokenize_chunk, counting
    try:
        build_index(docs, out, name="g", workers=0, show_progress=False, chunk_bytes=4_000)
    finally:
        bb.tokenize_chunk = old
    assert sum(seen) < len(docs)               # the kept chunks were not tokenized again
    assert not partial.exists()
    whole, resumed = BM25Index.load(tmp_path / "whole"), BM25Index.load(out)
    queries = [d["text"][:40] for d in docs[::50]]
    for a, b in zip(whole.search(queries, 50), resumed.search(queries, 50)):
        assert (a.ids, a.scores) == (b.ids, b.scores)
    assert list(resumed.doc_ids) == [d["_id"] for d in docs]


def test_build_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        build_index([], tmp_path / "e", name="e", show_progress=False)
    with pytest.raises(ValueError, match="not unique: 'x'"):
        build_index([{"_id": "x", "text": "a b"}, {"_id": "y", "text": "c"}, {"_id": "x", "text": "d"}],
                    tmp_path / "d", name="d", show_progress=False)
    with pytest.raises(ValueError, match="unknown stopword set"):
        build_index([{"_id": "x", "text": "a"}], tmp_path / "s", name="s", stopwords="xx",
                    show_progress=False)


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_setting_not_the_corpus(tmp_path):
    """Two builds with the same 400 MB budget, of 20k and 100k documents of 100 words (5x the
    text; ~2 vs ~10 chunks of ~5.5 MB): the main process's and the workers' peaks stay under the
    budget, and the larger corpus adds far less than its extra text."""
    script = textwrap.dedent("""
        import json, resource, sys
        import numpy as np
        from deepretrieval.search.bm25_build import build_index
        n, out = int(sys.argv[1]), sys.argv[2]
        rng = np.random.default_rng(0)
        words = np.array([f"w{i}" for i in range(20000)])
        p = 1.0 / np.arange(1, 20001); p /= p.sum()
        def docs():
            for lo in range(0, n, 5000):
                toks = rng.choice(20000, size=(5000, 100), p=p)
                for j in range(5000):
                    yield {"_id": str(lo + j), "text": " ".join(words[toks[j]])}
        build_index(docs(), out, name="m", memory_mb=400, workers=2, show_progress=False)
        # this process's own peak (VmHWM: ru_maxrss would carry the forking parent's, e.g. a
        # grown pytest process, across exec)
        hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
                   if line.startswith("VmHWM:"))
        print(json.dumps({"self": hwm / 1024,
                          "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
    """)
    peaks = {}
    for n in (20_000, 100_000):
        proc = subprocess.run([sys.executable, "-c", script, str(n), str(tmp_path / f"m{n}")],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        text_mb = (tmp_path / f"m{n}" / "texts.bin").stat().st_size / 2**20
        peaks[n]["text_mb"] = text_mb
    print(f"peak RSS MB (400 MB budget): {peaks}")
    small, big = peaks[20_000], peaks[100_000]
    assert big["text_mb"] > 4 * small["text_mb"]
    for p in (small, big):
        assert p["self"] < 400 and p["workers"] < 400, peaks
    assert big["self"] - small["self"] < 0.5 * (big["text_mb"] - small["text_mb"]) + 40, peaks


# ---- kernels ---------------------------------------------------------------------------------

def test_pruned_kernel_equals_exhaustive_on_scifact(scifact_index, scifact_claims):
    index = scifact_index
    queries = scifact_claims + ["cancer cancer cell cell cell", "protein " * 50, "the of zzzqqq"]
    for k in (1, 3, 10, 100):
        ex = index.search(queries, k, kernel="exhaustive")
        pr = index.search(queries, k, kernel="pruned")
        assert [(r.ids, r.scores) for r in ex] == [(r.ids, r.scores) for r in pr], k


def test_pruned_kernel_equals_exhaustive_with_ties_and_document_order(tmp_path):
    docs = generated_docs(4000, vocab=60, seed=5)
    build_index(docs, tmp_path / "t", name="t", show_progress=False)
    index = BM25Index.load(tmp_path / "t")
    rng = np.random.default_rng(1)
    queries = [" ".join(f"w{j}x" for j in rng.integers(0, 60, size=int(rng.integers(1, 6))))
               for _ in range(300)] + ["w1x w1x w2x", "café", "the"]
    position = {d["_id"]: i for i, d in enumerate(docs)}
    tied = 0
    for k in (1, 2, 5, 10, 50):
        ex = index.search(queries, k, kernel="exhaustive")
        pr = index.search(queries, k, kernel="pruned")
        for a, b in zip(ex, pr):
            assert (a.ids, a.scores) == (b.ids, b.scores)
            for j in range(1, len(a.ids)):
                assert a.scores[j - 1] >= a.scores[j]
                if a.scores[j - 1] == a.scores[j]:
                    tied += 1
                    assert position[a.ids[j - 1]] < position[a.ids[j]]
    assert tied > 100  # the corpus really has ties
    # which tied documents survive at the k-th place: the lowest-numbered ones
    full = index.search(queries, 4000, kernel="exhaustive")
    for q, top, all_ in zip(queries, index.search(queries, 5, kernel="pruned"), full):
        assert top.ids == all_.ids[:5] and top.scores == all_.scores[:5], q


def test_kernel_choice_is_automatic_and_overridable(scifact_index, monkeypatch):
    assert scifact_index.kernel_for(10) == "exhaustive"        # 5,183 docs: small collection
    monkeypatch.setattr("deepretrieval.search.bm25.PRUNE_MIN_DOCS", 1000)
    monkeypatch.setattr("deepretrieval.search.bm25.PRUNE_DOCS_PER_K", 10)
    assert scifact_index.kernel_for(10) == "pruned" and scifact_index.kernel_for(518) == "pruned"
    assert scifact_index.kernel_for(519) == "exhaustive"       # k above num_docs / 10
    assert scifact_index.kernel_for(3000) == "exhaustive"
    monkeypatch.setenv("DEEPRETRIEVAL_BM25_TOPK", "exhaustive")
    assert scifact_index.kernel_for(10) == "exhaustive"
    monkeypatch.setenv("DEEPRETRIEVAL_BM25_TOPK", "pruned")
    assert scifact_index.kernel_for(3000) == "pruned"
    monkeypatch.setenv("DEEPRETRIEVAL_BM25_TOPK", "fast")
    with pytest.raises(ValueError, match="DEEPRETRIEVAL_BM25_TOPK"):
        scifact_index.search(["x"], 3)


# ---- shards ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_shards_merge_into_exactly_one_index(scifact_docs, scifact_claims, tmp_path):
    build_index(scifact_docs, tmp_path / "one", name="one", show_progress=False)
    build_index(scifact_docs, tmp_path / "three", name="three", shards=3, workers=2,
                show_progress=False, chunk_bytes=2_000_000, merge_postings=20_000)
    one, three = load_index_dir(tmp_path / "one"), load_index_dir(tmp_path / "three")
    meta = json.loads((tmp_path / "three" / "meta.json").read_text())
    assert meta["type"] == "sharded" and len(meta["shards"]) == 3
    assert three.info()["shards"] == 3
    for k in (3, 10, 1000):
        a = one.search(scifact_claims, k, return_text=(k == 3))
        b = three.search(scifact_claims, k, return_text=(k == 3))
        assert [(r.ids, r.scores) for r in a] == [(r.ids, r.scores) for r in b], k
        if k == 3:
            assert [r.texts for r in a] == [r.texts for r in b]
    # the evidence option: each shard ranks its own hits, the merged rank is one index's
    claims = scifact_claims[:50]
    for k in (20, 500, 3000):
        for ans in (["cell", "protein"], ["T cells"], ["2"], ["β-cell"], ["zzqx"], ["in vivo"]):
            a = one.search(claims, k, options={"answers": ans})
            b = three.search(claims, k, options={"answers": ans})
            assert [(r.info, r.ids, r.scores) for r in a] == [(r.info, r.ids, r.scores) for r in b]
            assert all(len(r.ids) <= ANSWERS_HITS for r in b)
            if ans == ["cell", "protein"]:
                assert {r.info["first_answer_rank"] for r in a} - {None}
    every = three.search(claims, 500, options={"answers": ["cell"], "answer_hits": 0})
    assert [r.ids for r in every] == [r.ids for r in one.search(claims, 500)]
    with pytest.raises(ValueError, match="answer_hits"):
        three.search(claims, 5, options={"answer_hits": 3})


# ---- the evidence option -----------------------------------------------------------------------

def test_answers_option_gives_the_evidence_rank(scifact_index, scifact_claims):
    from deepretrieval.tasks.evidence import first_answer_rank

    answers = [["cancer"], ["vitamin D", "bone"], ["The"], [""], ["zzzz qqqq"], ["T cells"]]
    for ans in answers:
        with_text = scifact_index.search(scifact_claims[:40], 300, return_text=True)
        ranked = scifact_index.search(scifact_claims[:40], 300, options={"answers": ans})
        for a, b in zip(with_text, ranked):
            # only the top ANSWERS_HITS hits come back with the rank (no texts)
            assert b.texts is None and b.ids == a.ids[:ANSWERS_HITS]
            assert b.scores == a.scores[:ANSWERS_HITS]
            assert b.info["first_answer_rank"] == first_answer_rank(a.texts, ans, 300)
    assert scifact_index.answer_filter() is not None  # the kernel path was the one tested
    with pytest.raises(ValueError, match="only the search option"):
        scifact_index.search(["x"], 3, options={"answer": ["x"]})
    with pytest.raises(ValueError, match="list of answer strings"):
        scifact_index.search(["x"], 3, options={"answers": "x"})


def _ranked_calls(monkeypatch) -> list:
    """Records each call of AnswerFilter.candidates (the evidence search that never orders k
    hits)."""
    from deepretrieval.search.answer_filter import AnswerFilter

    calls: list = []
    real = AnswerFilter.candidates

    def spy(self, *args, **kwargs):
        calls.append(args[-1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AnswerFilter, "candidates", spy)
    return calls


@pytest.mark.parametrize("corpus", ["scifact", "generated"])
def test_ranked_evidence_search_equals_all_k_hits_ranked(corpus, scifact_index, scifact_claims,
                                                         tmp_path, monkeypatch):
    """Under ``answers`` with a few hits kept, the exhaustive search ranks only the candidate
    passages (AnswerFilter.candidates); its top hits, scores and first answer-bearing rank equal those of
    the same search keeping all k hits (every hit ordered, then checked in rank order) —
    ties in document order included (the generated corpus has many tied scores)."""
    if corpus == "scifact":
        index, queries, k = scifact_index, scifact_claims[:70], 3000
        answers = [["cancer"], ["vitamin D", "bone"], ["T cells"], ["zzqx never found"],
                   ["p53", "cell line"], ["8"], ["---"], []]
    else:
        docs = generated_docs(3000, vocab=40)
        build_index(docs, tmp_path / "g", name="g", show_progress=False)
        index, k = BM25Index.load(tmp_path / "g"), 2000
        queries = ["w1x w2x", "w3x", "the w5x w1x", "w0x w0x w7x", "naïve w2x"] * 14
        answers = [["w2x"], ["w5x w1x"], ["w9x", "w11x"], ["café"], ["title 3"], ["nothing"],
                   ["w1x w1x w1x"]]
    calls = _ranked_calls(monkeypatch)
    monkeypatch.setattr(index, "threads", 2)  # 70 queries: the ranked searches use two threads
    seen = set()
    for ans in answers:
        every = index.search(queries, k, options={"answers": ans, "answer_hits": 0})
        seen |= {r.info["first_answer_rank"] for r in every}
        for hits in (1, ANSWERS_HITS, 64):
            n_calls = len(calls)
            got = index.search(queries, k, options={"answers": ans, "answer_hits": hits})
            for a, b in zip(every, got):
                assert b.ids == a.ids[:hits] and b.scores == a.scores[:hits], (ans, hits)
                assert b.info == a.info, (ans, hits)
            # the ranked path ran unless an answer needs its passages' bytes read (no index term:
            # ["8"], ["café"] — "cafe" + U+0301 —, ["---"]) — then every hit is ordered as before
            ranked = len(calls) - n_calls
            assert ranked == (0 if ans in (["8"], ["---"], ["café"]) else len(queries)), (ans, hits)
    assert None in seen and len(seen) > 10  # answers found deep, and not at all
    # more hits kept than RANK_MAX_HITS, or all of them: the k hits are ordered
    n_calls = len(calls)
    index.search(queries[:3], k, options={"answers": ["cancer"], "answer_hits": 65})
    index.search(queries[:3], 5, options={"answers": ["cancer"], "answer_hits": 5})
    assert len(calls) == n_calls


def test_hazard_scan_finds_the_passages_the_lazy_check_marks(tmp_path):
    """AnswerFilter.hazard_docs (one scan of every passage's bytes) marks exactly the passages
    that the first-candidate kernel marks one by one as it meets them."""
    docs = [{"_id": str(i), "title": "", "text": t} for i, t in enumerate(CRAFTED * 3)]
    build_index(docs, tmp_path / "c", name="c", show_progress=False)
    lazy = BM25Index.load(tmp_path / "c")
    lazy.search(["alpha"], len(docs), options={"answers": ["zzzz", "q"], "answer_hits": 0})
    assert not (lazy.answer_filter().state == 0).any()  # every passage was met
    scan = BM25Index.load(tmp_path / "c").answer_filter()
    assert scan.hazard_docs().tolist() == np.flatnonzero(lazy.answer_filter().state == 2).tolist()
    assert len(scan.hazard_docs()) == 12 and (scan.state == lazy.answer_filter().state).all()


def _plain_first_rank(texts, answers):
    """The reference: DPR's rule on tokens_by_char, no pre-check, every passage read."""
    from deepretrieval.core import dpr_match

    keys = dpr_match.answer_keys(answers)
    needles = [dpr_match.tokens_by_char(a) for a in keys]
    for rank, text in enumerate(texts, start=1):
        hay = dpr_match.tokens_by_char(text)
        for n in needles:
            if any(hay[i:i + len(n)] == n for i in range(len(hay) - len(n) + 1)):
                return rank
    return None


#: every branch of the kernel's conditions (deepretrieval.search.answer_filter): index words,
#: short words and stopwords (bytes), non-ASCII tokens (their ASCII pieces), tokens that rule
#: nothing out, words the vocabulary lacks, and passages holding a hazard (LOW LINE, KELVIN SIGN)
CRAFTED = [
    "alpha the U.S. Army marched", "alpha the US army marched", "alpha T cells and t_cells",
    "alpha t_cells only", "alpha 5 \u212a cold, \u212aelvin scale", "alpha 5 K cold",
    "alpha ΟΔΟΣ and σοφίας", "alpha cafe\u0301 and naïve", "alpha café", "alpha Beyoncé Knowles",
    "alpha BEYONCE\u0301 live", "alpha İstanbul", "alpha 54\xa0Mbit/s link", "alpha 2 or 3 a",
    "alpha β-cell mass", "alpha --- dashes", "alpha AT&T and at & t", "alpha x\u00b2 ½",
    "alpha alpha cells", "alpha Müller and Muller", "alpha cells_", "alpha the the the",
]
CRAFTED_ANSWERS = [
    ["U.S."], ["US"], ["cells"], ["T cells"], ["t"], ["K"], ["kelvin"], ["οδος"], ["ΣΟΦΊΑΣ"],
    ["café"], ["cafe"], ["naïve"], ["beyoncé"], ["İstanbul"], ["istanbul"], ["54 Mbit/s"], ["2"],
    ["a"], ["the"], ["β-cell"], ["β"], ["---"], ["AT&T"], ["x²"], ["Müller"], ["muller"],
    ["zzqx"], ["zzqx", "cold"], ["mass", "nothing here"], ["Knowles"], ["marched"], [""],
]


def test_answers_option_equals_the_plain_rule_on_crafted_passages(tmp_path):
    docs = [{"_id": str(i), "title": "", "text": t} for i, t in enumerate(CRAFTED)]
    build_index(docs, tmp_path / "c", name="c", show_progress=False)
    index = BM25Index.load(tmp_path / "c")
    assert index.answer_filter() is not None
    queries = ["alpha", "alpha cells", "cold alpha", "the", "zzzz", "only", "scale"]
    with_text = index.search(queries, len(docs), return_text=True)
    for ans in CRAFTED_ANSWERS:
        ranked = index.search(queries, len(docs), options={"answers": ans})
        for q, a, b in zip(queries, with_text, ranked):
            want = _plain_first_rank(a.texts, ans) if a.texts else None
            assert b.info["first_answer_rank"] == want, (ans, q)
    # the hazard branches were taken: these passages hold their answer only for DPR
    state = index.answer_filter().state
    assert {int(d) for d in np.flatnonzero(state == 2)} == {2, 3, 4, 20}


@pytest.mark.slow
def test_answers_option_equals_the_plain_rule_on_scifact_at_depth_3000(scifact_index,
                                                                       scifact_claims):
    """The kernel's ranks against the plain rule at the reward's depth, on real passages."""
    from deepretrieval.core import dpr_match
    from deepretrieval.tasks.evidence import nq_examples

    claims = scifact_claims[:16]
    with_text = scifact_index.search(claims, 3000, return_text=True)
    by_text = {}
    for r in with_text:
        for t in r.texts:
            if t not in by_text:
                toks = tuple(dpr_match.tokens_by_char(t))
                by_text[t] = (toks, frozenset(toks))
    tokens = [[by_text[t] for t in r.texts] for r in with_text]
    answers = ([["cell"], ["T cells"], ["2"], ["the"], ["β-cell"], ["p53"], ["U.S."],
                ["Alzheimer's disease"], ["cell line"], ["in vivo"], ["95%"], ["Beyoncé"],
                ["naïve T cells"], ["zzqx never found"], ["IL-6"], ["μg"], ["in"]]
               + [ex["answers"] for ex in nq_examples("dev")[:40]])
    for ans in answers:
        keys = dpr_match.answer_keys(ans)
        needles = [tuple(dpr_match.tokens_by_char(a)) for a in keys]
        ranked = scifact_index.search(claims, 3000, options={"answers": ans})
        for hays, b in zip(tokens, ranked):
            want = next((rank for rank, (hay, words) in enumerate(hays, start=1)
                         if any(words.issuperset(n) and dpr_match.contains(hay, n)
                                for n in needles)), None)
            assert b.info["first_answer_rank"] == want, ans


# ---- format 1, DPR TSV -------------------------------------------------------------------------

@pytest.mark.slow
def test_format_1_index_still_loads(scifact_docs, scifact_claims, tmp_path):
    """An index as the previous version wrote it (bm25s's files, doc_ids.json, texts.jsonl.gz)."""
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenizer

    from deepretrieval.core.io import write_json_lines_gz

    docs = scifact_docs[:800]
    texts = [f"{(d.get('title') or '').strip()} {(d.get('text') or '').strip()}".strip() for d in docs]
    tok = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en", splitter=r"(?u)\b\w\w+\b")
    ret = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    ret.index(tok.tokenize(texts, show_progress=False, return_as="tuple"), show_progress=False)
    old = tmp_path / "v1"
    ret.save(old / "bm25", show_progress=False)
    tok.save_vocab(old / "tokenizer")
    tok.save_stopwords(old / "tokenizer")
    (old / "doc_ids.json").write_text(json.dumps([d["_id"] for d in docs]))
    write_json_lines_gz(old / "texts.jsonl.gz", texts)
    (old / "meta.json").write_text(json.dumps({"type": "bm25", "format": 1, "name": "v1",
                                               "num_docs": len(docs), "params": {
                                                   "k1": 0.9, "b": 0.4, "method": "lucene",
                                                   "stopwords": "en"}}))
    build_index(docs, tmp_path / "v2", name="v2", show_progress=False)
    v1, v2 = load_index_dir(old), load_index_dir(tmp_path / "v2")
    for k in (10, 1000):
        a = v1.search(scifact_claims, k, return_text=True)
        b = v2.search(scifact_claims, k, return_text=True)
        assert [(r.ids, r.scores, r.texts) for r in a] == [(r.ids, r.scores, r.texts) for r in b]
    # the evidence option: format 1 reads every passage with the rule, format 2 uses the kernel
    assert v1.answer_filter() is None and v2.answer_filter() is not None
    for ans in (["cell"], ["T cells"], ["zzqx"]):
        a = v1.search(scifact_claims[:30], 800, options={"answers": ans})
        b = v2.search(scifact_claims[:30], 800, options={"answers": ans})
        assert [r.info for r in a] == [r.info for r in b]


def test_dpr_tsv_corpus(tmp_path):
    from deepretrieval.core.beir_files import load_corpus as load

    tsv = tmp_path / "psgs_w100.tsv.gz"
    with gzip.open(tsv, "wt", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        f.write('1\t"Aaron is a prophet, ""high priest"" and brother of Moses."\tAaron\n')
        f.write("2\tThe Moon orbits the Earth.\tMoon\n")
    docs = list(load(tsv))
    assert docs == [{"_id": "1", "title": "Aaron",
                     "text": 'Aaron is a prophet, "high priest" and brother of Moses.'},
                    {"_id": "2", "title": "Moon", "text": "The Moon orbits the Earth."}]
    build_index(load(tsv), tmp_path / "w", name="w", show_progress=False)
    hit = BM25Index.load(tmp_path / "w").search(["high priest"], 1, return_text=True)[0]
    assert hit.ids == ["1"] and hit.texts[0].startswith("Aaron Aaron is a prophet")


def test_dpr_tokens_fast_path_equals_the_character_rule(scifact_docs):
    from deepretrieval.core import dpr_match

    every = "".join(chr(c) for c in range(0x110000))
    assert dpr_match.tokens(every) == dpr_match.tokens_by_char(every)
    for d in scifact_docs[:2000]:
        text = d["title"] + " " + d["text"]
        assert dpr_match.tokens(text) == dpr_match.tokens_by_char(text)
    for s in ["", " ", "İstanbul ΟΔΟΣ", "AT&T e\u0301t\u00e9 _x_ 1,000", "\ud800a\U0010ffff"]:
        assert dpr_match.tokens(s) == dpr_match.tokens_by_char(s)


def test_has_answer_pre_check_never_changes_the_answer(scifact_docs):
    """has_answer rules passages out by a substring pre-check before tokenising; it must agree
    with the plain token rule everywhere (Greek final sigma, combining marks, punctuation)."""
    import random

    from deepretrieval.core import dpr_match

    def plain(passage, answer):
        hay, needle = dpr_match.tokens_by_char(passage), dpr_match.tokens_by_char(answer)
        return any(hay[i:i + len(needle)] == needle for i in range(len(hay) - len(needle) + 1))

    rng = random.Random(0)
    pool = list("ΣσςΟΔ' -.aA&İi\u0301\u0307éZ1")
    for _ in range(20000):
        p = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        a = "".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        assert dpr_match.has_answer(p, [a]) == plain(p, a), (p, a)
    texts = [d["title"] + " " + d["text"] for d in scifact_docs[:300]]
    answers = ["cancer", "T cells", "vitamin D", "p53", "Alzheimer's disease", "2", "β-cell"]
    for t in texts:
        for a in answers:
            assert dpr_match.has_answer(t, [a]) == plain(t, a), (a, t[:60])
