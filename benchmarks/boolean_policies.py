"""How much room the Boolean engine leaves for a learned query on SciFact (test split):
recall@100 and the scifact_boolean reward of simple query policies, side by side with the claim
itself (the original query). Re-measures notes/boolean-feasibility.md on the real backend.

    PYTHONPATH=. python benchmarks/boolean_policies.py
"""
import re
from deepretrieval.cli.core import bundled_rows
from deepretrieval.evaluation.scoring import score_queries, summarize
from deepretrieval.catalog import open_index
ix = open_index("scifact_boolean")
rows = bundled_rows("scifact_boolean", "test")
an = ix.analyzer
def df(t):
    return len(set(ix.fields.postings("ti", t).tolist()) | set(ix.fields.postings("ab", t).tolist()))
def content(claim):
    out = []
    for w in re.findall(r"(?u)\b\w\w+\b", claim):
        ids = an.ids(w)
        if len(ids) == 1 and ids[0] >= 0 and w.lower() not in [o.lower() for o in out]:
            out.append(w)
    return out
def by_idf(claim):
    ws = content(claim)
    return sorted(ws, key=lambda w: df(an.ids(w)[0]))
claims = [r["extra_info"]["query"] for r in rows]
policies = {
  "claim (AND)": claims,
  "3 highest-IDF terms AND": [" ".join(by_idf(c)[:3]) for c in claims],
  "2 highest-IDF terms AND": [" ".join(by_idf(c)[:2]) for c in claims],
  "highest-IDF term": [" ".join(by_idf(c)[:1]) for c in claims],
  "its first content word": [" ".join(content(c)[:1]) for c in claims],
  "its first 2 content words ANDed": [" ".join(content(c)[:2]) for c in claims],
  "all claim terms OR": [" OR ".join(content(c)) for c in claims],
}
print("| query policy (test, 300 claims) | recall@100 | score | zero-hit claims |")
print("|---|---|---|---|")
for name, qs in policies.items():
    s = summarize(score_queries(rows, qs))
    res = ix.search(qs, 100)
    print(f"| {name} | {s['recall']:.3f} | {s['score']:.3f} | {sum(not r.ids for r in res)} |")
