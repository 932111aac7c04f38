"""Does the host speed index follow a host whose speed changes during a run?

    .venv/bin/python benchmarks/host_speed_drift.py [--pairs 2] [--iters 800] [--load-after 30]

Runs the same calibration (the embedded ResNet-20, the default recipe at W4A4, ``--iters``
iterations a unit, seed 0) ``--pairs`` times quiet and ``--pairs`` times with a competing load
(one process spinning on one core) that starts ``--load-after`` seconds into the run and lasts to
its end, alternated. The load slows the calibration; an index measured only at the start (quiet)
does not see it, one re-sampled through the run (``ReferenceClock``) should. Prints per run the
calibration seconds and the calibration in reference iterations by both indexes, and writes
``benchmarks/results/host_speed_drift.json`` (the run folders go to ``benchmarks/runs/drift``).
CPU runs are deterministic, so every run does the same work: the closer a column's loaded runs
are to its quiet ones, the better it compares hosts of different load.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from result_json import script_command, write_result

from attnround_pl.calib.pipeline import machine
from attnround_pl.calib.report import Report

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "host_speed_drift.json"
CLI = [sys.executable, "-m", "attnround_pl.cli"]
SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass"


def calibrate(name: str, runs: Path, iters: int, load_after: float | None) -> dict:
    """One calibration in a subprocess (the load, if any, started ``load_after`` s into it)."""
    folder = runs / name
    if folder.exists():
        raise SystemExit(f"{folder} exists: delete it (or pass another --runs) to run again")
    cmd = [*CLI, "calibrate", "--config", "configs/models/resnet20.yaml",
           "--config", "configs/recipes/attnround.yaml", "--recon.iters", str(iters),
           "--run.out_dir", str(runs), "--run.name", name, "--run.progress", "false",
           "--run.eval_float", "false", "--run.eval_nearest", "false"]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    load = None
    try:
        if load_after is not None:
            try:
                run.wait(timeout=load_after)
            except subprocess.TimeoutExpired:
                load = subprocess.Popen([sys.executable, "-c", SPIN])
        if run.wait() != 0:
            raise SystemExit(f"{name}: the calibration failed (exit {run.returncode})")
    finally:
        if load is not None:
            load.kill()
        if run.poll() is None:
            run.kill()
    report = Report.read(folder / "report.json")
    speed = report.host_speed
    return {
        "name": name, "load_after_s": load_after, "calib_seconds": report.calib_seconds,
        "start_ms": speed.ms_per_iter, "samples": [list(s) for s in speed.samples],
        "reference_iters_start": round(speed.reference_iters(report.calib_seconds)),
        "reference_iters_through_run": report.calib_reference_iters,
        "top1": report.quantized.top1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="quiet and loaded runs each")
    parser.add_argument("--iters", type=int, default=800, help="reconstruction iterations a unit")
    parser.add_argument("--load-after", type=float, default=30.0,
                        help="seconds into a loaded run that the load starts")
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "drift")
    args = parser.parse_args()
    if args.pairs < 1 or args.iters < 1 or args.load_after < 0:
        raise SystemExit("--pairs and --iters must be at least 1, --load-after at least 0")
    stamp = time.strftime("%Y-%m-%d_%H%M")
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for i in range(args.pairs):
        for load_after in (None, args.load_after):
            kind = "quiet" if load_after is None else "loaded"
            rows.append(calibrate(f"{stamp}_{kind}{i}", args.runs, args.iters, load_after))
            r = rows[-1]
            print(f"{r['name']}: {r['calib_seconds']:.1f} s, reference iterations "
                  f"{r['reference_iters_start']} (start index) / "
                  f"{r['reference_iters_through_run']} (through the run), top-1 {r['top1']:.2f}",
                  flush=True)
    summary = {}
    for key in ("calib_seconds", "reference_iters_start", "reference_iters_through_run"):
        quiet = statistics.mean(r[key] for r in rows if r["load_after_s"] is None)
        loaded = statistics.mean(r[key] for r in rows if r["load_after_s"] is not None)
        summary[key] = {"quiet": round(quiet, 1), "loaded": round(loaded, 1),
                        "loaded_over_quiet": round(loaded / quiet, 3)}
        print(f"{key}: quiet {quiet:.1f}, loaded {loaded:.1f}, loaded / quiet "
              f"{loaded / quiet:.3f}")
    write_result(RESULT, {
        "command": script_command("host_speed_drift.py", None),
        "machine": machine(), "started": started, "finished": time.strftime("%Y-%m-%d %H:%M"),
        "iters": args.iters, "load": "one process spinning on one core", "rows": rows,
        "summary": summary,
    })


if __name__ == "__main__":
    main()
