"""Normalizer: exact values, round trips, atoms/constant dims, gradients, state dict loading."""

import io

import numpy as np
import pytest
import torch

from diffplan.errors import ConfigError, DatasetError
from diffplan.normalizer import Normalizer

KINDS = ["limits", "gaussian", "cdf"]


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.normal(3.0, 2.0, n),  # smooth
            rng.exponential(1.0, n),  # skewed
            np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 1, n)),  # atom at 0
            np.full(n, 7.0),  # constant
        ],
        axis=1,
    ).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_numpy_and_torch(kind):
    data = _data()
    norm = Normalizer.fit(kind, data)
    assert norm.dim == 4
    y = norm.normalize(data)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == data.shape
    np.testing.assert_allclose(norm.unnormalize(y), data, atol=1e-4)
    assert np.all(y[:, 3] == 0.0)  # constant dim -> 0, no division by zero
    yt = norm.normalize(torch.from_numpy(data))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-6)
    # batched (..., D) shapes
    x3 = torch.from_numpy(data[:60]).reshape(3, 20, 4)
    torch.testing.assert_close(norm.unnormalize(norm.normalize(x3)), x3, atol=1e-4, rtol=0)


def test_limits_and_gaussian_values():
    data = np.array([[0.0, 1.0], [10.0, 1.0], [5.0, 1.0]], np.float32)
    lim = Normalizer.fit("limits", data)
    np.testing.assert_allclose(lim.normalize(data), [[-1, 0], [1, 0], [0, 0]])
    np.testing.assert_allclose(lim.unnormalize(np.zeros((1, 2), np.float32)), [[5.0, 1.0]])
    g = Normalizer.fit("gaussian", _data())
    y = g.normalize(_data())
    np.testing.assert_allclose(y[:, :2].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y[:, :2].std(0), 1, atol=1e-4)
    assert g.stats["stds"][3] == 1e-6  # floored, not zero


def test_cdf_exact_values_and_extrapolation():
    norm = Normalizer.fit("cdf", np.arange(5, dtype=np.float64)[:, None], n_quantiles=5)
    x = np.array([[0.0], [0.5], [1.0], [2.0], [4.0], [5.0], [-2.0]])
    np.testing.assert_allclose(
        norm.normalize(x)[:, 0], [-1.0, -0.75, -0.5, 0.0, 1.0, 1.5, -2.0], atol=1e-12
    )
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x)), x, atol=1e-12)


def test_cdf_repeated_quantiles():
    # quantiles at p = 0, .25, .5, .75, 1 are [0, 0, 0, 0.25, 1]: an atom at 0
    norm = Normalizer.fit("cdf", np.array([[0.0], [0.0], [0.0], [1.0]]), n_quantiles=5)
    np.testing.assert_allclose(norm.stats["quantiles"][0].numpy(), [0, 0, 0, 0.25, 1])
    # the atom maps to the middle of its probability range [0, 0.5] -> p = .25 -> y = -0.5
    assert norm.normalize(np.array([[0.0]]))[0, 0] == pytest.approx(-0.5)
    # anything in that probability range maps back to the atom
    np.testing.assert_allclose(norm.unnormalize(np.array([[-1.0], [-0.5], [0.0]]))[:, 0], 0.0)
    x = np.array([[0.1], [0.25], [0.6], [0.0]])
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x)), x, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow_and_dtype_follows(kind):
    norm = Normalizer.fit(kind, _data()[:, :3].astype(np.float64), n_quantiles=101)
    x = torch.tensor(_data(8, seed=1)[:, :3], dtype=torch.float64, requires_grad=True)
    x = x + 0.01  # stay off the quantile knots, where the CDF map has kinks
    y = norm.normalize(x)
    assert y.dtype == torch.float64
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all() and (g > 0).all()  # strictly increasing map
    xin = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(norm.normalize, (xin,), eps=1e-7, atol=1e-5)
    yin = norm.normalize(x).detach().requires_grad_()
    assert torch.autograd.gradcheck(norm.unnormalize, (yin,), eps=1e-7, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_loads_weights_only(kind):
    data = _data()
    norm = Normalizer.fit(kind, data)
    buf = io.BytesIO()
    torch.save(norm.state_dict(), buf)
    buf.seek(0)
    loaded = Normalizer.from_state_dict(torch.load(buf, weights_only=True))
    assert loaded.kind == kind and loaded.dim == 4
    np.testing.assert_array_equal(loaded.normalize(data), norm.normalize(data))


def test_select_and_errors():
    data = _data()
    norm = Normalizer.fit("cdf", data)
    sub = norm.select(slice(1, 3))
    np.testing.assert_allclose(sub.normalize(data[:, 1:3]), norm.normalize(data)[:, 1:3])
    with pytest.raises(ConfigError, match="unknown normalizer kind 'minmax'"):
        Normalizer.fit("minmax", data)
    bad = data.copy()
    bad[5, 2] = np.nan
    with pytest.raises(DatasetError, match="dimension 2"):
        Normalizer.fit("limits", bad)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        norm.normalize(np.zeros((3, 5)))
