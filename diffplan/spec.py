"""The layout of one planned trajectory: which dims are actions, which are observations.

A trajectory tensor has shape (..., H, D) with D = act_dim + obs_dim::

    step:    0        1        2   ...   H-1
           [a_0 |o_0][a_s |o_s][a_2s|o_2s] ... one row per planned step
            ^^^^ act_dim
                 ^^^^ obs_dim

Planned step k corresponds to environment step k * stride (jump-step plans when
stride > 1). Every slice of a trajectory goes through this object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class TrajectorySpec:
    obs_dim: int
    act_dim: int
    horizon: int
    stride: int = 1

    def __post_init__(self) -> None:
        for name in ("obs_dim", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrajectorySpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.act_dim < 0:
            raise ValueError(f"TrajectorySpec.act_dim must be >= 0, got {self.act_dim}")

    @property
    def transition_dim(self) -> int:
        return self.act_dim + self.obs_dim

    @property
    def action_slice(self) -> slice:
        return slice(0, self.act_dim)

    @property
    def observation_slice(self) -> slice:
        return slice(self.act_dim, self.act_dim + self.obs_dim)

    def actions(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, D) -> (..., H, act_dim)"""
        return x[..., self.action_slice]

    def observations(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, D) -> (..., H, obs_dim)"""
        return x[..., self.observation_slice]

    def join(self, actions: torch.Tensor, observations: torch.Tensor) -> torch.Tensor:
        """(..., H, act_dim), (..., H, obs_dim) -> (..., H, D)"""
        return torch.cat([actions, observations], dim=-1)

    def observation_dims(self, dims: list[int] | None = None) -> list[int]:
        """Transition-vector indices of the given observation dims (all when None)."""
        dims = range(self.obs_dim) if dims is None else dims
        out = []
        for d in dims:
            if not -self.obs_dim <= d < self.obs_dim:
                raise ValueError(f"observation dim {d} out of range for obs_dim={self.obs_dim}")
            out.append(self.act_dim + d % self.obs_dim)
        return out

    def action_dims(self, dims: list[int] | None = None) -> list[int]:
        """Transition-vector indices of the given action dims (all when None)."""
        dims = range(self.act_dim) if dims is None else dims
        out = []
        for d in dims:
            if not -self.act_dim <= d < self.act_dim:
                raise ValueError(f"action dim {d} out of range for act_dim={self.act_dim}")
            out.append(d % self.act_dim)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrajectorySpec:
        return cls(**{k: int(v) for k, v in d.items()})
