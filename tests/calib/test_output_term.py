"""PD-Quant's term on the network's output (``recon.output_weight``): each unit's float tail,
the term a step adds, the refusals, and a calibration that learns with it."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from float_pairs import resnet20_pair, small_cnn
from torch import nn

import attnround_pl
from attnround_pl.calib import BlockReconstruction, ReconConfig, build_unit_data, capture
from attnround_pl.calib.output_term import (
    OutputTerm,
    tail_graphs,
    tail_module,
)
from attnround_pl.calib.pipeline import shape_units
from attnround_pl.calib.step import step_losses
from attnround_pl.data import FashionMNISTDataModule
from attnround_pl.errors import SettingError
from attnround_pl.models import Unit, build_model, split_units
from attnround_pl.quant import (
    QuantConfig,
    calibrate_activations,
    fold_batchnorms,
    prediction_difference,
    quantize_model,
    reconstruction_loss,
)
from attnround_pl.quant.model import act_quantizers


@pytest.mark.parametrize("recon", [ReconConfig(unit_blocks=1, join_end_layers=False),
                                   ReconConfig()], ids=["one block a unit", "the default's"])
def test_each_units_tail_takes_its_float_output_to_the_float_networks_output(recon):
    x = torch.randn(6, 1, 28, 28)
    q, f = resnet20_pair()
    units = shape_units(split_units(q), q, recon, x[:2])
    graphs = tail_graphs(f, units)
    want = capture(f, "", [x[:4], x[4:]], "output")  # what the sequencer caches
    with torch.no_grad():
        assert torch.allclose(want, f(x))
        for unit, graph in zip(units, graphs, strict=True):
            out = capture(f, unit.output_path, [x], "output")
            kept = out.clone()
            got = tail_module(f, graph)(out)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), unit.name
            assert torch.equal(out, kept)  # an in-place ReLU after the unit wrote to a clone
    if recon.join_end_layers:  # the last unit ends with the logits: its tail is the identity
        assert [n.op for n in graphs[-1].nodes] == ["placeholder", "output"]
    assert not any(p.requires_grad for p in tail_module(f, graphs[0]).parameters())


def test_a_graph_units_tail_starts_at_its_region_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()
    x = torch.randn(4, 3, 8, 8)
    q = quantize_model(net, QuantConfig(w_bits=4, a_bits=8))
    calibrate_activations(q, [x])
    units = split_units(q, example=x[:2])
    assert [u.rule for u in units] == ["graph"] * 3
    graphs = tail_graphs(net, units)
    with torch.no_grad():
        cut = net[0](x)  # the first unit's output: the conv, before the in-place ReLU
        kept = cut.clone()
        assert torch.allclose(tail_module(net, graphs[0])(cut), net(x), atol=1e-6)
        assert torch.equal(cut, kept)
    # a float model that is not the quantized one's: its graph lacks the unit's output node
    with pytest.raises(SettingError, match=r"recon.output_weight: the float model's traced "
                                           r"graph has no node '.*', unit .*'s output"):
        tail_graphs(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), units[2:])


class Skip(nn.Module):
    """Two blocks, the network's output reading the first block's output around the second."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        h = self.a(x)
        return self.fc((h + self.b(h)).mean((2, 3)))


class Branchy(Skip):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: fx cannot trace it
            x = -x
        return super().forward(x)


def test_a_unit_with_a_connection_around_it_and_an_untraceable_model_are_refused():
    units = [Unit(path="a", kind="layer", layers=["a"], rule="layer"),
             Unit(path="b", kind="layer", layers=["b"], rule="layer"),
             Unit(path="fc", kind="layer", layers=["fc"], rule="layer")]
    graphs = tail_graphs(Skip().eval(), [units[0], units[2]])  # after a: b, the add, fc
    x = torch.randn(2, 2, 4, 4)
    net = Skip().eval()
    with torch.no_grad():
        assert torch.allclose(tail_module(net, tail_graphs(net, units[:1])[0])(net.a(x)),
                              net(x))
    assert len(graphs) == 2
    with pytest.raises(SettingError, match=r"recon.output_weight runs the float network after "
                                           r"unit 'b' on the unit's output alone, but the "
                                           r"network's output also reads values from before"):
        tail_graphs(net, units)
    with pytest.raises(SettingError, match="torch.fx cannot trace Branchy"):
        tail_graphs(Branchy().eval(), units[:1])


def test_the_term_is_pd_quants_divergence_and_a_step_adds_it_to_the_error():
    g = torch.Generator().manual_seed(0)
    logits, float_out = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    for t in (1.0, 4.0):
        want = (F.softmax(float_out / t, 1) * (F.log_softmax(float_out / t, 1)
                                               - F.log_softmax(logits / t, 1))).sum(1).mean()
        assert torch.allclose(prediction_difference(logits, float_out, t), want, atol=1e-6)
    assert prediction_difference(float_out, float_out).abs() < 1e-6
    # a step's loss: the output error plus the weighted term on the tail's output
    unit = nn.Conv2d(2, 3, 1)
    head = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    term = OutputTerm(head, weight=10.0, temperature=4.0)
    x, y = torch.randn(8, 2, 2, 2, generator=g), torch.randn(8, 3, 2, 2, generator=g)
    rec, _ = step_losses(unit, [], x, y, weight=0.5, output_term=term, logits=float_out)
    out = unit(x)
    want = 0.5 * (reconstruction_loss(out, y) + 10.0 * prediction_difference(head(out),
                                                                              float_out, 4.0))
    assert torch.allclose(rec, want)




def test_a_trained_unit_learning_with_the_term_ends_closer_to_the_float_output(fmnist_root):
    """The embedded, trained ResNet-20's layer3.0 at W2A4: learned with the term, the float
    network after it takes its output closer to the float network's output than learned on the
    output error alone (the divergence measured over the unit's calibration cache)."""
    dm = FashionMNISTDataModule(root=str(fmnist_root), calib_size=256)
    batches = [x for x, _ in dm.calib_dataloader(batch_size=128)]
    folded = build_model("resnet20")
    fold_batchnorms(folded)
    logits = capture(folded, "", batches, "output")
    divergence = {}
    for weight in (0.0, 100.0):
        q = quantize_model(build_model("resnet20"), QuantConfig(w_bits=2, a_bits=4))
        calibrate_activations(q, batches)
        units = split_units(q)
        index = [u.name for u in units].index("layer3.0")
        data = build_unit_data(q, folded, units[index], batches)
        data.logits = logits
        tail = tail_module(folded, tail_graphs(folded, units)[index])
        term = OutputTerm(tail, weight) if weight else None
        unit = q.get_submodule("layer3.0")
        module = BlockReconstruction(unit, data, "layer3.0", iters=120, batch_size=64, seed=0,
                                     output_term=term)
        pl.Trainer(max_steps=120, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", devices=1).fit(module)
        with torch.no_grad():
            unit.eval()
            divergence[weight] = prediction_difference(tail(unit(data.inputs)), logits).item()
    assert divergence[100.0] < 0.8 * divergence[0.0], divergence


def test_a_calibration_learns_with_the_term():
    images = torch.randn(32, 3, 10, 10, generator=torch.Generator().manual_seed(1))

    def run(weight: float):
        recon = ReconConfig(iters=30, batch_size=8, lr=0.05, keep_better=False,
                            output_weight=weight)
        return attnround_pl.quantize(small_cnn(), images, quant=QuantConfig(w_bits=2, a_bits=4),
                                     recon=recon, progress=False, trainer={"accelerator": "cpu"})

    plain, with_term = run(0.0), run(1000.0)
    assert with_term.report.recon["output_weight"] == 1000.0
    # the term changes what is learned: the later layers' activation steps end elsewhere
    steps = [[q.step.item() for q in act_quantizers(m)] for m in (plain, with_term)]
    assert all(a != b for a, b in zip(steps[0][1:], steps[1][1:], strict=True))


def test_a_model_without_logits_and_the_term_with_a_cuda_graph_are_refused():
    images = torch.randn(8, 3, 10, 10)
    no_logits = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(SettingError, match=r"recon.output_weight=10 compares the network's "
                                           r"class probabilities, but .* does not return"):
        attnround_pl.quantize(no_logits, images, recon=ReconConfig(iters=2, output_weight=10),
                              progress=False, trainer={"accelerator": "cpu"})
    with pytest.raises(SettingError, match="recon.cuda_graph records the output error alone"):
        ReconConfig(output_weight=1.0, cuda_graph=True).validate()
    with pytest.raises(SettingError, match="recon.output_weight=-1.0 must be >= 0"):
        ReconConfig(output_weight=-1.0).validate()
    with pytest.raises(SettingError, match="recon.output_temperature=0.0 > 0"):
        ReconConfig(output_temperature=0.0).validate()
