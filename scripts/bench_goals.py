"""Issue 13's goals against one run of scripts/bench.sh: the table the README shows.

Usage:
  bench_goals.py FIGURES_JSON            print the goals table of that run
  bench_goals.py --check README FIGURES_JSON
                                         exit 1 unless README's table is that run's
  bench_goals.py --median-round SUMMARY_JSON...
                                         which round (1-based) of a payments path's
                                         rounds stands for it: the median drain_vs_bare
  bench_goals.py --median-menu-round SUMMARY_JSON BARE_TXT ...
                                         the same for the menu path's rounds (each
                                         menu-sync's summary and its bare client's
                                         output): the median of the daemon against
                                         the bare client
  bench_goals.py --median-orders-round ORDERS_TXT...
                                         the same for the orders path's rounds (each
                                         orders-throughput's output): the median of
                                         the daemon against the bare writer

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
        return "**no** (not measured)"
    return "yes" if (value >= goal if at_least else value <= goal) else "**no**"


# Memory under the backlog is "flat" when the second half's peak is at most
# this much above the first's: the second half acknowledges about as many
# records as the first, so memory kept per record would show as growth
# towards 2; allocator and cache noise measured 1.04-1.12 over the runs of
# docs/performance.md.
FLAT = 1.2


def median_round(ratios):
    """Which of a path's rounds stands for it: the round (1-based) whose
    ratio (daemon / bare client, lower is better) is the median; of an even
    number the higher (worse) of the middle two, and a round without a
    ratio counts as the worst. One round judges the host's moment as much
    as the daemon; the median of several judges the daemon."""
    ranked = sorted(range(len(ratios)), key=lambda i: (ratios[i] is None, ratios[i] or 0))
    return ranked[len(ranked) // 2] + 1


def orders_to_writes(result):
    """The orders path's daemon against its bare writer (higher is better),
    from an orders-throughput result: on the daemon's own clock when the
    run has it (first write built to last write durable, as the bare
    writer's own clock runs), else on the drain the loadgen saw end."""
    if result.get("daemon_own_records_per_sec") is not None:
        return result["own_ratio_to_writes"]
    return result["ratio_to_writes"]


def last_json_line(path):
    """The last line of a loadgen output that is a JSON object (its result)."""
    for line in reversed(pathlib.Path(path).read_text().splitlines()):
        if line.strip().startswith("{"):
            return json.loads(line)
    return None


def median_orders_round(results):
    """Which of the orders path's rounds stands for it: the median of the
    daemon against the bare writer (a round without a result counts as the
    worst)."""
    return median_round([1 / orders_to_writes(r) if r and orders_to_writes(r) else None for r in results])


def menu_to_bare(summary, bare):
    """The menu path's daemon against its bare client (higher is better),
    from menu-sync's summary and menu-throughput's result."""
    if not summary or not bare or not summary.get("items_per_sec") or not bare.get("bare_items_per_sec"):
        return None
    return summary["items_per_sec"] / bare["bare_items_per_sec"]


def median_menu_round(rounds):
    """Which of the menu path's rounds, each (summary, bare result), stands
    for it: the median of the daemon against the bare client (a round
    without both counts as the worst)."""
    return median_round([1 / r if (r := menu_to_bare(s, b)) else None for s, b in rounds])


def menu_round_broken(summary, bare):
    """What made a menu round wrong rather than slow: lost, duplicated or
    refused items, wrong outputs, a goose threshold, no bare client. Its
    speed (menu-sync's target against its ceiling) is judged by the median
    round only."""
    why = [f"{summary[k]} {k.replace('_', ' ')}" for k in ("lost", "duplicated", "send_failures") if summary.get(k)]
    why += summary.get("mismatches") or []
    why += summary.get("failed_thresholds") or []
    if not bare:
        why.append("no bare client measured")
    return why


def round_broken(summary):
    """What made a round wrong rather than slow, from its summary.json: lost,
    duplicated or refused payments, wrong outputs, a goose threshold, no
    bare client measured, or its drain too short for the target. Only speed (its targets: drain against the bare
    client, the e2e p99) is judged by the median round; anything here fails
    the path whichever round it is in."""
    why = [f"{summary[k]} {k.replace('_', ' ')}" for k in ("lost", "duplicated", "send_failures") if summary.get(k)]
    why += summary.get("mismatches") or []
    why += summary.get("failed_thresholds") or []
    if summary.get("drain_vs_bare") is None:
        why.append("no bare client measured")
    if summary.get("drain_note"):
        # At the bench's scale the bare drain is long enough to judge.
        why.append(summary["drain_note"])
    return why


def render(f):
    """The goals table (Markdown) of the run whose figures are `f`. Every
    goal has its row, "not measured" where the run lacks the figure."""
    run = f.get("run") or {}
    paths = {p["path"]: p for p in f.get("paths") or []}
    failed = run.get("verdicts_failed") or []
    status = (
        f"; it exited 1, the verdict of {', '.join(failed)} failed (docs/performance.md)"
        if failed
        else ("; every scenario's verdict passed" if "verdicts_failed" in run else "")
    )
    out = [
        f"Run {run.get('id', '?')} of commit {run.get('commit', '?')}, on a {run.get('cores', '?')}-core "
        f"{run.get('machine', '?')} host, the local stack on the same cores; `scripts/bench.sh` took "
        f"{run.get('took_secs', '?')} s{status}. Every ratio is of two figures measured in this run.",
        "",
        "End to end, the daemon's rate against each yardstick: the CPU-bound ceiling (its kernel on the cores "
        "the emulators left) and a bare client making the same reads and writes without the work. The issue asks "
        "for ≥ 0.8 of the better (higher) of the two; on this stack the emulators hold every client's I/O far "
        "below the ceiling for payments and orders, and the menu path is bound by its CPU work, so the lower "
        "of the two is the bound that holds the daemon: both are judged.",
        "",
        "| path | daemon | CPU-bound ceiling: daemon / it | bare client: daemon / it | ≥ 0.8 of the higher | "
        "≥ 0.8 of the lower |",
        "|---|---|---|---|---|---|",
    ]
    rounds = f.get("payments_rounds") or []
    pay_label = "payments (cold-start, 10,000" + (f"; the median of {len(rounds)} rounds)" if len(rounds) > 1 else ")")
    orders_rounds = f.get("orders_rounds") or []
    orders_label = "orders (a backlog of 48,468 records" + (
        f"; the median of {len(orders_rounds)} rounds)" if len(orders_rounds) > 1 else ")"
    )
    menu_rounds = f.get("menu_rounds") or []
    menu_label = "menu (menu-sync, 10,000" + (f"; the median of {len(menu_rounds)} rounds)" if len(menu_rounds) > 1 else ")")
    for name, label, bare_name in [
        ("payments (cold-start)", pay_label, "bare consumer"),
        ("orders (backlog)", orders_label, "bare writer"),
        ("menu (menu-sync)", menu_label, "bare consumer"),
    ]:
        p = paths.get(name)
        if not p:
            out.append(f"| {label} | not measured | - | - | {_met(None, 0, True)} | {_met(None, 0, True)} |")
            continue
        clock = " (own clock)" if p.get("clock") == "own" else (" (drain as seen)" if p.get("clock") else "")
        ceiling = p.get("ceiling_per_sec")
        c_ratio = p["daemon_per_sec"] / ceiling if ceiling else None
        b = next((b for b in p.get("bare") or [] if b[0].startswith(bare_name)), None)
        b_ratio = b[2] if b else None
        ratios = [r for r in (c_ratio, b_ratio) if r is not None]
        # The higher yardstick gives the lower ratio, and the other way round
        # (with one yardstick, both are it).
        higher = min(ratios) if ratios else None
        lower = max(ratios) if ratios else None
        one = " (the one yardstick)" if len(ratios) == 1 else ""
        out.append(
            f"| {label} | {p['daemon_per_sec']:,.0f}/s{clock} "
            f"| {f'{ceiling:,.0f}/s: {c_ratio:.2f}' if ceiling else 'not measured'} "
            f"| {f'{b[0]} {b[1]:,.0f}/s: {b_ratio:.2f}' if b else 'none measured'} "
            f"| {f'{higher:.2f}{one}: ' if higher is not None else ''}{_met(higher, 0.8, True)} "
            f"| {f'{lower:.2f}{one}: ' if lower is not None else ''}{_met(lower, 0.8, True)} |"
        )
    out += ["", "| goal (issue 13) | this run | goal | met |", "|---|---|---|---|"]
    pay = paths.get("payments (cold-start)")
    floor, part1 = f.get("payments_floor_ns"), f.get("floor_ns")
    if pay and floor and pay.get("cpu_secs_per_1000") is not None:
        per = pay["cpu_secs_per_1000"] * 1e6  # CPU-s per 1,000 payments, as ns per payment
        xs = [per / floor] + ([per / part1] if part1 else [])
        shown = f"{xs[0]:.2f}x ({per / 1e6:.3f} ms against {floor / 1e6:.3f} at the host's speed around the run)"
        if len(xs) > 1:
            shown += f"; {xs[1]:.2f}x against part 1's {part1 / 1e6:.3f}"
        out.append(
            f"| CPU per payment, all included / the SHA-256 floor (10,001 blocks) | {shown} | ≤ 1.3x, both "
            f"| {_met(max(xs), 1.3, False)} |"
        )
    else:
        out.append(f"| CPU per payment, all included / the SHA-256 floor | not measured | ≤ 1.3x | {_met(None, 0, True)} |")
    for name in ["payments", "menu items", "order events", "order events, order cache full"]:
        s = (f.get("stage_ns") or {}).get(name)
        label = f"pipeline with in-memory ends, {name}: the kernel's time / the stage's, per element"
        # A run without criterion's figures has neither.
        if s and s[0] and s[1]:
            r = s[0] / s[1]
            out.append(f"| {label} | {r:.2f} | ≥ 0.9 | {_met(r, 0.9, True)} |")
        else:
            out.append(f"| {label} | not measured | ≥ 0.9 | {_met(None, 0, True)} |")
    backlog = f.get("backlog")
    if backlog and backlog.get("growth") is not None:
        out.append(
            f"| resident memory under a backlog of {backlog['records']:,} records ({backlog.get('acked', 0):,.0f} "
            f"acknowledged in the window): the second half's peak / the first's ({backlog['first_half_peak_mib']:.0f} "
            f"and {backlog['second_half_peak_mib']:.0f} MiB) | {backlog['growth']:.2f} | flat: ≤ {FLAT} "
            f"| {_met(backlog['growth'], FLAT, False)} |"
        )
    else:
        out.append(f"| resident memory under a backlog of 1,000,000 records | not measured | flat | {_met(None, 0, True)} |")
    also = []
    if f.get("payments_first_decision_secs") is not None:
        also.append(f"cold start to first decision {f['payments_first_decision_secs']:.2f} s")
    rss = [f"{p['path'].split(' ')[0]} {p['peak_rss_mib']:.0f} MiB" for p in f.get("paths") or [] if p.get("peak_rss_mib")]
    if rss:
        also.append("peak RSS " + ", ".join(rss))
    cpu = [
        f"{p['path'].split(' ')[0]} {p['cpu_secs_per_1000']:.2f}"
        for p in f.get("paths") or []
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
    if argv[:1] == ["--median-round"] and len(argv) >= 2:
        # bench.sh: the rounds' summary.json files, in round order.
        print(median_round([json.loads(pathlib.Path(a).read_text()).get("drain_vs_bare") for a in argv[1:]]))
        return 0
    if argv[:1] == ["--median-menu-round"] and len(argv) >= 3 and len(argv) % 2 == 1:
        # bench.sh: each round's menu-sync summary.json and bare client's output, in round order.
        pairs = [(json.loads(pathlib.Path(s).read_text()), last_json_line(b)) for s, b in zip(argv[1::2], argv[2::2])]
        print(median_menu_round(pairs))
        return 0
    if argv[:1] == ["--median-orders-round"] and len(argv) >= 2:
        # bench.sh: the rounds' orders-throughput outputs, in round order.
        print(median_orders_round([last_json_line(a) for a in argv[1:]]))
        return 0
    if len(argv) == 1:
        print(render(json.loads(pathlib.Path(argv[0]).read_text())), end="")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
