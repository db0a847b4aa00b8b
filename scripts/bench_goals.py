"""Issue 13's goals against one run of scripts/bench.sh: the table the README shows.

Usage:
  bench_goals.py FIGURES_JSON            print the goals table of that run
  bench_goals.py --check README FIGURES_JSON
                                         exit 1 unless README's table is that run's

FIGURES_JSON is a run's figures.json (bench_table.py writes it; bench.sh keeps
it in target/bench/<run>/). The README's table sits between the two marker
lines below; docs/performance-run.json keeps the figures of the run it shows,
so a test can make the table again and find it unchanged.
"""

import json
import pathlib
import sys

BEGIN = "<!-- bench goals: made by scripts/bench_goals.py from docs/performance-run.json -->"
END = "<!-- end of bench goals -->"


def _met(value, goal, at_least):
    if value is None:
        return "-"
    return "yes" if (value >= goal if at_least else value <= goal) else "**no**"


def render(f):
    """The goals table (Markdown) of the run whose figures are `f`."""
    run = f.get("run") or {}
    paths = {p["path"]: p for p in f["paths"]}
    pay = paths.get("payments (cold-start)")
    orders = paths.get("orders (backlog)")
    menu = paths.get("menu (menu-sync)")
    out = [
        f"Run {run.get('id', '?')} of commit {run.get('commit', '?')}, on a {run.get('cores', '?')}-core "
        f"{run.get('machine', '?')} host, the local stack on the same cores; `scripts/bench.sh` took "
        f"{run.get('took_secs', '?')} s. Every ratio is of two figures measured in this run.",
        "",
        "| goal (issue 13) | this run | goal | met |",
        "|---|---|---|---|",
    ]

    def bare(path, name):
        return next((b for b in (path or {}).get("bare") or [] if b[0].startswith(name)), None)

    b = bare(pay, "bare consumer")
    if b and b[2] is not None:
        out.append(
            f"| payments end to end (cold-start, {pay['events']:,} payments): the daemon's rate / a bare "
            f"consumer's making the same reads and writes | {b[2]:.2f} ({pay['daemon_per_sec']:,.0f}/s against "
            f"{b[1]:,.0f}/s) | ≥ 0.8 | {_met(b[2], 0.8, True)} |"
        )
    b = bare(orders, "bare writer")
    if b and b[2] is not None:
        clock = "its own clock" if orders.get("clock") == "own" else "its drain as the load generator saw it"
        out.append(
            f"| orders end to end (a backlog of {orders['events']:,} records): the daemon's rate, by {clock} / "
            f"a bare writer's making the same writes | {b[2]:.2f} ({orders['daemon_per_sec']:,.0f}/s against "
            f"{b[1]:,.0f}/s) | ≥ 0.8 | {_met(b[2], 0.8, True)} |"
        )
    if menu and menu.get("ratio_to_ceiling") is not None:
        r = menu["ratio_to_ceiling"]
        out.append(
            f"| menu end to end (menu-sync, {menu['events']:,} items): the daemon's rate / its CPU-bound ceiling "
            f"(the kernel on the cores the emulators left) | {r:.2f} ({menu['daemon_per_sec']:,.0f}/s against "
            f"{menu['ceiling_per_sec']:,.0f}/s) | ≥ 0.8 | {_met(r, 0.8, True)} |"
        )
    floor = f.get("payments_floor_ns")
    if pay and floor and pay.get("cpu_secs_per_1000") is not None:
        per = pay["cpu_secs_per_1000"] * 1e6  # seconds per 1,000 = ms per payment
        x = per / floor
        out.append(
            f"| CPU per payment, all included / the SHA-256 floor (10,001 blocks at the host's speed) | {x:.2f}x "
            f"({per / 1e6:.3f} ms against {floor / 1e6:.3f}) | ≤ 1.3x | {_met(x, 1.3, False)} |"
        )
    for name, label in [("payments", "payments"), ("menu items", "menu items"), ("order events", "order events")]:
        s = (f.get("stage_ns") or {}).get(name)
        # A run without criterion's figures has neither.
        if s and s[0] and s[1]:
            kernel, stage = s[0], s[1]
            r = kernel / stage
            out.append(
                f"| pipeline with in-memory ends, {label}: the kernel's time / the stage's, per element "
                f"| {r:.2f} | ≥ 0.9 | {_met(r, 0.9, True)} |"
            )
    backlog = f.get("backlog")
    if backlog and backlog.get("growth") is not None:
        out.append(
            f"| resident memory under a backlog of {backlog['records']:,} records: the second half's peak / "
            f"the first's ({backlog['first_half_peak_mib']:.0f} and {backlog['second_half_peak_mib']:.0f} MiB) "
            f"| {backlog['growth']:.2f} | flat | - |"
        )
    also = []
    if f.get("payments_first_decision_secs") is not None:
        also.append(f"cold start to first decision {f['payments_first_decision_secs']:.2f} s")
    rss = [f"{p['path'].split(' ')[0]} {p['peak_rss_mib']:.0f} MiB" for p in f["paths"] if p.get("peak_rss_mib")]
    if rss:
        also.append("peak RSS " + ", ".join(rss))
    cpu = [
        f"{p['path'].split(' ')[0]} {p['cpu_secs_per_1000']:.2f}"
        for p in f["paths"]
        if p.get("cpu_secs_per_1000") is not None
    ]
    if cpu:
        also.append("CPU-s per 1,000 events " + ", ".join(cpu))
    if also:
        out += ["", "Also measured: " + "; ".join(also) + "."]
    return "\n".join(out) + "\n"


def block_in(text):
    """The README's goals table, between the markers (None without them)."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv):
    if argv[:1] == ["--check"] and len(argv) == 3:
        readme, figures = pathlib.Path(argv[1]), pathlib.Path(argv[2])
        shown = block_in(readme.read_text())
        made = render(json.loads(figures.read_text()))
        if shown != made:
            print(f"{readme}: its bench goals table is not {figures}'s; made from it:\n\n{made}", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 1:
        print(render(json.loads(pathlib.Path(argv[0]).read_text())), end="")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
