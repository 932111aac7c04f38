"""Any model: every torchvision classification and segmentation CNN, end to end.

For each model (random weights, random images, small input): calibrate with Attention Round
W4A4 for a few iterations through ``attnround_pl.quantize``, save and reload the quantized
model (bit-exact outputs), export it to ONNX and run that in onnxruntime beside PyTorch. One row
per model: units by the rule that made them, float ops left outside the quantized layers,
seconds, and the ONNX agreement. Writes ``benchmarks/results/any_model.json`` and
``any_model.md``. This is a plumbing check (does every architecture go through every step),
not an accuracy measurement: the weights and images are random.

    .venv/bin/python benchmarks/any_model.py [--models resnet18 vgg11 ...] [--iters 2]

Each model runs in its own process, so one that runs out of memory is a failed row, not the
end of the table.

``FAMILIES`` names every family of ``torchvision.models.list_models()`` (classification and
segmentation) with the model the fast test (tests/models/test_any_model.py) runs; ``EXCLUDED`` the
families that are out of scope. A family in neither fails that test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from result_json import write_result

import attnround_pl
from attnround_pl.export import compare_with_onnx, export_onnx, export_state, load_state
from attnround_pl.models import build_model
from attnround_pl.models.source import ModelSource
from attnround_pl.quant import QuantConfig, float_ops, quant_layers

RESULTS = Path(__file__).resolve().parent / "results"

# family prefix -> the model the fast test runs (the smallest or most typical of the family)
FAMILIES = {
    "alexnet": "alexnet",
    "convnext": "convnext_tiny",
    "densenet": "densenet121",
    "efficientnet_b": "efficientnet_b0",
    "efficientnet_v2": "efficientnet_v2_s",
    "googlenet": "googlenet",
    "inception": "inception_v3",
    "mnasnet": "mnasnet0_5",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small",
    "regnet_x": "regnet_x_400mf",
    "regnet_y": "regnet_y_400mf",
    "resnet": "resnet18",
    "resnext": "resnext50_32x4d",
    "shufflenet": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1",
    "vgg": "vgg11",
    "wide_resnet": "wide_resnet50_2",
    # segmentation
    "deeplabv3": "deeplabv3_mobilenet_v3_large",
    "fcn": "fcn_resnet50",
    "lraspp": "lraspp_mobilenet_v3_large",
}
# Families whose model runs in the slow tests only: a 100M-weight layer or twice the size of
# the rest (vgg11's 25088x4096 classifier: about 70 s here), or 17-40 s a test on the 2-core
# CPU (``pytest --durations``, 2026-12-02), where the default run keeps a family of the same
# kind (googlenet's branches for inception's, lraspp's dict output for deeplabv3's and fcn's,
# resnet18/mobilenet_v2 for the plain CNNs; densenet's concat units also in test_graph_units).
# Since 2026-12-04 (the default run had grown to 16.6 min): regnet_x (regnet_y keeps the
# family's blocks, with squeeze-excitation on top), resnext (resnet18's blocks, grouped
# convolutions in regnet_y and shufflenet) and mobilenet_v3 (lraspp_mobilenet_v3_large's
# backbone is one), 21-25 s each. Since that evening (the default run took 19 min on a host
# 1.4x slower than the morning's): resnet (tests/calib/test_pipeline.py takes the same resnet18
# through calibration, ONNX in onnxruntime and the state file) and mobilenet_v2 (mnasnet0_5 keeps
# torchvision's inverted-residual blocks, the embedded MobileNetV2 runs end to end too), 19-35 s.
SLOW_FAMILIES = ("vgg", "wide_resnet", "efficientnet_v2", "alexnet", "inception", "deeplabv3",
                 "densenet", "convnext", "efficientnet_b", "fcn", "regnet_x", "resnext",
                 "mobilenet_v3", "resnet", "mobilenet_v2")
# out of scope: vision transformers (build_model refuses them with a message saying so)
EXCLUDED = ("maxvit", "swin", "vit")
# torchvision modules whose models take other inputs or give other outputs (refused too)
EXCLUDED_MODULES = ("detection", "video", "optical_flow", "quantization")
INPUT_SIZE = {"inception_v3": 75, "alexnet": 64}  # the smallest input their strides allow
DEFAULT_SIZE = 32
SEGMENTATION_SIZE = 64


def family_of(name: str) -> str | None:
    """The family prefix of a model name (longest match), or None."""
    known = [*FAMILIES, *EXCLUDED]
    matches = [f for f in known if name == f or name.startswith(f + "_") or name.startswith(f)]
    return max(matches, key=len) if matches else None


def in_scope() -> list[str]:
    """Every classification and segmentation model of the families in ``FAMILIES``, smallest
    first (by the parameter count torchvision's weights record; none for regnet_x_600mf)."""
    names = torchvision.models.list_models(module=torchvision.models)
    names += torchvision.models.list_models(module=torchvision.models.segmentation)
    return sorted((n for n in names if family_of(n) in FAMILIES), key=lambda n: (params(n), n))


def params(name: str) -> int:
    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except (KeyError, ValueError, AttributeError):
        return 0


def input_size(name: str) -> int:
    segmentation = torchvision.models.list_models(module=torchvision.models.segmentation)
    return INPUT_SIZE.get(name, SEGMENTATION_SIZE if name in segmentation else DEFAULT_SIZE)


@dataclass
class Row:
    model: str
    family: str
    input_px: int
    units: dict[str, int]
    quantized_layers: int
    float_ops: int
    seconds: float
    reload_max_diff: float
    onnx_max_abs_diff: float
    onnx_float_noise: bool | None
    output_sqnr_db: float
    state_reload_max_diff: float | None = None  # None: a row of a run before the state file


def run_model(name: str, iters: int = 2, images: int = 8, seed: int = 0) -> Row:
    """Calibrate, save, reload and export ``name``; the row of the table."""
    torch.manual_seed(seed)
    size = input_size(name)
    model = build_model(name, weights=None, num_classes=10)
    x = torch.randn(images, 3, size, size)
    started = time.perf_counter()
    qmodel = attnround_pl.quantize(
        model,
        x,
        iters=iters,
        calib_size=images,
        progress=False,
        quant=QuantConfig(w_bits=4, a_bits=4, seed=seed),
        source=ModelSource.zoo(name, 10),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = attnround_pl.save(qmodel, Path(tmp) / "q.pt")
        reloaded = attnround_pl.load(path)
        with torch.no_grad():
            a, b = qmodel(x[:2]), reloaded(x[:2])
        pairs = zip(a.values(), b.values(), strict=True) if isinstance(a, dict) else [(a, b)]
        reload_diff = max(float((p - q).abs().max()) for p, q in pairs)
        state_path = export_state(qmodel, Path(tmp) / "q.safetensors", qmodel.quant_config, {})
        from_state, _ = load_state(
            state_path, lambda meta: build_model(name, weights=None, num_classes=10))
        with torch.no_grad():
            c = from_state(x[:2])
        pairs = zip(a.values(), c.values(), strict=True) if isinstance(a, dict) else [(a, c)]
        state_diff = max(float((p - q).abs().max()) for p, q in pairs)
        onnx_path = export_onnx(qmodel, x[:1], Path(tmp) / "q.onnx")
        cmp = compare_with_onnx(qmodel, onnx_path, [x])
    seconds = time.perf_counter() - started
    report = qmodel.report
    rules = report.unit_rules
    fidelity = next(iter(report.quantized.fidelity.values()))
    return Row(
        model=name,
        family=family_of(name) or "",
        input_px=size,
        units=rules,
        quantized_layers=len(quant_layers(qmodel)),
        float_ops=sum(float_ops(qmodel).values()),
        seconds=round(seconds, 1),
        reload_max_diff=reload_diff,
        onnx_max_abs_diff=cmp.max_abs_logit_diff,
        onnx_float_noise=None if cmp.divergence is None else cmp.divergence.float_noise,
        output_sqnr_db=round(fidelity.sqnr_db, 2),
        state_reload_max_diff=state_diff,
    )


def onnx_agrees(row: Row, tolerance: float = 1e-4) -> bool:
    """ONNX in onnxruntime computes what PyTorch does: the outputs are within ``tolerance``, or
    every activation code is equal on the images that differ most (``onnx_float_noise`` None:
    the outputs differ by float summation order only, which a deep random-weight net with large
    logits amplifies), or the first differing code sat at a rounding tie (True). False means
    an export fault: a code that differs away from a tie."""
    return row.onnx_max_abs_diff <= tolerance or row.onnx_float_noise is not False


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


@dataclass
class Failure:
    """A model that did not go through: the last line its process printed."""

    model: str
    family: str
    error: str
    seconds: float


def run_isolated(name: str, iters: int = 2) -> Row | Failure:
    """``run_model`` in a child process: a model that runs out of memory (the 600M-weight
    regnet_y_128gf) or crashes becomes a Failure row instead of ending the whole table."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--one", name, "--iters", str(iters)],
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return Row(**json.loads(lines[-1]))
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if proc.returncode < 0:
        tail = f"killed by signal {-proc.returncode} (out of memory?); {tail}"
    return Failure(name, family_of(name) or "", tail[:300], round(time.perf_counter() - started, 1))


def write_table(
    rows: list[Row | Failure],
    command: str,
    out: Path = RESULTS,
    missing: list[str] = (),
    note: str = "",
) -> None:
    """``any_model.json`` (every row) and ``any_model.md`` (the table, by model name) in
    ``out``; ``missing``: in-scope models that were not run; ``note``: how the run was taken."""
    rows = sorted(rows, key=lambda r: r.model)
    payload = {
        "command": command,
        "machine": attnround_pl_machine(),
        "rows": [asdict(r) for r in rows],
        "not_run": list(missing),
        "note": note,
    }
    write_result(out / "any_model.json", payload)
    header = [
        "model",
        "px",
        "units by rule",
        "quantized layers",
        "float ops",
        "seconds",
        "reload max diff",
        "state file max diff",
        "ONNX max diff",
        "ONNX agrees",
        "output SQNR dB",
    ]
    body = []
    for r in rows:
        if isinstance(r, Failure):
            body.append(
                [r.model, "", f"failed: {r.error}", "", "", f"{r.seconds:.1f}", "", "", "", "", ""]
            )
            continue
        body.append(
            [
                r.model,
                str(r.input_px),
                ", ".join(f"{k} {v}" for k, v in r.units.items()),
                str(r.quantized_layers),
                str(r.float_ops),
                f"{r.seconds:.1f}",
                f"{r.reload_max_diff:.3g}",
                "" if r.state_reload_max_diff is None else f"{r.state_reload_max_diff:.3g}",
                f"{r.onnx_max_abs_diff:.3g}",
                "yes" if onnx_agrees(r) else "NO",
                f"{r.output_sqnr_db:.1f}",
            ]
        )
    failed = sum(isinstance(r, Failure) for r in rows)
    text = (
        "# Any model: every torchvision CNN end to end\n\n"
        f"Random weights and random images, Attention Round W4A4, {command}; "
        f"{payload['machine']}. {len(rows) - failed} of {len(rows)} models went through "
        "calibration, save and reload (bit-exact), the state file written and reloaded "
        "(bit-exact), and ONNX export (checked in onnxruntime). "
        "Seconds cover all of that for one model. ONNX agrees: outputs within 1e-4, or every "
        "activation code equal to PyTorch's on the images that differ most (the outputs then "
        "differ by float summation order only), or the first differing code at a rounding "
        "tie. Units by rule: registry (known block "
        "classes), graph (regions of the traced graph), child/layer (fallbacks). Float ops: "
        "operations outside Conv/Linear layers that stay float. Output SQNR: random weights "
        f"and images, so it says nothing about accuracy. {note}\n\n"
        + markdown_table(header, body)
        + "\n"
    )
    if missing:
        text += (
            f"\nNot run (the largest, in the run that wrote this table): {', '.join(missing)}.\n"
        )
    (out / "any_model.md").write_text(text)


def attnround_pl_machine() -> str:
    from attnround_pl.calib.pipeline import machine

    return machine()


def run_all(names: list[str], iters: int = 2, jsonl: Path | None = None) -> list[Row | Failure]:
    """Every model of ``names`` in its own process; each row printed (and appended to
    ``jsonl``) as it finishes, so a long run can stop and be tabulated from what it has."""
    rows = []
    for name in names:
        row = run_isolated(name, iters)
        line = json.dumps(asdict(row))
        print(line, flush=True)
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.write(line + "\n")
        rows.append(row)
    return rows


def read_rows(jsonl: Path) -> list[Row | Failure]:
    """The rows a run appended to ``jsonl``."""
    rows: list[Row | Failure] = []
    for line in jsonl.read_text().splitlines():
        data = json.loads(line)
        rows.append(Failure(**data) if "error" in data else Row(**data))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every in-scope model")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--one", default=None, help="run one model in this process, print its row")
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="append each row to this file; models already in it are skipped",
    )
    parser.add_argument(
        "--tabulate",
        action="store_true",
        help="write the table from --jsonl's rows without running anything",
    )
    parser.add_argument("--note", default="", help="how the run was taken, for the table")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asdict(run_model(args.one, iters=args.iters))), flush=True)
        return
    command = f"benchmarks/any_model.py --iters {args.iters}"
    done = read_rows(args.jsonl) if args.jsonl is not None and args.jsonl.is_file() else []
    if not args.tabulate:
        seen = {r.model for r in done}
        todo = [n for n in args.models or in_scope() if n not in seen]
        done += run_all(todo, args.iters, args.jsonl)
    missing = [n for n in in_scope() if n not in {r.model for r in done}]
    write_table(done, command, missing=missing, note=args.note)


if __name__ == "__main__":
    main()
