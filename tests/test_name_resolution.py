"""One function decides a data_source's task and profile (catalog.resolve_name); the reward and
get_task both read it, so an agentic spelling or a user collection is never scored by the paper
profile's substring dispatch (issue 23 item 1)."""
import json

import pytest

from deepretrieval import catalog, rewards
from deepretrieval.catalog import AmbiguousTask, get_task, resolve_name
from deepretrieval.paper.profile import resolve_profile
from deepretrieval.tasks import UnknownTask

SETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")

#: data_source → (who writes it, task name or None, profile)
TABLE = {
    # the original DeepRetrieval's names (the original trainer's dispatch decides the module)
    "scifact_train": ("original", "scifact_train", "paper"),
    "nfcorpus_test": ("original", "nfcorpus_test", "paper"),
    "hotpotqa_dev": ("original", "hotpotqa_dev", "paper"),
    "hotpotqa_dense_test": ("original", "hotpotqa_dense_test", "paper"),
    "nq_serini": ("original", "nq_serini", "paper"),
    "nq_serini_no_reason": ("original", "nq_serini_no_reason", "paper"),
    "pmd_no_reason": ("original", "pmd_no_reason", "paper"),
    "bird_wor_train": ("original", "bird_wor_train", "paper"),
    "msmarco_beir_dense_dev": ("original", "msmarco_beir_dense_dev", "paper"),
    "screening": ("original", None, "paper"),               # no task here; paper scores it
    "scifact_latest_train": ("original", None, "paper"),
    "arguana_test": ("original", "arguana_test", "default"),  # BEIR name the original had no module for
    # ours: defined tasks
    "scifact": ("ours", "scifact", "default"),
    "pubmed": ("ours", "pubmed", "default"),
    "triviaqa": ("ours", "triviaqa", "default"),
    "agent_nq": ("ours", "agent_nq", "default"),
    "agent_hotpotqa_f1": ("ours", "agent_hotpotqa_f1", "default"),
    # ours: bring-your-own agentic sets whose names hold an original needle
    "agent_hotpotqa_dev2": ("ours", "agent_hotpotqa_dev2", "default"),
    "agent_mytriviaqa": ("ours", "agent_mytriviaqa", "default"),
    "agent_scifact_qa": ("ours", "agent_scifact_qa", "default"),
    # verl's preprocess_search_r1_dataset.py spelling
    **{f"searchR1_{s}": ("verl", f"agent_{s}", "default") for s in SETS},
    "searchR1_hotpotqa_f1": ("verl", "agent_hotpotqa_f1", "default"),
    # Search-R1's own scripts: bare set names. These mean our single-shot tasks / the original's
    # names; Search-R1's rows are converted (`deepretrieval convert --from search-r1`), and train /
    # eval refuse them unconverted (tests/test_search_r1_rows.py).
    "nq": ("Search-R1", "nq", "default"),
    "hotpotqa": ("Search-R1", "hotpotqa", "paper"),
    # user collections (indexes built by the user) whose names hold an original needle
    "hotpotqa_mine": ("user", "hotpotqa_mine", "default"),
    "hotpotqa_mine_no_reason": ("user", "hotpotqa_mine_no_reason", "default"),
    "scifact_trials": ("user", "scifact_trials", "default"),
}


@pytest.fixture()
def user_indexes(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "_RESOLVED", {})
    monkeypatch.setattr(catalog, "_REGISTERED", {})
    for name in ("hotpotqa_mine", "scifact_trials"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"type": "bm25"}))
        catalog.register_index(name, tmp_path / name)
    monkeypatch.delenv("DEEPRETRIEVAL_PROFILE", raising=False)
    yield tmp_path


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_name_resolves_to_one_task_and_profile(name, user_indexes):
    _who, task_name, profile = TABLE[name]
    resolution = resolve_name(name)
    assert resolution.profile == profile, resolution
    assert resolve_profile(name) == profile
    if task_name is None:
        assert resolution.task is None
        with pytest.raises(UnknownTask, match="only the paper profile scores it"):
            get_task(name)
    else:
        assert resolution.task is get_task(name) and get_task(name).name == task_name


class _Spy:
    """Records which profile the reward used for each item (the paper engine is called only for
    the paper profile) without searching anything."""

    def __init__(self):
        self.paper: list[str] = []

    def score_sample(self, data_source, *args, **kwargs):
        self.paper.append(data_source)
        return {"score": -99.0}


class _NoSearch:
    def search(self, index, queries, k, **kw):
        from deepretrieval.core.results import SearchResult
        return [SearchResult(ids=[], scores=[]) for _ in queries]


@pytest.mark.parametrize("name", sorted(TABLE))
def test_the_reward_uses_the_resolvers_profile(name, user_indexes, monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(rewards, "score_sample", spy.score_sample)
    completion = "<answer>Bono</answer>"
    out = rewards.compute_score(name, completion, {"target": ["Bono"]}, searcher=_NoSearch())
    used = "paper" if spy.paper == [name] else "default"
    assert used == resolve_name(name).profile
    if used == "default" and get_task(name).family.name == "agentic":
        assert out["score"] == 1.0 and out["em"] == 1.0   # verl's and Search-R1's EM give 1 too


def test_the_silent_constant_reward_is_gone(monkeypatch):
    """verl's searchR1_hotpotqa / searchR1_triviaqa scored -2 / -4 under the paper profile."""
    monkeypatch.delenv("DEEPRETRIEVAL_PROFILE", raising=False)
    for name in ("searchR1_hotpotqa", "searchR1_triviaqa", "agent_hotpotqa_dev2", "agent_mytriviaqa"):
        right = rewards.compute_score(name, "<answer>Bono</answer>", {"target": ["Bono"]})
        wrong = rewards.compute_score(name, "<answer>U2</answer>", {"target": ["Bono"]})
        assert (right["score"], wrong["score"]) == (1.0, 0.0), name


def test_unknown_and_ambiguous_names_still_raise(user_indexes, tmp_path):
    for name in ("my_hotpotqa_set", "popqa", "musique", "agent_nq_no_reason"):
        with pytest.raises(UnknownTask):
            resolve_name(name)
    with pytest.raises(UnknownTask):
        resolve_name(7)
    # a user collection spelled like an original name over another index stays ambiguous
    (tmp_path / "nfcorpus_test").mkdir()
    (tmp_path / "nfcorpus_test" / "meta.json").write_text(json.dumps({"type": "bm25"}))
    catalog.register_index("nfcorpus_test", tmp_path / "nfcorpus_test")
    with pytest.raises(AmbiguousTask):
        resolve_name("nfcorpus_test")


def test_an_original_name_over_the_users_copy_of_its_index_keeps_the_paper_profile(user_indexes, tmp_path):
    # `prepare beir --name nfcorpus` builds the index the original's nfcorpus_test searches
    (tmp_path / "nfcorpus").mkdir()
    (tmp_path / "nfcorpus" / "meta.json").write_text(json.dumps({"type": "bm25"}))
    catalog.register_index("nfcorpus", tmp_path / "nfcorpus")
    resolution = resolve_name("nfcorpus_test")
    assert resolution.task.index == "nfcorpus" and resolution.profile == "paper"
    assert resolve_name("nfcorpus").profile == "default"   # the collection's own name
