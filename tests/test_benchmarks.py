"""benchmarks/paired.py (the paired-rounds statistics every benchmark reports) against numpy, and the
benchmarks' own plumbing at tiny sizes: no timing is asserted here (performance claims live in benchmarks/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import paired  # noqa: E402


@pytest.mark.parametrize("xs", [[1.0], [3.0, 1.0], [1.2, 0.9, 1.1, 5.0, 1.0], list(np.random.default_rng(0).random(11))])
def test_quartiles_equal_numpy_percentiles(xs):
    q1, med, q3 = paired.quartiles(xs)
    assert (q1, med, q3) == pytest.approx(tuple(np.percentile(xs, [25, 50, 75])), abs=1e-12)


def test_rounds_alternate_order_and_ratios_are_per_round():
    calls, clock_now = [], [0.0]
    cost = {"a": 2.0, "b": 1.0}

    def arm(name):
        def run():
            calls.append(name)
            clock_now[0] += cost[name]
        return run

    times = paired.run_rounds({"a": arm("a"), "b": arm("b")}, rounds=4, warmup=1, clock=lambda: clock_now[0])
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then ABBA...
    cost["a"] = 0.0  # a later change of cost does not alter what was recorded
    assert paired.round_ratios(times, "a", "b") == [2.0] * 4
    assert paired.round_ratios({"a": [1, 3], "b": [1, 1], "c": [1, 1]}, ["a", "b"], "c") == [2.0, 4.0]


def test_one_disturbed_round_moves_a_sample_not_the_median():
    stats = paired.summarize([1.37, 1.38, 0.6, 1.36, 1.37])
    assert stats["median"] == pytest.approx(1.37) and stats["rounds"] == 5


def test_a_median_below_its_floor_is_flagged_as_a_measurement_error():
    low = paired.check("x", paired.summarize([0.92, 0.93, 0.91]), floor=4 / 3, target="<= 1.40")
    ok = paired.check("x", paired.summarize([1.36, 1.37, 1.38]), floor=4 / 3, target="<= 1.40")
    assert "MEASUREMENT ERROR" in low and "MEASUREMENT ERROR" not in ok and "target <= 1.40 met" in ok


def test_loss_benchmark_prints_medians_iqr_rounds_at_tiny_size(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "loss.py"), "--sizes", "64", "--vocab", "300", "--hidden", "16",
                           "--dtypes", "fp32", "--methods", "fused_mle,fused_emo,plain_emo", "--rounds", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    stats = result["time_fused_emo_over_fused_mle"]
    assert set(stats) == {"median", "q1", "q3", "iqr", "rounds"} and stats["rounds"] == 2
    assert stats["q1"] <= stats["median"] <= stats["q3"]
    assert 0 < result["mem_fused_emo_over_plain_emo"]
    # the time floor: EMO's extra product timed in the same rounds, held against as the ratio's floor
    floor = result["time_floor_fused_emo_over_fused_mle"]
    assert floor["rounds"] == 2 and floor["median"] > 1.0
    assert any(line.startswith("time floor of fused_emo_over_fused_mle") and "in FLOPs 4/3" in line for line in lines)
    assert any(line.startswith("time_fused_emo_over_fused_mle") and f"floor {floor['median']:.3f}" in line for line in lines)


def test_stability_compares_every_loaded_run_with_the_quiet_median(tmp_path):
    fake = tmp_path / "fake_bench.py"  # a benchmark whose ratio is exactly 1.5, then 1.5 x (1 + run / 100)
    state = tmp_path / "n"
    fake.write_text("import json, pathlib\n"
                    f"p = pathlib.Path({str(state)!r}); n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1))\n"
                    "print(json.dumps({'r': {'median': 1.5 * (1 + n / 100), 'rounds': 3}, 'other': 1}))\n")
    run = lambda *extra: subprocess.run([sys.executable, str(BENCH / "stability.py"), "--loaded-runs", "2", *extra, "--",
                                         str(fake)], capture_output=True, text=True, timeout=120)
    ok = run()  # quiet 1.5, loaded 1.515 and 1.53: within 10 %
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout.strip().splitlines()[-1])
    assert report["ok"] and list(report["ratios"]) == ["r"] and report["ratios"]["r"]["loaded"] == pytest.approx([1.515, 1.53])
    state.unlink()
    tight = run("--tolerance", "0.015")  # the second loaded run is 2 % off the quiet median
    assert tight.returncode == 1 and "OUT" in tight.stdout
