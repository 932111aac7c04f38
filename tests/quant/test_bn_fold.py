import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from attnround_pl.quant import fold_batchnorms


def _randomise_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def test_fold_preserves_outputs_basic_block():
    block = _randomise_bn(
        BasicBlock(
            16,
            32,
            stride=2,
            downsample=nn.Sequential(
                nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32)
            ),
        )
    )
    x = torch.randn(4, 16, 12, 12)
    with torch.no_grad():
        ref = block(x)
        pairs = fold_batchnorms(block)
        out = block(x)
    assert sorted(pairs) == [("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1")]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert (out - ref).abs().max().item() < 1e-4


def test_fold_in_untraceable_model_uses_sequential_fallback():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                return self.body(x)
            return self.body(-x)

    model = _randomise_bn(Dynamic())
    x = torch.rand(2, 3, 9, 9)
    with torch.no_grad():
        ref = model(x)
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fold_batchnorms(model)
        out = model(x)
    assert any("could not trace" in str(w.message) for w in caught)
    assert isinstance(model.body[1], nn.Identity)
    assert (out - ref).abs().max().item() < 1e-4
