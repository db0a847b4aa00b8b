#!/usr/bin/env python3
"""The release build of the daemon and loadgen and bench.sh's build share
every dependency's features.

`scripts/run-local.sh` and `scripts/package.sh` build `-p daemon -p loadgen`;
`scripts/bench.sh` builds the same with the benches, whose dev-dependencies
(criterion and what it pulls) may turn on more features of crates the daemon
uses. A crate built with other features is another artifact, and so is
every crate above it: a feature of serde that only criterion asked for made
bench.sh build the daemon, loadgen and most of their dependencies again
after run-local.sh had built them, minutes of thin-LTO links on a 2-core
machine. The workspace's Cargo.toml asks for those features itself; this
check fails when a dependency resolves to other features in the two builds,
and names it and the features to ask for.

It reads `cargo tree -e features` (Cargo.lock, no build), which resolves
features as cargo's build does: building a bench turns on the
dev-dependencies of every package selected, the daemon's and loadgen's
included, as it does here. Two comparisons: the crates built for the
program (no build scripts, no procedural macros: every expensive artifact,
the daemon's own among them) must have the same features in both builds;
and every crate the release build makes for its build scripts and
procedural macros must be made with the same features in the bench build,
which may add more of them. (`cargo tree` does not say which side a crate
is on: one of those whose features grew to equal the same crate's
features on the program's side would pass.) Usage: scripts/check_features.py
"""
import pathlib
import subprocess
import sys

repo = pathlib.Path(__file__).resolve().parent.parent


def run(cmd):
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"check_features: `{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def host():
    for line in run(["rustc", "-vV"]).splitlines():
        if line.startswith("host: "):
            return line.split(": ", 1)[1]
    sys.exit("check_features: rustc -vV named no host")


def features(packages, edges, target):
    """{"name version": its sets of features} of the packages the build of
    `packages` resolves, along `edges` (a package built both for the build
    scripts and procedural macros and for the program has two sets when
    they differ)."""
    cmd = ["cargo", "tree", "--locked", "--target", target, "--prefix", "none", "-e", "features," + edges, "-f", "{p}|{f}"]
    for p in packages:
        cmd += ["-p", p]
    out = run(cmd)
    found = {}
    for line in out.splitlines():
        if "|" not in line:  # a feature's own node ('serde feature "std"')
            continue
        package, feats = line.split("|", 1)
        name = " ".join(package.split()[:2])
        feats = feats.removesuffix(" (*)").strip()
        found.setdefault(name, set()).add(frozenset(f for f in feats.split(",") if f))
    if not found:
        sys.exit(f"check_features: `{' '.join(cmd)}` listed no packages")
    return found


def show(sets):
    return " and ".join("[" + ", ".join(sorted(s)) + "]" for s in sorted(sets, key=sorted))


def differences(shipped, bench, every, every_bench):
    """Lines naming each crate the two builds make apart: `shipped` and
    `bench` are the program's side of the release build and of the bench
    build, `every` and `every_bench` both sides (`features`' maps)."""
    differ = []
    # The program's side: the same features, exactly.
    for name, sets in sorted(shipped.items()):
        if bench.get(name) != sets:
            more = set().union(*bench.get(name, set())) - set().union(*sets)
            said = f"adds {', '.join(sorted(more))}" if more else f"has {show(bench.get(name, set()))} against {show(sets)}"
            differ.append(f"  {name}: the bench build {said}")
    # Both sides: each set of features the release build makes a crate
    # with, the bench build makes it with too.
    for name, sets in sorted(every.items()):
        reported = name in shipped and bench.get(name) != shipped[name]
        if not reported and not sets <= every_bench.get(name, set()):
            differ.append(f"  {name} (for build scripts or procedural macros): the bench build has "
                          f"{show(every_bench.get(name, set()))} against {show(sets)}")
    return differ


def main():
    target = host()
    shipped = features(["daemon", "loadgen"], "normal,no-proc-macro", target)
    every = features(["daemon", "loadgen"], "normal,build", target)
    differ = differences(
        shipped,
        features(["daemon", "loadgen", "benches"], "normal,dev,no-proc-macro", target),
        every,
        features(["daemon", "loadgen", "benches"], "normal,build,dev", target),
    )
    if differ:
        print("check_features: these dependencies of the daemon and loadgen resolve to other features "
              "when bench.sh builds the benches with them, so bench.sh and run-local.sh / package.sh "
              "build them (and everything above them) twice; ask for the features in the workspace's "
              "Cargo.toml (see its serde and zerocopy):", file=sys.stderr)
        print("\n".join(differ), file=sys.stderr)
        sys.exit(1)
    print(f"check_features: {len(shipped)} crates built for the program, {len(every)} in all, "
          "the same features in both builds")


if __name__ == "__main__":
    main()
