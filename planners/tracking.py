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

    def target(self, plan_obs: torch.Tensor, offset: torch.Tensor, stride: int) -> torch.Tensor:
        """Planned state `lookahead` env steps after `offset`, interpolated between planned steps.

        plan_obs: (E, H, obs_dim) env units; offset: (E,) env steps since the plan was made.
        Past the plan's end the last planned position is held at rest.
        """
        horizon = plan_obs.shape[1]
        position = (offset.float() + self.lookahead) / stride
        target = plan_at(plan_obs, position)
        held = plan_obs[:, -1].clone()
        held[:, list(self.velocity_dims or [])] = 0.0
        return torch.where((position >= horizon - 1)[:, None], held, target)

    def __call__(
        self, plan_obs: torch.Tensor, observation: torch.Tensor, offset: torch.Tensor, stride: int
    ) -> torch.Tensor:
        """(E, H, obs_dim), (E, obs_dim), (E,) -> (E, len(position_dims)) actions."""
        if self.position_dims is None or self.velocity_dims is None:
            raise ValueError(
                "PDTracker needs position_dims and velocity_dims (pass them, or plan from a "
                "checkpoint whose plan section or task names them)"
            )
        target = self.target(plan_obs, offset, stride)
        pos, vel = list(self.position_dims), list(self.velocity_dims)
        action = self.kp * (target[:, pos] - observation[:, pos]) + self.kd * (
            target[:, vel] - observation[:, vel]
        )
        if self.action_low is not None or self.action_high is not None:
            action = action.clamp(self.action_low, self.action_high)
        return action
