"""The fused kernels' tanh, 2 sigmoid(2v) - 1 from a pre-activation made doubled
(`rnnkit.cells._common.SigmoidTanh`, `doubled`), against torch.tanh."""

import pytest
import torch

from rnnkit.cells._common import SigmoidTanh, doubled


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 4e-16), (torch.float32, 3e-7)])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_is_tanh_to_a_few_ulps_of_one(dtype, atol, scale):
    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(10_000, generator=g, dtype=torch.float64) * 3, torch.linspace(-30, 30, 601)])
    v = v.to(dtype)
    got = SigmoidTanh(v, scale)(torch.sigmoid(2 * v))
    torch.testing.assert_close(got, scale * torch.tanh(v), rtol=0, atol=scale * atol)


def test_limits_and_nan():
    v = torch.tensor([-float("inf"), -1e4, -50.0, 0.0, 50.0, 1e4, float("inf"), float("nan")])
    got = SigmoidTanh(v)(torch.sigmoid(2 * v))
    assert got[:7].tolist() == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]
    assert got[7].isnan()


def test_doubled_copies_and_doubles_the_rows_asked():
    w = torch.arange(12.0).view(6, 2)
    d = doubled(w, 2, 4)
    assert d.tolist() == [[0, 1], [2, 3], [8, 10], [12, 14], [8, 9], [10, 11]]
    assert w[2, 0] == 4  # the original is untouched
    assert torch.equal(doubled(w), 2 * w) and doubled(None) is None
