"""Per-tensor activation quantizer with a learned step size (LSQ, Esser et al. 2020), and
QDrop's random dropping of quantization during reconstruction (``DropSettings``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import check_finite
from .act_border import BORDERS, AQuantBorder
from .errors import QuantConfigError
from .grid import UniformGrid, check_bits
from .scale_search import search_qparams

FLOAT_BITS = 32
OBSERVED_VALUES_PER_BATCH = 65_536
OBSERVED_VALUES_MAX = 1 << 20


class _LSQRound(torch.autograd.Function):
    """``s * clamp(round(x / s), qmin, qmax)`` with LSQ's gradients, in as few passes over the
    tensor as eager PyTorch allows. The same function as composing ``clamp(x / s)``, a
    straight-through round and ``* s`` with the step's gradient scaled by ``g`` (values and
    gradients agree to float rounding; ``tests/quant/test_act_quant.py`` compares them), at a
    fraction of its CPU time:

    - input: ``grad`` where ``qmin < x / s < qmax`` (strictly, as ``torch.clamp``'s
      gradient), else 0: one ``hardtanh_backward``, a single float kernel (comparisons that
      produce a boolean mask cost several times a multiplication on the CPU);
    - step: ``g * sum(grad * (q - x / s * inside))`` (``q - x / s`` inside the range, the
      clipped ``q`` outside), summed as ``dot(grad, out) / s - dot(grad_x, x / s)`` with
      ``out = q * s`` the output: two dot products, no tensor written.

    Forward writes two tensors, ``x / s`` and the output (rounded and scaled in place), and
    saves them: the output is what the next layer reads and keeps anyway.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qmin: int, qmax: int, g: float) -> Tensor:
        xs = x / step
        out = torch.clamp(xs, qmin, qmax)
        out.round_().mul_(step)
        ctx.save_for_backward(xs, out, step)
        ctx.bounds = (qmin, qmax, g)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        xs, out, step = ctx.saved_tensors
        qmin, qmax, g = ctx.bounds
        grad_x = torch.ops.aten.hardtanh_backward(grad, xs, qmin, qmax)
        grad_step = None
        if ctx.needs_input_grad[1]:  # d(q s)/ds: q - x/s inside the range, q outside
            flat = grad.reshape(-1)
            grad_step = (torch.dot(flat, out.reshape(-1)) / step
                         - torch.dot(grad_x.reshape(-1), xs.reshape(-1))) * g
        return (grad_x if ctx.needs_input_grad[0] else None), grad_step, None, None, None


def lsq_round(x: Tensor, step: Tensor, qmin: int, qmax: int, g: float) -> Tensor:
    """LSQ fake quantization of ``x`` with a scalar ``step`` (see ``_LSQRound``)."""
    return _LSQRound.apply(x, step, qmin, qmax, g)


def check_act_bits(bits: int, what: str = "a_bits", where: str | None = None) -> int:
    """Activation bits are 2..8, or 32 for 'not quantized' (the A32 of W4A32)."""
    if bits == FLOAT_BITS and not isinstance(bits, bool):
        return bits
    try:
        return check_bits(bits, what, where)
    except QuantConfigError as exc:
        raise QuantConfigError(f"{exc} (or {FLOAT_BITS} for float activations)") from None


def check_drop_prob(p: float, key: str = "drop_prob") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise QuantConfigError(f"{key}={p} must be in [0, 1)")
    return float(p)


@dataclass
class DropSettings:
    """QDrop's random dropping (Wei et al. 2022, eq. 9), ``quant.drop`` in the config.

    Args:
        prob: while a unit reconstructs, each element of an activation quantizer's input keeps
            its float value with this probability, in [0, 1) (0 = off; QDrop's recipe: 0.5).
        float_inputs: QDrop's mixing of a unit's input (their ``recon.py``): where an element
            of the unit's input is dropped, it takes the *float model's* value at that place
            instead of the quantized model's unquantized one (the unit's entry quantizers:
            a block's input quantizer, or the layers reading the unit's input). Needs
            ``prob`` > 0; the float model's unit inputs are cached beside the quantized ones.
    """

    prob: float = 0.0
    float_inputs: bool = False

    def validate(self, where: str = "quant.drop") -> DropSettings:
        check_finite(self, where, QuantConfigError)
        check_drop_prob(self.prob, f"{where}.prob")
        if not isinstance(self.float_inputs, bool):
            raise QuantConfigError(f"{where}.float_inputs={self.float_inputs!r} must be true or "
                                   "false")
        if self.float_inputs and self.prob == 0:
            raise QuantConfigError(f"{where}.float_inputs needs {where}.prob > 0: it says what "
                                   "a dropped element of a unit's input becomes")
        return self


@contextmanager
def drop_references(quantizers: Iterable[ActQuantizer], reference: Tensor | None
                    ) -> Iterator[None]:
    """Within: ``quantizers`` keep ``reference``'s values (not their own input's) where they
    drop (``DropSettings.float_inputs``); None leaves them as they are."""
    quantizers = list(quantizers) if reference is not None else []
    for q in quantizers:
        q.drop_reference = reference
    try:
        yield
    finally:
        for q in quantizers:
            q.drop_reference = None


class ActQuantizer(nn.Module):
    """Quantizes a tensor on a per-tensor grid: ``x_hat = s * clip(round(x / s), qmin, qmax)``.

    Signedness: unsigned when every observed value is >= 0 (what ReLU / ReLU6 produce), signed
    otherwise, unless ``signed`` is given. The step ``s`` is initialised by the MSE search over
    values observed on calibration batches (``observe`` mode), then learned with the LSQ
    gradient, scaled by ``1 / sqrt(numel * qmax)``. ``bits = 32`` leaves the input unchanged.
    ``border="aquant"`` rounds with AQuant's learned per-channel border (see ``act_border``)
    instead of at 0.5; it is created with the step, after observation, and starts at nearest.
    ``drop_prob`` is QDrop's random dropping (Wei et al. 2022, eq. 9): while ``dropping`` is
    on (during a unit's reconstruction only), each element keeps its float value with that
    probability, drawn from a generator seeded by ``seed``.
    """

    def __init__(
        self, bits: int = 8, signed: bool | None = None, seed: int = 0,
        border: str = "nearest", drop_prob: float = 0.0, search_p: float = 2.0,
    ) -> None:
        super().__init__()
        self.search_p = search_p  # the exponent of the step search's error (2: the MSE)
        if border not in BORDERS:
            raise QuantConfigError(f"unknown act_border {border!r}; valid: {', '.join(BORDERS)}")
        self.border_kind = border
        self.border: AQuantBorder | None = None
        self._channels = 0
        self.bits = check_act_bits(bits)
        self.signed = signed
        self.enabled = True
        self.observing = False
        self.seed = seed
        self.drop_prob = check_drop_prob(drop_prob)
        self.dropping = False
        self.drop_reference: Tensor | None = None  # see drop_references
        self.lsq_batch: int | None = None  # samples the LSQ gradient scale counts (see forward)
        self._drop_gen: torch.Generator | None = None
        self.step = nn.Parameter(torch.ones(()))
        self.initialised = False
        self._observed: list[Tensor] = []
        self._observed_min = math.inf

    @property
    def active(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def grid(self) -> UniformGrid:
        if self.signed is None:
            raise RuntimeError("activation quantizer has not seen data: observe batches first")
        return UniformGrid(self.bits, self.signed)

    def _range(self) -> tuple[int, int]:
        """The grid's ``(qmin, qmax)``, kept while ``bits`` and ``signed`` stay (the forward
        runs thousands of times a unit; building the grid each time is a measurable part of
        a small layer's step)."""
        key = (self.bits, self.signed)
        cached = self.__dict__.get("_range_cache")
        if cached is None or cached[0] != key:
            grid = self.grid
            cached = (key, grid.qmin, grid.qmax)
            self.__dict__["_range_cache"] = cached
        return cached[1], cached[2]

    def start_observing(self) -> None:
        self.observing = True
        self._observed = []
        self._observed_min = math.inf

    @torch.no_grad()
    def _record(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        self._channels = x.shape[1] if x.dim() > 1 else 1
        self._observed_min = min(self._observed_min, float(flat.min()))
        if flat.numel() > OBSERVED_VALUES_PER_BATCH:
            gen = torch.Generator(device="cpu").manual_seed(self.seed + len(self._observed))
            idx = torch.randint(flat.numel(), (OBSERVED_VALUES_PER_BATCH,), generator=gen)
            flat = flat[idx.to(flat.device)]
        self._observed.append(flat.cpu())
        held = sum(t.numel() for t in self._observed)
        while held > OBSERVED_VALUES_MAX and len(self._observed) > 1:
            held -= self._observed.pop(0).numel()

    @torch.no_grad()
    def finish_observing(self) -> None:
        """Pick signedness and the MSE-optimal step from what was observed."""
        self.observing = False
        if not self.active:
            self._observed = []
            return
        if not self._observed:
            raise RuntimeError("activation quantizer observed no data")
        values = torch.cat(self._observed)
        self._observed = []
        if not torch.isfinite(values).all():
            raise QuantConfigError("activation quantizer observed NaN or Inf values")
        if self.signed is None:
            self.signed = self._observed_min < 0
        scale, _ = search_qparams(values[None, :], self.grid, affine=False, p=self.search_p)
        self.step.data = scale[0].to(self.step.device)
        self.initialised = True
        if self.border_kind == "aquant":
            self._make_border(self._channels)

    def _make_border(self, channels: int) -> None:
        reach = max(abs(self.grid.qmin), abs(self.grid.qmax))
        self.border = AQuantBorder(channels, reach).to(self.step.device)

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self._record(x)
            return x
        if not self.active or not self.enabled:
            return x
        if not self.initialised:
            raise RuntimeError("activation quantizer used before its step was initialised")
        qmin, qmax = self._range()
        # LSQ's scale counts the tensor's elements; with ``lsq_batch`` set (the global batch of
        # a reconstruction) it counts that many samples, so a DDP rank holding part of the
        # batch learns the step exactly as one process holding all of it
        count = x.numel()
        if self.lsq_batch is not None:
            count = count // x.shape[0] * self.lsq_batch
        g = 1.0 / math.sqrt(count * qmax)
        border = self.border
        if border is None:
            xq = lsq_round(x, self.step, qmin, qmax, g)
        else:
            xq = border.quantize(x, self.step, qmin, qmax, g)
        if self.dropping and self.drop_prob > 0:
            kept = x if self.drop_reference is None else self.drop_reference
            if kept.shape != x.shape:
                raise RuntimeError(f"drop reference of shape {tuple(kept.shape)} for an input "
                                   f"of shape {tuple(x.shape)}")
            return torch.where(self._drop_mask(x), kept, xq)
        return xq

    def _drop_mask(self, x: Tensor) -> Tensor:
        """True where the float value is kept (QDrop), from this quantizer's own generator."""
        if self._drop_gen is None or self._drop_gen.device != x.device:
            self._drop_gen = torch.Generator(device=x.device).manual_seed(self.seed + 0x5EED)
        return torch.rand(x.shape, generator=self._drop_gen, device=x.device) < self.drop_prob

    def get_extra_state(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "initialised": self.initialised}

    def set_extra_state(self, state: dict) -> None:
        if state["bits"] != self.bits:
            raise QuantConfigError(
                f"activation quantizer has {self.bits} bits, the state {state['bits']}"
            )
        self.signed = state["signed"]
        self.initialised = state["initialised"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A learned border exists only after observation: rebuild it from the saved shapes.
        key = prefix + "border.k"
        if key in state_dict and self.border is None:
            extra = state_dict.get(prefix + "_extra_state", {})
            self.signed = extra.get("signed", self.signed)
            self._make_border(state_dict[key].numel())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        if not self.active:
            return "bits=32 (float)"
        sign = {None: "auto", True: "signed", False: "unsigned"}[self.signed]
        return f"bits={self.bits}, {sign}, border={self.border_kind}"
