#!/usr/bin/env python3
"""Counts and gate for hack/run-critest.sh, read from critest's JUnit reports.

  gate.py skip-regex SKIPS            the --ginkgo.skip regex: exactly the specs named in SKIPS
  gate.py summary NAME REPORT SKIPS EXCEPTIONS
                                      one pass: ran, passed, failed, skipped (with reasons)
  gate.py plain NAME REPORT           one pass in one line: "critest-NAME: P passed, F failed, S skipped"
  gate.py gate SKIPS EXCEPTIONS CONTROL=REPORT NAME=REPORT...
        every pass passes every spec the control passes, except the specs
        EXCEPTIONS names for that pass; an exception whose spec passed is stale.

SKIPS lines:      <spec name> | <reason>
EXCEPTIONS lines: <pass> | <spec name> | <reason>
(the reason is what follows the last '|'; a spec name may hold '|' itself)
A spec name is Ginkgo's full text, as critest prints it without "[It] ".
'#' starts a comment line. Exit status 1 when a check fails, 2 on bad input.
"""

import sys
import xml.etree.ElementTree as ET

# The description critest_test.go gives RunSpecs: Ginkgo matches --ginkgo.skip
# against it, a space and the spec's full text.
SUITE = "CRI validation (cri-tools pkg/validate)"
RAN = ("passed", "failed", "panicked", "interrupted", "timedout", "aborted")


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def read_table(path, fields):
    """Lines of `fields` columns separated by '|', comments and blanks left out.
    The spec name may hold '|' itself: the first column of three and the last
    column (the reason) may not."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, _, reason = line.rpartition("|")
            cols = head.split("|", 1) if fields == 3 else [head]
            cols = [c.strip() for c in cols + [reason]]
            if len(cols) != fields or not all(cols):
                die(f"{path}:{n}: want {fields} non-empty columns separated by '|'")
            rows.append(cols)
    return rows


def read_skips(path):
    skips = {}
    for name, reason in read_table(path, 2):
        if name in skips:
            die(f"{path}: {name!r} listed twice")
        skips[name] = reason
    return skips


def read_exceptions(path):
    exc = {}
    for pass_name, name, reason in read_table(path, 3):
        if (pass_name, name) in exc:
            die(f"{path}: {pass_name} | {name!r} listed twice")
        exc[(pass_name, name)] = reason
    return exc


def go_regexp_quote(s):
    """Quote s for Go's RE2 (which rejects escaped letters and spaces)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in s)


class Spec:
    def __init__(self, name, status, message):
        self.name, self.status, self.message = name, status, message


def read_report(path):
    """The specs of a Ginkgo JUnit report (the suite's setup nodes apart)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        die(f"cannot read JUnit report {path}: {e}")
    specs, setup_failures = {}, []
    for tc in root.iter("testcase"):
        name, status = tc.get("name", ""), tc.get("status", "")
        msg = ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                msg = (el.get("message") or "").strip()
                break
        if not name.startswith("[It] "):
            # [BeforeSuite], [AfterSuite], [ReportAfterSuite]...: not specs.
            if status not in ("passed", "skipped"):
                setup_failures.append(f"{name}: {status}: {msg}")
            continue
        name = name[len("[It] "):]
        specs[name] = Spec(name, status, msg)
    if not specs:
        die(f"{path} lists no specs")
    return specs, setup_failures


def skip_reason(spec, skips):
    if spec.name in skips:
        return f"skips.txt: {skips[spec.name]}"
    msg = spec.message
    if msg.startswith("skipped - "):
        msg = msg[len("skipped - "):]
    return f"the spec skipped itself: {msg}" if msg and msg != "skipped" else "skipped"


def first_line(s, limit=220):
    """The first line, its end kept when long (errors name their cause last)."""
    s = s.strip().splitlines()[0] if s.strip() else ""
    return s if len(s) <= limit else "..." + s[-(limit - 3):]


def summary(name, report, skips_path, exceptions_path):
    skips = read_skips(skips_path)
    exceptions = read_exceptions(exceptions_path)
    specs, setup_failures = read_report(report)
    ran = [s for s in specs.values() if s.status in RAN]
    passed = [s for s in ran if s.status == "passed"]
    failed = [s for s in ran if s.status != "passed"]
    skipped = [s for s in specs.values() if s.status not in RAN]
    bad = 0
    print(f"critest {name}: {len(specs)} specs, {len(ran)} ran, {len(passed)} passed, "
          f"{len(failed)} failed, {len(skipped)} skipped")
    # Failures exceptions.txt expects: counted, one line each kind (the gate lists them).
    expected = {}
    for s in sorted(failed, key=lambda s: s.name):
        if (name, s.name) in exceptions:
            expected.setdefault(exceptions[(name, s.name)], []).append(s)
        else:
            print(f"  FAILED  {s.name}: {s.status}: {first_line(s.message)}")
    for reason, group in sorted(expected.items()):
        print(f"  failed  {len(group):3d}  as exceptions.txt expects: {reason} "
              f"(first: {first_line(group[0].message, 160)})")
    reasons = {}
    for s in skipped:
        reasons.setdefault(skip_reason(s, skips), []).append(s.name)
    for reason, names in sorted(reasons.items()):
        print(f"  skipped {len(names):3d}  {reason}")
    # A spec skips.txt names must exist, and must not have run.
    for spec_name in skips:
        s = specs.get(spec_name)
        if s is None:
            print(f"  ERROR   skips.txt names a spec this critest does not have: {spec_name}")
            bad = 1
        elif s.status in RAN:
            print(f"  ERROR   skips.txt names a spec that ran anyway: {spec_name}")
            bad = 1
    for f in setup_failures:
        print(f"  ERROR   suite setup: {first_line(f)}")
        bad = 1
    return 1 if failed or bad else 0


def plain(name, report):
    """The closing line of a pass: "critest-NAME: P passed, F failed, S skipped"."""
    specs, _ = read_report(report)
    ran = [s for s in specs.values() if s.status in RAN]
    passed = sum(1 for s in ran if s.status == "passed")
    print(f"critest-{name}: {passed} passed, {len(ran) - passed} failed, "
          f"{len(specs) - len(ran)} skipped")
    return 0


def gate(skips_path, exceptions_path, control_arg, pass_args):
    read_skips(skips_path)
    exceptions = read_exceptions(exceptions_path)
    control_name, control_report = control_arg.split("=", 1)
    control, _ = read_report(control_report)
    want = sorted(n for n, s in control.items() if s.status == "passed")
    status = 0
    passes = []
    for arg in pass_args:
        name, report = arg.split("=", 1)
        passes.append(name)
        specs, _ = read_report(report)
        missing, used, stale = [], [], []
        for spec_name in want:
            s = specs.get(spec_name)
            ok = s is not None and s.status == "passed"
            if (name, spec_name) in exceptions:
                (stale if ok else used).append(spec_name)
            elif not ok:
                missing.append((spec_name, s.status if s else "absent"))
        for (p, spec_name) in exceptions:
            if p == name and spec_name not in want:
                print(f"gate {name}: ERROR exception for a spec {control_name} did not pass: {spec_name}")
                status = 1
        verdict = "ok" if not missing and not stale else "FAILED"
        print(f"gate {name}: {verdict}: of the {len(want)} specs {control_name} passed, "
              f"{len(want) - len(missing) - len(used)} passed, {len(used)} failed as "
              f"exceptions.txt expects, {len(missing)} did not pass")
        for spec_name, st in missing:
            print(f"  NOT PASSED ({st}): {spec_name}")
        by_reason = {}
        for spec_name in used:
            by_reason.setdefault(exceptions[(name, spec_name)], []).append(spec_name)
        for reason, names in sorted(by_reason.items()):
            print(f"  excepted ({len(names)}), {reason}:")
            for spec_name in names:
                print(f"    {spec_name}")
        for spec_name in stale:
            print(f"  STALE EXCEPTION (the spec passed; remove it from exceptions.txt): {spec_name}")
        if verdict != "ok":
            status = 1
    idle = {}
    for (p, _) in exceptions:
        if p not in passes:
            idle[p] = idle.get(p, 0) + 1
    for p, n in sorted(idle.items()):
        print(f"gate: note: exceptions.txt has {n} entries for pass {p}, which did not run")
    return status


def main(argv):
    if len(argv) >= 3 and argv[1] == "skip-regex":
        names = read_skips(argv[2])
        if not names:
            die(f"{argv[2]} lists no specs")
        print("^" + go_regexp_quote(SUITE) + " (" + "|".join(go_regexp_quote(n) for n in names) + ")$")
        return 0
    if len(argv) == 6 and argv[1] == "summary":
        return summary(argv[2], argv[3], argv[4], argv[5])
    if len(argv) == 4 and argv[1] == "plain":
        return plain(argv[2], argv[3])
    if len(argv) >= 6 and argv[1] == "gate":
        return gate(argv[2], argv[3], argv[4], argv[5:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
