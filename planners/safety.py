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

Along a wall that bound is not enough: a ball sliding along the wall into a disk's rim has its
outward normal pointing mostly into the wall, which takes up the braking. `along_motion=True`
adds the same bound along the ball's own motion: the distance to the region along the ray of
the current velocity, and braking against that velocity, which no wall absorbs.
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
    along_motion: also bound the speed along the current velocity by the distance to the
        region along it (for balls that slide along walls).
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
        along_motion: bool = False,
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
        self.along_motion = bool(along_motion)
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
            if self.along_motion:
                action = self._brake_along_motion(p, v, action, region, decel, dv_per_action)
        return action.clamp(-self.max_action, self.max_action)

    def _brake_along_motion(self, p, v, action, region, decel, dv_per_action):
        """Keep the speed along the ball's motion stoppable before the ray meets the region.

        The motion is the current velocity, or at (near) rest the one the action starts; inside
        the margin band the allowed speed towards the region is zero.
        """
        moving = v.norm(dim=-1, keepdim=True) > 0.05
        direction = torch.where(moving, v, v + dv_per_action * action)
        u = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        speed = (v * u).sum(-1)
        rel = p - region.center.to(p)
        radius = region.radius + self.margin
        b = (rel * u).sum(-1)
        c = (rel * rel).sum(-1) - radius**2
        disc = b * b - c
        hit = (b < 0) & ((c <= 0) | (disc >= 0))  # heading for the region, or inside the band
        ray = (-b - disc.clamp(min=0.0).sqrt()).clamp(min=0.0) * (c > 0)  # distance to the edge
        allowed = torch.sqrt(2.0 * decel * ray)
        along = (action * u).sum(-1)
        need = (speed + dv_per_action * along - allowed).clamp(min=0.0) / dv_per_action
        need = torch.minimum(need, (along + self.max_action).clamp(min=0.0))
        return action - torch.where(hit, need, torch.zeros_like(need))[:, None] * u
