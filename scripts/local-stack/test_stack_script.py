#!/usr/bin/env python3
"""Tests of stack.sh's trust in a running stack of its own checkout: a
server started from other files than the checkout holds now (a pull
changed moto's launcher or pins, or the emulators' sources) is restarted
by `start`, and `status` says so; one started from the same files is
left running; two starts at once leave one server, the one the pid file
names. Without this, tests ran against a launcher the checkout no
longer has (its strictness rules, its connection handling) until
someone thought to stop the stack.

stack.sh is sourced in bash (its functions only) from a temporary copy
of its folder whose moto launcher and emulators are stand-ins that only
listen on their ports: no moto, no cargo build. Needs bash, ss and
rustc (the emulators' key names the compiler). Standard library only:
python3 scripts/local-stack/test_stack_script.py"""
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

HERE = pathlib.Path(__file__).resolve().parent

# Listens on every port given after -p or --*-port, until killed.
LISTENER = """#!/usr/bin/env python3
import socket, sys, time
ports = [int(sys.argv[i + 1]) for i, a in enumerate(sys.argv) if a == "-p" or a.endswith("-port")]
socks = []
for p in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", p))
    s.listen()
    socks.append(s)
while True:
    time.sleep(1)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StaleServersRestarted(unittest.TestCase):
    def setUp(self):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="cafe-stack-sh-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        checkout = self.tmp / "checkout"
        self.scripts = checkout / "scripts" / "local-stack"
        self.scripts.mkdir(parents=True)
        shutil.copy(HERE / "stack.sh", self.scripts / "stack.sh")
        shutil.copy(HERE / "requirements.txt", self.scripts / "requirements.txt")
        (self.scripts / "moto_launcher.py").write_text(LISTENER)
        self.emulators = checkout / "emulators"
        (self.emulators / "src").mkdir(parents=True)
        for f in ("Cargo.toml", "Cargo.lock", "src/main.rs"):
            (self.emulators / f).write_text(f"// {f}\n")
        state = self.tmp / "state"
        (state / "venv" / "bin").mkdir(parents=True)
        (state / "logs").mkdir()
        os.symlink(sys.executable, state / "venv" / "bin" / "python")
        # The venv's moto, as install_moto checks it.
        fakes = self.tmp / "fakes" / "moto"
        fakes.mkdir(parents=True)
        (fakes / "__init__.py").write_text('__version__ = "5.2.5"\n')
        self.state = state
        self.env = dict(
            os.environ,
            CAFE_STACK_DIR=str(state),
            CAFE_CACHE_DIR=str(self.tmp / "cache"),
            CAFE_MOTO_PORT=str(free_port()),
            CAFE_DYNAMODB_PORT=str(free_port()),
            CAFE_KINESIS_PORT=str(free_port()),
            PYTHONPATH=str(fakes.parent),
        )
        self.addCleanup(self.sh, 'stop_pid moto "$state/moto.pid"; stop_pid cafe-emulators "$state/emulators.pid"')

    def bash(self, script, check=False):
        """Runs `script` in bash with stack.sh's functions."""
        return subprocess.run(
            ["bash", "-c", f'source "{self.scripts}/stack.sh" && {script}'],
            env=self.env, capture_output=True, text=True, timeout=60, check=check,
        )

    def sh(self, script):
        """(status, stderr) of `script`."""
        p = self.bash(script)
        return p.returncode, p.stderr

    def emulators_bin(self):
        """The stand-in emulators where the build for the checkout's sources goes."""
        key = self.bash("emulators_key", check=True).stdout.strip()
        bin_ = self.tmp / "cache" / "emulators" / key / "cafe-emulators"
        bin_.parent.mkdir(parents=True, exist_ok=True)
        bin_.write_text(LISTENER)
        bin_.chmod(0o755)

    def pids(self):
        return ((self.state / "moto.pid").read_text().strip(), (self.state / "emulators.pid").read_text().strip())

    def status_line(self, name):
        p = subprocess.run(["bash", str(self.scripts / "stack.sh"), "status"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        return next(line for line in p.stdout.splitlines() if line.startswith(name + " "))

    def test_a_server_started_from_other_files_is_restarted_and_one_from_the_same_is_left(self):
        self.emulators_bin()
        status, err = self.sh("start_moto && start_emulators")
        self.assertEqual(status, 0, err)
        moto, emulators = self.pids()
        self.assertTrue(self.status_line("moto").endswith(f"up on 127.0.0.1:{self.env['CAFE_MOTO_PORT']}"))

        # The same files: both left running.
        status, err = self.sh("start_moto && start_emulators")
        self.assertEqual(status, 0, err)
        self.assertNotIn("restarting", err)
        self.assertEqual(self.pids(), (moto, emulators))

        # The launcher changed (a pull): status says so, start restarts moto only.
        with open(self.scripts / "moto_launcher.py", "a") as f:
            f.write("# changed\n")
        self.assertIn("started from other files", self.status_line("moto"))
        self.assertTrue(self.status_line("dynamodb").endswith(f"up on 127.0.0.1:{self.env['CAFE_DYNAMODB_PORT']}"))
        status, err = self.sh("start_moto && start_emulators")
        self.assertEqual(status, 0, err)
        self.assertIn("restarting moto", err)
        self.assertNotIn("restarting cafe-emulators", err)
        moto2, emulators2 = self.pids()
        self.assertNotEqual(moto2, moto)
        self.assertEqual(emulators2, emulators)
        self.assertNotIn("started from other files", self.status_line("moto"))

        # The emulators' sources changed (their build for them is cached).
        with open(self.emulators / "src" / "main.rs", "a") as f:
            f.write("// changed\n")
        self.emulators_bin()
        self.assertIn("started from other files", self.status_line("kinesis"))
        status, err = self.sh("start_moto && start_emulators")
        self.assertEqual(status, 0, err)
        self.assertIn("restarting cafe-emulators", err)
        self.assertNotIn("restarting moto", err)
        self.assertEqual(self.pids()[0], moto2)
        self.assertNotEqual(self.pids()[1], emulators)

    def test_two_starts_at_once_after_a_change_leave_one_server_and_its_pid(self):
        status, err = self.sh("start_moto")
        self.assertEqual(status, 0, err)
        for round_ in range(3):
            with open(self.scripts / "moto_launcher.py", "a") as f:
                f.write(f"# changed {round_}\n")
            both = [
                subprocess.Popen(
                    ["bash", "-c", f'source "{self.scripts}/stack.sh" && start_lock && start_moto'],
                    env=self.env, stderr=subprocess.PIPE, text=True,
                )
                for _ in range(2)
            ]
            errs = [p.communicate(timeout=60)[1] for p in both]
            self.assertEqual([p.returncode for p in both], [0, 0], errs)
            self.assertEqual(sum("restarting moto" in e for e in errs), 1, errs)
            listener = self.bash(f'listener_pid {self.env["CAFE_MOTO_PORT"]}', check=True).stdout.strip()
            self.assertEqual((self.state / "moto.pid").read_text().strip(), listener, errs)

    def test_a_server_started_before_the_keys_were_recorded_is_restarted(self):
        status, err = self.sh("start_moto")
        self.assertEqual(status, 0, err)
        moto = (self.state / "moto.pid").read_text().strip()
        (self.state / "moto.key").unlink()
        status, err = self.sh("start_moto")
        self.assertEqual(status, 0, err)
        self.assertIn("restarting moto", err)
        self.assertNotEqual((self.state / "moto.pid").read_text().strip(), moto)


if __name__ == "__main__":
    unittest.main(verbosity=2)
