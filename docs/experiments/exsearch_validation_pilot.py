"""Validation pilot for the stop guard (issue 28 item 3): one ExSearch iteration from the finished
warm-up, its E-step sampled once (the main run's iteration-1 E-step: same model, rows, seed),
then one M-step per guard, each evaluated greedily on a VALIDATION split held out of the train
questions (train rows 48..71: never in the warm-up's seeds nor in any E-step). Never the test set.

    python docs/experiments/exsearch_validation_pilot.py WARMUP_MODEL OUT warmup,late,mask@1e-6,... [QUESTIONS]

WARMUP_MODEL: ``stages/warmup/model`` of the ExSearch run (--limit 48, oracle seeds); each spec is
``GUARD[@[OPTIMIZER:]MSTEP_LR]`` (optimizer ``adamw`` or ``sgd``, default adamw; lr default 1e-5),
e.g. ``mask@sgd:1e-2``; ``warmup`` evaluates the warm-up itself. QUESTIONS: E-step questions
(default 12, the main runs' --questions-per-iteration). Settings as the main run's
(docs/experiments/agentic_quickstart.md); one thread. Prints one ``[pilot]`` line per stage, with
how far the M-step moved the weights (L2 norm and largest absolute change)."""
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator

from deepretrieval.agent.evaluate import evaluate_agent
from deepretrieval.catalog import get_task
from deepretrieval.data.closed_world import closed_world_rows
from deepretrieval.generation.local import TransformersGenerator
from deepretrieval.train.exsearch import loop as X
from deepretrieval.train.exsearch.objective import fit, mean_weighted_loss

torch.set_num_threads(1)
WARM = sys.argv[1]
OUT = Path(sys.argv[2])
OUT.mkdir(parents=True, exist_ok=True)
guards = sys.argv[3].split(",")
questions = int(sys.argv[4]) if len(sys.argv) > 4 else 12
rows = closed_world_rows(get_task("agent_closedworld"), "train")
train, val = rows[:48], rows[48:72]
base = X.ExSearchSettings(model=WARM, output_dir=str(OUT), iterations=2, samples=4, temperature=0.7,
                          max_new_tokens=32, evidence_filter="correct", learning_rate=1e-4,
                          mstep_learning_rate=1e-5, questions_per_iteration=questions, questions_per_step=4,
                          micro_batch=4, gen_batch_size=48, seeds="oracle", progress=False)
acc = Accelerator(cpu=True)
tok, model = X._load(WARM)
pad = tok.pad_token_id

def evaluate(m, name):
    t = time.time()
    rep = evaluate_agent(TransformersGenerator(m, tok), val, out_dir=OUT / f"eval-{name}",
                         max_new_tokens=32, batch_size=24, plot=False, references=False, progress=False, name=name)
    s = rep["summary"]
    print(f"[pilot] {name}: val EM {s['em']:.3f} F1 {s['f1']:.3f} searches {s['n_search']:.2f} "
          f"({time.time()-t:.0f}s)", flush=True)
    return s

res = {}
if "warmup" in guards:
    res["warmup"] = evaluate(model, "warmup")
it_rows = X._iteration_rows(train, base, 1, len(train))
t = time.time()
eps = X.sample_episodes(model, tok, it_rows, base, None, None, acc, seed=2)
print(f"[pilot] E-step: {len(eps)} episodes ({time.time()-t:.0f}s)", flush=True)
state = copy.deepcopy(model.state_dict())
for spec in [g for g in guards if g != "warmup"]:
    g, _, opt_lr = spec.partition("@")
    opt_name, _, lr = opt_lr.rpartition(":")
    model.load_state_dict(state)
    st = replace(base, stop_guard=g, mstep_learning_rate=float(lr or 1e-5),
                 mstep_optimizer=opt_name or "adamw")
    ex, skipped, stats = X.weighted_examples(model, tok, eps, st, acc)
    m, opt = X._prepare(model, st, acc, lr=st.mstep_learning_rate, optimizer=st.mstep_optimizer)
    before = mean_weighted_loss(m, ex, pad, 4) if ex else None
    steps = fit(m, [e for e in ex if e.weight >= st.min_weight], pad, accelerator=acc, optimizer=opt,
                epochs=1, questions_per_step=4, micro_batch=4, seed=2, groups={e.group for e in ex})
    after = mean_weighted_loss(m, ex, pad, 4) if ex else None
    m = X._finish(m, acc, st)
    with torch.no_grad():
        delta = [(p - state[k]).double() for k, p in m.named_parameters()]  # tied weights once
    moved = {"l2": float(sum((d * d).sum() for d in delta) ** 0.5),
             "max_abs": float(max(d.abs().max() for d in delta))}
    g = spec
    print(f"[pilot] {g}: estep {json.dumps(stats)} loss {before} -> {after} steps {len(steps)} "
          f"moved {json.dumps(moved)}", flush=True)
    res[g] = {"estep": stats, "loss": [before, after], "steps": steps, "moved": moved,
              "eval": evaluate(m, g)}
    model = m
(OUT / "pilot.json").write_text(json.dumps(res, indent=2))
