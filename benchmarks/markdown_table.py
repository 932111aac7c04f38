"""The one markdown table format of the benchmarks: ``accuracy.py`` prints each row as it
finishes, ``plots.py`` writes docs/benchmarks.md's tables from the JSON, both with these lines."""

from __future__ import annotations

HEADER = (
    "| model | setting | method | top-1 % | top-5 % | drop from float | calibration s | "
    "calibration in reference iterations | ms/iter | peak RSS MB | size MB | "
    "ONNX top-1 % (argmax differ) |\n"
    "| --- | --- | --- |" + " ---: |" * 9
)

# what a row must hold for its line (ms_per_iter and calib_reference_iters may be absent: "-")
COLUMNS = ("model", "setting", "method", "seeds", "top1", "top1_std", "top5", "drop",
           "calib_seconds", "peak_rss_mb", "size_mb", "onnx_top1", "onnx_argmax_mismatch")


def missing_columns(r: dict) -> list[str]:
    """The keys of ``COLUMNS`` that row ``r`` lacks (a JSON older than this table)."""
    return [k for k in COLUMNS if k not in r]


def row_line(r: dict) -> str:
    """One row of a suite's JSON as a table line (mean ± spread where it has several seeds)."""
    spread = f" ± {r['top1_std']:.2f}" if len(r["seeds"]) > 1 else ""
    ms = "-" if r.get("ms_per_iter") is None else f"{r['ms_per_iter']:.0f}"
    # the calibration divided by the host speed index (see calib/host_speed.py): comparable
    # across hosts; "-" for rows measured before reports recorded the index
    ref = r.get("calib_reference_iters")
    ref = "-" if ref is None else f"{ref:.0f}"
    return (
        f"| {r['model']} | {r['setting']} | {r['method']} | {r['top1']:.2f}{spread} | "
        f"{r['top5']:.2f} | {r['drop']:.2f} | {r['calib_seconds']:.0f} | {ref} | {ms} | "
        f"{r['peak_rss_mb']:.0f} | {r['size_mb']:.4f} | {r['onnx_top1']:.2f} "
        f"({r['onnx_argmax_mismatch']}) |"
    )
