"""A braking filter on the executed action: the tracker must not carry the ball into a
keep-out region that the plan goes round.

A plan that avoids a disk is followed by a PD tracker, and the ball still enters when it
cannot brake in time: at PointMaze speeds (up to ~5 units/s, ~23 units/s^2 of acceleration
per unit of action) the ball needs ~0.5 units to stop, more than the plan's clearance, and a
far lookahead cuts the plan's bends. The filter keeps the approach speed towards each region
within what full braking can still stop before its edge (a discrete control-barrier
condition):

    approach speed after the step  <=  sqrt(2 * brake * accel * max_action * clearance)

and where the tracker's action would break it, raises the action's component along the
outward normal just enough (at most to full braking), leaving the tangential component, so
the ball slides round the region as the plan does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class KeepOutBrake:
    """Filter actions (E, P) so the point mass brakes before entering any of `regions`.

    regions: `guides.KeepOutDisk` objects (centre, radius, position dims), the same ones the
        planner's constraint guide avoids.
    accel: velocity change per second per unit of action (PointMaze: 23.4, fitted on its
        data: v_{t+1} - v_t = 0.234 a_t per 0.01 s step); dt: seconds per env step.
    max_action: the largest action along any direction (the action box's half-width).
    brake: the share of full braking the bound counts on (< 1 leaves room for the dynamics'
        damping and the discrete steps); margin: extra clearance, env units.
    position_dims / velocity_dims: observation layout (default: the planner's).
    """

    def __init__(
        self,
        regions: Sequence,
        accel: float,
        dt: float,
        max_action: float = 1.0,
        brake: float = 0.7,
        margin: float = 0.02,
        position_dims: Sequence[int] | None = None,
        velocity_dims: Sequence[int] | None = None,
    ):
        for name, value in (("accel", accel), ("dt", dt), ("max_action", max_action)):
            if not value > 0:
                raise ValueError(f"KeepOutBrake {name} must be > 0, got {value}")
        if not 0 < brake <= 1:
            raise ValueError(f"KeepOutBrake brake must lie in (0, 1], got {brake}")
        if not margin >= 0:
            raise ValueError(f"KeepOutBrake margin must be >= 0, got {margin}")
        self.regions = list(regions)
        self.accel, self.dt, self.max_action = float(accel), float(dt), float(max_action)
        self.brake, self.margin = float(brake), float(margin)
        self.position_dims = None if position_dims is None else list(position_dims)
        self.velocity_dims = None if velocity_dims is None else list(velocity_dims)

    def __call__(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """observation (E, obs_dim), action (E, P) env units -> filtered action (E, P)."""
        if self.position_dims is None or self.velocity_dims is None:
            raise ValueError("KeepOutBrake needs position_dims and velocity_dims")
        p = observation[:, self.position_dims]
        v = observation[:, self.velocity_dims]
        dv_per_action = self.accel * self.dt  # velocity change per step per unit of action
        decel = self.brake * self.accel * self.max_action
        for region in self.regions:
            if list(region.dims) != self.position_dims:
                raise ValueError(
                    f"KeepOutBrake region dims {list(region.dims)} differ from the position "
                    f"dims {self.position_dims} that the actions push"
                )
            rel = p - region.center.to(p)
            dist = rel.norm(dim=-1).clamp(min=1e-9)
            normal = rel / dist[:, None]  # outward
            clearance = (dist - region.radius - self.margin).clamp(min=0.0)
            allowed = torch.sqrt(2.0 * decel * clearance)  # approach speed still stoppable
            outward_next = ((v + dv_per_action * action) * normal).sum(-1)
            need = (-allowed - outward_next).clamp(min=0.0) / dv_per_action  # outward action
            along = (action * normal).sum(-1)
            need = torch.minimum(need, (self.max_action - along).clamp(min=0.0))
            action = action + need[:, None] * normal
        return action.clamp(-self.max_action, self.max_action)
