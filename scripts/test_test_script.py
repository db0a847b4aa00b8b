#!/usr/bin/env python3
"""Tests of scripts/test.sh's failure path: stopped from outside (a CI
job's timeout or cancel sends SIGTERM, ^C SIGINT), it exits with the
signal's status, prints what the processes behind the run logged (their
warnings and errors, moto's refused and failed requests, the emulators'
last lines), and stops the stack only if it started it.

test.sh runs from a copy of itself in a temporary checkout whose stack
script is a stand-in: `status` says whether a stack is up (as the test
asks), `start` blocks until the signal comes, `stop` is recorded. No
cargo, no stack. Standard library only: python3 scripts/test_test_script.py"""
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

SCRIPTS = pathlib.Path(__file__).resolve().parent

STACK_STAND_IN = """#!/usr/bin/env bash
case "$1" in
  status) exit "$STUB_STATUS" ;;
  start) touch "$STUB_DIR/starting"; sleep 60 ;;
  stop) echo stop >> "$STUB_DIR/calls" ;;
  env) ;;
esac
"""

DAEMON_LOG = """\
2026-12-06T05:55:53.100000Z  INFO daemon::topology: Started payload=secret-at-info
2026-12-06T05:55:53.200000Z  WARN daemon::sinks::dynamodb: Transaction throttled, retrying attempt=1
2026-12-06T05:55:54.300000Z ERROR daemon::sources::sqs: Receive failed for good queue=q1
"""

MOTO_LOG = """\
127.0.0.1 - - [06/Dec/2026 05:55:53] "POST / HTTP/1.1" 200 -
127.0.0.1 - - [06/Dec/2026 05:55:53] "POST / HTTP/1.1" 200 -
127.0.0.1 - - [06/Dec/2026 05:55:54] "POST / HTTP/1.1" 500 -
Exception on / [POST]
KeyError: 'ReceiptHandle'
"""

CHAOS_LOG = "2026-12-06T05:56:00.000000Z  WARN daemon::sources::kinesis: Lease lost shard=shardId-0\n"


class StoppedFromOutside(unittest.TestCase):
    def setUp(self):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="cafe-test-sh-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        repo = self.tmp / "checkout"
        (repo / "scripts" / "local-stack").mkdir(parents=True)
        shutil.copy(SCRIPTS / "test.sh", repo / "scripts" / "test.sh")
        stand_in = repo / "scripts" / "local-stack" / "stack.sh"
        stand_in.write_text(STACK_STAND_IN)
        stand_in.chmod(0o755)
        logs = self.tmp / "stack" / "logs"
        logs.mkdir(parents=True)
        (logs / "cafe-streamd.log").write_text(DAEMON_LOG)
        (logs / "moto.log").write_text(MOTO_LOG)
        (logs / "emulators.log").write_text("dynoxide: listening\nferrokinesis: shard limit reached\n")
        chaos = repo / "target" / "e2e-chaos-kill-instances" / "instances"
        chaos.mkdir(parents=True)
        (chaos / "instance-2.log").write_text(CHAOS_LOG)
        self.repo, self.stub = repo, self.tmp

    def stop_with(self, sig, stack_up=False):
        """Runs test.sh until its stack start, sends `sig` to its process
        group (as a job runner's timeout does), and returns its exit
        status and output."""
        env = dict(os.environ, STUB_DIR=str(self.stub), STUB_STATUS="0" if stack_up else "1",
                   CAFE_STACK_DIR=str(self.tmp / "stack"))
        env.pop("CAFE_KEEP_STACK", None)
        # The signals at their defaults, as in a terminal: started in the
        # background by a shell without job control (as CI's runner may
        # be), this process has SIGINT ignored, its children inherit that,
        # and a signal ignored on entry cannot be trapped by bash.
        def default_signals():
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

        proc = subprocess.Popen(["bash", str(self.repo / "scripts" / "test.sh")], env=env, cwd=self.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=default_signals)
        deadline = time.monotonic() + 20
        while not (self.stub / "starting").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                self.fail(f"test.sh never reached the stack's start: {proc.communicate()[0]}")
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            self.fail(f"test.sh did not end on {sig.name}: {proc.communicate()[0]}")
        return proc.returncode, out

    def calls(self):
        path = self.stub / "calls"
        return path.read_text().split() if path.exists() else []

    def test_a_sigterm_exits_143_and_says_what_the_processes_logged(self):
        status, out = self.stop_with(signal.SIGTERM)
        self.assertEqual(status, 143, out)
        self.assertIn("== test failed: what the processes logged", out)
        # The daemon's and the chaos instances' warnings and errors, not
        # their info lines.
        self.assertIn("WARN daemon::sinks::dynamodb: Transaction throttled", out)
        self.assertIn("ERROR daemon::sources::sqs: Receive failed for good", out)
        self.assertIn("Lease lost shard=shardId-0", out)
        self.assertNotIn("secret-at-info", out)
        # moto's answers by status, its last 5xx and the exception behind it.
        self.assertRegex(out, r'2 +" 200 ')
        self.assertRegex(out, r'1 +" 500 ')
        self.assertIn('[06/Dec/2026 05:55:54] "POST / HTTP/1.1" 500', out)
        self.assertIn("KeyError: 'ReceiptHandle'", out)
        self.assertIn("ferrokinesis: shard limit reached", out)
        # It started the stack, so it stops it.
        self.assertEqual(self.calls(), ["stop"])

    def test_a_sigint_exits_130_and_leaves_a_stack_it_did_not_start(self):
        status, out = self.stop_with(signal.SIGINT, stack_up=True)
        self.assertEqual(status, 130, out)
        self.assertIn("== test failed: what the processes logged", out)
        self.assertEqual(self.calls(), [], "another run's stack is left running")


if __name__ == "__main__":
    unittest.main()
