"""Per-dimension normalizers (limits, Gaussian, empirical CDF) that work on numpy and torch.

All maths is written once in torch; numpy inputs go through it and come back as numpy of the
same float dtype. The torch path is differentiable w.r.t. its input and follows its
device/dtype, so guides can write costs in env units on ``unnormalize(x)``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from diffplan.errors import CheckpointError, ConfigError, DatasetError

KINDS = ("limits", "gaussian", "cdf")
_STATS = {"limits": ("mins", "maxs"), "gaussian": ("means", "stds"), "cdf": ("quantiles",)}
# Ranges at or below this are "constant": such dims normalize to 0 instead of dividing by ~0.
_CONST_EPS = 1e-8
_CHUNK = 1 << 16  # rows per block on the numpy path

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class Normalizer:
    """Maps each of ``dim`` dimensions independently to roughly [-1, 1] and back.

    * ``limits``: min/max -> [-1, 1]; constant dims map to 0 (and back to their value).
    * ``gaussian``: (x - mean) / std, std floored at ``min_std``.
    * ``cdf``: x -> 2 * F(x) - 1 with F the empirical CDF, piecewise linear between
      ``n_quantiles`` quantiles. A run of repeated quantiles (an atom in the data) maps to
      the middle of its probability range, and back to the repeated value. Outside the
      fitted range the map continues linearly with the slope of the limits normalizer, so
      it stays invertible and has a gradient everywhere.
    """

    def __init__(self, kind: str, stats: dict[str, torch.Tensor]) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown normalizer kind '{kind}'; choose one of {', '.join(KINDS)}")
        missing = [k for k in _STATS[kind] if k not in stats]
        if missing:
            raise CheckpointError(f"normalizer '{kind}' state is missing '{missing[0]}'")
        self.kind = kind
        self.stats = {
            k: torch.as_tensor(stats[k], dtype=torch.float64).detach().cpu() for k in _STATS[kind]
        }
        dims = {v.shape[0] for v in self.stats.values()}
        if len(dims) != 1:
            raise CheckpointError(
                f"normalizer '{kind}' statistics disagree on the dimension: {dims}"
            )
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        kind: str,
        data: np.ndarray | torch.Tensor,
        *,
        n_quantiles: int = 1001,
        min_std: float = 1e-6,
    ) -> Normalizer:
        """Fit per-dimension statistics on ``data (N, D)``."""
        if kind not in KINDS:
            raise ConfigError(f"unknown normalizer kind '{kind}'; choose one of {', '.join(KINDS)}")
        a = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if a.ndim != 2 or a.shape[0] == 0:
            raise DatasetError(f"normalizer data must have shape (N >= 1, D), got {a.shape}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            col = int(np.argmax(~np.isfinite(a).all(axis=0)))
            raise DatasetError(
                f"normalizer data has NaN/inf in dimension {col}; clean the dataset first"
            )
        if kind == "limits":
            stats = {"mins": a.min(0), "maxs": a.max(0)}
        elif kind == "gaussian":
            stats = {"means": a.mean(0), "stds": np.maximum(a.std(0), min_std)}
        else:
            if n_quantiles < 2:
                raise ConfigError(f"n_quantiles must be >= 2, got {n_quantiles}")
            q = np.quantile(a, np.linspace(0.0, 1.0, n_quantiles), axis=0)  # (Q, D)
            # np.quantile can be non-monotone by 1 ulp; searchsorted needs sorted rows
            stats = {"quantiles": np.maximum.accumulate(q, axis=0).T.copy()}
        return cls(kind, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stats.items()})

    @property
    def dim(self) -> int:
        return int(next(iter(self.stats.values())).shape[0])

    def select(self, dims: list[int] | slice) -> Normalizer:
        """A normalizer over a subset of the dimensions (e.g. only the observation dims)."""
        idx = torch.arange(self.dim)[dims] if isinstance(dims, slice) else torch.as_tensor(dims)
        return Normalizer(self.kind, {k: v[idx] for k, v in self.stats.items()})

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor | str | int]:
        """Plain tensors/strings/ints only, so it loads with ``torch.load(weights_only=True)``."""
        return {"kind": self.kind, "dim": self.dim, **{k: v.clone() for k, v in self.stats.items()}}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> Normalizer:
        if not isinstance(d, dict) or "kind" not in d:
            raise CheckpointError(
                "normalizer state has no 'kind'; the checkpoint is not from diffplan"
            )
        norm = cls(str(d["kind"]), {k: v for k, v in d.items() if k not in ("kind", "dim")})
        if "dim" in d and int(d["dim"]) != norm.dim:
            raise CheckpointError(f"normalizer state says dim={d['dim']} but holds {norm.dim} dims")
        return norm

    def __repr__(self) -> str:
        return f"Normalizer(kind={self.kind!r}, dim={self.dim})"

    # ------------------------------------------------------------- transforms
    def normalize(self, x: ArrayT) -> ArrayT:
        """Env units -> normalized, for shape (..., dim)."""
        return self._apply(x, inverse=False)

    def unnormalize(self, x: ArrayT) -> ArrayT:
        """Normalized -> env units, for shape (..., dim)."""
        return self._apply(x, inverse=True)

    def _apply(self, x: Any, inverse: bool) -> Any:
        if isinstance(x, torch.Tensor):
            self._check_shape(x.shape)
            if not x.is_floating_point():
                x = x.to(torch.get_default_dtype())
            return self._torch(x, inverse)
        a = np.asarray(x)
        self._check_shape(a.shape)
        dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)
        flat = np.ascontiguousarray(a, dtype=dtype).reshape(-1, self.dim)
        out = np.empty_like(flat)
        with torch.no_grad():
            # chunks bound the temporaries when a whole dataset is normalized at once
            for i in range(0, len(flat), _CHUNK):
                out[i : i + _CHUNK] = self._torch(torch.from_numpy(flat[i : i + _CHUNK]), inverse)
        return out.reshape(a.shape)

    def _check_shape(self, shape: tuple) -> None:
        if len(shape) == 0 or shape[-1] != self.dim:
            raise ValueError(f"normalizer expects shape (..., {self.dim}), got {tuple(shape)}")

    def _stats_for(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            s = {k: v.to(device=x.device, dtype=x.dtype) for k, v in self.stats.items()}
            if self.kind == "limits":
                lo, hi = s.pop("mins"), s.pop("maxs")
                half = (hi - lo) / 2
                const = half <= _CONST_EPS
                s.update(center=(hi + lo) / 2, half=torch.where(const, 0.0, half))
                s["scale"] = torch.where(const, 0.0, 1.0 / torch.where(const, 1.0, half))
            elif self.kind == "cdf":
                q = s["quantiles"]
                # tie_p[k]: mean probability of the run of quantiles equal to q[k]
                n = q.shape[1] - 1
                first = torch.searchsorted(q, q, right=False)
                last = torch.searchsorted(q, q, right=True) - 1
                s["tie_p"] = (first + last).to(q.dtype) / (2 * n)
                half = (q[:, -1] - q[:, 0]) / 2
                const = half <= _CONST_EPS
                s.update(
                    qmin=q[:, :1],
                    qmax=q[:, -1:],
                    const=const[:, None],
                    half=torch.where(const, 0.0, half)[:, None],
                    scale=torch.where(const, 0.0, 1.0 / torch.where(const, 1.0, half))[:, None],
                )
            self._cache[key] = s
        return self._cache[key]

    def _torch(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        s = self._stats_for(x)
        if self.kind == "limits":
            return x * s["half"] + s["center"] if inverse else (x - s["center"]) * s["scale"]
        if self.kind == "gaussian":
            return x * s["stds"] + s["means"] if inverse else (x - s["means"]) / s["stds"]
        flat = x.reshape(-1, self.dim).T.contiguous()  # (D, M): searchsorted batches over rows
        out = _cdf_inverse(flat, s) if inverse else _cdf_forward(flat, s)
        return out.T.reshape(x.shape)


def _cdf_forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """(D, M) env units -> (D, M) in [-1, 1] (linear beyond the fitted range)."""
    q = s["quantiles"]
    n = q.shape[1] - 1  # quantile k sits at probability k / n
    lo = torch.searchsorted(q, x)  # first q >= x; the only search (it dominates the cost)
    i = lo.clamp(1, n)
    x0, x1 = q.gather(1, i - 1), q.gather(1, i)
    den = x1 - x0
    safe = torch.where(den > 0, den, torch.ones_like(den))  # no inf/NaN in unused branches
    p = ((i - 1).to(x.dtype) + (x - x0) / safe) / n
    # x equal to a quantile: the middle of the probability range of its run of repeats
    knot = lo.clamp(max=n)
    p = torch.where(q.gather(1, knot) == x, s["tie_p"].gather(1, knot), p)
    y = 2 * p - 1
    y = torch.where(x < s["qmin"], -1 + (x - s["qmin"]) * s["scale"], y)
    y = torch.where(x > s["qmax"], 1 + (x - s["qmax"]) * s["scale"], y)
    return torch.where(s["const"], torch.zeros_like(y), y)


def _cdf_inverse(y: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """(D, M) normalized -> (D, M) env units."""
    q = s["quantiles"]
    n = q.shape[1] - 1
    u = (y + 1) / 2 * n
    i = u.detach().floor().clamp(0, n - 1).long()
    frac = u - i.to(y.dtype)
    x0, x1 = q.gather(1, i), q.gather(1, i + 1)
    x = x0 + frac * (x1 - x0)
    x = torch.where(y < -1, s["qmin"] + (y + 1) * s["half"], x)
    return torch.where(y > 1, s["qmax"] + (y - 1) * s["half"], x)
