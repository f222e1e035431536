"""A PD controller that follows the planned states instead of executing the diffused actions.

This is the Maze2D protocol of Diffuser: the plan gives positions and velocities; the action
pushes the current state toward the planned one `lookahead` env steps ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def plan_at(plans: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Plans (E, H, D) read at fractional planned steps `position` (E,) or (E, K), linearly
    interpolated between planned steps and held at the last one -> (E, D) or (E, K, D)."""
    last = plans.shape[1] - 1
    low = position.floor().long().clamp(0, last)
    high = (low + 1).clamp(max=last)
    frac = (position - low.float()).clamp(0, 1)[..., None]
    rows = torch.arange(len(plans), device=plans.device).view(-1, *[1] * (position.dim() - 1))
    return (1 - frac) * plans[rows, low] + frac * plans[rows, high]


@dataclass
class PDTracker:
    """action = kp * (planned_pos - pos) + kd * (planned_vel - vel), clipped to the action box.

    position_dims / velocity_dims: observation dims of the state layout; None takes the
    planner's (a checkpoint's plan.position_dims / velocity_dims, or its task's). The default
    gains (20 / 2) are those of `PlanConfig` (PointMaze: they followed the dataset's own
    episodes closest); for other dynamics try kd near 1/dt (README, "Your own environment").
    """

    position_dims: Sequence[int] | None = None
    velocity_dims: Sequence[int] | None = None
    kp: float = 20.0
    kd: float = 2.0
    lookahead: int = 1
    action_low: float | None = -1.0
    action_high: float | None = 1.0
    # Aiming far ahead drives the straight line to that point, which cuts the plan's bends
    # (through a keep-out disk the plan went round, or into a wall). With a tolerance (env
    # units), the tracker aims at the furthest point, at most `lookahead` env steps ahead, whose
    # straight line from the current position passes within it of every planned position on
    # the way; None: always `lookahead`.
    bend_tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.lookahead < 1:
            raise ValueError(f"PDTracker lookahead must be >= 1 env step, got {self.lookahead}")
        if self.bend_tolerance is not None and not self.bend_tolerance >= 0:
            raise ValueError(f"PDTracker bend_tolerance must be >= 0, got {self.bend_tolerance}")

    def steps_ahead(
        self,
        plan_obs: torch.Tensor,
        offset: torch.Tensor,
        stride: int,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(E,) env steps ahead to aim at: `lookahead`, shortened where the plan bends (the
        longest prefix of 1..lookahead whose chords from `position` stay within tolerance)."""
        n = self.lookahead
        if self.bend_tolerance is None or n == 1 or position is None:
            return torch.full_like(offset, n, dtype=torch.float32)
        ks = torch.arange(1, n + 1, device=plan_obs.device, dtype=torch.float32)
        planned = plan_obs[..., list(self.position_dims)]  # (E, H, P): only positions bend
        way = plan_at(planned, (offset.float()[:, None] + ks) / stride)  # (E, n, P)
        a = position[:, None, None, :]  # the ball
        b = way[:, :, None, :]  # chord ends, one per k
        p = way[:, None, :, :]  # planned positions j on the way
        ab = b - a
        t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)).clamp(0, 1)
        off_chord = (p - (a + t[..., None] * ab)).norm(dim=-1)  # (E, k, j)
        before = torch.ones(n, n, dtype=torch.bool, device=plan_obs.device).tril(-1)  # j < k
        worst = torch.where(before, off_chord, torch.zeros_like(off_chord)).amax(-1)  # (E, k)
        ok = (worst <= self.bend_tolerance).to(torch.int64).cumprod(-1)
        return ok.sum(-1).clamp(min=1).to(torch.float32)

    def target(
        self,
        plan_obs: torch.Tensor,
        offset: torch.Tensor,
        stride: int,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Planned state `lookahead` env steps after `offset` (fewer where the plan bends, given
        the current `position` and a `bend_tolerance`), interpolated between planned steps.

        plan_obs: (E, H, obs_dim) env units; offset: (E,) env steps since the plan was made;
        position: (E, len(position_dims)). Past the plan's end the last planned position is
        held at rest.
        """
        horizon = plan_obs.shape[1]
        ahead = self.steps_ahead(plan_obs, offset, stride, position)
        at = (offset.float() + ahead) / stride  # fractional planned step
        target = plan_at(plan_obs, at)
        held = plan_obs[:, -1].clone()
        held[:, list(self.velocity_dims or [])] = 0.0
        return torch.where((at >= horizon - 1)[:, None], held, target)

    def __call__(
        self, plan_obs: torch.Tensor, observation: torch.Tensor, offset: torch.Tensor, stride: int
    ) -> torch.Tensor:
        """(E, H, obs_dim), (E, obs_dim), (E,) -> (E, len(position_dims)) actions."""
        if self.position_dims is None or self.velocity_dims is None:
            raise ValueError(
                "PDTracker needs position_dims and velocity_dims (pass them, or plan from a "
                "checkpoint whose plan section or task names them)"
            )
        pos, vel = list(self.position_dims), list(self.velocity_dims)
        target = self.target(plan_obs, offset, stride, observation[:, pos])
        action = self.kp * (target[:, pos] - observation[:, pos]) + self.kd * (
            target[:, vel] - observation[:, vel]
        )
        if self.action_low is not None or self.action_high is not None:
            action = action.clamp(self.action_low, self.action_high)
        return action
