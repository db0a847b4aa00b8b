#!/usr/bin/env python3
"""Tests of check_features.differences, on made-up `cargo tree` results:
which differences between the release build and the bench build it
reports. Standard library only: python3 scripts/test_check_features.py"""
import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from check_features import differences  # noqa: E402


def sets(*features):
    """One crate's sets of features, each given as a comma-separated string."""
    return {frozenset(f for f in fs.split(",") if f) for fs in features}


class Differences(unittest.TestCase):
    def test_the_same_features_in_both_builds(self):
        program = {"serde v1": sets("alloc,std"), "libc v0.2": sets("std")}
        every = {**program, "libc v0.2": sets("std", "default,std"), "syn v2": sets("full")}
        self.assertEqual(differences(program, dict(program), every, dict(every)), [])

    def test_a_feature_the_benches_add_on_the_program_s_side(self):
        # serde's alloc before 5f31e86: every crate above it built twice.
        program = {"serde v1": sets("std")}
        bench = {"serde v1": sets("alloc,std")}
        got = differences(program, bench, program, bench)
        self.assertEqual(got, ["  serde v1: the bench build adds alloc"])

    def test_a_macro_only_crate_the_benches_use_in_the_program(self):
        # proc-macro2 built for serde_derive only in the release build; a
        # bench's dev-dependency uses it in the program with span-locations:
        # a new artifact beside the release build's, which is unchanged.
        program = {"serde v1": sets("std")}
        every = {**program, "proc-macro2 v1": sets("default,proc-macro")}
        bench = {**program, "proc-macro2 v1": sets("default,proc-macro,span-locations")}
        every_bench = {**program, "proc-macro2 v1": sets("default,proc-macro", "default,proc-macro,span-locations")}
        self.assertEqual(differences(program, bench, every, every_bench), [])

    def test_a_macro_only_crate_whose_features_changed(self):
        program = {"serde v1": sets("std")}
        every = {**program, "syn v2": sets("derive")}
        every_bench = {**program, "syn v2": sets("derive,full")}
        got = differences(program, dict(program), every, every_bench)
        self.assertEqual(got, ["  syn v2 (for build scripts or procedural macros): the bench build has [derive, full] against [derive]"])

    def test_a_crate_on_both_sides_is_named_once(self):
        program = {"serde_json v1": sets("std")}
        bench = {"serde_json v1": sets("float_roundtrip,std")}
        got = differences(program, bench, program, bench)
        self.assertEqual(got, ["  serde_json v1: the bench build adds float_roundtrip"])


if __name__ == "__main__":
    unittest.main()
