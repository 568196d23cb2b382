"""Do a benchmark's ratios hold on a busy machine? Run it quiet, then again while another process keeps one
core busy, and compare every reported time ratio with its quiet median.

    python benchmarks/stability.py -- benchmarks/loss.py --threads 1
    python benchmarks/stability.py --loaded-runs 3 -- benchmarks/icl_scoring.py --threads 1 --clock cpu
    python benchmarks/stability.py --quiet-json quiet.json -- benchmarks/loss.py --threads 1 --sizes 8192

The benchmark's last stdout line must be its JSON object; every entry of the form {"median": ...} is a time
ratio (benchmarks/paired.py). A ratio holds when each loaded run's median lies within --tolerance (default
10 %) of the quiet median. `--quiet-json FILE` reuses a quiet run's JSON line (saved from an earlier run)
instead of measuring it again; then only the ratios the loaded runs report are compared (a quiet run of the
whole benchmark can serve several loaded runs of parts of it). The busy process is a pure-Python spin loop (one core), started before the
loaded runs and killed after them. Last line: one JSON object {ratio: {quiet, loaded: [...], max_dev, ok}, ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SPIN = "while True:\n    pass\n"


def run_benchmark(cmd: list[str]) -> dict:
    proc = subprocess.run([sys.executable, *cmd], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"stability: {' '.join(cmd)} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_ratios(result: dict) -> dict[str, float]:
    return {k: v["median"] for k, v in result.items() if isinstance(v, dict) and "median" in v}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loaded-runs", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.10, help="allowed relative deviation from the quiet median")
    ap.add_argument("--quiet-json", type=Path, help="a quiet run's JSON line, instead of measuring one now")
    ap.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- then the benchmark script and its arguments")
    args = ap.parse_args(argv)
    cmd = args.benchmark[1:] if args.benchmark[:1] == ["--"] else args.benchmark
    if not cmd:
        ap.error("give the benchmark after --, e.g. -- benchmarks/loss.py --threads 1")
    if args.quiet_json:
        quiet = time_ratios(json.loads(args.quiet_json.read_text().strip().splitlines()[-1]))
    else:
        print("quiet run:", " ".join(cmd), flush=True)
        quiet = time_ratios(run_benchmark(cmd))
    loaded: list[dict[str, float]] = []
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        for i in range(args.loaded_runs):
            print(f"loaded run {i + 1}/{args.loaded_runs} (one core kept busy by pid {spinner.pid})", flush=True)
            loaded.append(time_ratios(run_benchmark(cmd)))
    finally:
        spinner.kill()
        spinner.wait()
    report, all_ok = {}, True
    if args.quiet_json:  # the part of the quiet run that the loaded runs measured again
        quiet = {k: v for k, v in quiet.items() if any(k in r for r in loaded)}
    print(f"{'ratio':<48}{'quiet':>8}  {'loaded runs':<26}{'max dev':>8}")
    for key, q in quiet.items():
        runs = [r[key] for r in loaded if key in r]
        dev = max((abs(x / q - 1) for x in runs), default=float("nan"))
        ok = len(runs) == len(loaded) and dev <= args.tolerance
        all_ok &= ok
        report[key] = {"quiet": q, "loaded": runs, "max_dev": round(dev, 4), "ok": ok}
        print(f"{key:<48}{q:>8.3f}  {' '.join(f'{x:.3f}' for x in runs):<26}{dev:>7.1%}{'' if ok else '  OUT'}")
    print(f"every time ratio within ±{args.tolerance:.0%} of its quiet median under load: {all_ok}")
    print(json.dumps({"tolerance": args.tolerance, "ok": all_ok, "ratios": report}))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
