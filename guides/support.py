"""Stay where the data has been: a plan whose path leaves the states the dataset visited (e.g.
one that cuts through a maze wall, where no episode ever went) is not one the agent can follow.

`KeepInData` is a `Cost` learned from the data alone, no map: the distance from each planned
point (and the straight segments between them) to the nearest visited position, beyond a
tolerance `radius`. It is built once as a distance field on a grid over a few position dims
(`scipy.ndimage.distance_transform_edt`) and read by multilinear interpolation, so it is cheap
to evaluate for every candidate and differentiable. Used as a ranking-only `Constraint`
(`plan.data_support` in a config), candidates are ranked feasibility first by how far they
leave the data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from guides.constraints import _SampledPathCost

MAX_DIMS = 3
# Refuse grids over 16M nodes: building one takes a few hundred MB (scipy's float64 distances
# and int32 indices), keeping it 64 MB of float32.
MAX_CELLS = 1 << 24


class GridTooLargeError(ValueError):
    """The grid over the data's extent would exceed MAX_CELLS nodes at the requested cell."""


class KeepInData(_SampledPathCost):
    """violation = sum over planned points (and `samples` - 1 points on each segment between
    consecutive ones) of max(0, d(p) - radius), d(p) = distance from p to the nearest position
    the data visited, env units.

    points: (N, len(dims)) positions the data visited, e.g. `episodes.observations[:, dims]`
        (`KeepInData.from_episodes`, `KeepInData.from_checkpoint`).
    dims: the observation dims the points are (positions; at most 3).
    radius: how far from the data a point may be without cost (at least the grid's `cell`;
        PointMaze: 0.2, twice the ball's radius).
    cell: grid spacing, env units; d(p) is exact to within about cell * sqrt(len(dims))
        (visited positions snap to grid nodes, then the field is interpolated). Off the grid,
        d(p) is the way back to the grid plus the field at its edge, an upper bound.
    A plan holding NaN gets a NaN cost (which `Constraint` reports).
    """

    name = "keep_in_data"

    def __init__(
        self,
        points: np.ndarray | torch.Tensor,
        dims: Sequence[int] = (0, 1),
        radius: float = 0.2,
        cell: float = 0.05,
        segments: bool = True,
        samples: int = 8,
    ):
        from scipy.ndimage import distance_transform_edt

        self.dims = list(dims)
        d = len(self.dims)
        if not 1 <= d <= MAX_DIMS:
            raise ValueError(f"KeepInData works on 1 to {MAX_DIMS} position dims, got {d}")
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != d or len(points) == 0:
            raise ValueError(
                f"KeepInData points must be (N, {d}) positions with N >= 1, got shape "
                f"{points.shape}"
            )
        if not np.isfinite(points).all():
            raise ValueError("KeepInData points contain NaN/inf")
        if not (math.isfinite(cell) and math.isfinite(radius) and 0 < cell <= radius):
            raise ValueError(
                f"KeepInData needs finite cell > 0 and radius >= cell, got cell {cell}, "
                f"radius {radius}"
            )
        if samples < 2:
            raise ValueError(f"KeepInData samples must be >= 2, got {samples}")
        pad = radius + 2 * cell  # the field is exact a little beyond the data's box
        low = points.min(0) - pad
        shape = np.floor((points.max(0) + pad - low) / cell).astype(np.int64) + 2
        if math.prod(int(n) for n in shape) > MAX_CELLS:
            raise GridTooLargeError(
                f"KeepInData grid of {tuple(shape)} nodes is too large; pass a larger cell "
                f"(now {cell})"
            )
        visited = np.zeros(shape, dtype=bool)
        nodes = np.rint((points - low) / cell).astype(np.int64)
        visited[tuple(nodes.T)] = True
        field = distance_transform_edt(~visited) * cell  # node -> nearest visited node, env units
        self.field = torch.as_tensor(field, dtype=torch.float32)
        self._fields = {self.field.device: self.field}  # a copy per device, made once
        self.low = torch.as_tensor(low, dtype=torch.float32)
        self.shape = torch.as_tensor(shape, dtype=torch.float32)
        self.cell, self.radius = float(cell), float(radius)
        self.segments, self.samples = segments, samples

    @classmethod
    def from_episodes(cls, episodes, dims: Sequence[int] = (0, 1), **kwargs) -> KeepInData:
        """From a `diffplan.data.Episodes` (every observation's `dims`)."""
        n = episodes.observations.shape[1]
        if any(not 0 <= d < n for d in dims):
            raise ValueError(
                f"position dims {list(dims)} lie outside the data's {n} observation dims"
            )
        return cls(episodes.observations[:, list(dims)], dims=dims, **kwargs)

    @classmethod
    def from_checkpoint(cls, loaded, dims: Sequence[int] = (0, 1), **kwargs) -> KeepInData:
        """From the training data of `loaded` (a `LoadedModel`), read as `diffplan train` did."""
        from diffplan.trainer import load_episodes

        return cls.from_episodes(load_episodes(loaded.config), dims=dims, **kwargs)

    def distance(self, points: torch.Tensor) -> torch.Tensor:
        """(..., len(dims)) env-unit points -> (...,) distance to the nearest visited position."""
        field = self._fields.get(points.device)
        if field is None:
            field = self._fields[points.device] = self.field.to(points.device)
        top = (self.shape - 1).to(points)
        finite = torch.isfinite(points).all(-1)
        u = (torch.where(finite[..., None], points, 0.0) - self.low.to(points)) / self.cell
        inside = torch.minimum(u.clamp(min=0), top)
        beyond = (u - inside).norm(dim=-1) * self.cell  # off the grid: add the way back to it
        base = inside.floor().clamp(max=top - 1)
        frac = inside - base
        base = base.long()
        out = torch.zeros(points.shape[:-1], dtype=points.dtype, device=points.device)
        for corner in itertools.product((0, 1), repeat=len(self.dims)):
            offset = torch.tensor(corner, device=points.device)
            weight = torch.where(offset.bool(), frac, 1 - frac).prod(-1)
            index = (base + offset).unbind(-1)
            out = out + weight * field[index].to(points.dtype)
        return torch.where(finite, out + beyond, torch.nan)

    def _depth(self, points: torch.Tensor) -> torch.Tensor:
        return (self.distance(points) - self.radius).clamp(min=0).sum(-1)
