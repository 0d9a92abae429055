#!/usr/bin/env python3
"""Tests of gate.py on made-up JUnit reports (hack/run-critest.sh runs them first)."""

import contextlib
import io
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gate  # noqa: E402

A = "[k8s.io] Pod should run [Conformance]"
B = "[k8s.io] Container should exec"
C = "[k8s.io] Image Manager status get image fields should not have Uid|Username empty"
D = "[k8s.io] AppArmor should enforce"
E = "[k8s.io] Pending spec"


def junit(cases, setup="passed"):
    """A Ginkgo-shaped JUnit report: cases are (name, status, message)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="s">',
           f'<testcase name="[BeforeSuite]" status="{setup}"></testcase>']
    for name, status, msg in cases:
        inner = ""
        if status == "failed":
            inner = f'<failure message="{msg}" type="failed"></failure>'
        elif status == "skipped":
            inner = f'<skipped message="{msg}"></skipped>'
        name = name.replace("&", "&amp;").replace('"', "&quot;")
        out.append(f'<testcase name="[It] {name}" status="{status}">{inner}</testcase>')
    out.append("</testsuite></testsuites>\n")
    return "".join(out)


class GateTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.skips = self.write("skips.txt", f"# comment\n{C} | needs a registry\n")
        self.exc = self.write("exceptions.txt", f"offload | {B} | shares a PID namespace\n")

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def run_gate(self, *args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = gate.main(["gate.py", *args])
        return rc, out.getvalue()

    def control(self):
        return self.write("runc.xml", junit([
            (A, "passed", ""), (B, "passed", ""), (C, "skipped", "skipped"),
            (D, "skipped", "skipped - AppArmor is disabled on this host")]))

    def test_skip_regex_matches_exactly_the_listed_names(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(gate.main(["gate.py", "skip-regex", self.skips]), 0)
        regex = re.compile(out.getvalue().strip())
        self.assertTrue(regex.match(f"{gate.SUITE} {C}"))
        self.assertFalse(regex.match(f"{gate.SUITE} {C} and more"))
        self.assertFalse(regex.match(f"{gate.SUITE} {A}"))
        # Go's RE2 rejects escaped spaces and letters: only punctuation is escaped.
        self.assertNotIn("\\ ", out.getvalue())

    def test_summary_counts_only_what_ran(self):
        report = self.write("p.xml", junit([
            (A, "passed", ""), (B, "passed", ""), (C, "skipped", "skipped"),
            (D, "skipped", "skipped - AppArmor is disabled on this host"), (E, "pending", "")]))
        rc, out = self.run_gate("summary", "runc", report, self.skips, self.exc)
        self.assertEqual(rc, 0, out)
        self.assertIn("5 specs, 2 ran, 2 passed, 0 failed, 3 skipped", out)
        self.assertIn("skips.txt: needs a registry", out)
        self.assertIn("the spec skipped itself: AppArmor is disabled on this host", out)

    def test_summary_fails_on_a_failure_a_setup_failure_or_a_skip_that_ran(self):
        failed = self.write("f.xml", junit([(A, "failed", "boom"), (C, "skipped", "")]))
        rc, out = self.run_gate("summary", "runc", failed, self.skips, self.exc)
        self.assertEqual(rc, 1)
        self.assertIn("FAILED  " + A, out)
        setup = self.write("s.xml", junit([(A, "passed", ""), (C, "skipped", "")], setup="failed"))
        self.assertEqual(self.run_gate("summary", "runc", setup, self.skips, self.exc)[0], 1)
        ran = self.write("r.xml", junit([(A, "passed", ""), (C, "passed", "")]))
        rc, out = self.run_gate("summary", "runc", ran, self.skips, self.exc)
        self.assertEqual(rc, 1)
        self.assertIn("ran anyway", out)
        absent = self.write("a.xml", junit([(A, "passed", "")]))
        rc, out = self.run_gate("summary", "runc", absent, self.skips, self.exc)
        self.assertEqual(rc, 1)
        self.assertIn("does not have", out)

    def test_gate_holds_when_only_excepted_specs_fail(self):
        offload = self.write("o.xml", junit([(A, "passed", ""), (B, "failed", "refused"),
                                             (C, "skipped", ""), (D, "skipped", "")]))
        rc, out = self.run_gate("gate", self.skips, self.exc, f"runc={self.control()}",
                                f"offload={offload}")
        self.assertEqual(rc, 0, out)
        self.assertIn("1 failed as exceptions.txt expects", out)

    def test_gate_fails_on_an_unexcepted_failure_or_a_spec_that_did_not_run(self):
        for status in ("failed", "skipped"):
            other = self.write("h.xml", junit([(A, status, "x"), (B, "passed", ""),
                                               (C, "skipped", ""), (D, "skipped", "")]))
            rc, out = self.run_gate("gate", self.skips, self.exc, f"runc={self.control()}",
                                    f"heteropod={other}")
            self.assertEqual(rc, 1, out)
            self.assertIn(f"NOT PASSED ({status}): {A}", out)

    def test_gate_fails_on_a_stale_exception(self):
        offload = self.write("o.xml", junit([(A, "passed", ""), (B, "passed", ""),
                                             (C, "skipped", ""), (D, "skipped", "")]))
        rc, out = self.run_gate("gate", self.skips, self.exc, f"runc={self.control()}",
                                f"offload={offload}")
        self.assertEqual(rc, 1, out)
        self.assertIn("STALE EXCEPTION", out)

    def test_plain_line(self):
        rc, out = self.run_gate("plain", "runc", self.control())
        self.assertEqual(rc, 0)
        self.assertEqual(out, "critest-runc: 2 passed, 0 failed, 2 skipped\n")

    def test_a_name_holding_a_bar_keeps_it(self):
        self.assertIn(C, gate.read_skips(self.skips))


if __name__ == "__main__":
    unittest.main()
