"""Prints scripts/bench.sh's table from one run's raw figures.

Usage: bench_table.py OUT_DIR CORES SECONDS [--keep-criterion]
Reads criterion's estimates (the run's criterion.json; with --keep-criterion,
which bench.sh passes, criterion's own files, kept as criterion.json), openssl's speed (part 1's, and
the one-second probes around each end-to-end path in host-speed.txt), the
loadgen's summaries and the per-run process figures bench.sh wrote into
OUT_DIR; writes OUT_DIR/table.md and OUT_DIR/figures.json.
"""

import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_goals  # noqa: E402  (beside this script)

out = pathlib.Path(sys.argv[1])
cores = int(sys.argv[2])
took = int(sys.argv[3])
keep_criterion = "--keep-criterion" in sys.argv[4:]
repo = pathlib.Path(__file__).resolve().parent.parent


def criterion():
    """full id -> median ns per element (per iteration when no element count).

    The run's own criterion.json when it has one. Otherwise criterion's
    estimates (CRITERION_HOME, as bench.sh sets it, or target/criterion),
    which are this run's only when bench.sh has just made them: it passes
    --keep-criterion, and they are kept as the run's criterion.json (the
    next run replaces criterion's files; the run's figures must still give
    its table). Made again without it, a run that has no criterion.json is
    given what criterion's files hold now, with a warning, and nothing is
    written."""
    kept = out / "criterion.json"
    if kept.exists():
        return json.loads(kept.read_text())
    home = pathlib.Path(os.environ.get("CRITERION_HOME") or repo / "target" / "criterion")
    found = {}
    for bench in sorted(home.glob("**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        per = (meta.get("throughput") or {}).get("Elements") or 1
        found[meta["full_id"]] = est["median"]["point_estimate"] / per
    if keep_criterion and found:
        kept.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    elif not keep_criterion:
        print(
            f"bench_table: {out} has no criterion.json: its kernel and pipeline figures are {home}'s "
            f"as it is now ({len(found)} benchmarks), which may be another run's",
            file=sys.stderr,
        )
    return found


def openssl_bytes_per_sec():
    try:
        last = (out / "openssl.txt").read_text().strip().splitlines()[-1].split()
        return float(last[-1].rstrip("k")) * 1000
    except (OSError, IndexError, ValueError):
        return None


def host_speeds():
    """[(label, bytes/s)] of bench.sh's one-second openssl probes, in run order."""
    path = out / "host-speed.txt"
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = line.split()
        try:
            bps = float(fields[-1]) if len(fields) == 2 else 0.0
        except ValueError:
            continue
        # A probe that failed wrote 0; anything not a finite speed is dropped.
        if math.isfinite(bps) and bps > 0:
            found.append((fields[0], bps))
    return found


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


def last_json_line(name):
    for line in reversed((out / name).read_text().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"bench: no JSON result in {out / name}")


def proc(name):
    p = load(f"{name}.proc")
    tick = p["ticks_per_sec"]
    wall = p["wall_secs"]
    emu = p["emulators_cpu_ticks"] / tick
    return {
        "wall_secs": wall,
        "daemon_cpu_secs": p["daemon_cpu_ticks"] / tick,
        "daemon_peak_rss_mib": p["daemon_peak_rss_kib"] / 1024,
        "emulators_cpu_secs": emu,
        "cores_left": max(cores - emu / wall, 0.0) if wall > 0 else float(cores),
    }


def over_burst(summary, p):
    """A cold-start run's proc figures with the daemon's CPU over the burst
    (the loadgen reads it before its bare client's drain, which the daemon
    sits out idle) in place of its CPU over the whole command, which is kept
    as `whole_cpu_secs`."""
    p = dict(p, whole_cpu_secs=p["daemon_cpu_secs"])
    if summary.get("daemon_cpu_secs") is not None:
        p["daemon_cpu_secs"] = summary["daemon_cpu_secs"]
    return p


def ms(ns):
    return f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.2f} µs"


def rate(x):
    return f"{x:,.0f}/s"


def aws_requests(path):
    """(service, operation) -> requests the daemon sent, from its
    `cafe_aws_requests_total` at the end of a path's run; None when the
    daemon exported none (a binary older than the counter)."""
    f = out / f"{path}.metrics"
    if not f.exists():
        return None
    found = {}
    for line in f.read_text().splitlines():
        if line.startswith("cafe_aws_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            pairs = dict(kv.split("=", 1) for kv in labels[labels.index("{") + 1 : -1].split(","))
            found[(pairs["service"].strip('"'), pairs["operation"].strip('"'))] = float(value)
    return found or None


crit = criterion()
kernel = {
    # Named "(two chains)" before the width became the CPU's fastest.
    "payment": crit.get("fraud/payment: decode + model work 10000 (chains interleaved) + rules")
    or crit.get("fraud/payment: decode + model work 10000 (two chains) + rules"),
    "model_loop": crit.get("fraud/model_work 10000 rounds"),
    "model_pairs": crit.get("fraud/model_work_many 10000 rounds (per payment)"),
    "model_hasher": crit.get("fraud/Sha256::digest 10000 rounds"),
    "order_event": crit.get("orders/decode + apply, 500 events of 100 orders"),
    # menu-sync's images average about 18 KiB: the pipeline bench's items.
    "menu_item": crit.get("pipeline/menu/kernel") or crit.get("menu/digest 64 KiB image, 100 JSON rounds"),
    "menu_item_64k": crit.get("menu/digest 64 KiB image, 100 JSON rounds"),
}
# Per path: (kernel, stage, the stage's name).
stage = {
    "payments": (crit.get("pipeline/payments/kernel"), crit.get("pipeline/payments/decide stage"), "decide stage"),
    "menu items": (crit.get("pipeline/menu/kernel"), crit.get("pipeline/menu/decide stage"), "decide stage"),
    "order events": (
        crit.get("pipeline/orders/kernel"),
        crit.get("pipeline/orders/shard stage"),
        "shard stage, writes to an in-memory order store",
    ),
    # The same stage with the SDK's requests: what building, serialising and
    # signing the writes adds (not a goal of its own: the sink's work).
    "order events, through the SDK": (
        crit.get("pipeline/orders/kernel"),
        crit.get("pipeline/orders/shard stage through the SDK"),
        "shard stage, the SDK's requests to an in-memory DynamoDB",
    ),
}
# The orders stage again with the pool of order caches full (a sibling
# shard's orders in progress fill it: the run's orders push them out,
# each freed on the runtime worker that puts). A row only when the run
# measured it (runs before the bench had it did not).
full = crit.get("pipeline/orders/shard stage, order cache full")
if full:
    stage["order events, order cache full"] = (
        crit.get("pipeline/orders/kernel"),
        full,
        "shard stage, the pool of order caches full",
    )
# Allocations per element, the kernel's and the stage's, as the pipeline
# bench prints them after its check runs (a count, not a time: nearly the
# same from run to run, whatever the host's load).
allocs = {}
kernels_txt = out / "kernels.txt"
kernels_out = kernels_txt.read_text() if kernels_txt.exists() else ""
if kernels_out:
    for m in re.finditer(r"^(\w+): allocations per element: kernel ([\d.]+), stage ([\d.]+)$", kernels_out, re.M):
        allocs[m[1]] = (float(m[2]), float(m[3]))

# How many payments' chains the fraud model interleaves (`LANES`; the
# kernels bench prints it; two in runs from before it did).
m = re.search(r"^fraud model: (\d+) chains interleaved", kernels_out, re.M)
lanes = {1: "one", 2: "two", 4: "four", 8: "eight"}.get(int(m[1]), m[1]) if m else "two"


def by_thread(pattern, fields):
    """The pipeline bench's line of kernels.txt matching `pattern`, its
    groups named and converted as `fields` ((name, type) in order); None
    when no line matches."""
    m = re.search(pattern, kernels_out, re.M) if kernels_out else None
    return {name: kind(m[i]) for i, (name, kind) in enumerate(fields, 1)} if m else None


# The orders stage's time on CPU per event by thread, beside the kernel's
# (the pipeline bench, after its check runs): the CPU pool's and the
# runtime workers' sum against the kernel's is what the stage costs
# whatever the overlap; its wall is at least the slower thread's.
threads = [("pool_us", float), ("runtime_us", float), ("bench_thread_us", float)]
orders_cpu = by_thread(
    r"^orders: on CPU per event over (\d+) runs \(us\): kernel ([\d.]+); stage ([\d.]+): pool ([\d.]+), "
    r"runtime ([\d.]+), bench thread ([\d.]+); wall per run, min/median/max \(ms\): kernel ([\d./]+), stage ([\d./]+)$",
    [("runs", int), ("kernel_us", float), ("stage_us", float), *threads, ("kernel_wall_ms", str), ("stage_wall_ms", str)],
)
if orders_cpu and orders_cpu["kernel_us"] <= 0:
    orders_cpu = None
# The same with the pool of order caches full, when the run measured it.
orders_full_cpu = by_thread(
    r"^orders, cache full: on CPU per event over (\d+) runs \(us\): stage ([\d.]+): pool ([\d.]+), "
    r"runtime ([\d.]+), bench thread ([\d.]+); wall per run, min/median/max \(ms\): stage ([\d./]+)$",
    [("runs", int), ("stage_us", float), *threads, ("stage_wall_ms", str)],
)
ossl = openssl_bytes_per_sec()


def floor_at(bps):
    """The SHA-256 floor per payment at `bps` bytes/s: 10,000 rounds and the first hash, one block each."""
    return 10_001 * 64 / bps * 1e9 if bps else None


floor_ns = floor_at(ossl)
# The payments run is set against the floor at the host's speed around it
# (the probes just before and after), not part 1's, minutes earlier.
speeds = host_speeds()
# bench.sh runs the payments path in rounds (rounds/payments-K) and copies
# the median round's files to payments.*; runs before it had one, "payments".
def rounds_of(name):
    """A path bench.sh ran in rounds (rounds/NAME-K, the median's number in
    rounds/NAME.median, its files copied to NAME.* and NAME/): (the median
    round's path, each round's ratio, verdict and what was wrong in it).
    A run before rounds, or a path run once: (NAME, [])."""
    median = out / "rounds" / f"{name}.median"
    if not median.exists():
        return name, []
    chosen = f"rounds/{name}-{median.read_text().strip()}"
    if load(f"{chosen}/summary.json") != load(f"{name}/summary.json"):
        raise SystemExit(f"bench: {name}/summary.json is not its median round's ({chosen})")
    found = []
    k = 0
    while (summary := load(f"rounds/{name}-{k + 1}/summary.json")) is not None:
        k += 1
        status = (load(f"rounds/{name}-{k}.proc") or {}).get("status", 0)
        found.append(
            {"round": k, "drain_vs_bare": summary.get("drain_vs_bare"), "passed": status == 0, "broken": bench_goals.round_broken(summary)}
        )
    return chosen, found


def orders_rounds_of():
    """The orders path as bench.sh ran it in rounds (rounds/orders-K.txt,
    the median's number in rounds/orders.median, its files copied to
    orders.*): each round's daemon / bare writer. A run before rounds: []."""
    median = out / "rounds" / "orders.median"
    if not median.exists():
        return []
    chosen = f"rounds/orders-{median.read_text().strip()}.txt"
    if last_json_line(chosen) != last_json_line("orders.txt"):
        raise SystemExit(f"bench: orders.txt is not its median round's ({chosen})")
    found = []
    while (out / "rounds" / f"orders-{len(found) + 1}.txt").exists():
        k = len(found) + 1
        found.append({"round": k, "to_writes": bench_goals.orders_to_writes(last_json_line(f"rounds/orders-{k}.txt"))})
    return found


pay_round, pay_rounds = rounds_of("payments")
orders_rounds = orders_rounds_of()
process_round, process_rounds = rounds_of("payments-process")
around = [(label, bps) for label, bps in speeds if label in (f"{pay_round}:before", f"{pay_round}:after")]
pay_ossl = sum(bps for _, bps in around) / len(around) if around else ossl
pay_floor_ns = floor_at(pay_ossl)

pay = load("payments/summary.json")
pay_p = over_burst(pay, proc("payments"))
orders = last_json_line("orders.txt")
ord_p = proc("orders")
menu = load("menu/summary.json")
menu_p = proc("menu")
# The menu path's bare client, right after menu-sync on the same stack
# (loadgen's menuthroughput.rs; runs before it was measured have none).
menu_bare = last_json_line("menu-bare.txt") if (out / "menu-bare.txt").exists() else None


def menu_rounds_of():
    """The menu path as bench.sh ran it in rounds (rounds/menu-K/ and
    rounds/menu-bare-K.txt, the median's number in rounds/menu.median, its
    files copied to menu/, menu.* and menu-bare.txt): each round's daemon
    against its bare client, its drain against its ceiling, its verdict and
    what was wrong in it. A run before rounds: []."""
    median = out / "rounds" / "menu.median"
    if not median.exists():
        return []
    k = median.read_text().strip()
    if load(f"rounds/menu-{k}/summary.json") != menu or last_json_line(f"rounds/menu-bare-{k}.txt") != menu_bare:
        raise SystemExit(f"bench: menu/summary.json or menu-bare.txt is not its median round's (rounds/menu-{k})")
    found = []
    while (summary := load(f"rounds/menu-{len(found) + 1}/summary.json")) is not None:
        k = len(found) + 1
        bare = last_json_line(f"rounds/menu-bare-{k}.txt") if (out / "rounds" / f"menu-bare-{k}.txt").exists() else None
        found.append({
            "round": k,
            "to_bare": bench_goals.menu_to_bare(summary, bare),
            "drain_vs_ceiling": (summary.get("ceiling") or {}).get("drain_vs_ceiling"),
            "passed": (load(f"rounds/menu-{k}.proc") or {}).get("status", 0) == 0,
            "broken": bench_goals.menu_round_broken(summary, bare),
        })
    return found


menu_rounds = menu_rounds_of()
backlog = last_json_line("backlog.txt")

rows = []


def e2e_row(path, events, daemon_rate, kernel_ns, p, bare=None, e2e=None, cores_left=None, clock=None):
    """`cores_left`: what the daemon could have had, when the run measured it
    (the machine's busy time minus the daemon's, from the first send to the
    drain's end); otherwise the machine's cores minus the emulators' CPU over
    the whole run."""
    cores_left = cores_left if cores_left is not None else p["cores_left"]
    ceiling = cores_left / (kernel_ns / 1e9) if kernel_ns else None
    cpu_per_1000 = p["daemon_cpu_secs"] / events * 1000 if events else None
    rows.append(
        {
            "path": path,
            "events": events,
            "daemon_per_sec": daemon_rate,
            "ceiling_per_sec": ceiling,
            "ratio_to_ceiling": daemon_rate / ceiling if ceiling else None,
            "bare": bare,
            "cpu_secs_per_1000": cpu_per_1000,
            "peak_rss_mib": p["daemon_peak_rss_mib"],
            "cores_left": cores_left,
            "e2e": e2e,
            # How the daemon's rate was timed, where a path has two clocks.
            **({"clock": clock} if clock else {}),
        }
    )


pay_bare = pay.get("bare")
if not pay_bare or not pay.get("daemon_drain_secs"):
    raise SystemExit("bench: cold-start measured no bare client (is the stack on loopback?)")
# Both rates over the same span: first decision to last (the bare
# client's: its first batch's stamp to its last's, where the daemon stamps
# a decision).
pay_rate = pay["sent"] / pay["daemon_drain_secs"]
e2e_row(
    "payments (cold-start)",
    pay["sent"],
    pay_rate,
    kernel["payment"],
    pay_p,
    bare=[
        (
            # With the fraud history in DynamoDB the bare consumer made its
            # reads and writes too (loadgen's paythroughput.rs).
            "bare consumer" + (" with the history's I/O" if pay_bare.get("fraud_history") == "dynamodb" else ""),
            pay_bare["bare_payments_per_sec"],
            pay_rate / pay_bare["bare_payments_per_sec"],
        )
    ],
    e2e=(pay["e2e_p50_ms"], pay["e2e_p99_ms"]),
)
# The two at once: a bare client making the daemon's reads and writes
# (runs before it was measured have none).
# The daemon by its own clock when the run has it (loadgen's throughput.rs:
# first write built to last write durable, as the bare writers' own clocks
# run); before, by the drain the loadgen saw end, its observer's lag
# included (a yardstick that favours the bare clients).
own_clock = orders.get("daemon_own_records_per_sec") is not None
orders_rate = orders["daemon_own_records_per_sec"] if own_clock else orders["daemon_records_per_sec"]
to_writes = bench_goals.orders_to_writes(orders)
orders_at_once = [
    (
        "bare reader and writer at once",
        orders["bare_read_write_records_per_sec"],
        orders["own_ratio_to_reads_writes"] if own_clock else orders["ratio_to_reads_writes"],
    )
] if "bare_read_write_records_per_sec" in orders else []
e2e_row(
    "orders (backlog)",
    orders["records"],
    orders_rate,
    kernel["order_event"],
    ord_p,
    bare=[
        ("bare reader", orders["bare_records_per_sec"], orders_rate / orders["bare_records_per_sec"]),
        ("bare writer", orders["bare_write_items_per_sec"], to_writes),
    ]
    + orders_at_once,
    # "own": the daemon's own clock; "drain": as the loadgen saw the drain
    # end. Rows of the two are not to be compared as one figure.
    clock="own" if own_clock else "drain",
)
# menu-sync times the kernel itself, over 100 of the run's items just after
# its drain: this memory-bound work's speed on the host at the time of the
# run, which part 1's criterion figure, minutes earlier, is not (part 1's /
# after-run was 0.60 and 1.45 in two runs of the same daemon code:
# docs/performance.md).
# The row's ceiling uses it when the run has it; part 1's is given below.
menu_kernel_run_ns = ((menu.get("ceiling") or {}).get("kernel_ms") or 0) * 1e6 or None
e2e_row(
    "menu (menu-sync)",
    menu["sent"],
    menu["items_per_sec"],
    menu_kernel_run_ns or kernel["menu_item"],
    menu_p,
    # Both rates over the same span: first send to the last batch's write
    # start (the daemon's last `applied_at`).
    bare=[("bare consumer", menu_bare["bare_items_per_sec"], menu["items_per_sec"] / menu_bare["bare_items_per_sec"])]
    if menu_bare
    else None,
    e2e=(menu["e2e_p50_ms"], menu["e2e_p99_ms"]),
    # The loadgen sends 185 MB of items meanwhile: its CPU is not the daemon's.
    cores_left=(menu.get("ceiling") or {}).get("cores", {}).get("left"),
)

# As bench.sh read it when its build began (HEAD may have moved since).
commit = (out / "commit").read_text().strip() if (out / "commit").exists() else None
commit = commit or subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
# The machine the run was on, as bench.sh read it (this table may be made
# again elsewhere, from the run's files).
machine = out / "machine"
cpu = machine.read_text().strip() if machine.exists() else None
cpu = cpu or next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
lines = [
    f"Machine: {cpu}, {cores} cores; commit {commit}; scripts/bench.sh took {took} s.",
    "",
    "| kernel (one core, criterion median) | per event | per core |",
    "|---|---|---|",
]
for label, key in [
    (f"payment: decode + model work (10,000 SHA-256, {lanes} payments' chains interleaved) + rules", "payment"),
    ("order event: decode + apply", "order_event"),
    ("menu item: 18 KiB image (menu-sync's mean), 100 JSON rounds", "menu_item"),
    ("menu item: 64 KiB image, 100 JSON rounds", "menu_item_64k"),
]:
    if kernel[key]:
        lines.append(f"| {label} | {ms(kernel[key])} | {rate(1e9 / kernel[key])} |")
if kernel["model_loop"] and kernel["model_hasher"]:
    lines.append(
        f"| model work alone: single-block loop / `Sha256::digest` per round | {ms(kernel['model_loop'])} / "
        f"{ms(kernel['model_hasher'])} | ratio {kernel['model_loop'] / kernel['model_hasher']:.2f} |"
    )
if floor_ns and kernel["model_loop"]:
    lines.append(
        f"| SHA-256 floor: 10,001 blocks at openssl's speed ({ossl / 1e9:.2f} GB/s) | {ms(floor_ns)} | "
        f"model loop / floor {kernel['model_loop'] / floor_ns:.2f} |"
    )
if floor_ns and kernel["model_pairs"]:
    lines.append(
        f"| model work, {lanes} payments' chains interleaved on one core, per payment | {ms(kernel['model_pairs'])} | "
        f"/ floor {kernel['model_pairs'] / floor_ns:.2f} |"
    )
sdk_get, sdk_tx, sdk_json = (
    crit.get(f"sdk/{name}")
    for name in ["GetItem", "TransactWriteItems of 20 puts", "TransactWriteItems of 20 puts: its items cloned and serialised alone"]
)
if sdk_get and sdk_tx:
    # The request path every call of the daemon pays, before any network:
    # the SDK's own CPU per request, answered in memory.
    json_alone = f" (its items cloned and serialised alone: {ms(sdk_json)})" if sdk_json else ""
    lines.append(
        f"| AWS SDK, one request answered in memory: `GetItem` / `TransactWriteItems` of 20 puts{json_alone} | "
        f"{ms(sdk_get)} / {ms(sdk_tx)} | {rate(1e9 / sdk_get)} / {rate(1e9 / sdk_tx)} |"
    )
if any(k and d for k, d, _ in stage.values()):
    lines += [
        "",
        "| pipeline with in-memory ends (one CPU-pool thread; wall time), per element | kernel alone | stage | stage / kernel | allocations, kernel / stage |",
        "|---|---|---|---|---|",
    ]
    for name, (k, d, what) in stage.items():
        if k and d:
            counted = allocs.get({"payments": "payments", "menu items": "menu", "order events": "orders"}.get(name, ""))
            counts = f"{counted[0]:,.2f} / {counted[1]:,.2f}" if counted else "-"
            lines.append(f"| {name} | {ms(k)} | {ms(d)} ({what}) | {d / k:.2f} | {counts} |")
if orders_cpu:
    c = orders_cpu
    lines += [
        "",
        f"Orders on CPU per event ({c['runs']} runs of each, apart from the table's): kernel {c['kernel_us']:.3f} us; "
        f"shard stage: CPU pool {c['pool_us']:.3f} us ({c['pool_us'] / c['kernel_us']:.2f}x the kernel's) and "
        f"runtime workers {c['runtime_us']:.3f} us ({c['runtime_us'] / c['kernel_us']:.2f}x), together "
        f"{(c['pool_us'] + c['runtime_us']) / c['kernel_us']:.2f}x; the bench thread {c['bench_thread_us']:.3f} us. "
        f"Wall per run, min/median/max: kernel {c['kernel_wall_ms']} ms, "
        f"stage {c['stage_wall_ms']} ms.",
    ]
    if orders_full_cpu:
        f = orders_full_cpu
        lines[-1] += (
            f" With the pool of order caches full: CPU pool {f['pool_us']:.3f} us, runtime workers {f['runtime_us']:.3f} us "
            f"({f['runtime_us'] / c['kernel_us']:.2f}x the kernel's); wall per run {f['stage_wall_ms']} ms."
        )
lines += [
    "",
    "| path, end to end | events | daemon | CPU-bound ceiling (cores left) | daemon / ceiling | bare client: daemon / bare | CPU-s per 1,000 | peak RSS | e2e p50 / p99 |",
    "|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    bare = "; ".join(f"{name} {rate(v)}: {ratio:.2f}" for name, v, ratio in r["bare"]) if r["bare"] else "-"
    ceiling = f"{rate(r['ceiling_per_sec'])} ({r['cores_left']:.2f})" if r["ceiling_per_sec"] else "-"
    to_ceiling = f"{r['ratio_to_ceiling']:.2f}" if r["ratio_to_ceiling"] else "-"
    e2e = f"{r['e2e'][0] / 1000:.2f} s / {r['e2e'][1] / 1000:.2f} s" if r["e2e"] else "-"
    lines.append(
        f"| {r['path']} | {r['events']:,} | {rate(r['daemon_per_sec'])} | {ceiling} | {to_ceiling} | {bare} | "
        f"{r['cpu_secs_per_1000']:.2f} | {r['peak_rss_mib']:.0f} MiB | {e2e} |"
    )
if speeds:
    all_bps = ([ossl] if ossl else []) + [bps for _, bps in speeds]
    lines += [
        "",
        f"Host speed (openssl's SHA-256 for a second, GB/s): part 1 {f'{ossl / 1e9:.2f}' if ossl else '-'}; "
        + "; ".join(f"{label} {bps / 1e9:.2f}" for label, bps in speeds)
        + f". Fastest / slowest {max(all_bps) / min(all_bps):.2f}, for work like the fraud model's: work bound by "
        "caches and memory, like the JSON rounds, has moved more within one run (docs/performance.md).",
    ]
if pay_floor_ns:
    per_payment = pay_p["daemon_cpu_secs"] / pay["sent"] * 1e9
    whole = pay_p["whole_cpu_secs"] / pay["sent"] * 1e9
    used = " and ".join(label for label, _ in around)
    if around:
        beside = f"; {per_payment / floor_ns:.2f}x part 1's floor of {ms(floor_ns)}" if floor_ns else ""
        at = f" at the host's speed around the run (openssl {pay_ossl / 1e9:.2f} GB/s, the mean of {used}{beside})"
    else:
        at = ", at part 1's speed"
    lines += [
        "",
        f"Payments: the daemon spent {ms(per_payment)} of CPU per payment, all included (start-up, SQS and DynamoDB "
        f"requests, decode, rules, the model, polling its other inputs), from its restart to the last payment "
        f"verified: {per_payment / pay_floor_ns:.2f}x the SHA-256 floor of {ms(pay_floor_ns)}{at}. "
        f"Over the whole command, the bare client's drain included: {ms(whole)}, {whole / pay_floor_ns:.2f}x. "
        f"Cold start to first decision: {pay['first_decision_secs']:.2f} s (the daemon restarted as the burst was sent).",
    ]
    requests = aws_requests("payments")
    if requests:
        n = pay["sent"]
        by_service = {}
        for (service, operation), count in requests.items():
            by_service.setdefault(service, []).append((operation, count))
        parts = []
        for service, ops in sorted(by_service.items(), key=lambda kv: -sum(c for _, c in kv[1])):
            ops.sort(key=lambda oc: -oc[1])
            detail = ", ".join(f"{op} {c / n:.3f}" for op, c in ops if c / n >= 0.001)
            parts.append(f"{service} {sum(c for _, c in ops) / n:.3f} ({detail})")
        total = sum(requests.values()) / n
        sdk_part = (
            f"; at the SDK's in-memory cost of a `GetItem` ({ms(sdk_get)}, the kernel table), at least "
            f"{ms(total * sdk_get)} of CPU per payment is the SDK's request path alone, before any network"
            if sdk_get
            else ""
        )
        lines[-1] += (
            f" It sent {total:.3f} AWS requests per payment over the whole command (`cafe_aws_requests_total`; "
            f"the bare client's drain included, through which the daemon polls its idle inputs): "
            + "; ".join(parts)
            + sdk_part
            + "."
        )
if own_clock:
    at_once = (
        f" and {orders['ratio_to_reads_writes']:.2f} of the bare reader and writer at once"
        if "ratio_to_reads_writes" in orders
        else ""
    )
    lines += [
        "",
        f"Orders, the daemon's own clock (the table's rate and ratios): {orders['daemon_own_secs']:.2f} s from its "
        f"first batch's writes begun to its last write durable (its first `applied_at` to "
        f"`cafe_sink_last_write_timestamp_seconds`), as the bare writers' own clocks run, from a first transaction "
        f"begun to a last one committed (the loadgen's observer still polls the emulator during the daemon's span "
        f"only); its batches' writes began over {orders['daemon_writes_secs']:.2f} s of it. As the loadgen saw its "
        f"last order complete, a drain of {orders['daemon_drain_secs']:.2f} s: {orders['ratio_to_writes']:.2f} of "
        f"the bare writer{at_once}, the observer's lag on the daemon's side only.",
    ]
elif "daemon_writes_secs" in orders:
    # Runs with the daemon's writes' span and no own clock (loadgen's
    # throughput.rs before the last-write stamp; or a daemon without it).
    refused = orders.get("daemon_own_clock_refused")
    lines += [
        "",
        (f"Orders: no figure by the daemon's own clock ({refused}). The" if refused else "Orders, the")
        + f" daemon's writes' span: its writes were built over {orders['daemon_writes_secs']:.2f} s (its first "
        f"and last `applied_at`), in a drain of {orders['daemon_drain_secs']:.2f} s as the loadgen saw its last order "
        f"complete; between the two lie its last write's own time and the observer's lag (0.32-0.44 s at 10,000 "
        f"orders, measured on the bare writer: docs/performance.md). The ratios use the drain; the bare writers' "
        f"own clocks have neither.",
    ]
if menu.get("ceiling"):
    c = menu["ceiling"]
    lines += [
        "",
        f"Menu: menu-sync's own local target, drain / CPU-bound ceiling of its run: {c['drain_vs_ceiling']:.2f} "
        f"(kernel {c['kernel_ms']:.2f} ms per item, timed by the loadgen over 100 of the run's items, on "
        f"{c['cores']['left']:.2f} cores left; the daemon used {c['cores']['daemon']:.2f} cores, everything else "
        f"{c['cores']['others']:.2f}).",
    ]
if (menu_kernel_run_ns or kernel["menu_item"]) and menu.get("sent"):
    per_item = menu_p["daemon_cpu_secs"] / menu["sent"] * 1e9
    against = [(menu_kernel_run_ns, "the kernel timed on the run's items just after it", "the table's ceiling"),
               (kernel["menu_item"], "part 1's criterion kernel",
                "an 18 KiB item" + ("" if menu_kernel_run_ns else "; the table's ceiling, this run having no other"))]
    lines += [
        "",
        f"Menu: the daemon spent {ms(per_item)} of CPU per item, all included (SQS, DynamoDB and Redshift "
        f"requests, decode, image check, JSON rounds): "
        + "; ".join(f"{per_item / k:.2f}x {what} ({ms(k)}, {note})" for k, what, note in against if k)
        + ".",
    ]
if backlog:
    s0 = backlog["samples"]
    at = lambda secs: next((x["rss_mib"] for x in s0 if x["secs"] >= secs), s0[-1]["rss_mib"])
    # A sample without the cache's figure came before the cache's series
    # existed (backlog.rs): an empty cache.
    cache_at = lambda secs: next((x.get("order_cache_mib") or 0.0 for x in s0 if x["secs"] >= secs), 0.0)
    lines += [
        "",
        f"Memory under a backlog: {backlog['records']:,} records on the stream ({backlog['orders']:,} orders), the daemon "
        f"started into it and sampled for {s0[-1]['secs']:.0f} s, in which it acknowledged {backlog['acked']:,.0f}: resident "
        f"memory {at(10):.0f} MiB at 10 s, {at(30):.0f} at 30 s, {at(60):.0f} at 60 s, {s0[-1]['rss_mib']:.0f} at the end; "
        f"peak {backlog['first_half_peak_mib']:.0f} MiB in the first half, {backlog['second_half_peak_mib']:.0f} in the "
        f"second (growth {backlog['growth']:.2f})"
        + (
            # Runs since the samples read the daemon's order cache: how much
            # of the growth is that cache filling towards its bound.
            f"; the order cache, which fills towards its bound as new orders come (`order_cache_bytes`, 32 MiB "
            f"by default), held {cache_at(10):.1f} MiB at 10 s and {backlog['order_cache_mib']:.1f} at the end by its "
            f"own estimate, and resident memory less that estimate grew {backlog['growth_net_of_cache']:.2f}."
            if backlog.get("growth_net_of_cache") is not None and backlog.get("order_cache_mib") is not None
            else "."
        ),
    ]
def counter(path, family, label=""):
    """The sum of a counter family's series (those whose labels hold `label`)
    in the daemon's metrics at the end of a path's run."""
    f = out / f"{path}.metrics"
    if not f.exists():
        return None
    total = 0.0
    for line in f.read_text().splitlines():
        if line.startswith(family + "{") or line.startswith(family + " "):
            if label in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


shared = [("shared (DynamoDB)", "payments", pay, pay_p)]
if (out / "payments-process" / "summary.json").exists():
    process = load("payments-process/summary.json")
    shared.append(("in process", "payments-process", process, over_burst(process, proc("payments-process"))))
if len(shared) == 2:
    lines += [
        "",
        "Fraud history: cold-start with the history shared in DynamoDB (`[fraud] state = \"dynamodb\"`, the default) "
        "and in the process, same run:",
        "",
        "| fraud history | drain (s) | payments/s | e2e p99 (ms) | CPU-s per 1,000 payments | DynamoDB requests per payment | state reads per batch | conflicts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, path, summary, p in shared:
        n = summary["sent"]
        requests = counter(path, "cafe_sink_requests_total", 'sink="dynamodb"')
        batches = counter(path, "cafe_fraud_state_batches_total")
        reads = counter(path, "cafe_fraud_state_read_requests_total")
        conflicts = counter(path, "cafe_fraud_state_conflicts_total")
        per_batch = f"{reads / batches:.2f}" if batches else "-"
        lines.append(
            f"| {label} | {summary['daemon_drain_secs']:.1f} | {n / summary['daemon_drain_secs']:.0f} | {summary['e2e_p99_ms']:.0f} | "
            f"{p['daemon_cpu_secs'] / n * 1000:.2f} | {requests / n:.3f} | {per_batch} | {conflicts:.0f} |"
            if requests is not None
            else f"| {label} | {summary['daemon_drain_secs']:.1f} | - | - | - | - | - | - |"
        )
# Every round of the payments paths: its drain against its own bare
# client's, and its verdict.
for name, chosen, found in [
    ("Payments", pay_round, pay_rounds),
    ("Payments with the history in the process", process_round, process_rounds),
]:
    if not found:
        continue
    said = ", ".join(
        (f"{r['drain_vs_bare']:.2f}" if r["drain_vs_bare"] is not None else "not measured")
        + ("" if r["passed"] else " (FAIL)")
        + (f" (wrong: {'; '.join(r['broken'])})" if r["broken"] else "")
        for r in found
    )
    median = chosen.rsplit("-", 1)[-1]
    lines += [
        "",
        f"{name} ran in {len(found)} rounds, each on fresh resources with its own bare client; the daemon's drain / "
        f"the bare client's, round by round: {said}. The path's figures and verdict are round {median}'s, the median; "
        f"a round with anything wrong (lost, duplicated, refused, wrong outputs, no bare client) fails the path "
        f"whichever it is.",
    ]
if orders_rounds:
    median = (out / "rounds" / "orders.median").read_text().strip()
    lines += [
        "",
        f"Orders ran in {len(orders_rounds)} rounds, each on fresh resources with its own bare reader and writers; "
        "the daemon against the bare writer, round by round: "
        + ", ".join(f"{r['to_writes']:.2f}" for r in orders_rounds)
        + f". The path's figures are round {median}'s, the median.",
    ]
if menu_rounds:
    said = ", ".join(
        (f"{r['to_bare']:.2f}" if r["to_bare"] is not None else "not measured")
        + (f" (drain / ceiling {r['drain_vs_ceiling']:.2f})" if r["drain_vs_ceiling"] is not None else "")
        + ("" if r["passed"] else " (FAIL)")
        + (f" (wrong: {'; '.join(r['broken'])})" if r["broken"] else "")
        for r in menu_rounds
    )
    median = (out / "rounds" / "menu.median").read_text().strip()
    lines += [
        "",
        f"Menu ran in {len(menu_rounds)} rounds, each on fresh resources with its own bare client; the daemon against "
        f"the bare client, round by round: {said}. The path's figures and verdict are round {median}'s, the median; a "
        "round with anything wrong (lost, duplicated, refused, wrong outputs, no bare client) fails the path whichever "
        "it is.",
    ]
# The paths whose run ended with a failed verdict (bench.sh goes on, and
# exits 1 when the run's list below is not empty).
failed_runs = [f.stem for f in sorted(out.glob("*.proc")) if load(f.name).get("status", 0) != 0]
for name in ["payments", "payments-process", "menu"]:
    if name in failed_runs:
        summary = out / name / "summary.md"
        why = [line[2:] for line in summary.read_text().splitlines() if line.startswith("- ")] if summary.exists() else []
        lines += ["", f"**Verdict FAIL** ({name}): " + ("; ".join(why) or "see its output")]
table = "\n".join(lines) + "\n"
(out / "table.md").write_text(table)


def run_file(name):
    f = out / name
    return f.read_text().strip() if f.exists() else None


# The run itself, for the goals table's first line (bench_goals.py), which
# is made from figures.json alone.
# Its failed verdicts: the runs above, and a payments path with anything
# wrong in any of its rounds.
failed = list(failed_runs)
for name, found in [("payments", pay_rounds), ("payments-process", process_rounds), ("menu", menu_rounds)]:
    if any(r["broken"] for r in found) and name not in failed:
        failed = sorted(failed + [name])
run = {
    "id": out.name,
    "machine": run_file("machine"),
    "commit": run_file("commit"),
    "cores": cores,
    "took_secs": took,
    "verdicts_failed": failed,
}
figures = {"run": run, "kernels_ns": kernel, "sdk_request_ns": {"get_item": sdk_get, "transact_20": sdk_tx, "transact_20_json": sdk_json}, "stage_ns": stage, "allocations_per_element": allocs, "orders_on_cpu_per_event": orders_cpu, **({"orders_full_on_cpu_per_event": orders_full_cpu} if orders_full_cpu else {}), "openssl_sha256_bytes_per_sec": ossl, "floor_ns": floor_ns, "host_speed_bytes_per_sec": speeds, "payments_floor_ns": pay_floor_ns, "paths": rows, "backlog": backlog, "payments_first_decision_secs": pay.get("first_decision_secs"), **({"payments_rounds": pay_rounds} if pay_rounds else {}), **({"payments_process_rounds": process_rounds} if process_rounds else {}), **({"orders_rounds": orders_rounds} if orders_rounds else {}), **({"menu_rounds": menu_rounds} if menu_rounds else {})}
(out / "figures.json").write_text(json.dumps(figures, indent=2))

goals = bench_goals.render(figures)
(out / "goals.md").write_text(goals)
print(table)
print(goals)
print(f"raw figures: {out}")
