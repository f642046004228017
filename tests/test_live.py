"""Live engine clients (PubMed E-utilities, ClinicalTrials.gov v2) against loopback fakes that
speak the real protocols: paging, date cap, URL encoding, rate limit, faults."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from deepretrieval.search.live.ctgov import CTGovBackend
from deepretrieval.search.live.governor import Backoff, TokenBucket, parse_retry_after
from deepretrieval.search.live.pubmed import PubMedBackend, normalize_date
from deepretrieval.testing.fake_engines import FAULTS, FakeCTGov

# recorded NCBI responses (shared/data/pubmed_eutils_fixtures; not bundled: unclear licenses)
# recorded NCBI responses from the shared data folder beside the checkout (../shared/data), if present
FIXTURES = Path(os.environ.get("DEEPRETRIEVAL_SHARED_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data")) / "pubmed_eutils_fixtures"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no recorded responses at {FIXTURES}")
BROAD = "cell OR patients OR study OR effect OR increased OR results"  # most of the fake collection (> 3,000 docs)
FAST = Backoff(retries=3, base=0.01, cap=0.05)


@pytest.fixture(scope="module")
def ctgov_fake():
    with FakeCTGov() as fake:
        yield fake


@pytest.fixture
def fresh(pubmed_fake, ctgov_fake):
    for fake in (pubmed_fake, ctgov_fake):
        fake.clear_faults()
        fake.reset_log()
        fake.rate_limit = None
        fake.retry_after = "0.1"
    return pubmed_fake, ctgov_fake


def pubmed(fake, **kw):
    kw.setdefault("rate", 200)
    kw.setdefault("backoff", FAST)
    kw.setdefault("timeout", 5)
    return PubMedBackend(fake.url, **kw)


def ctgov(fake, **kw):
    kw.setdefault("rate", 200)
    kw.setdefault("backoff", FAST)
    kw.setdefault("timeout", 5)
    return CTGovBackend(fake.url, **kw)


# --- protocol ------------------------------------------------------------------------------

@needs_fixtures
def test_fake_pubmed_answers_in_the_recorded_esearch_shape(fresh):
    import httpx
    fake, _ = fresh
    real = json.loads((FIXTURES / "eutils-mcp-server" / "esearch.json").read_text())
    ours = httpx.get(f"{fake.url}/esearch.fcgi", params={"db": "pubmed", "term": "cancer",
                                                         "retmode": "json", "retmax": 3}).json()
    assert set(ours) == set(real) and ours["header"] == real["header"]
    for key in ("count", "retmax", "retstart", "idlist", "querytranslation", "translationset"):
        assert type(ours["esearchresult"][key]) is type(real["esearchresult"][key]), key
    assert len(ours["esearchresult"]["idlist"]) == 3


@needs_fixtures
def test_recorded_esearch_bodies_parse_with_translation_and_warnings():
    from deepretrieval.search.live.pubmed import _check_page, _debug_info
    body = json.loads((FIXTURES / "sotawhat" / "pubmed_esearch.json").read_text())
    result, count, page = _check_page(body, 0, 3000)
    assert count == 42111 and page == ["42286391", "42286351", "42286322", "42286178", "42286177"]
    info = _debug_info(result)
    assert "artificial intelligence" in info["translation"]
    assert info["warnings"] == ["outputmessages: Unknown sort schema 'date' ignored"]
    err = json.loads((FIXTURES / "Eutils-JSON" / "esearch.error.json").read_text())
    assert _debug_info(_check_page(err, 0, 20)[0])["errors"] == ["phrasesnotfound: fleegle[MeSH Terms]"]
    from deepretrieval.search.live.client import LiveError
    with pytest.raises(LiveError, match="Invalid db name"):
        _check_page(json.loads((FIXTURES / "Eutils-JSON" / "esearch.baderror.json").read_text()), 0, 20)


@pytest.mark.slow
def test_pubmed_pages_to_depth_3000(fresh):
    fake, _ = fresh
    expected = fake.match(BROAD)
    assert len(expected) > 3000
    result, = pubmed(fake, page_size=1000).search([BROAD], 3000)
    assert result.error is None and result.ids == expected[:3000]
    assert result.info["count"] == len(expected)
    pages = [(r.param("retstart"), r.param("retmax")) for r in fake.requests]
    assert pages == [("0", "1000"), ("1000", "1000"), ("2000", "1000")]
    assert all(r.param("retmode") == "json" and r.param("db") == "pubmed" for r in fake.requests)
    # default page size: one request holds the whole depth (E-utilities allow retmax ≤ 10,000)
    fake.reset_log()
    result, = pubmed(fake).search([BROAD], 3000)
    assert result.ids == expected[:3000]
    assert [(r.param("retstart"), r.param("retmax")) for r in fake.requests] == [("0", "3000")]


def test_pubmed_stops_paging_when_results_run_out(fresh):
    fake, _ = fresh
    query = "melanoma"
    expected = fake.match(query)
    assert 0 < len(expected) < 100
    result, = pubmed(fake, page_size=20).search([query], 3000)
    assert result.ids == expected
    assert len(fake.requests) == -(-len(expected) // 20)


def test_ctgov_pages_with_tokens_to_depth_3000(fresh):
    _, fake = fresh
    expected = fake.match(BROAD)
    assert len(expected) > 3000
    result, = ctgov(fake).search([BROAD], 3000)
    assert result.error is None and result.ids == expected[:3000]
    assert all(i.startswith("NCT") for i in result.ids)
    reqs = fake.requests
    assert [r.param("pageSize") for r in reqs] == ["1000", "1000", "1000"]
    assert reqs[0].param("pageToken") is None and reqs[0].param("countTotal") == "true"
    assert reqs[1].param("pageToken") and reqs[2].param("pageToken") != reqs[1].param("pageToken")
    assert {r.param("fields") for r in reqs} == {"NCTId"}
    assert result.info["count"] == len(expected)


def test_pubmed_date_cap(fresh):
    fake, _ = fresh
    backend = pubmed(fake)
    uncapped, = backend.search([BROAD], 3000)
    capped, = backend.search([BROAD], 3000, options={"maxdate": "2010-06"})
    req = fake.requests[-1]
    assert (req.param("datetype"), req.param("mindate"), req.param("maxdate")) == ("pdat", "1800", "2010/06")
    assert fake.requests[0].param("maxdate") is None and fake.requests[0].param("datetype") is None
    assert capped.ids == fake.match(BROAD, maxyear=2010)[:3000]
    assert capped.info["count"] < uncapped.info["count"]
    with pytest.raises(ValueError, match="unknown option"):
        backend.search(["x"], 10, options={"sort": "date"})
    with pytest.raises(ValueError, match="not a date"):
        backend.search(["x"], 10, options={"maxdate": "last year"})
    assert normalize_date("2020/4/9") == "2020/04/09" and normalize_date(2019) == "2019"


HOSTILE = [
    'breast cancer AND "immune checkpoint" OR (PD-1 & PD-L1)',
    "tumour #1 & #2; 50% of cases; a+b=c? /path\\x",
    "café OR naïve OR 癌症 OR Ünïcödé – “curly quotes” 😀",
    "%20%26 %2B + already%encoded",
    "\"unbalanced (parens",
    ("(melanoma OR \"non-small cell\" & carcinoma #tag) AND ü " * 200)[:10240],
]


def test_hostile_queries_arrive_intact(fresh):
    pm_fake, ct_fake = fresh
    pm, ct = pubmed(pm_fake), ctgov(ct_fake)
    for query in HOSTILE:
        pm_fake.reset_log()
        ct_fake.reset_log()
        result, = pm.search([query], 50)
        assert result.error is None, result.error
        got = pm_fake.requests[0]
        assert got.param("term") == query
        assert got.method == ("POST" if len(query) > 1000 else "GET")
        assert "#" not in got.raw and "&" not in got.param("term").replace(query, "")
        result, = ct.search([query], 50)
        sent = ct_fake.requests[0]
        assert sent.param("query.term") == query
        if query.count("(") == query.count(")"):
            assert result.error is None
        else:  # CT.gov rejects unbalanced parentheses with HTTP 400: a search error, no retry
            assert "HTTP 400" in result.error and len(ct_fake.requests) == 1


def test_bad_arguments_are_clear_errors(fresh):
    fake, _ = fresh
    backend = pubmed(fake)
    with pytest.raises(ValueError, match="return_text"):
        backend.search(["x"], 10, return_text=True)
    with pytest.raises(ValueError, match="positive integer"):
        backend.search(["x"], 0)
    empty, long = backend.search(["   ", "x" * 20000], 10)
    assert "empty query" in empty.error and "longer than" in long.error
    assert fake.requests == []


# --- rate ------------------------------------------------------------------------------------

def test_token_bucket_spacing_and_async():
    bucket = TokenBucket(rate=50, margin=0.0)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[0] == 0 and waits[-1] == pytest.approx(4 / 50, abs=0.01)

    async def run():
        b = TokenBucket(rate=40, margin=0.0)
        t0 = time.monotonic()
        await asyncio.gather(*(b.acquire_async() for _ in range(9)))
        return time.monotonic() - t0
    assert 0.17 <= asyncio.run(run()) < 1.0
    with pytest.raises(ValueError):
        TokenBucket(rate=0)
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None


def test_concurrent_callers_never_exceed_the_limit(fresh):
    fake, _ = fresh
    fake.rate_limit = 20
    backend = pubmed(fake, rate=20, margin=0.15)
    results: list = []

    def caller(i):
        results.extend(backend.search([f"cancer OR term{i}"], 100))
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 40 and all(r.error is None and r.ids for r in results)
    assert fake.count_429 == 0
    assert fake.max_in_window <= 20
    assert len(fake.requests) == 40


def test_without_the_governor_the_fake_throttles_and_retry_after_recovers(fresh):
    """Control for the test above: the fake's limiter is real, and 429 + Retry-After is handled."""
    fake, _ = fresh
    fake.rate_limit = 20
    fake.retry_after = "0.3"
    backend = pubmed(fake, rate=10_000, max_workers=32, backoff=Backoff(retries=8, base=0.05, cap=1))
    results = backend.search([f"cancer OR term{i}" for i in range(40)], 100)
    assert fake.count_429 > 0
    assert all(r.error is None and r.ids for r in results)
    assert backend.info()["errors"]["429"] == fake.count_429
    assert backend.bucket.stats()["paused_s"] > 0


# --- faults ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", FAULTS)
def test_pubmed_fault_is_retried(fresh, kind):
    fake, _ = fresh
    fake.slow_s = 0.6
    backend = pubmed(fake, timeout=0.3, page_size=1000)
    expected = fake.match(BROAD)[:2000]
    fake.fail(kind, times=1)
    result, = backend.search([BROAD], 2000)
    assert result.error is None and result.ids == expected
    assert backend.info()["retries"] == 1
    assert len(fake.requests) == 3  # 2 pages + 1 retry
    if kind in ("429", "503"):  # Retry-After honoured: the whole bucket paused
        assert backend.bucket.stats()["paused_s"] > 0


@pytest.mark.parametrize("kind", FAULTS)
def test_pubmed_persistent_fault_is_a_search_error(fresh, kind):
    fake, _ = fresh
    fake.slow_s = 0.4
    backend = pubmed(fake, timeout=0.2, backoff=Backoff(retries=2, base=0.01, cap=0.02))
    fake.fail(kind, times=None)
    result, = backend.search(["cancer"], 100)
    assert result.error and "gave up after 3 attempt(s)" in result.error
    assert result.ids == []
    assert len(fake.requests) == 3
    assert backend.info()["failed_queries"] == 1


@pytest.mark.parametrize("kind", ["500", "503", "429", "truncated", "cut", "empty", "slow"])
def test_ctgov_fault_is_retried_or_surfaced(fresh, kind):
    _, fake = fresh
    fake.slow_s = 0.6
    backend = ctgov(fake, timeout=0.3)
    expected = fake.match(BROAD)[:1500]
    fake.fail(kind, times=1)
    result, = backend.search([BROAD], 1500)
    assert result.error is None and result.ids == expected
    fake.fail(kind, times=None)
    result, = backend.search(["other query"], 10)
    assert result.error and result.ids == []


def test_api_key_is_sent_but_never_logged(fresh, caplog):
    fake, _ = fresh
    backend = pubmed(fake, api_key="SECRET-KEY-123", email="me@example.org")
    assert "SECRET" not in repr(backend) and "SECRET" not in json.dumps(backend.info())
    logging.getLogger("httpx").setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.DEBUG):
            backend.search(["cancer"], 10)
    finally:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    req = fake.requests[-1]
    assert req.param("api_key") == "SECRET-KEY-123"
    assert (req.param("tool"), req.param("email")) == ("deepretrieval", "me@example.org")
    assert "SECRET-KEY-123" not in caplog.text
    assert "api_key=***" in caplog.text
    # NCBI's limits: 10 requests/s with a key, 3 without
    assert PubMedBackend(fake.url, api_key="k").bucket.rate == 10.0
    assert PubMedBackend(fake.url).bucket.rate == 3.0


def test_identical_queries_in_flight_are_fetched_once(fresh):
    fake, _ = fresh
    fake.slow_s = 0.3
    fake.fail("slow", times=1)
    backend = pubmed(fake)
    out: list = []
    threads = [threading.Thread(target=lambda: out.extend(backend.search(["melanoma"], 50)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(out) == 6 and all(r.ids == out[0].ids and r.ids for r in out)
    assert len(fake.requests) == 1
