"""``deepretrieval paper-check FILE.jsonl``: replay recorded original rewards under ``paper``."""
from __future__ import annotations

import sys
from pathlib import Path

from deepretrieval.paper.check import BUNDLED_DB_ROOT, load_cases, replay
from deepretrieval.paper.engine import RAISE_RULES


def register(sub) -> None:
    p = sub.add_parser(
        "paper-check", help="recompute recorded original DeepRetrieval rewards under the paper profile",
        description="Recompute every case of a recorded-rewards file (the format of "
                    "tests/data/original_rewards/) from the case alone under the `paper` profile; "
                    "print agreement per family and per original module and every disagreement. "
                    "Exit status 1 on any disagreement. Cases where the original raised count as "
                    "agreeing when a defined score is returned (its rule is printed).")
    p.add_argument("file", help="cases JSONL (.gz ok)")
    p.add_argument("--db-root", help="folder holding <db>/<db>.sqlite for SQL cases "
                                     "(default: the Spider databases bundled with the package)")
    p.add_argument("--show-raised", action="store_true",
                   help="list the cases where the original raised, with the score returned")
    p.set_defaults(func=cmd_paper_check)


def cmd_paper_check(args) -> int:

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"no such cases file: {path}")
    cases = load_cases(path)
    db_root = Path(args.db_root) if args.db_root else BUNDLED_DB_ROOT

    def progress(n):
        if n % 200 == 0 or n == len(cases):
            print(f"  {n}/{len(cases)} cases", file=sys.stderr)

    report = replay(cases, db_root, progress)
    for key, title in (("family", "family"), ("module", "original module")):
        print(f"\n{title:<36} {'cases':>6} {'agree':>6} {'raised':>7}")
        for name, n, ok, raised in report.table(key):
            print(f"{name:<36} {n:>6} {ok:>6} {raised:>7}  {100.0 * ok / n:6.2f} %")
    total = len(report.outcomes)
    bad = report.disagreements
    scored = [o for o in report.outcomes if not o.raised_in_original]
    scored_ok = sum(o.agrees and o.dispatch_ok for o in scored)
    raised = [o for o in report.outcomes if o.raised_in_original]
    print(f"\nscored by the original: {scored_ok}/{len(scored)} agree; "
          f"raised in the original: {sum(o.agrees for o in raised)}/{len(raised)} got a defined score")
    if args.show_raised and raised:
        print("\ncases where the original raised (score returned, rule):")
        for o in raised:
            print(f"  {o.case_id} {o.module}: {o.got} ({o.rule}: {RAISE_RULES.get(o.rule, '?')})")
    if bad:
        print(f"\n{len(bad)} disagreement(s):")
        for o in bad:
            if o.error:
                what = o.error
            elif not o.dispatch_ok:
                what = "our module choice differs from the original trainer's dispatch"
            elif not o.depth_ok:
                what = "searched depth differs from the case's k_used"
            elif o.raised_in_original:
                what = f"original raised; ours {o.got} without a documented rule"
            else:
                what = f"original {o.expected} vs ours {o.got}"
            print(f"  {o.case_id} [{o.family} / {o.module}]: {what}")
        return 1
    print(f"all {total} cases agree")
    return 0
