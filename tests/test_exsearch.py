"""ExSearch: importance weights, loss masks, one E+M iteration, resume, seed sources."""
import json
import math

import pytest

from deepretrieval.agent.runner import run_rows
from deepretrieval.core import agent_protocol as P
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.train.exsearch import examples as XE
from deepretrieval.train.exsearch import loop as X
from deepretrieval.train.exsearch import objective as XO

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.rows("agent_closedworld", "train")


# ---- weights -------------------------------------------------------------------------------

def test_weights_sum_to_one_per_question_and_favour_the_best_supported():
    logliks = [-5.0, -1.0, -3.0, -2.0, -0.5, -7.0]
    groups = ["a", "a", "a", "b", "b", "c"]
    w = XO.importance_weights(logliks, groups)
    for g in "abc":
        assert math.isclose(sum(x for x, gg in zip(w, groups) if gg == g), 1.0, rel_tol=1e-12)
    assert max(w[:3]) == w[1] and w[1] > w[2] > w[0]
    assert w[4] > w[3]
    assert w[5] == 1.0                      # a question with one trajectory
    # the formula: softmax of loglik / tau
    z = math.exp(-5) + math.exp(-1) + math.exp(-3)
    assert math.isclose(w[1], math.exp(-1) / z, rel_tol=1e-12)
    # temperature: larger flattens, smaller sharpens, the order stays
    flat = XO.importance_weights(logliks, groups, temperature=10.0)
    sharp = XO.importance_weights(logliks, groups, temperature=0.1)
    assert sharp[1] > w[1] > flat[1] > 1 / 3
    assert flat[1] > flat[2] > flat[0]


def test_weights_edge_cases():
    w = XO.importance_weights([-math.inf, -2.0, -math.inf, -math.inf], ["a", "a", "b", "b"])
    assert w == [0.0, 1.0, 0.5, 0.5]
    w = XO.importance_weights([-1e6, -1e6 - 1], ["a", "a"])   # no underflow
    assert math.isclose(w[0], 1 / (1 + math.exp(-1)))
    with pytest.raises(ValueError):
        XO.importance_weights([1.0], ["a"], temperature=0)
    with pytest.raises(ValueError):
        XO.importance_weights([float("nan")], ["a"])
    with pytest.raises(ValueError):
        XO.importance_weights([1.0, 2.0], ["a"])


# ---- masks ---------------------------------------------------------------------------------

def _oracle_episodes(rows, n=3):
    return run_rows(OraclePolicy(), rows[:n])


def test_gold_answer_replaces_the_final_answer(rows):
    ep = _oracle_episodes(rows, 1)[0]
    pieces = XE.gold_pieces(ep, "Gold Name")
    text = "".join(t for t, _ in pieces)
    assert text.endswith("<answer>Gold Name</answer>")
    assert P.final_answer(text) == "Gold Name"
    assert text.count("<answer>") == 1
    assert [t for t, k in pieces if k == "answer"] == ["Gold Name"]
    injected = "".join(t for t, k in pieces if k == "injected")
    assert injected and all(t in ep.text for t, k in pieces if k == "injected")
    # an episode ended by the turn budget (search refused): refusal dropped, answer appended
    from deepretrieval.agent.runner import Episode, Segment
    cut = Episode(ep.messages, ep.index, ep.settings, "", ep.row, segments=[
        Segment("<think>x</think><search>q</search>", False),
        Segment(P.information("Doc 1: passage"), True),
        Segment("<think>y</think><search>again</search>", False),
        Segment(P.information(ep.settings.refusal_message), True)])
    text = "".join(t for t, _ in XE.gold_pieces(cut, "G"))
    assert text.endswith("<think>y</think><answer>G</answer>")
    assert ep.settings.refusal_message not in text and "again" not in text


def test_evidence_filter_keeps_only_trajectories_that_retrieved_the_answer(rows):
    """Oracle episodes search the real closed-world index and find the answer; a trajectory that
    answers without searching, or whose search returned passages without the answer, did not."""
    from deepretrieval.agent.runner import Episode, Segment
    from deepretrieval.agent.seeds import gold_answers
    found = _oracle_episodes(rows, 2)
    assert all(X.retrieved_answer(ep) for ep in found)
    a, b = found
    guess = Episode(a.messages, a.index, a.settings, "", a.row, segments=[
        Segment("<think>I know it</think><answer>Somebody</answer>", False)])
    other = next(ep for ep in _oracle_episodes(rows, 12)
                 if not set(gold_answers(ep.row)) & set(gold_answers(b.row)))
    block = next(blk for blk in P.injected_blocks(other.text) if "Doc 1:" in blk)
    wrong = Episode(b.messages, b.index, b.settings, "", b.row, segments=[
        Segment("<think>x</think><search>something</search>", False),
        Segment(P.information(block), True),
        Segment("<think>y</think><answer>Nobody</answer>", False)])
    assert not X.retrieved_answer(guess) and not X.retrieved_answer(wrong)
    eps = [a, guess, wrong]
    assert X.evidence_kept(eps, "trajectory") == [a]
    assert X.evidence_kept(eps, "question") == [a, guess]     # b's question had no evidence
    assert X.evidence_kept(eps, "none") == eps
    # clean: evidence, and the episode answered by itself with valid turns only
    from dataclasses import replace
    broken = replace(a, actions=[P.Action("invalid", "<search>x</search"), *a.actions])
    out_of_turns = replace(a, finish="max_turns")
    assert X.retrieved_answer(broken) and X.retrieved_answer(out_of_turns)
    assert X.evidence_kept([a, broken, out_of_turns, guess], "clean") == [a]
    assert X.evidence_kept([a, broken, out_of_turns, guess], "trajectory") == [a, broken, out_of_turns]
    # correct: clean, and the episode's own answer is right (not only the gold pasted after it)
    last = a.segments[-1]
    wrong_answer = replace(a, segments=[*a.segments[:-1], replace(
        last, text=last.text[:last.text.rfind("<answer>")] + "<answer>Nobody</answer>")])
    assert wrong_answer.answer == "Nobody"
    assert X.retrieved_answer(wrong_answer) and wrong_answer.finish == "answer"
    assert X.evidence_kept([a, wrong_answer, broken, guess], "clean") == [a, wrong_answer]
    assert X.evidence_kept([a, wrong_answer, broken, guess], "correct") == [a]
    with pytest.raises(ValueError, match="known: correct, clean, trajectory, question, none"):
        X.evidence_kept(eps, "best")
    with pytest.raises(ValueError, match="evidence_filter"):
        X.ExSearchSettings(model="m", output_dir="o", evidence_filter="best")


def test_masked_tokens_contribute_exactly_zero_loss(tiny, rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    eps = _oracle_episodes(rows, 2)
    examples, skipped = XE.make_examples(tok, eps, replace_answer=True, max_length=4096)
    assert skipped == 0 and len(examples) == 2
    ex = examples[0]
    prompt_ids = tok(XE.prompt_text(tok, eps[0]), add_special_tokens=False)["input_ids"]
    assert ex.input_ids[:len(prompt_ids)] == prompt_ids
    assert all(lab == XE.IGNORE for lab in ex.labels[:len(prompt_ids)])
    # labels are -100 exactly on prompt + injected tokens (the runner's own token mask)
    _, traj_mask = eps[0].token_ids(tok)
    n_injected = sum(1 for m in traj_mask if m == 0)
    assert n_injected > 0
    n_ignored = sum(1 for lab in ex.labels if lab == XE.IGNORE)
    injected_ids = sum(len(tok(t, add_special_tokens=False)["input_ids"])
                       for t, k in XE.gold_pieces(eps[0], eps[0].row["reward_model"]["ground_truth"]["target"][0])
                       if k == "injected")
    assert injected_ids == n_injected and n_ignored == len(prompt_ids) + n_injected

    # gradient of the loss w.r.t. the logits: zero on every position whose target is masked
    ids, labels, _, attention = XO._batch(examples, tok.pad_token_id, "cpu")
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=attention).logits
    leaf = base.clone().requires_grad_(True)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids=None, attention_mask=None):
            return type("Out", (), {"logits": leaf})()

    for e in examples:
        e.weight = 0.5
    loss = [None]

    def backward(value):
        loss[0] = value
        value.backward()

    XO.weighted_loss(Fixed(), examples, tok.pad_token_id, n_questions=1, micro_batch=8,
                    backward=backward)
    grad = leaf.grad[:, :-1].abs().sum(-1)          # position t predicts token t+1
    target_masked = labels[:, 1:] == XE.IGNORE
    assert torch.all(grad[target_masked] == 0)
    assert torch.all(grad[~target_masked] > 0)
    # and the value is the mean token NLL over model-written tokens only
    logp = torch.log_softmax(base[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    keep = ~target_masked
    manual = sum(0.5 * float(-(logp[i][keep[i]]).mean()) for i in range(len(examples)))
    assert math.isclose(float(loss[0].detach()), manual, rel_tol=1e-5)


# ---- one E+M iteration, resume ---------------------------------------------------------------

def _settings(tiny, out, **kw):
    base = {"model": tiny, "output_dir": str(out), "iterations": 1, "samples": 3,
            "temperature": 1.0, "max_new_tokens": 8, "max_turns": 2, "learning_rate": 5e-3,
            "seeds": "none", "eval_zero_shot": False, "eval_limit": 1, "questions_per_step": 2,
            "micro_batch": 6, "gen_batch_size": 16, "progress": False, "seed": 3,
            "evidence_filter": "none"}   # the random tiny model never retrieves an answer
    base.update(kw)
    return X.ExSearchSettings(**base)


def _model_state(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_one_iteration_changes_weights_and_lowers_the_weighted_loss(tiny, rows, tmp_path):
    settings = _settings(tiny, tmp_path / "a")
    result = X.train_exsearch(rows[:3], rows[4:5], settings)
    stage = json.loads((tmp_path / "a" / "stages" / "iter-1" / "stage.json").read_text())
    assert stage["estep"]["questions"] == 3 and stage["estep"]["episodes"] == 9
    assert stage["loss_after"] < stage["loss_before"]
    w, after = stage["weights"], stage["weights_after"]
    groups = [json.loads(line)["group"] for line in
              (tmp_path / "a" / "stages" / "iter-1" / "samples.jsonl").read_text().splitlines()]
    for g in set(groups):
        assert math.isclose(sum(x for x, gg in zip(w, groups) if gg == g), 1.0, rel_tol=1e-9)
        assert math.isclose(sum(x for x, gg in zip(after, groups) if gg == g), 1.0, rel_tol=1e-9)
    assert max(abs(a - b) for a, b in zip(w, after)) > 1e-4
    before, trained = _model_state_of(tiny), _model_state(result.model_dir)
    assert any(not torch.equal(before[k], trained[k]) for k in trained)
    assert [s["stage"] for s in result.curve] == ["iter-1"]
    assert "em" in result.curve[0]["eval"]
    assert (tmp_path / "a" / "curve.md").read_text().count("iter-1") == 1

    # interrupted in the middle of the M-step, then resumed: the same result
    def crash(stage, phase, step):
        if phase == "mstep" and step == 1:
            raise XO.Interrupt("simulated crash")

    with pytest.raises(XO.Interrupt):
        X.train_exsearch(rows[:3], rows[4:5], _settings(tiny, tmp_path / "b"), hook=crash)
    assert not (tmp_path / "b" / "stages" / "iter-1").exists()   # nothing half-written
    resumed = X.train_exsearch(rows[:3], rows[4:5], _settings(tiny, tmp_path / "b"))
    again = json.loads((tmp_path / "b" / "stages" / "iter-1" / "stage.json").read_text())
    assert again["weights"] == stage["weights"]
    assert again["loss_after"] == stage["loss_after"]
    assert again["eval"] == stage["eval"]
    a, b = _model_state(result.model_dir), _model_state(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished stage is not redone; other settings are refused
    calls = []
    X.train_exsearch(rows[:3], rows[4:5], _settings(tiny, tmp_path / "b"),
                     hook=lambda *a: calls.append(a))
    assert calls == []
    with pytest.raises(ValueError, match="other settings"):
        X.train_exsearch(rows[:3], rows[4:5], _settings(tiny, tmp_path / "b", samples=2))
    with pytest.raises(ValueError, match="stop_guard"):   # an iteration has finished
        X.train_exsearch(rows[:3], rows[4:5], _settings(tiny, tmp_path / "b", stop_guard="mask"))
    # a run written before a setting existed ran with its default: it resumes
    saved = tmp_path / "b" / "exsearch_settings.json"
    old = json.loads(saved.read_text())
    del old["stop_guard"]
    saved.write_text(json.dumps(old))
    X.train_exsearch(rows[:3], rows[4:5], _settings(tiny, tmp_path / "b"))
    # ... and so is any change to what the run trains or evaluates on (issue 29 item 9)
    for train, test, kw, named in [(rows[:2], rows[4:5], {}, "training rows"),
                                   (rows[1:4], rows[4:5], {}, "training rows"),
                                   (rows[:3], rows[3:5], {}, "evaluation rows"),
                                   (rows[:3], rows[4:5], {"micro_batch": 1}, "micro_batch")]:
        with pytest.raises(ValueError, match=named):
            X.train_exsearch(train, test, _settings(tiny, tmp_path / "b", **kw))


def _model_state_of(path):
    from pathlib import Path
    return _model_state(Path(path))


@pytest.mark.slow
def test_cli_warmup_on_oracle_seeds(tiny, tmp_path, capsys):
    """``train --engine exsearch`` (in-process search): oracle seeds, a warm-up that lowers its
    loss, evaluated; a non-agentic task is a clear error."""
    from deepretrieval.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--engine", "exsearch", "--task", "agent_closedworld", "--model", tiny,
               "--no-service", "--out", str(out), "--iterations", "0", "--no-zero-shot",
               "--limit", "4", "--eval-limit", "1", "--max-turns", "2", "--turn-tokens", "8",
               "--warmup-epochs", "2", "--questions-per-step", "2", "--lr", "2e-3"])
    assert rc == 0
    stage = json.loads((out / "stages" / "warmup" / "stage.json").read_text())
    assert stage["seeds"]["kept"] == 4 and stage["seeds"]["source"] == "oracle"
    assert stage["loss_after"] < stage["loss_before"]
    assert len(stage["step_losses"]) == 4          # 2 epochs x 2 steps of 2 questions
    assert (out / "stages" / "warmup" / "model" / "config.json").is_file()
    assert "| warmup |" in capsys.readouterr().out
    assert main(["train", "--engine", "exsearch", "--task", "scifact", "--model", tiny,
                 "--no-service", "--out", str(tmp_path / "bad")]) == 2
    assert "not an agentic task" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_resume_refuses_changed_rows_task_hops_and_geometry(tiny, tmp_path, capsys):
    """Resuming with --limit, --max-hops, --task or --micro-batch changed was accepted (iteration
    2-3 trained on 2 questions after iteration 1 used 6); each is refused now, naming the setting,
    exit 2 — and the unchanged command still resumes."""
    from deepretrieval.cli import main

    out = tmp_path / "run"
    base = ["train", "--engine", "exsearch", "--model", tiny, "--no-service", "--out", str(out),
            "--iterations", "0", "--no-zero-shot", "--eval-limit", "1", "--max-turns", "2",
            "--turn-tokens", "8", "--questions-per-step", "2", "--lr", "1e-3"]
    first = ["--task", "agent_closedworld", "--limit", "4"]
    assert main(base + first) == 0
    capsys.readouterr()
    for change, named in [(["--task", "agent_closedworld", "--limit", "2"], "training rows"),
                          (["--task", "agent_closedworld", "--limit", "4", "--max-hops", "1"], "rows"),
                          (["--task", "agent_closedworld_f1", "--limit", "4"], "rows"),
                          (first + ["--micro-batch", "1"], "micro_batch")]:
        assert main(base + change) == 2, change
        err = capsys.readouterr().err
        assert err.startswith("error:") and named in err and "Traceback" not in err, (change, err)
    assert main(base + first) == 0
    # no iteration has finished: the iterations' settings may change (a new guard tried from the
    # finished warm-up), the warm-up's may not; the settings file then holds the new ones
    iteration_only = ["--stop-guard", "late", "--replay", "0.5", "--mstep-lr", "1e-4",
                      "--evidence-filter", "correct", "--num-generations", "2",
                      "--mstep-optimizer", "sgd"]
    assert main(base + first + iteration_only) == 0
    saved = json.loads((out / "exsearch_settings.json").read_text())
    assert saved["stop_guard"] == "late" and saved["replay"] == 0.5
    assert saved["mstep_optimizer"] == "sgd"
    capsys.readouterr()
    assert main([*base[:-1], "2e-3"] + first + iteration_only) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_settings_are_checked():
    with pytest.raises(ValueError, match="seed source"):
        X.ExSearchSettings(model="m", output_dir="o", seeds="magic")
    with pytest.raises(ValueError, match="teacher_model"):
        X.ExSearchSettings(model="m", output_dir="o", seeds="teacher")
    with pytest.raises(ValueError, match="weight_temperature"):
        X.ExSearchSettings(model="m", output_dir="o", weight_temperature=0)


@pytest.mark.slow
def test_an_iteration_whose_samples_found_no_evidence_trains_on_nothing(tiny, rows, tmp_path):
    """The default filter on the random tiny model (it never searches its way to an answer):
    the iteration keeps no trajectory, takes no optimizer step and leaves the model as it was."""
    settings = _settings(tiny, tmp_path / "f", evidence_filter="clean")
    result = X.train_exsearch(rows[:2], rows[4:5], settings)
    stage = json.loads((tmp_path / "f" / "stages" / "iter-1" / "stage.json").read_text())
    assert stage["estep"]["episodes"] == 6 and stage["estep"]["sample_hit"] == 0.0
    assert stage["estep"]["episodes_kept"] == 0 and stage["estep"]["questions_kept"] == 0
    assert stage["examples"] == 0 and stage["step_losses"] == [] and stage["loss_before"] is None
    before, after = _model_state_of(tiny), _model_state(result.model_dir)
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_replay_trains_an_iteration_on_the_seeds_when_its_samples_are_filtered_out(tiny, rows, tmp_path):
    """``replay``: the M-step of an iteration also trains on the seed trajectories of its
    questions (weight ``replay / n`` per seed); with the random tiny model no sample survives the
    filter, so the iteration's steps are the replayed seeds alone and they move the weights."""
    settings = _settings(tiny, tmp_path / "r", evidence_filter="correct", seeds="oracle",
                         warmup_epochs=1, replay=0.5, mstep_learning_rate=1e-3)
    result = X.train_exsearch(rows[:2], rows[4:5], settings)
    stage = json.loads((tmp_path / "r" / "stages" / "iter-1" / "stage.json").read_text())
    assert stage["estep"]["episodes_kept"] == 0 and stage["examples"] == 0
    assert stage["replay"]["examples"] == 2 and stage["replay"]["questions"] == 2
    assert stage["examples_trained"] == 2 and len(stage["step_losses"]) == 1
    warm = _model_state(tmp_path / "r" / "stages" / "warmup" / "model")
    after = _model_state(result.model_dir)
    assert any(not torch.equal(warm[k], after[k]) for k in after)
    with pytest.raises(ValueError, match="replay needs seed"):
        X.ExSearchSettings(model="m", output_dir="o", seeds="none", replay=1.0)
    with pytest.raises(ValueError, match="mstep_learning_rate"):
        X.ExSearchSettings(model="m", output_dir="o", mstep_learning_rate=0)


# ---- the stop guard (issue 28 item 3) ---------------------------------------------------------

def _early_and_late(rows):
    """Real closed-world oracle episodes of the same 1-hop questions: with the rows' 4 turns the
    oracle answers on turn 2 on its own (early); with 2 turns its answer turn is the last one and
    follows the environment's last-turn note (late)."""
    from deepretrieval.agent.runner import episodes_from_rows
    one_hop = [r for r in rows if r["extra_info"]["hops"] == 1][:2]
    early = run_rows(OraclePolicy(), one_hop)
    base = episodes_from_rows(one_hop[:1])[0].settings
    late = run_rows(OraclePolicy(), one_hop, settings=P.AgentSettings(**{**base.to_dict(), "max_turns": 2}))
    return early, late


def test_answered_early_is_the_stop_decision_before_the_last_turn(rows):
    early, late = _early_and_late(rows)
    for ep in early:
        assert ep.finish == "answer" and ep.turns == 2 and ep.settings.max_turns == 4
        assert XE.answered_early(ep)
        assert ep.settings.last_turn_note not in ep.text
    for ep in late:
        assert ep.finish == "answer" and ep.turns == 2 == ep.settings.max_turns
        assert not XE.answered_early(ep)
        assert ep.settings.last_turn_note in ep.text      # told to answer, not its own decision
    from dataclasses import replace
    assert not XE.answered_early(replace(early[0], finish="max_turns"))


def test_mask_final_turn_leaves_the_turns_before_the_answer(tiny, rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    early, _ = _early_and_late(rows)
    ep = early[0]
    gold = ep.row["reward_model"]["ground_truth"]["target"][0]
    (ex,), _ = XE.make_examples(tok, [ep], replace_answer=True, max_length=4096)
    assert ex.record["answered_early"] and ex.record["turns"] == 2
    # final_turn is where the last model turn's tokens begin: that turn, the gold answer, the end
    last = XE.gold_pieces(ep, gold)[-3:]
    assert tok.decode(ex.input_ids[ex.final_turn:]) == "".join(t for t, _ in last) + tok.eos_token
    labels = list(ex.labels)
    XE.mask_final_turn(ex)
    assert ex.labels[:ex.final_turn] == labels[:ex.final_turn]
    assert all(lab == XE.IGNORE for lab in ex.labels[ex.final_turn:])
    # the first turn (the search) is still trained on; the answer turn is not
    first = ex.labels[:ex.final_turn]
    assert any(lab != XE.IGNORE for lab in first)
    assert sum(ex.answer_mask[ex.final_turn:]) == sum(ex.answer_mask) > 0
    seed_ex, _ = XE.make_examples(tok, [ep], replace_answer=False, max_length=4096)
    with pytest.raises(ValueError, match="last turn"):
        XE.mask_final_turn(seed_ex[0])


@pytest.mark.parametrize("guard", ["none", "late", "mask"])
def test_stop_guard_selects_and_masks_sampled_trajectories(tiny, rows, guard, tmp_path):
    """The M-step data of real episodes under each guard: ``late`` keeps only the trajectories
    that answered on their last turn, ``mask`` keeps all and removes the loss of the early ones'
    answer turn (their weights from ``log p(y|x,z)`` read before masking, as with ``none``)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    early, late = _early_and_late(rows)
    settings = _settings(tiny, tmp_path, evidence_filter="correct", stop_guard=guard)
    examples, skipped, stats = X.weighted_examples(model, tok, early + late, settings, Accelerator(cpu=True))
    assert skipped == 0 and stats["episodes"] == 4 and stats["episodes_filtered"] == 4
    assert stats["answered_early"] == 0.5 and stats["stop_guard"] == guard
    if guard == "late":
        assert [e.record["answered_early"] for e in examples] == [False, False]
        assert stats["episodes_kept"] == 2 and stats["stop_masked"] == 0
    else:
        assert [e.record["answered_early"] for e in examples] == [True, True, False, False]
        assert stats["episodes_kept"] == 4
    reference, _, _ = X.weighted_examples(model, tok, early + late,
                                          _settings(tiny, tmp_path, evidence_filter="correct"),
                                          Accelerator(cpu=True))
    by_traj = {e.record["trajectory"]: e for e in reference}
    for e in examples:
        ref = by_traj[e.record["trajectory"]]
        assert e.loglik == ref.loglik                     # scored before any masking
        masked = guard == "mask" and e.record["answered_early"]
        assert e.record.get("stop_masked", False) == masked
        if masked:
            assert all(lab == XE.IGNORE for lab in e.labels[e.final_turn:])
            assert e.labels[:e.final_turn] == ref.labels[:e.final_turn]
        else:
            assert e.labels == ref.labels
    if guard == "mask":
        assert stats["stop_masked"] == 2
    with pytest.raises(ValueError, match="stop_guard"):
        X.ExSearchSettings(model="m", output_dir="o", stop_guard="never")


# ---- the M-step optimizer (issue 28 item 3, round 5) --------------------------------------------

def _weighted_oracle_examples(tok, rows, n=2):
    """Real oracle trajectories of ``n`` questions as M-step examples, gold answer in place,
    weight 1 each (one per question)."""
    examples, skipped = XE.make_examples(tok, _oracle_episodes(rows, n), replace_answer=True,
                                         max_length=4096)
    assert skipped == 0 and len(examples) == n
    for e in examples:
        e.weight = 1.0
    return examples


@pytest.mark.parametrize("name, kind", [("sgd", "SGD"), ("adamw", "AdamW")])
def test_mstep_optimizer_step(tiny, rows, name, kind, tmp_path):
    """``mstep_optimizer``: ``sgd`` is plain SGD (no momentum, no decay): one M-step moves every
    weight by exactly ``-lr * gradient`` of the weighted loss, so a small loss moves the model a
    little; ``adamw``'s first step moves every weight with a gradient by about ``lr``, whatever
    the gradient's size (the measured failure: docs/experiments/agentic_quickstart.md)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    # float64: the update is compared with lr * gradient far below float32's rounding of weights
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64)
    examples = _weighted_oracle_examples(tok, rows)
    # the gradient of the M-step's loss at the starting weights (the same loss fit() steps on)
    model.zero_grad(set_to_none=True)
    XO.weighted_loss(model, examples, tok.pad_token_id, n_questions=2, micro_batch=4,
                     backward=lambda v: v.backward())
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert len(grads) > 0 and any(float(g.abs().max()) > 0 for g in grads.values())

    lr = 1e-2
    settings = _settings(tiny, tmp_path, mstep_optimizer=name, mstep_learning_rate=lr)
    acc = Accelerator(cpu=True)
    prepared, optimizer = X._prepare(model, settings, acc, lr=lr, optimizer=settings.mstep_optimizer)
    inner = optimizer.optimizer                                  # Accelerate's wrapper
    assert type(inner).__name__ == kind and inner.param_groups[0]["lr"] == lr
    steps = XO.fit(prepared, examples, tok.pad_token_id, accelerator=acc, optimizer=optimizer,
                   epochs=1, questions_per_step=2, micro_batch=4, seed=0)
    assert len(steps) == 1
    trained = dict(X._finish(prepared, acc, settings).named_parameters())
    for k, g in grads.items():
        delta = trained[k].detach() - start[k]
        if name == "sgd":
            torch.testing.assert_close(delta, -lr * g, rtol=1e-6, atol=1e-15)
        else:  # AdamW's first step: lr * g / (|g| + eps) — the gradient's sign, not its size
            moved = delta[g.abs() > 1e-4].abs()
            torch.testing.assert_close(moved, torch.full_like(moved, lr), rtol=1e-2, atol=0)
    if name == "sgd":   # the two differ: SGD's largest move is far below AdamW's lr per weight
        assert max(float((trained[k].detach() - start[k]).abs().max()) for k in grads) < lr


def test_mstep_optimizer_is_checked_and_reaches_the_mstep(tiny, rows, tmp_path, monkeypatch):
    """An unknown optimizer name is refused with the known ones; the setting reaches the
    M-steps' optimizer (the warm-up keeps AdamW)."""
    with pytest.raises(ValueError, match="known: adamw, sgd"):
        X.ExSearchSettings(model="m", output_dir="o", mstep_optimizer="adam")
    settings = _settings(tiny, tmp_path / "o", seeds="oracle", warmup_epochs=1,
                         mstep_optimizer="sgd", mstep_learning_rate=1e-3)
    with pytest.raises(ValueError, match="known: adamw, sgd"):
        X._prepare(None, settings, None, lr=1e-3, optimizer="adam")
    used = []
    prepare = X._prepare

    def spy(model, settings, accelerator, *, lr, optimizer="adamw"):
        model, opt = prepare(model, settings, accelerator, lr=lr, optimizer=optimizer)
        used.append((type(opt.optimizer).__name__, lr))
        return model, opt

    monkeypatch.setattr(X, "_prepare", spy)
    X.train_exsearch(rows[:2], rows[4:5], settings)
    assert used == [("AdamW", 5e-3), ("SGD", 1e-3)]
    saved = json.loads((tmp_path / "o" / "exsearch_settings.json").read_text())
    assert saved["mstep_optimizer"] == "sgd"
