"""Persistent live-engine cache: keys, several writer processes, a writer killed mid-write,
frozen mode, export/import and the ``deepretrieval cache`` command."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from deepretrieval.search.live.cache import SearchCache, cache_key, normalize_query
from deepretrieval.search.live.governor import Backoff
from deepretrieval.search.live.pubmed import PubMedBackend
from deepretrieval.testing.fake_engines import FakePubMed


@pytest.fixture(scope="module")
def fake():
    with FakePubMed() as server:
        yield server


def test_key_normalisation():
    assert normalize_query("  a   AND\tb\n") == "a AND b"
    assert normalize_query("cafe\u0301") == normalize_query("café")
    assert cache_key("pubmed", "a AND b", {"depth": 10}) == cache_key("pubmed", " a  AND b ", {"depth": 10})
    # case matters (PubMed's operators are upper case); engine, depth and date cap matter
    distinct = {cache_key("pubmed", "a AND b", {"depth": 10}), cache_key("pubmed", "a and b", {"depth": 10}),
                cache_key("ctgov", "a AND b", {"depth": 10}), cache_key("pubmed", "a AND b", {"depth": 20}),
                cache_key("pubmed", "a AND b", {"depth": 10, "maxdate": "2020"})}
    assert len(distinct) == 5


def test_backend_reads_and_writes_the_cache(tmp_path, fake):
    fake.reset_log()
    cache = SearchCache(tmp_path / "c.sqlite")
    backend = PubMedBackend(fake.url, rate=100, cache=cache, api_key="TOPSECRET", backoff=Backoff(retries=1, base=0.01))
    first, = backend.search(["melanoma OR nivolumab"], 100, options={"maxdate": "2019"})
    n = len(fake.requests)
    second, = backend.search(["melanoma  OR nivolumab "], 100, options={"maxdate": "2019"})
    assert len(fake.requests) == n  # served from the cache
    assert second.ids == first.ids and second.info["cached"] and not first.info["cached"]
    assert first.info["count"] == second.info["count"]
    # another depth or date cap is another entry
    backend.search(["melanoma OR nivolumab"], 100)
    assert len(fake.requests) == n + 1
    info = backend.info()["cache"]
    assert (info["hits"], info["misses"], info["writes"]) == (1, 2, 2)
    # the API key is in no key and nowhere in the file; another key hits the same entries
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"TOPSECRET" not in raw
    other = PubMedBackend(fake.url, rate=100, cache=cache, api_key="OTHER")
    other.search(["melanoma OR nivolumab"], 100, options={"maxdate": "2019"})
    assert len(fake.requests) == n + 1
    # errors are not cached
    fake.fail("500", times=None)
    try:
        assert backend.search(["uncached query"], 10)[0].error
    finally:
        fake.clear_faults()
    assert backend.search(["uncached query"], 10)[0].error is None


def test_frozen_mode_serves_hits_and_fails_misses(tmp_path, fake):
    path = tmp_path / "c.sqlite"
    warm = PubMedBackend(fake.url, rate=100, cache=SearchCache(path))
    warm.search(["melanoma"], 50)
    fake.reset_log()
    frozen = PubMedBackend(fake.url, rate=100, cache=SearchCache(path, frozen=True))
    hit, miss = frozen.search(["melanoma", "something new"], 50)
    assert hit.error is None and hit.ids and hit.info["cached"]
    assert miss.error and "frozen" in miss.error and miss.ids == []
    assert fake.requests == []
    assert frozen.info()["cache"]["frozen"] is True
    with pytest.raises(FileNotFoundError):
        SearchCache(tmp_path / "missing.sqlite", frozen=True)


def test_frozen_mode_from_the_environment(tmp_path, fake, monkeypatch):
    from deepretrieval.search.live import pubmed_from_env
    path = tmp_path / "env.sqlite"
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", fake.url)
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(path))
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_RPS", "100")
    pubmed_from_env().search(["melanoma"], 20)
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE_FROZEN", "1")
    frozen = pubmed_from_env()
    assert frozen.cache.frozen and frozen.cache.path == path
    assert frozen.search(["melanoma"], 20)[0].error is None
    assert "frozen" in frozen.search(["melanoma"], 21)[0].error


WRITER = textwrap.dedent("""
    import sys
    from deepretrieval.search.live.cache import SearchCache
    path, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cache = SearchCache(path)
    for i in range(n):
        cache.put("pubmed", f"writer {wid} query {i}", {"depth": 3000}, [str(wid * 100000 + j) for j in range(300)])
        cache.put("pubmed", f"shared query {i % 5}", {"depth": 3000}, ["1", "2", "3"])
        assert cache.get("pubmed", f"writer {wid} query {i}", {"depth": 3000}) is not None
    print("done", wid)
""")


@pytest.mark.slow
def test_concurrent_writer_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    cache = SearchCache(path)
    assert cache.integrity_ok()
    assert len(cache) == 4 * 40 + 5
    for w in range(4):
        for i in (0, 39):
            hit = cache.get("pubmed", f"writer {w} query {i}", {"depth": 3000})
            assert hit.ids[0] == str(w * 100000) and len(hit.ids) == 300


KILLED = textwrap.dedent("""
    import sys
    from deepretrieval.search.live.cache import SearchCache
    cache = SearchCache(sys.argv[1])
    ids = [str(i) for i in range(3000)]
    i = 0
    print("ready", flush=True)
    while True:
        cache.put("pubmed", f"query {i}", {"depth": 3000}, ids, {"count": i})
        i += 1
""")


@pytest.mark.slow
def test_process_killed_mid_write_leaves_the_cache_usable(tmp_path):
    path = tmp_path / "killed.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        while time.time() < deadline:  # let it write a while, then kill it without warning
            if path.exists() and len(SearchCache(path)) >= 20:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    cache = SearchCache(path)
    assert cache.integrity_ok()
    n = len(cache)
    assert n >= 20
    for entry in cache.iter_entries():
        assert len(entry["ids"]) == 3000  # every entry that is there is complete
    cache.put("pubmed", "after the crash", {"depth": 1}, ["1"])
    assert len(cache) == n + 1


def test_export_import_roundtrip_and_cli(tmp_path, capsys):
    from deepretrieval.cli import main
    src = SearchCache(tmp_path / "a.sqlite")
    src.put("pubmed", "q1", {"depth": 3000, "maxdate": "2020"}, ["1", "2"], {"count": 2})
    src.put("ctgov", "q2", {"depth": 3000}, ["NCT00000001"])
    assert main(["cache", "export", str(tmp_path / "dump.jsonl.gz"), "--cache", str(src.path)]) == 0
    assert "exported 2 entries" in capsys.readouterr().out
    assert main(["cache", "import", str(tmp_path / "dump.jsonl.gz"), "--cache", str(tmp_path / "b.sqlite")]) == 0
    assert "2 new" in capsys.readouterr().out
    dst = SearchCache(tmp_path / "b.sqlite")
    hit = dst.get("pubmed", "q1", {"depth": 3000, "maxdate": "2020"})
    assert hit.ids == ["1", "2"] and hit.info == {"count": 2}
    assert main(["cache", "stats", "--cache", str(dst.path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"entries": 2' in out and '"ctgov": 1' in out
    assert main(["cache", "export", str(tmp_path / "pm.jsonl"), "--cache", str(src.path), "--engine", "pubmed"]) == 0
    assert (tmp_path / "pm.jsonl").read_text().count("\n") == 1
    (tmp_path / "bad.jsonl").write_text('{"engine": "pubmed"}\n')
    assert main(["cache", "import", str(tmp_path / "bad.jsonl"), "--cache", str(dst.path)]) == 2
    assert "not a cache export line" in capsys.readouterr().err
    assert main(["cache", "stats", "--cache", str(tmp_path / "nope.sqlite")]) == 2


def test_builtin_indexes_from_the_environment(tmp_path, fake, monkeypatch):
    from deepretrieval.catalog import open_index
    from deepretrieval.search.live import api_key_from_env
    key_file = tmp_path / "ncbi.key"
    key_file.write_text("KEY-FROM-FILE\n")
    monkeypatch.delenv("NCBI_API_KEY", raising=False)
    monkeypatch.setenv("NCBI_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", fake.url)
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", "off")
    monkeypatch.delenv("DEEPRETRIEVAL_PUBMED_RPS", raising=False)
    assert api_key_from_env() == "KEY-FROM-FILE"
    backend = open_index("pubmed")
    assert backend.name == "pubmed" and backend.cache is None
    assert backend.bucket.rate == 10.0  # a key raises NCBI's limit
    fake.reset_log()
    assert backend.search(["melanoma"], 5)[0].ids
    assert fake.requests[0].param("api_key") == "KEY-FROM-FILE"
    monkeypatch.setenv("NCBI_API_KEY", "ENV-KEY")
    assert api_key_from_env() == "ENV-KEY"
    monkeypatch.delenv("NCBI_API_KEY")
    monkeypatch.setenv("NCBI_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        api_key_from_env()
    ct = open_index("ctgov")
    assert ct.name == "ctgov" and ct.bucket.rate == 1.0
