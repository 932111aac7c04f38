"""One ONNX file in whatever onnxruntime this Python has (numpy and onnxruntime only), or the
comparison table of such runs; used by ``benchmarks/onnxruntime_versions.sh``.

    python onnxruntime_run.py MODEL.onnx OUT      # OUT.npy (outputs) or OUT.err (the failure)
    python onnxruntime_run.py --compare RUNS current V1 V2 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

IMAGES = 64


def run(model: str, out: str) -> None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        shape = json.loads(meta["attnround_pl.input_shape"])
        x = np.random.default_rng(0).standard_normal((IMAGES, *shape)).astype(np.float32)
        np.save(f"{out}.npy", session.run(None, {"input": x})[0])
    except Exception as exc:  # the failure is the result
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        Path(f"{out}.err").write_text(f"onnxruntime {ort.__version__}: {line[:300]}\n")


def compare(runs: Path, reference: str, versions: list[str]) -> None:
    names = sorted(p.stem for p in (runs / reference).glob("*.npy"))
    print("| export | " + " | ".join(f"onnxruntime {v}" for v in versions) + " |")
    print("| --- |" + " --- |" * len(versions))
    for name in names:
        ref = np.load(runs / reference / f"{name}.npy")
        cells = []
        for v in versions:
            out, err = runs / v / f"{name}.npy", runs / v / f"{name}.err"
            if out.is_file():
                y = np.load(out)
                same = int((y.argmax(1) == ref.argmax(1)).sum())
                cells.append(f"runs; max abs diff {float(np.abs(y - ref).max()):.3g}, "
                             f"argmax {same}/{len(ref)} equal")
            else:
                text = err.read_text().strip() if err.is_file() else "no result"
                cells.append("fails: " + text.split(": ", 1)[-1].replace("|", "/")[:120])
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
    else:
        run(sys.argv[1], sys.argv[2])
