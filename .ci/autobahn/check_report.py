#!/usr/bin/env python3
"""Check an Autobahn|Testsuite fuzzingclient report (OUTDIR/index.json).

Exit 0 if every case ran and none has behavior/behaviorClose in the failing
set (default: FAILED, UNIMPLEMENTED); exit 1 otherwise (also when index.json is
missing/corrupt or fewer cases ran than expected). Standard library only.

usage: check_report.py OUTDIR [--expected FILE] [--min-cases N] [--fail-on A,B]
"""
import argparse
import html
import json
import os
import re
import sys
from collections import Counter

MAIN = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]


def case_key(cid):
    return tuple(int(x) if x.isdigit() else 0 for x in cid.split("."))


def clean(text, limit=600):
    """Autobahn descriptions/results are HTML-ish; make them one readable line."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = json.dumps(text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    text = " ".join(html.unescape(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def fmt_counts(counter):
    keys = MAIN + sorted(k for k in counter if k not in MAIN)
    return "  ".join("%s=%d" % (k, counter.get(k, 0)) for k in keys)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--expected", help="JSON list of case ids that should have run")
    ap.add_argument("--min-cases", type=int, default=1,
                    help="sanity floor on number of cases run")
    ap.add_argument("--fail-on", default="FAILED,UNIMPLEMENTED",
                    help="comma list of behavior/behaviorClose values that fail the run")
    args = ap.parse_args()
    fail_on = {s.strip() for s in args.fail_on.split(",") if s.strip()}

    index_path = os.path.join(args.outdir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("autobahn-check: cannot read %s: %s" % (index_path, e))
        print("autobahn-check: wstest produced no report (crashed, timed out, or never connected); see wstest.log")
        print("autobahn: 0 passed, 1 failed")
        return 1
    if not index:
        print("autobahn-check: %s has no agents (no case ran)" % index_path)
        print("autobahn: 0 passed, 1 failed")
        return 1

    expected = None
    if args.expected:
        with open(args.expected) as f:
            expected = json.load(f)

    rc = 0
    total_pass = total_fail = 0
    for agent in sorted(index):
        cases = index[agent]
        ids = sorted(cases, key=case_key)
        beh = Counter(cases[c].get("behavior") for c in ids)
        bclose = Counter(cases[c].get("behaviorClose") for c in ids)
        want = len(expected) if expected is not None else None

        print("=" * 78)
        print("Autobahn|Testsuite fuzzingclient results, agent %r: %d cases run%s"
              % (agent, len(ids), "" if want is None else " (expected %d)" % want))
        print("  behavior:      " + fmt_counts(beh))
        print("  behaviorClose: " + fmt_counts(bclose))
        groups = Counter(c.split(".")[0] for c in ids)
        print("  cases per group: " + " ".join("%s.*=%d" % (g, groups[g])
                                               for g in sorted(groups, key=int)))
        dur = sum(cases[c].get("duration") or 0 for c in ids)
        slow = sorted(ids, key=lambda c: -(cases[c].get("duration") or 0))[:3]
        print("  sum of case durations: %.1fs (slowest: %s)" % (dur / 1000.0, ", ".join(
            "%s %.1fs" % (c, (cases[c].get("duration") or 0) / 1000.0) for c in slow)))

        failing = [c for c in ids
                   if cases[c].get("behavior") in fail_on or cases[c].get("behaviorClose") in fail_on]
        soft = [c for c in ids if c not in failing and (
            cases[c].get("behavior") != "OK" or cases[c].get("behaviorClose") != "OK")]

        missing = []
        if expected is not None:
            missing = sorted(set(expected) - set(ids), key=case_key)

        if soft:
            print("-" * 78)
            print("Not failing, but not strictly OK (%d):" % len(soft))
            for c in soft:
                r = cases[c]
                print("  %-8s behavior=%-13s close=%-13s code=%s" % (
                    c, r.get("behavior"), r.get("behaviorClose"), r.get("remoteCloseCode")))

        if failing:
            print("-" * 78)
            print("FAILING CASES (%d) [fail-on: %s]:" % (len(failing), ",".join(sorted(fail_on))))
            for c in failing:
                r = cases[c]
                detail = {}
                rf = r.get("reportfile")
                if rf:
                    try:
                        with open(os.path.join(args.outdir, rf)) as f:
                            detail = json.load(f)
                    except (OSError, ValueError):
                        pass
                print("")
                print("  case %s: behavior=%s behaviorClose=%s remoteCloseCode=%s duration=%sms" % (
                    c, r.get("behavior"), r.get("behaviorClose"), r.get("remoteCloseCode"),
                    r.get("duration")))
                if detail:
                    print("    description: " + clean(detail.get("description")))
                    print("    expectation: " + clean(detail.get("expectation")))
                    print("    result:      " + clean(detail.get("result")))
                    print("    resultClose: " + clean(detail.get("resultClose")))
                    exp = detail.get("expected")
                    if exp:
                        print("    expected events: " + clean(exp, 300))
                    print("    received events: " + clean(detail.get("received"), 300))
                if rf:
                    print("    report: " + os.path.join(args.outdir, rf[:-5] + ".html"
                                                        if rf.endswith(".json") else rf))
            rc = 1

        if missing:
            print("-" * 78)
            print("MISSING CASES (%d expected but not in report; server crashed/refused connections?):"
                  % len(missing))
            print("  " + " ".join(missing))
            rc = 1
        if len(ids) < args.min_cases:
            print("-" * 78)
            print("TOO FEW CASES: %d run, sanity minimum is %d" % (len(ids), args.min_cases))
            rc = 1

        total_fail += len(failing) + len(missing)
        total_pass += len(ids) - len(failing)

    print("=" * 78)
    print("autobahn-check: %s" % ("PASS" if rc == 0 else "FAIL"))
    if rc and total_fail == 0:
        total_fail = 1  # too few cases: make the closing line say failed
    print("autobahn: %d passed, %d failed" % (total_pass, total_fail))
    return rc


if __name__ == "__main__":
    sys.exit(main())
