"""The adaptive budget (``recon.plateau_gain``): the window rule, the bank of saved steps, and
a calibration whose units stop early, hand their steps on, and learn the same steps as a fixed
budget until they stop."""

import pytest
import torch
from torch import nn

import attnround_pl
from attnround_pl.calib.budget import Plateau, unit_budget, window_steps
from attnround_pl.calib.reconstruction import BlockReconstruction
from attnround_pl.calib.report import UnitResult
from attnround_pl.calib.sequencer import ReconConfig, unit_line
from attnround_pl.errors import SettingError
from attnround_pl.quant import QuantConfig


def result(iters: int, learned: bool = True) -> UnitResult:
    return UnitResult(name="u", kind="block", rule="registry", layers=[], cache_mb=0.0,
                      cache_device="cpu", mse_nearest=1.0, learned=learned, iters=iters)


def test_window_is_an_eighth_of_the_budget_and_at_least_ten_steps():
    assert window_steps(2000) == 250
    assert window_steps(5000) == 625
    assert window_steps(40) == 10


def test_a_window_ends_the_unit_when_its_mean_fell_by_less_than_the_gain():
    plateau = Plateau(window=2, gain=0.1)
    stops = [plateau.add(torch.tensor(v)) for v in (10.0, 10.0,  # first window: mean 10
                                                    8.0, 9.0,    # 8.5: fell 15 %
                                                    8.0, 7.5)]   # 7.75: fell 8.8 % < 10 %
    assert stops == [False, False, False, False, False, True]
    rising = Plateau(window=1, gain=0.0)
    assert [rising.add(torch.tensor(v)) for v in (3.0, 2.0, 2.5)] == [False, False, True]


def test_plateau_reads_losses_that_carry_a_graph_without_keeping_it():
    plateau = Plateau(window=2, gain=0.5)
    w = torch.ones(3, requires_grad=True)
    plateau.add((w * 2).sum())
    assert not plateau._sum.requires_grad


def test_the_next_unit_may_use_every_step_the_units_before_left():
    assert unit_budget(100, []) == 100
    # 40 and 70 of 100 used: 90 saved; a unit without learnable parameters counts for nothing
    assert unit_budget(100, [result(40), result(0, learned=False), result(70)]) == 190
    # one that ran 150 spent 50 of what was saved before it
    assert unit_budget(100, [result(40), result(150)]) == 110


@pytest.mark.parametrize(("args", "message"), [
    ({"plateau_gain": 1.0}, r"recon.plateau_gain=1.0 must be in \[0, 1\)"),
    ({"plateau_gain": -0.1}, r"recon.plateau_gain=-0.1 must be in \[0, 1\)"),
    ({"plateau_gain": 0.01, "lr_schedule": "cosine"}, "recon.lr_schedule='cosine' spans"),
])
def test_bad_plateau_settings_are_refused_in_one_line(args, message):
    with pytest.raises(SettingError, match=message) as info:
        ReconConfig(**args).validate()
    assert "\n" not in str(info.value)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def calibrate(rounding: str = "attention", rounding_args=None, progress: bool = False,
              **recon_args):
    model = small_cnn().eval()
    torch.manual_seed(1)
    images = torch.randn(32, 3, 12, 12)
    recon = ReconConfig(**{"iters": 80, "batch_size": 8, "lr": 1e-3, "keep_better": False,
                           "unit_blocks": 1, "join_end_layers": False, **recon_args})
    quant = QuantConfig(w_bits=2, a_bits=4, act_border="nearest", rounding=rounding,
                        rounding_args=rounding_args)
    return attnround_pl.quantize(model, images, quant=quant, recon=recon, progress=progress,
                                 trainer={"accelerator": "cpu"})


def test_units_stop_on_a_plateau_and_hand_their_steps_on():
    fixed = calibrate().report.units
    # a gain no window reaches: every unit stops at its second window, the last one may run
    # on the steps the others saved and stops there too
    adaptive = calibrate(plateau_gain=0.99).report.units
    assert [u.iters for u in fixed] == [80, 80, 80]
    assert [u.iters for u in adaptive] == [20, 20, 20]  # two windows of 10
    # the first unit learned the same 20 steps as a fixed budget of 20
    short = calibrate(iters=20).report.units[0]
    assert adaptive[0].mse_final == pytest.approx(short.mse_final, rel=1e-6)


class ScriptedPlateau(Plateau):
    """Stops unit ``k`` (in the order the units learn) after ``STOPS[k]`` steps; never when
    that is None."""

    STOPS: list[int | None] = []
    made = 0

    def __init__(self, window: int, gain: float) -> None:
        super().__init__(window, gain)
        self.stop = ScriptedPlateau.STOPS[ScriptedPlateau.made]
        ScriptedPlateau.made += 1
        self.steps = 0

    def add(self, loss: torch.Tensor) -> bool:
        self.steps += 1
        return self.steps == self.stop


@pytest.mark.parametrize("own_steps", [True, False])
def test_a_unit_runs_past_its_own_budget_on_the_steps_saved_before_it(monkeypatch, own_steps):
    # own_steps False: one step a Lightning batch through its optimizer wrapper (DDP, another
    # precision), where the Trainer's max_steps counts the steps
    if not own_steps:
        monkeypatch.setattr(BlockReconstruction, "own_steps", lambda self: False)
    monkeypatch.setattr("attnround_pl.calib.sequencer.Plateau", ScriptedPlateau)
    monkeypatch.setattr(ScriptedPlateau, "STOPS", [25, 97, None])
    monkeypatch.setattr(ScriptedPlateau, "made", 0)
    units = calibrate(plateau_gain=0.01).report.units
    # 55 saved by the first unit; the second uses 17 of them; the third runs to 80 + 38
    assert [u.iters for u in units] == [25, 97, 118]
    assert sum(u.iters for u in units) == 3 * 80


def test_progress_bar_of_a_unit_stopped_on_a_plateau_ends_full_and_says_so(monkeypatch):
    from attnround_pl.calib.progress import UnitProgressBar

    monkeypatch.setattr("attnround_pl.calib.sequencer.Plateau", ScriptedPlateau)
    monkeypatch.setattr(ScriptedPlateau, "STOPS", [25, None, None])
    monkeypatch.setattr(ScriptedPlateau, "made", 0)
    ended = []  # each unit's bar as its fit ends: (description, completed, total)
    epoch_end = UnitProgressBar.on_train_epoch_end

    def spy(self, trainer, pl_module):
        epoch_end(self, trainer, pl_module)
        task = next(t for t in self.progress.tasks if t.id == self.train_progress_bar_id)
        ended.append((task.description, task.completed, task.total))

    monkeypatch.setattr(UnitProgressBar, "on_train_epoch_end", spy)
    units = calibrate(plateau_gain=0.01, progress=True).report.units
    # the second unit may run on the 55 steps the first saved, and runs them all
    assert [u.iters for u in units] == [25, 135, 80]
    assert [(completed, total) for _, completed, total in ended] == [
        (25, 25), (135, 135), (80, 80)]
    assert ended[0][0].endswith("(plateau: 25 of 80 steps)")
    assert "plateau" not in ended[1][0] + ended[2][0]


@pytest.mark.parametrize(("rounding", "rounding_args", "message"), [
    ("adaround", None, "AdaRound's beta anneals over recon.iters steps"),
    ("attention", {"tau": 0.5, "tau_end": 0.1}, "rounding_args.tau_end shrinks"),
    ("attention", {"relax": 2.0}, "rounding_args.relax hardens the soft rounding"),
])
def test_schedules_over_the_budget_are_refused_before_any_work(rounding, rounding_args, message):
    with pytest.raises(SettingError, match=message):
        calibrate(rounding, rounding_args, plateau_gain=0.01)


def test_unit_line_names_the_steps_a_unit_ran_with_the_adaptive_budget():
    done = result(1500)
    done.mse_final, done.kept, done.seconds = 1e-6, "learned", 2.04
    line = unit_line(3, 11, done, steps=True)
    assert line.endswith("-> 1.000e-06, 1500 steps, 2.0 s")
