"""Tests of scripts/bench_table.py on a stored run of scripts/bench.sh.

scripts/testdata/bench-run/ holds the raw figures bench_table.py reads, from
run 20261204T142958Z (its README says what was kept and what was cut); its
table.md and figures.json are what bench_table.py made of them. Each test
copies the run to a scratch directory, changes what it is about, runs the
script as bench.sh runs it and reads what it wrote.

Run: python3 scripts/test_bench_table.py   (standard library only; scripts/test.sh runs it)
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import unittest

here = pathlib.Path(__file__).resolve().parent
script = here / "bench_table.py"
stored = here / "testdata" / "bench-run"
# What the script writes, set apart from what it reads.
outputs = ("table.md", "figures.json", "goals.md")
goals_script = here / "bench_goals.py"
repo = here.parent


class BenchTable(unittest.TestCase):
    def setUp(self):
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        self.scratch = pathlib.Path(scratch.name)
        self.run_dir = self.scratch / "run"
        shutil.copytree(stored, self.run_dir, ignore=shutil.ignore_patterns(*outputs))

    def table(self, env=None, args=()):
        """Runs the script on the scratch run; (table.md, figures.json)."""
        done = subprocess.run(
            [sys.executable, str(script), str(self.run_dir), "2", "763", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.stderr = done.stderr
        return (self.run_dir / "table.md").read_text(), json.loads((self.run_dir / "figures.json").read_text())

    def edit(self, name, change):
        path = self.run_dir / name
        path.write_text(change(path.read_text()))

    def test_the_stored_run_gives_its_table(self):
        table, figures = self.table()
        self.assertEqual(table, (stored / "table.md").read_text())
        self.assertEqual(figures, json.loads((stored / "figures.json").read_text()))
        # Read from the raw figures, not only compared: the orders stage's
        # medians (1129.9 and 836.6 ns an event) and the by-thread line.
        self.assertIn("| order events | 0.84 µs | 1.13 µs (shard stage, writes to an in-memory order store) | 1.35 |", table)
        self.assertIn("runtime workers 0.897 us (1.16x), together 2.21x", table)
        self.assertEqual(figures["orders_on_cpu_per_event"]["pool_us"], 0.818)
        self.assertEqual(figures["allocations_per_element"]["orders"], [11.2, 14.96])

    def test_the_stored_run_gives_its_goals(self):
        self.table()
        goals = (self.run_dir / "goals.md").read_text()
        self.assertEqual(goals, (stored / "goals.md").read_text())
        # Read from the figures, not only compared: the run, each path
        # against both yardsticks and judged against each, each other goal
        # with its verdict, and a figure the run lacks named as missing.
        self.assertTrue(goals.startswith("Run run of commit 22f9bce, on a 2-core AMD EPYC host"), goals)
        self.assertIn("took 763 s; every scenario's verdict passed", goals)
        self.assertIn(
            "| payments (cold-start, 10,000) | 832/s | 7,023/s: 0.12 | bare consumer 1,101/s: 0.76 | 0.12: **no** "
            "| 0.76: **no** |",
            goals,
        )
        self.assertIn("| 437/s: 0.79 | none measured | 0.79 (the one yardstick): **no** |", goals)
        self.assertIn("| 0.92x (0.328 ms against 0.358 at the host's speed around the run); 0.91x against part 1's 0.359 "
                      "| ≤ 1.3x, both | yes |", goals)
        self.assertIn("order events: the kernel's time / the stage's, per element | 0.74 | ≥ 0.9 | **no** |", goals)
        self.assertIn("order cache full: the kernel's time / the stage's, per element | not measured | ≥ 0.9 "
                      "| **no** (not measured) |", goals)
        self.assertIn("| 1.05 | flat: ≤ 1.2 | yes |", goals)
        self.assertIn("cold start to first decision 0.12 s", goals)

    def test_the_menu_path_s_bare_client_is_its_second_yardstick(self):
        # bench.sh's menu-throughput output: its line, then its JSON.
        (self.run_dir / "menu-bare.txt").write_text(
            "bare consumer (4 receivers; ...): 10000 items in 14.50 s\n"
            '{"items": 10000, "send_secs": 5.2, "bare_secs": 14.5, "bare_items_per_sec": 685.9}\n'
        )
        _, figures = self.table()
        menu = next(p for p in figures["paths"] if p["path"] == "menu (menu-sync)")
        self.assertEqual(menu["bare"], [["bare consumer", 685.9, menu["daemon_per_sec"] / 685.9]])
        goals = (self.run_dir / "goals.md").read_text()
        # The bare client (685.9/s) is the higher yardstick, the ceiling
        # (437/s) the lower: each judged.
        self.assertIn("| menu (menu-sync, 10,000) | 343/s | 437/s: 0.79 | bare consumer 686/s: 0.50 | 0.50: **no** "
                      "| 0.79: **no** |", goals)

    def test_the_median_round_stands_for_the_payments_path(self):
        sys.path.insert(0, str(here))
        import bench_goals

        self.assertEqual(bench_goals.median_round([1.42, 0.90, 0.84]), 2)
        self.assertEqual(bench_goals.median_round([0.84, 1.42, 0.90]), 3)
        # Of an even number, the worse of the middle two; a round without a
        # ratio is the worst.
        self.assertEqual(bench_goals.median_round([1.1, 0.9]), 1)
        self.assertEqual(bench_goals.median_round([None, 0.8, 0.9]), 3)
        self.assertEqual(bench_goals.median_round([1.0]), 1)
        # As bench.sh calls it: the rounds' summaries, in round order.
        rounds = []
        for k, ratio in enumerate([1.3, None, 0.7], 1):
            path = self.scratch / f"summary-{k}.json"
            path.write_text(json.dumps({"drain_vs_bare": ratio} if ratio is not None else {}))
            rounds.append(str(path))
        done = subprocess.run([sys.executable, str(goals_script), "--median-round", *rounds], capture_output=True, text=True)
        self.assertEqual((done.returncode, done.stdout), (0, "1\n"), done.stderr)

    def rounds(self, name, rounds, median):
        """As bench.sh leaves a path run in rounds: each in rounds/ (its
        summary with `rounds`' (ratio, status, changes)), the median's
        number in rounds/NAME.median and its summary as NAME/summary.json."""
        summary = json.loads((stored / "payments" / "summary.json").read_text())
        proc = json.loads((stored / "payments.proc").read_text())
        for k, (ratio, status, changes) in enumerate(rounds, 1):
            made = dict(summary, drain_vs_bare=ratio, **changes)
            (self.run_dir / "rounds" / f"{name}-{k}").mkdir(parents=True)
            (self.run_dir / "rounds" / f"{name}-{k}" / "summary.json").write_text(json.dumps(made))
            (self.run_dir / "rounds" / f"{name}-{k}.proc").write_text(json.dumps(dict(proc, status=status)))
            if k == median:
                (self.run_dir / name).mkdir(exist_ok=True)
                (self.run_dir / name / "summary.json").write_text(json.dumps(made))
        (self.run_dir / "rounds" / f"{name}.median").write_text(f"{median}\n")

    def test_a_run_in_rounds_reports_each_and_takes_the_median_round_s(self):
        self.rounds("payments", [(1.42, 1, {}), (0.90, 0, {}), (0.84, 0, {})], 2)
        # The probes around each round; the median round's set the floor.
        self.edit("host-speed.txt", lambda t: t.replace("payments:before 1794649860\npayments:after 1779613700\n", "")
                  + "rounds/payments-1:before 900000000\nrounds/payments-2:before 1600000000\n"
                  "rounds/payments-2:after 1600000000\nrounds/payments-3:after 900000000\n")
        table, figures = self.table()
        self.assertEqual(figures["payments_rounds"], [
            {"round": 1, "drain_vs_bare": 1.42, "passed": False, "broken": []},
            {"round": 2, "drain_vs_bare": 0.90, "passed": True, "broken": []},
            {"round": 3, "drain_vs_bare": 0.84, "passed": True, "broken": []},
        ])
        self.assertEqual(figures["payments_floor_ns"], 10_001 * 64 / 1.6e9 * 1e9)
        self.assertIn("Payments ran in 3 rounds, each on fresh resources with its own bare client; the daemon's drain / "
                      "the bare client's, round by round: 1.42 (FAIL), 0.90, 0.84. The path's figures and verdict are "
                      "round 2's, the median", table)
        # A slow round is not the path's verdict unless it is the median.
        self.assertEqual(figures["run"]["verdicts_failed"], [])
        goals = (self.run_dir / "goals.md").read_text()
        self.assertIn("| payments (cold-start, 10,000; the median of 3 rounds) |", goals)

    def test_a_round_with_anything_wrong_fails_its_path_whichever_it_is(self):
        self.rounds("payments", [(0.95, 1, {"lost": 2}), (0.90, 0, {}), (0.84, 0, {})], 2)
        short = "a short drain: the bare client's 1.50 s, under the 2.0 s the target needs, judged against 3.0x instead"
        self.rounds("payments-process", [(0.90, 0, {}), (None, 1, {}), (0.85, 0, {"drain_note": short})], 1)
        table, figures = self.table()
        self.assertEqual(figures["payments_rounds"][0]["broken"], ["2 lost"])
        self.assertEqual(figures["payments_process_rounds"][1]["broken"], ["no bare client measured"])
        # A round the target judged as a short drain was not judged by it.
        self.assertEqual(figures["payments_process_rounds"][2]["broken"], [short])
        self.assertEqual(figures["run"]["verdicts_failed"], ["payments", "payments-process"])
        self.assertIn("0.95 (FAIL) (wrong: 2 lost), 0.90, 0.84", table)
        self.assertIn("Payments with the history in the process ran in 3 rounds", table)

    def test_a_path_s_summary_that_is_not_its_median_round_s_stops_the_table(self):
        self.rounds("payments", [(1.1, 0, {}), (0.9, 0, {}), (1.0, 0, {})], 3)
        (self.run_dir / "rounds" / "payments.median").write_text("1\n")
        done = subprocess.run([sys.executable, str(script), str(self.run_dir), "2", "763"], capture_output=True, text=True)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("payments/summary.json is not its median round's (rounds/payments-1)", done.stderr)

    def orders_rounds(self, ratios, median):
        """As bench.sh leaves the orders path run in rounds: each round's
        output in rounds/orders-K.txt (the stored one with the daemon
        against the bare writer at `ratios`' K-th), the median's number in
        rounds/orders.median and its output as orders.txt."""
        stored_txt = (stored / "orders.txt").read_text()
        (self.run_dir / "rounds").mkdir(exist_ok=True)
        for k, ratio in enumerate(ratios, 1):
            made = stored_txt.replace('"ratio_to_writes":0.768229895392395', f'"ratio_to_writes":{ratio}')
            (self.run_dir / "rounds" / f"orders-{k}.txt").write_text(made)
            if k == median:
                (self.run_dir / "orders.txt").write_text(made)
        (self.run_dir / "rounds" / "orders.median").write_text(f"{median}\n")

    def test_the_orders_path_in_rounds_is_its_median_round_against_the_bare_writer(self):
        sys.path.insert(0, str(here))
        import bench_goals

        # Higher is better for orders: the median of 0.75, 0.94, 0.86 is the third.
        paths = []
        for k, ratio in enumerate([0.75, 0.94, 0.86], 1):
            path = self.scratch / f"orders-{k}.txt"
            path.write_text(f"a line\n{{\"ratio_to_writes\": {ratio}}}\n")
            paths.append(str(path))
        done = subprocess.run([sys.executable, str(goals_script), "--median-orders-round", *paths], capture_output=True, text=True)
        self.assertEqual((done.returncode, done.stdout), (0, "3\n"), done.stderr)
        # The daemon's own clock, when the run has it, decides.
        own = {"daemon_own_records_per_sec": 1.0, "own_ratio_to_writes": 0.5, "ratio_to_writes": 0.9}
        self.assertEqual(bench_goals.orders_to_writes(own), 0.5)
        self.assertEqual(bench_goals.median_orders_round([own, {"ratio_to_writes": 0.9}, None]), 1)
        self.orders_rounds([0.75, 0.94, 0.86], 3)
        table, figures = self.table()
        self.assertEqual(figures["orders_rounds"], [
            {"round": 1, "to_writes": 0.75}, {"round": 2, "to_writes": 0.94}, {"round": 3, "to_writes": 0.86},
        ])
        self.assertIn("bare writer 11,523/s: 0.86", table)
        self.assertIn("Orders ran in 3 rounds, each on fresh resources with its own bare reader and writers; the daemon "
                      "against the bare writer, round by round: 0.75, 0.94, 0.86. The path's figures are round 3's, "
                      "the median.", table)
        goals = (self.run_dir / "goals.md").read_text()
        self.assertIn("| orders (a backlog of 48,468 records; the median of 3 rounds) |", goals)

    def test_an_orders_result_that_is_not_its_median_round_s_stops_the_table(self):
        self.orders_rounds([0.75, 0.94, 0.86], 3)
        (self.run_dir / "rounds" / "orders.median").write_text("2\n")
        done = subprocess.run([sys.executable, str(script), str(self.run_dir), "2", "763"], capture_output=True, text=True)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("orders.txt is not its median round's (rounds/orders-2.txt)", done.stderr)

    def menu_rounds(self, rounds, median):
        """As bench.sh leaves the menu path run in rounds: each round's
        menu-sync summary (the stored one with `rounds`' (items/s, status,
        changes)) in rounds/menu-K/, its bare client's output (685.9/s) in
        rounds/menu-bare-K.txt, the median's number in rounds/menu.median
        and its files as menu/summary.json and menu-bare.txt."""
        summary = json.loads((stored / "menu" / "summary.json").read_text())
        proc = json.loads((stored / "menu.proc").read_text())
        bare = '{"items": 10000, "send_secs": 5.2, "bare_secs": 14.58, "bare_items_per_sec": 685.9}\n'
        for k, (rate, status, changes) in enumerate(rounds, 1):
            made = dict(summary, items_per_sec=rate, **changes)
            (self.run_dir / "rounds" / f"menu-{k}").mkdir(parents=True)
            (self.run_dir / "rounds" / f"menu-{k}" / "summary.json").write_text(json.dumps(made))
            (self.run_dir / "rounds" / f"menu-{k}.proc").write_text(json.dumps(dict(proc, status=status)))
            (self.run_dir / "rounds" / f"menu-bare-{k}.txt").write_text("bare consumer (...)\n" + bare)
            if k == median:
                (self.run_dir / "menu" / "summary.json").write_text(json.dumps(made))
                (self.run_dir / "menu-bare.txt").write_text("bare consumer (...)\n" + bare)
        (self.run_dir / "rounds" / "menu.median").write_text(f"{median}\n")

    def test_the_menu_path_in_rounds_is_its_median_round_against_its_bare_client(self):
        # As bench.sh calls it: each round's summary and bare output.
        args = []
        for k, rate in enumerate([300.0, 500.0, 400.0], 1):
            summary, bare = self.scratch / f"menu-{k}.json", self.scratch / f"menu-bare-{k}.txt"
            summary.write_text(json.dumps({"items_per_sec": rate}))
            bare.write_text('a line\n{"bare_items_per_sec": 600.0}\n')
            args += [str(summary), str(bare)]
        done = subprocess.run([sys.executable, str(goals_script), "--median-menu-round", *args], capture_output=True, text=True)
        self.assertEqual((done.returncode, done.stdout), (0, "3\n"), done.stderr)
        self.menu_rounds([(300.0, 1, {}), (500.0, 0, {}), (411.5, 0, {})], 3)
        table, figures = self.table()
        self.assertEqual([r["to_bare"] for r in figures["menu_rounds"]], [300.0 / 685.9, 500.0 / 685.9, 411.5 / 685.9])
        self.assertEqual([r["passed"] for r in figures["menu_rounds"]], [False, True, True])
        self.assertIn("| menu (menu-sync) | 10,000 | 412/s | ", table)
        self.assertIn("Menu ran in 3 rounds, each on fresh resources with its own bare client; the daemon against the bare "
                      "client, round by round: 0.44 (drain / ceiling 1.27) (FAIL), 0.73 (drain / ceiling 1.27), 0.60 "
                      "(drain / ceiling 1.27). The path's figures and verdict are round 3's, the median", table)
        # A slow round that is not the median does not fail the path.
        self.assertEqual(figures["run"]["verdicts_failed"], [])
        goals = (self.run_dir / "goals.md").read_text()
        self.assertIn("| menu (menu-sync, 10,000; the median of 3 rounds) | 412/s |", goals)

    def test_a_menu_round_with_anything_wrong_fails_the_path_whichever_it_is(self):
        self.menu_rounds([(300.0, 1, {"lost": 3}), (500.0, 0, {}), (411.5, 0, {})], 3)
        table, figures = self.table()
        self.assertEqual(figures["menu_rounds"][0]["broken"], ["3 lost"])
        self.assertEqual(figures["run"]["verdicts_failed"], ["menu"])
        self.assertIn("(FAIL) (wrong: 3 lost)", table)
        # And the path's files must be its median round's.
        (self.run_dir / "rounds" / "menu.median").write_text("2\n")
        done = subprocess.run([sys.executable, str(script), str(self.run_dir), "2", "763"], capture_output=True, text=True)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("is not its median round's (rounds/menu-2)", done.stderr)

    def test_a_run_with_a_failed_verdict_says_so_in_its_goals(self):
        self.edit("payments.proc", lambda t: t.replace('"status": 0', '"status": 1'))
        _, figures = self.table()
        self.assertEqual(figures["run"]["verdicts_failed"], ["payments"])
        goals = (self.run_dir / "goals.md").read_text()
        self.assertIn("took 763 s; it exited 1, the verdict of payments failed", goals)

    def test_every_goal_has_its_row_when_a_path_is_missing(self):
        figures = json.loads((stored / "figures.json").read_text())
        sys.path.insert(0, str(here))
        import bench_goals

        figures["paths"] = [p for p in figures["paths"] if p["path"] != "payments (cold-start)"]
        goals = bench_goals.render(figures)
        self.assertIn("| payments (cold-start, 10,000) | not measured | - | - | **no** (not measured) "
                      "| **no** (not measured) |", goals)
        self.assertIn("| CPU per payment, all included / the SHA-256 floor | not measured |", goals)

    def test_the_orders_goal_says_which_clock_timed_the_daemon(self):
        figures = json.loads((stored / "figures.json").read_text())
        sys.path.insert(0, str(here))
        import bench_goals

        self.assertIn("| 8,852/s (drain as seen) |", bench_goals.render(figures))
        for p in figures["paths"]:
            if p["path"] == "orders (backlog)":
                p["clock"] = "own"
        self.assertIn("| 8,852/s (own clock) |", bench_goals.render(figures))

    def test_the_readme_shows_the_goals_of_the_run_the_docs_keep(self):
        # The README's table is bench_goals.py's of docs/performance-run.json,
        # the figures of the run at the top of docs/performance.md.
        check = [sys.executable, str(goals_script), "--check"]
        readme, kept = repo / "README.md", repo / "docs" / "performance-run.json"
        done = subprocess.run([*check, str(readme), str(kept)], capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        # That run is the one docs/performance.md shows first: its heading
        # names it, and its table there is of these figures (the line that
        # names the run, and the payments row's rates).
        figures = json.loads(kept.read_text())
        run = figures["run"]
        text = (repo / "docs" / "performance.md").read_text()
        top = text.split("\n## ", 2)[1]
        self.assertIn(run["id"], top.splitlines()[0], "docs/performance.md's latest run is the one the README shows")
        self.assertIn(f"Machine: {run['machine']}, {run['cores']} cores; commit {run['commit']}; "
                      f"scripts/bench.sh took {run['took_secs']} s.", top)
        pay = next(p for p in figures["paths"] if p["path"] == "payments (cold-start)")
        self.assertIn(f"| payments (cold-start) | {pay['events']:,} | {pay['daemon_per_sec']:,.0f}/s | "
                      f"{pay['ceiling_per_sec']:,.0f}/s", top)
        # And the check fails on a figure changed in the README.
        changed = self.scratch / "README.md"
        shown = f"| {pay['daemon_per_sec']:,.0f}/s"
        changed.write_text(readme.read_text().replace(shown, "| 1/s", 1))
        self.assertNotEqual(changed.read_text(), readme.read_text())
        done = subprocess.run([*check, str(changed), str(kept)], capture_output=True, text=True)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn("is not", done.stderr)

    def test_the_table_names_the_machine_the_run_was_on(self):
        (self.run_dir / "machine").write_text("Test CPU 9000\n")
        table, _ = self.table()
        self.assertEqual(table.splitlines()[0], "Machine: Test CPU 9000, 2 cores; commit 22f9bce; scripts/bench.sh took 763 s.")

    def criterion_home(self):
        """The run without its criterion.json, criterion's own files in its
        place (per iteration, with an element count where it had one); the
        medians removed."""
        medians = json.loads((self.run_dir / "criterion.json").read_text())
        (self.run_dir / "criterion.json").unlink()
        home = self.scratch / "criterion"
        for i, (full_id, per_element) in enumerate(sorted(medians.items())):
            elements = 10_000 if full_id.startswith("pipeline/orders/") else None
            # A benchmark's `base` (the run before, which criterion keeps
            # beside `new`) with another median: not this run's.
            for kind, factor in [("new", 1), ("base", 3)]:
                d = home / f"bench-{i}" / kind
                d.mkdir(parents=True)
                meta = {"full_id": full_id, "throughput": {"Elements": elements} if elements else None}
                (d / "benchmark.json").write_text(json.dumps(meta))
                estimate = per_element * (elements or 1) * factor
                (d / "estimates.json").write_text(json.dumps({"median": {"point_estimate": estimate}}))
        # And one left by another run only (no `new`), read last if read.
        d = home / "zz-another-run" / "base"
        d.mkdir(parents=True)
        (d / "benchmark.json").write_text(json.dumps({"full_id": "pipeline/orders/shard stage", "throughput": None}))
        (d / "estimates.json").write_text(json.dumps({"median": {"point_estimate": 1.0}}))
        return home, medians

    def test_bench_sh_s_call_reads_criterion_s_files_and_keeps_them_with_the_run(self):
        home, medians = self.criterion_home()
        table, _ = self.table(env={"CRITERION_HOME": str(home)}, args=["--keep-criterion"])
        self.assertEqual(table, (stored / "table.md").read_text())
        kept = json.loads((self.run_dir / "criterion.json").read_text())
        self.assertEqual(kept.keys(), medians.keys())
        for full_id, value in medians.items():
            self.assertAlmostEqual(kept[full_id], value, delta=abs(value) * 1e-12)
        # Made again from the run alone, criterion's files gone.
        shutil.rmtree(home)
        self.assertEqual(self.table(env={"CRITERION_HOME": str(home)})[0], table)
        self.assertEqual(self.stderr, "")

    def test_the_orders_bare_reader_and_writer_at_once(self):
        # Runs before it have no such figure: the stored one.
        at_once = '"ratio_to_writes":0.768229895392395,"bare_read_write_secs":4.5,' \
                  '"bare_read_write_records_per_sec":10770.666666666666,"ratio_to_reads_writes":0.8218576458263302}'
        self.edit("orders.txt", lambda s: s.replace('"ratio_to_writes":0.768229895392395}', at_once))
        table, figures = self.table()
        self.assertIn("bare writer 11,523/s: 0.77; bare reader and writer at once 10,771/s: 0.82 |", table)
        # Nothing else moved.
        stored_table = (stored / "table.md").read_text()
        self.assertEqual(table.replace("; bare reader and writer at once 10,771/s: 0.82", ""), stored_table)

    def test_the_orders_daemon_s_own_clock(self):
        # Runs before the daemon's writes' span was read have none, and no
        # such line (the stored run).
        self.edit("orders.txt", lambda s: s.replace('"daemon_drain_secs":', '"daemon_writes_secs":3.37,"daemon_drain_secs":'))
        table, _ = self.table()
        orders = json.loads((self.run_dir / "orders.txt").read_text().strip().splitlines()[-1])
        self.assertIn(f"Orders, the daemon's writes' span: its writes were built over 3.37 s (its first and last "
                      f"`applied_at`), in a drain of {orders['daemon_drain_secs']:.2f} s as the loadgen saw", table)
        self.assertNotIn("the daemon's writes' span", (stored / "table.md").read_text())

    def test_the_orders_row_without_the_daemon_s_own_clock(self):
        # A new loadgen's run where no figure was made by the daemon's own
        # clock (a daemon without the stamp): the row is the drain's, and the
        # line says why.
        why = "the daemon exports no cafe_sink_last_write_timestamp_seconds{sink=\\\"dynamodb\\\"}"
        fields = ('"daemon_writes_secs":3.37,"daemon_own_secs":null,"daemon_own_clock_refused":"' + why + '",'
                  '"daemon_own_records_per_sec":null,"own_ratio_to_writes":null,"own_ratio_to_reads_writes":null,'
                  '"daemon_drain_secs":')
        self.edit("orders.txt", lambda s: s.replace('"daemon_drain_secs":', fields))
        table, figures = self.table()
        self.assertIn("| orders (backlog) | 48,468 | 8,852/s | ", table)
        self.assertIn("bare writer 11,523/s: 0.77 |", table)
        self.assertIn('Orders: no figure by the daemon\'s own clock (the daemon exports no '
                      'cafe_sink_last_write_timestamp_seconds{sink="dynamodb"}). The daemon\'s writes\' span: its writes '
                      'were built over 3.37 s', table)
        row = next(r for r in figures["paths"] if r["path"] == "orders (backlog)")
        self.assertEqual(row["clock"], "drain")

    def test_the_orders_row_by_the_daemon_s_own_clock(self):
        # A run with the daemon's own clock (first write built to last write
        # durable): the row's rate and every ratio are over it; the drain the
        # loadgen saw, and its ratios, go to the line under the table.
        records, own = 48468, 4.4
        rate, writes, both = records / own, 11522.511921520618, 10770.666666666666
        fields = (f'"daemon_writes_secs":3.37,"daemon_own_secs":{own},"daemon_own_records_per_sec":{rate},'
                  f'"own_ratio_to_writes":{rate / writes},"own_ratio_to_reads_writes":{rate / both},"daemon_drain_secs":')
        at_once = ('"ratio_to_writes":0.768229895392395,"bare_read_write_secs":4.5,'
                   f'"bare_read_write_records_per_sec":{both},"ratio_to_reads_writes":0.8218576458263302}}')
        self.edit("orders.txt", lambda s: s.replace('"daemon_drain_secs":', fields)
                  .replace('"ratio_to_writes":0.768229895392395}', at_once))
        table, figures = self.table()
        self.assertIn("| orders (backlog) | 48,468 | 11,015/s | ", table)
        self.assertIn(f"| bare reader 119,213/s: {rate / 119212.71908510038:.2f}; bare writer 11,523/s: 0.96; "
                      "bare reader and writer at once 10,771/s: 1.02 |", table)
        self.assertIn("Orders, the daemon's own clock (the table's rate and ratios): 4.40 s from its first batch's "
                      "writes begun to its last write durable", table)
        self.assertIn("its batches' writes began over 3.37 s of it. As the loadgen saw its last order complete, a "
                      "drain of 5.48 s: 0.77 of the bare writer and 0.82 of the bare reader and writer at once", table)
        row = next(r for r in figures["paths"] if r["path"] == "orders (backlog)")
        self.assertAlmostEqual(row["daemon_per_sec"], rate)
        self.assertEqual(row["clock"], "own")

    def test_a_run_made_again_without_criterion_json_keeps_nothing_and_says_so(self):
        home, _ = self.criterion_home()
        table, _ = self.table(env={"CRITERION_HOME": str(home)})
        self.assertEqual(table, (stored / "table.md").read_text())
        self.assertFalse((self.run_dir / "criterion.json").exists())
        self.assertIn("has no criterion.json", self.stderr)
        # Nothing found, even by bench.sh's call: nothing kept (an empty
        # file would hide every kernel for good).
        shutil.rmtree(home)
        table, _ = self.table(env={"CRITERION_HOME": str(home)}, args=["--keep-criterion"])
        self.assertFalse((self.run_dir / "criterion.json").exists())
        self.assertNotIn("| order events |", table)
        # Nor a goal of the kernels (the run's end-to-end goals still).
        goals = (self.run_dir / "goals.md").read_text()
        self.assertIn("payments: the kernel's time / the stage's, per element | not measured | ≥ 0.9 | **no** "
                      "(not measured) |", goals)
        self.assertIn("| CPU per payment, all included / the SHA-256 floor (10,001 blocks) | 0.92x", goals)

    def test_the_fraud_model_s_interleave_width(self):
        # A run since the width is the CPU's fastest: the payment kernel's
        # new name, and the width the kernels bench printed, in both labels.
        self.edit("criterion.json", lambda s: s.replace("(two chains) + rules", "(chains interleaved) + rules"))
        self.edit("kernels.txt", lambda s: "fraud model: 8 chains interleaved\n" + s)
        table, _ = self.table()
        stored = (pathlib.Path(__file__).parent / "testdata" / "bench-run" / "table.md").read_text()
        self.assertIn("| payment: decode + model work (10,000 SHA-256, eight payments' chains interleaved) + rules |", table)
        self.assertIn("| model work, eight payments' chains interleaved on one core, per payment |", table)
        # Nothing else moved.
        self.assertEqual(table.replace("eight payments'", "two payments'"), stored)

    def test_the_orders_stage_with_the_pool_of_caches_full(self):
        # Runs before it have neither the row nor the line: the stored one.
        self.edit("criterion.json", lambda s: s.replace('"pipeline/orders/shard stage": 1129.9101875,',
                                                        '"pipeline/orders/shard stage": 1129.9101875,\n  "pipeline/orders/shard stage, order cache full": 1673.4,'))
        line = "orders, cache full: on CPU per event over 30 runs (us): stage 1.606: pool 0.721, runtime 0.867, bench thread 0.017; wall per run, min/median/max (ms): stage 9.34/12.36/20.05\n"
        self.edit("kernels.txt", lambda s: s + line)
        table, figures = self.table()
        self.assertIn("| order events, order cache full | 0.84 µs | 1.67 µs (shard stage, the pool of order caches full) | 2.00 |", table)
        self.assertIn("With the pool of order caches full: CPU pool 0.721 us, runtime workers 0.867 us (1.12x the kernel's); wall per run 9.34/12.36/20.05 ms.", table)
        self.assertEqual(figures["orders_full_on_cpu_per_event"]["runtime_us"], 0.867)
        # Nothing else moved: the stored table, its stage table one row
        # longer and the by-thread paragraph one sentence.
        stored_table = (stored / "table.md").read_text()
        self.assertEqual(table.replace(table[table.index("| order events, order cache full"):].split("\n", 1)[0] + "\n", "")
                         .replace(" With the pool of order caches full: CPU pool 0.721 us, runtime workers 0.867 us (1.12x the kernel's); wall per run 9.34/12.36/20.05 ms.", ""),
                         stored_table)

    def test_a_run_without_the_by_thread_line(self):
        self.edit("kernels.txt", lambda s: "".join(l for l in s.splitlines(True) if not l.startswith("orders: on CPU per event")))
        table, figures = self.table()
        self.assertNotIn("Orders on CPU per event", table)
        self.assertIsNone(figures["orders_on_cpu_per_event"])
        # Nothing else moved: the stored table less that paragraph.
        expected = (stored / "table.md").read_text().split("\n\n")
        self.assertEqual(table.split("\n\n"), [p for p in expected if not p.startswith("Orders on CPU per event")])

    def test_a_by_thread_line_with_no_kernel_time_is_left_out(self):
        self.edit("kernels.txt", lambda s: s.replace("(us): kernel 0.776;", "(us): kernel 0.000;"))
        table, figures = self.table()
        self.assertNotIn("Orders on CPU per event", table)
        self.assertIsNone(figures["orders_on_cpu_per_event"])

    def test_a_run_without_kernels_txt(self):
        (self.run_dir / "kernels.txt").unlink()
        table, figures = self.table()
        self.assertNotIn("Orders on CPU per event", table)
        self.assertEqual(figures["allocations_per_element"], {})
        self.assertIn("| order events | 0.84 µs | 1.13 µs (shard stage, writes to an in-memory order store) | 1.35 | - |", table)

    def test_failed_and_malformed_host_speed_probes_are_dropped(self):
        self.edit("host-speed.txt", lambda s: s + "orders:extra nan\nmenu:extra 0\nmalformed\npayments:extra fast\ntoo many 1 2\ninf:probe inf\n")
        table, figures = self.table()
        self.assertEqual(table, (stored / "table.md").read_text())
        self.assertEqual(len(figures["host_speed_bytes_per_sec"]), 8)

    def test_the_payments_floor_uses_the_probes_around_the_run(self):
        # Both probes at half part 1's speed: the floor per payment doubles.
        half = 1e9
        self.edit(
            "host-speed.txt",
            lambda s: "".join(
                f"{l.split()[0]} {half:.0f}\n" if l.startswith("payments:") else l + "\n" for l in s.splitlines()
            ),
        )
        _, figures = self.table()
        self.assertAlmostEqual(figures["payments_floor_ns"], 10_001 * 64 / half * 1e9)

    def test_the_order_cache_s_share_of_the_memory_growth(self):
        # The stored run is older than the samples' order cache: its
        # sentence ends at the growth (the stored table). A run that has it
        # says what the cache held and the growth net of it.
        def with_cache(s):
            lines = s.splitlines(True)
            b = json.loads(lines[-1])
            b.update(order_cache_mib=30.4, growth_net_of_cache=0.98)
            for x in b["samples"]:
                x["order_cache_mib"] = min(x["secs"] * 2.5, 30.4)
            b["samples"][0]["order_cache_mib"] = None  # scraped before the series existed
            return "".join(lines[:-1]) + json.dumps(b) + "\n"

        self.edit("backlog.txt", with_cache)
        table, figures = self.table()
        self.assertIn(
            "(growth 1.05); the order cache, which fills towards its bound as new orders come (`order_cache_bytes`, "
            "32 MiB by default), held 25.0 MiB at 10 s and 30.4 at the end by its own estimate, and resident memory less that "
            "estimate grew 0.98.",
            table,
        )
        # A run whose daemon gave no figure (null): the sentence as before.
        self.edit("backlog.txt", lambda s: s.replace('"growth_net_of_cache": 0.98', '"growth_net_of_cache": null'))
        table, _ = self.table()
        self.assertIn("(growth 1.05).", table)
        self.assertNotIn("order cache", table)

    def test_a_failed_verdict_is_shown(self):
        self.edit("menu.proc", lambda s: json.dumps(dict(json.loads(s), status=1)))
        (self.run_dir / "menu" / "summary.md").write_text("# menu-sync\n- drain 99.0 s over its limit of 60.0 s\n")
        table, _ = self.table()
        self.assertTrue(table.endswith("**Verdict FAIL** (menu): drain 99.0 s over its limit of 60.0 s\n"), table[-300:])

    def test_a_run_without_a_bare_client_stops_with_a_reason(self):
        self.edit("payments/summary.json", lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "bare"}))
        done = subprocess.run([sys.executable, str(script), str(self.run_dir), "2", "763"], capture_output=True, text=True)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("cold-start measured no bare client", done.stderr)
        self.assertFalse((self.run_dir / "table.md").exists())


if __name__ == "__main__":
    unittest.main()
