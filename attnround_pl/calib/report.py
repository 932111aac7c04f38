"""The run report: typed, and turned into report.json (and back) here and nowhere else.

A calibration fills one ``Report``: the settings it ran with, the float, round-to-nearest and
calibrated models' scores, one ``UnitResult`` per reconstruction unit, the per-unit fidelity,
time and memory, and the export checks. ``Report.write``/``Report.read`` keep report.json's
layout of earlier versions (flat keys such as ``quant_top1``, ``onnx_argmax_mismatch``), so a
run folder written before this module existed still reads, and a file written now reads in
older tools that look up those keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import InputError
from ..mixed.report import MixedReport
from ..quant.fidelity import Fidelity
from .host_speed import HostSpeed

# the three evaluated models' key prefixes in report.json
_SCORES = {"float_model": "float", "nearest": "nearest", "quantized": "quant"}


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Scores:
    """One model on the evaluation data: top-1/top-5 in percent (None without labels or
    logits; top-5 None for five classes or fewer) and fidelity per output against the float
    model (empty for the float model itself)."""

    top1: float | None = None
    top5: float | None = None
    fidelity: dict[str, Fidelity] = field(default_factory=dict)

    def _to_json(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.top1 is not None:
            out[f"{prefix}_top1"] = self.top1
        if self.top5 is not None:
            out[f"{prefix}_top5"] = self.top5
        if self.fidelity:
            out[f"{prefix}_fidelity"] = {k: f.to_dict() for k, f in self.fidelity.items()}
        return out

    @classmethod
    def _from_json(cls, data: dict[str, Any], prefix: str) -> Scores | None:
        if not any(f"{prefix}_{k}" in data for k in ("top1", "top5", "fidelity")):
            return None
        fidelity = data.get(f"{prefix}_fidelity") or {}
        return cls(data.get(f"{prefix}_top1"), data.get(f"{prefix}_top5"),
                   {k: Fidelity(**v) for k, v in fidelity.items()})


@dataclass
class UnitResult:
    """One reconstruction unit: its layers, cache, output MSE (on the calibration cache) with
    round-to-nearest and at the end, which state it kept ('learned', 'nearest': the learned
    one was worse, its MSE in ``mse_learned``; 'as built': nothing to learn), wall seconds
    (cache, fit, MSE checks), iterations and, with ``recon.keep_best_every``, the step whose
    state was kept (``best_step``). ``stage``: what the pass learned (``sequencer.STAGES``:
    'joint', or BRECQ's 'rounding' then 'activations', where ``mse_nearest`` is the error
    before the stage: the fixed rounding with the initial steps)."""

    name: str
    kind: str
    rule: str
    layers: list[str]
    cache_mb: float
    cache_device: str
    mse_nearest: float
    learned: bool
    mse_final: float = float("nan")
    kept: str = "as built"
    seconds: float = 0.0
    iters: int = 0
    mse_learned: float | None = None
    best_step: int | None = None
    stage: str = "joint"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("mse_learned", "best_step"):
            if out[key] is None:
                del out[key]
        if out["stage"] == "joint":  # one pass: as reports were before the stages
            del out["stage"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitResult:
        return cls(**_known(cls, data))


@dataclass
class UnitFidelity:
    """One unit's output in the quantized model (quantized inputs) against the float model's
    output there."""

    name: str
    fidelity: Fidelity

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.fidelity.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitFidelity:
        return cls(data["name"], Fidelity(**_known(Fidelity, data)))


@dataclass
class OnnxCheck:
    """The ONNX export against the PyTorch model in onnxruntime (top-1 None without labels;
    ``code_divergence``: the first activation code that differs, see
    ``export.verify.CodeDivergence``)."""

    path: str
    top1: float | None
    argmax_mismatch: int | None
    torch_top1: float | None
    max_abs_logit_diff: float
    images: int
    code_divergence: dict[str, Any] | None = None
    onnxruntime: str = ""
    opset: int | None = None
    file_bytes: int | None = None
    weight_code_bytes: int | None = None  # the weight codes' initializers (packed at 4 bits)
    # quant.profile tensorrt: export.tensorrt_check's findings by rule (None: not checked)
    tensorrt_violations: dict[str, int] | None = None
    tensorrt_warnings: dict[str, int] | None = None
    seconds: float | None = None  # the export and its check (None: reports before it)


@dataclass
class StateCheck:
    """The exported state file reloaded, against the calibrated model."""

    path: str
    max_abs_diff: float
    images: int
    file_bytes: int | None = None  # None: a report written before sizes were recorded
    weight_code_bytes: int | None = None  # the packed weight codes
    seconds: float | None = None  # the export and its check (None: reports before it)


_CHECKS: dict[str, type] = {"onnx": OnnxCheck, "state": StateCheck}


@dataclass
class WallSeconds:
    """Where a calibration's wall time went, in seconds. ``setup``: the settings, model and
    data checked and the run folder opened; ``host_speed``: the host speed index measured at
    the start (once per process: about 0 s for a later run in the same process) and
    re-sampled during the run; ``baselines``: the float and round-to-nearest
    models evaluated (0 on a resumed run, whose report has them); ``calibration``: the model
    quantized (range searches), split into units and reconstructed, in this process
    (``calib_seconds`` adds a resumed run's earlier part); ``evaluation``: the calibrated
    model evaluated and its per-unit fidelity measured; ``write``: quantized.pt and
    report.json. Each export's own time is its check's ``seconds``."""

    setup: float = 0.0
    host_speed: float = 0.0
    baselines: float = 0.0
    calibration: float = 0.0
    evaluation: float = 0.0
    write: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WallSeconds:
        return cls(**_known(cls, data))


@dataclass
class Report:
    """What one calibration did and measured (report.json).

    ``quant``/``recon``: the settings as run (``QuantConfig``/``ReconConfig`` as dicts);
    ``float_model``/``nearest``/``quantized``: the scores (None when not evaluated);
    ``calib_seconds``: the calibration's wall time (evaluation excluded) and
    ``calib_reference_iters`` the same in the host's reference iterations (``host_speed``);
    ``machine``/``cpu``: the host (``cpu``: the CPU's model name and the instruction set torch's
    kernels use; empty in reports written before it was recorded).
    """

    model: str
    rounding: str
    w_bits: int
    a_bits: int
    calib_size: int
    model_source: dict[str, Any] = field(default_factory=dict)
    tau: float | None = None
    eval_data: str = ""
    quant: dict[str, Any] = field(default_factory=dict)
    recon: dict[str, Any] = field(default_factory=dict)
    machine: str = ""
    cpu: str = ""
    host_speed: HostSpeed | None = None
    size_mb: float | None = None
    mixed: MixedReport | None = None
    float_ops: dict[str, int] = field(default_factory=dict)
    never_run_layers: list[str] = field(default_factory=list)
    unit_rules: dict[str, int] = field(default_factory=dict)
    float_model: Scores | None = None
    nearest: Scores | None = None
    quantized: Scores | None = None
    units: list[UnitResult] = field(default_factory=list)
    calib_seconds: float | None = None
    calib_reference_iters: int | None = None
    resumed_after_units: int | None = None
    unit_fidelity_data: str | None = None
    unit_fidelity: list[UnitFidelity] = field(default_factory=list)
    peak_rss_mb: float | None = None
    run_dir: str | None = None
    devices: int | None = None
    onnx: OnnxCheck | None = None
    state: StateCheck | None = None
    wall_seconds: WallSeconds | None = None

    # ---- report.json ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """report.json's object (the flat layout of earlier versions; None fields left out
        where earlier versions left the key out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SCORES:
                if value is not None:
                    out.update(value._to_json(_SCORES[f.name]))
            elif f.name in _CHECKS:
                if value is not None:
                    out.update({f"{f.name}_{k}": v for k, v in asdict(value).items()})
            elif f.name in ("units", "unit_fidelity"):
                if value:
                    out[f.name] = [item.to_dict() for item in value]
            elif f.name in ("host_speed", "mixed", "wall_seconds"):
                if value is not None:
                    out[f.name] = value.to_dict()
            elif value is not None or f.name == "tau":
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """A report from report.json's object (any version's: keys it lacks keep defaults)."""
        kwargs = _known(cls, data)
        for name, prefix in _SCORES.items():
            kwargs[name] = Scores._from_json(data, prefix)
        for name, check in _CHECKS.items():
            given = {f.name: data[f"{name}_{f.name}"] for f in fields(check)
                     if f"{name}_{f.name}" in data}
            kwargs[name] = check(**given) if given else None
        kwargs["units"] = [UnitResult.from_dict(u) for u in data.get("units", [])]
        kwargs["unit_fidelity"] = [UnitFidelity.from_dict(u)
                                   for u in data.get("unit_fidelity", [])]
        if data.get("host_speed") is not None:
            kwargs["host_speed"] = HostSpeed(**data["host_speed"])
        if data.get("mixed") is not None:
            kwargs["mixed"] = MixedReport.from_dict(data["mixed"])
        if data.get("wall_seconds") is not None:
            kwargs["wall_seconds"] = WallSeconds.from_dict(data["wall_seconds"])
        return cls(**kwargs)

    def write(self, path: str | os.PathLike) -> Path:
        """Write report.json atomically."""
        write_json(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Report:
        """Read a report.json; an unreadable one is refused in one line naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
            return cls.from_dict(data)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            raise ReportError(f"{path}: not a readable run report ({exc})") from None

    # ---- what the pipeline adds -----------------------------------------------------------
    def add_check(self, check: OnnxCheck | StateCheck) -> None:
        """Record an export's check (replacing an earlier one of the same format)."""
        name = next(n for n, c in _CHECKS.items() if isinstance(check, c))
        setattr(self, name, check)

    def wall_time_line(self) -> str | None:
        """One line saying where the run's wall time went, exports included (None for a
        report without ``wall_seconds``)."""
        wall = self.wall_seconds
        if wall is None:
            return None
        parts = [(name.replace("_", " "), seconds) for name, seconds in asdict(wall).items()]
        for name in _CHECKS:
            check = getattr(self, name)
            if check is not None and check.seconds is not None:
                parts.append((f"{name} export and check", check.seconds))
        total = sum(seconds for _, seconds in parts)
        shown = ", ".join(f"{name} {seconds:.0f}" for name, seconds in parts
                          if round(seconds) > 0)
        return f"wall time {total:.0f} s: {shown}"


class ReportError(InputError):
    """A report.json that cannot be read."""
