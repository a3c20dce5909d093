"""benchmarks/dit_variants.py's claim test: gaps to ProMoE paired by seed, with 95% Student-t intervals."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "dit_variants.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dit_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gap_is_the_paired_t_interval_over_the_seeds_both_variants_have(bench):
    variant = [{"seed": 0, "v": 9.0}, {"seed": 1, "v": 12.0}, {"seed": 2, "v": 8.0}, {"seed": 5, "v": 100.0}]
    reference = [{"seed": 0, "v": 8.0}, {"seed": 1, "v": 10.0}, {"seed": 2, "v": 8.5}]
    gap = bench.paired_gap(variant, reference, "v")
    diffs = [1.0, 2.0, -0.5]  # seed 5 has no partner
    mean, sd = sum(diffs) / 3, math.sqrt(sum((d - 5 / 6) ** 2 for d in diffs) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert gap["n"] == 3 and gap["mean"] == pytest.approx(mean)
    assert (gap["low"], gap["high"]) == pytest.approx((mean - half, mean + half))
    assert not gap["separates"], "the interval holds 0"
    apart = bench.paired_gap([{"seed": s, "v": 10.0 + 0.1 * s} for s in range(3)],
                             [{"seed": s, "v": 8.0} for s in range(3)], "v")
    assert apart["separates"] and apart["low"] > 0
    assert bench.paired_gap(variant[:1], reference, "v")["n"] == 1  # one seed: a mean, no interval


def test_result_files_merge_by_variant_and_seed(bench, tmp_path):
    def cell(seed, value):
        return {"seed": seed, **{key: value for key in bench.COLUMNS.values()}}

    (tmp_path / "a.json").write_text(json.dumps({"promoe": {"epochs": 10, "cells": [cell(0, 1.0)]}}))
    (tmp_path / "b.json").write_text(json.dumps({"promoe": {"epochs": 10, "cells": [cell(1, 3.0)]},
                                                 "dense": {"epochs": 10, "cells": [cell(0, 2.0)]}}))
    merged = bench.merge([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert [c["seed"] for c in merged["promoe"]["cells"]] == [0, 1]
    assert merged["promoe"]["summary"]["fid_cls_cfg1.5"]["mean"] == pytest.approx(2.0)
    assert merged["dense"]["summary"]["test_loss"]["std"] == 0.0
