import os

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
