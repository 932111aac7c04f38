import pytest
import torch

from attnround_pl.quant import output_mse, reconstruction_loss


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 10), (4, 3, 9)])
def test_reconstruction_loss_sums_channels_and_averages_the_rest(shape):
    torch.manual_seed(0)
    pred = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    target = torch.randn(shape, dtype=torch.float64)
    loss = reconstruction_loss(pred, target)
    loss.backward()
    reference = pred.detach().clone().requires_grad_()
    expected = (reference - target).pow(2).sum(dim=1).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(pred.grad, reference.grad, rtol=1e-12, atol=0)
    channels = shape[1]
    assert loss.item() == pytest.approx(channels * output_mse(pred, target).item(), rel=1e-12)
