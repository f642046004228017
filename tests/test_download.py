"""The download CLI against a loopback server speaking the Hugging Face Hub endpoints that
huggingface_hub calls (``/api/datasets/{repo}/tree/{rev}`` and ``/datasets/{repo}/resolve/{rev}/{path}``
with ``Range``). The CLI runs in a subprocess with ``HF_ENDPOINT`` pointed at the server, as a user
would run it. Nothing here touches the internet."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT / "deepretrieval" / "bundled" / "scifact"
REPO = "DeepRetrieval/datasets"

# Real bytes for the served files (the bundled SciFact files), laid out like the DeepRetrieval repo.
FILES = {
    "README.md": b"# DeepRetrieval datasets (loopback copy)\n",
    "local_index_search/scifact/test.tsv": (SCIFACT / "qrels" / "test.tsv").read_bytes(),
    "local_index_search/scifact/queries.jsonl": (SCIFACT / "queries.jsonl").read_bytes(),
    "local_index_search/nfcorpus/train.tsv": (SCIFACT / "qrels" / "train.tsv").read_bytes(),
    "search_engine/pubmed_32/train.jsonl": (SCIFACT / "queries.jsonl").read_bytes()[:50_000],
    "sql/spider/notes.txt": b"spider rows would be here\n",
    "raw_data/scifact/qrels/test.tsv": (SCIFACT / "qrels" / "test.tsv").read_bytes(),
}
#: another dataset repo, flat (files at the root), to check the CLI works for any repo id
FLAT_REPO = "someone/flat-set"
FLAT = {"train.jsonl": (SCIFACT / "queries.jsonl").read_bytes()[:20_000],
        "test.tsv": (SCIFACT / "qrels" / "test.tsv").read_bytes()}
REPOS = {REPO: FILES, FLAT_REPO: FLAT}
BIG = "local_index_search/scifact/queries.jsonl"  # ~210 KB: the file that gets cut
CUT = (len(FILES[BIG]) // 2) // 4096 * 4096  # where the server cuts it (a whole number of reads)


class Hub:
    """State of the fake hub: requests seen and faults to inject."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        self.drop_once: set[str] = set()      # cut these files mid-body once
        self.fail_after_drop: set[str] = set()  # after a cut, answer 500 for the file
        self.fail_range_until_reset = False
        self.status_for_tree: int | None = None
        self.error_code: str | None = None
        self.ghost: str | None = None           # listed, but 404 on download
        self.lock = threading.Lock()


def make_handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status, body=b"", headers=None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, code=None, message="error"):
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _route(self):
            url = urlsplit(self.path)
            with hub.lock:
                hub.requests.append((self.command, url.path, {k.lower(): v for k, v in self.headers.items()}))
            repo = next((r for r in REPOS if url.path.startswith(f"/api/datasets/{r}/tree/main")
                         or url.path.startswith(f"/datasets/{r}/resolve/main/")), None)
            if url.path.startswith("/api/datasets/") and "/tree/" in url.path:
                if hub.status_for_tree:
                    return self._error(hub.status_for_tree, hub.error_code, "injected failure")
                if repo is None:
                    return self._error(401, "RepoNotFound", "Repository not found")
                files = REPOS[repo]
                entries = []
                folders = sorted({"/".join(p.split("/")[:i]) for p in files
                                  for i in range(1, p.count("/") + 1)})
                entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                            for d in folders]
                entries += [{"type": "file", "path": p, "size": len(b),
                             "oid": hashlib.sha1(b).hexdigest()} for p, b in files.items()]
                if hub.ghost and repo == REPO:
                    entries.append({"type": "file", "path": hub.ghost, "size": 10, "oid": "0" * 40})
                return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
            if repo is not None and "/resolve/" in url.path:
                files = REPOS[repo]
                path = unquote(url.path[len(f"/datasets/{repo}/resolve/main/"):])
                if path not in files:
                    return self._error(404, "EntryNotFound", f"{path} does not exist")
                if path in hub.fail_after_drop and path not in hub.drop_once:
                    return self._error(500, None, "injected server error")
                data = files[path]
                rng = self.headers.get("Range")
                common = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": "a" * 40,
                          "Accept-Ranges": "bytes"}
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    body = data[start:]
                    return self._send(206, body, {**common, "Content-Range":
                                                  f"bytes {start}-{len(data) - 1}/{len(data)}"})
                if path in hub.drop_once and self.command == "GET":
                    hub.drop_once.discard(path)
                    self.send_response(200)
                    for k, v in common.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:CUT])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                return self._send(200, data, common)
            return self._error(404, None, "no such endpoint")

        do_GET = _route
        do_HEAD = _route

    return Handler


@pytest.fixture()
def hub():
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_cli(endpoint: str, tmp_path: Path, *args: str, script: bool = False, timeout: float = 60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hfhome"),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DOWNLOAD_TIMEOUT": "10", "HF_HUB_ETAG_TIMEOUT": "10",
                # resume granularity: small reads so a cut 200 KB file keeps its first half
                "DEEPRETRIEVAL_DOWNLOAD_CHUNK_BYTES": "4096"})
    env.pop("TRANSFORMERS_OFFLINE", None)
    cmd = ([sys.executable, str(ROOT / "download_datasets.py")] if script
           else [sys.executable, "-m", "deepretrieval.cli", "download"])
    return subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)


def test_list_files_and_list_only(hub, tmp_path):
    r = run_cli(hub.url, tmp_path, "--list_files")
    assert r.returncode == 0, r.stderr
    listed = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert sorted(listed) == sorted(FILES)
    sizes = dict(line.split("\t") for line in r.stdout.splitlines())
    assert int(sizes[BIG]) == len(FILES[BIG])

    r = run_cli(hub.url, tmp_path, "--list_only", script=True)
    assert r.returncode == 0, r.stderr
    assert "local_index_search (3 files)" in r.stdout
    assert "  - scifact (2 files" in r.stdout and "  - nfcorpus (1 files" in r.stdout
    assert "search_engine (1 files)" in r.stdout
    assert not (tmp_path / "data").exists()  # listing downloads nothing


def test_category_and_dataset_filtering(hub, tmp_path):
    out = tmp_path / "out"
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_search", "--datasets", "scifact",
                "--output_dir", str(out))
    assert r.returncode == 0, r.stderr
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert got == ["local_index_search/scifact/queries.jsonl", "local_index_search/scifact/test.tsv"]
    for rel in got:
        assert (out / rel).read_bytes() == FILES[rel]
    # a second run skips what is complete: no file bodies are requested again
    n_before = sum(1 for m, p, _ in hub.requests if "/resolve/" in p)
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_search", "--datasets", "scifact",
                "--output_dir", str(out))
    assert r.returncode == 0 and "already present 2" in r.stderr
    assert sum(1 for m, p, _ in hub.requests if "/resolve/" in p) == n_before

    # "all" = the four DeepRetrieval categories (the root README is not part of any)
    out2 = tmp_path / "all"
    r = run_cli(hub.url, tmp_path, "--output_dir", str(out2), script=True)
    assert r.returncode == 0, r.stderr
    got = sorted(str(p.relative_to(out2)) for p in out2.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert got == sorted(p for p in FILES if "/" in p)


def test_unknown_names_list_valid_ones(hub, tmp_path):
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_serch")
    assert r.returncode == 1
    assert "unknown category local_index_serch" in r.stderr
    assert "valid: local_index_search, raw_data, search_engine, sql" in r.stderr
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_search", "--datasets", "scifakt")
    assert r.returncode == 1
    assert "unknown dataset scifakt" in r.stderr and "valid: nfcorpus, scifact" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_within_a_run_after_dropped_connection(hub, tmp_path):
    hub.drop_once.add(BIG)
    out = tmp_path / "out"
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_search", "--datasets", "scifact",
                "--output_dir", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / BIG).read_bytes() == FILES[BIG]
    ranges = [h.get("range") for m, p, h in hub.requests if p.endswith(BIG) and m == "GET"]
    assert ranges[0] is None and ranges[1] == f"bytes={CUT}-"
    assert not list(out.rglob("*.incomplete"))


def test_interrupted_run_is_resumed_by_the_next_run(hub, tmp_path):
    out = tmp_path / "out"
    # run 1: the connection drops mid-file and the server then fails → the run fails, keeping the partial
    hub.drop_once.add(BIG)
    hub.fail_after_drop.add(BIG)
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_search", "--datasets", "scifact",
                "--output_dir", str(out))
    assert r.returncode == 1
    assert "HTTP 500" in r.stderr and "rerun the same command to resume" in r.stderr
    partial = out / (BIG + ".incomplete")
    assert partial.exists() and partial.stat().st_size == CUT
    assert not (out / BIG).exists()  # nothing half-written under the real name
    assert (out / "local_index_search/scifact/test.tsv").read_bytes() == FILES["local_index_search/scifact/test.tsv"]
    # run 2: the server is healthy; the file continues where it stopped
    hub.fail_after_drop.clear()
    hub.requests.clear()
    r = run_cli(hub.url, tmp_path, "--categories", "local_index_search", "--datasets", "scifact",
                "--output_dir", str(out), script=True)
    assert r.returncode == 0, r.stderr
    assert (out / BIG).read_bytes() == FILES[BIG]
    gets = [(p, h.get("range")) for m, p, h in hub.requests if m == "GET" and "/resolve/" in p]
    assert gets == [(f"/datasets/{REPO}/resolve/main/{BIG}", f"bytes={CUT}-")]
    assert not partial.exists()


def test_token_is_sent(hub, tmp_path):
    r = run_cli(hub.url, tmp_path, "--list_files", "--token", "hf_loopbacktoken")
    assert r.returncode == 0, r.stderr
    auth = [h.get("authorization") for m, p, h in hub.requests if "/tree/" in p]
    assert auth and auth[0] == "Bearer hf_loopbacktoken"


@pytest.mark.parametrize("status,code,expect", [
    (401, "RepoNotFound", "was not found or needs authentication (HTTP 401)"),
    (404, "RepoNotFound", "was not found or needs authentication (HTTP 404)"),
    (500, None, "the Hub answered HTTP 500"),
])
def test_listing_errors_are_clear(hub, tmp_path, status, code, expect):
    hub.status_for_tree, hub.error_code = status, code
    r = run_cli(hub.url, tmp_path, "--list_only")
    assert r.returncode == 1
    assert expect in r.stderr
    assert "Traceback" not in r.stderr


def test_private_or_missing_repo(hub, tmp_path):
    r = run_cli(hub.url, tmp_path, "--repo_id", "someone/private-set", "--list_files")
    assert r.returncode == 1
    assert "'someone/private-set' was not found or needs authentication" in r.stderr
    assert "--token" in r.stderr


def test_network_failure_is_clear(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli(f"http://127.0.0.1:{port}", tmp_path, "--list_only")
    assert r.returncode == 1
    assert "network error" in r.stderr and "Traceback" not in r.stderr


def test_missing_file_404(hub, tmp_path):
    # a file the listing names but the server no longer has: clear 404 message, the other files
    # still arrive, nothing half-written is left behind
    hub.ghost = "raw_data/scifact/gone.tsv"
    out = tmp_path / "out"
    r = run_cli(hub.url, tmp_path, "--categories", "raw_data", "--output_dir", str(out))
    assert r.returncode == 1
    assert "file 'raw_data/scifact/gone.tsv' not found in 'DeepRetrieval/datasets' (HTTP 404)" in r.stderr
    assert (out / "raw_data/scifact/qrels/test.tsv").read_bytes() == FILES["raw_data/scifact/qrels/test.tsv"]
    assert not (out / hub.ghost).exists() and not list(out.rglob("*.incomplete"))


def test_any_dataset_repo(hub, tmp_path):
    out = tmp_path / "flat"
    r = run_cli(hub.url, tmp_path, "--repo_id", FLAT_REPO, "--list_only")
    assert r.returncode == 0 and "(root) (2 files)" in r.stdout
    r = run_cli(hub.url, tmp_path, "--repo_id", FLAT_REPO, "--output_dir", str(out), "--include", "*.tsv")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["test.tsv"]
    r = run_cli(hub.url, tmp_path, "--repo_id", FLAT_REPO, "--output_dir", str(out))
    assert r.returncode == 0, r.stderr
    for name, data in FLAT.items():
        assert (out / name).read_bytes() == data
