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

import math
from collections.abc import Sequence

import torch


def _set_point_mass(filter_, regions, accel, dt, max_action, brake, margin) -> None:
    """Check and set the point-mass settings that both filters share."""
    kind = type(filter_).__name__
    for name, value in (("accel", accel), ("dt", dt), ("max_action", max_action)):
        if not value > 0:
            raise ValueError(f"{kind} {name} must be > 0, got {value}")
    if not 0 < brake <= 1:
        raise ValueError(f"{kind} brake must lie in (0, 1], got {brake}")
    if not margin >= 0:
        raise ValueError(f"{kind} margin must be >= 0, got {margin}")
    filter_.regions = list(regions)
    filter_.accel, filter_.dt, filter_.max_action = float(accel), float(dt), float(max_action)
    filter_.brake, filter_.margin = float(brake), float(margin)


def _set_layout(filter_, position_dims, velocity_dims) -> None:
    """None: the planner fills in its own layout when the filter is attached."""
    filter_.position_dims = None if position_dims is None else list(position_dims)
    filter_.velocity_dims = None if velocity_dims is None else list(velocity_dims)


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
        _set_point_mass(self, regions, accel, dt, max_action, brake, margin)
        _set_layout(self, position_dims, velocity_dims)

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


class KeepOutShield:
    """Filter actions (E, P) so that after each one the ball can still stop outside every
    region, checked by simulating the stop (a discrete safety shield).

    The check, for a candidate action: take one step of the point mass's dynamics (velocity
    clipped to `max_speed` per axis, then v += accel * dt * action, p += dt * v), then brake
    every axis at `brake` of full authority until the ball stands. An action passes when no
    position on the way comes within `radius + margin` of a region (a ball already closer may
    not get closer; one inside the region is left alone until it is out, the way its plan
    goes). The tracker's action is kept when it passes; otherwise the filter takes the passing
    action closest to it on a `grid` x `grid` lattice over the action box, and where none
    passes, the brake.

    Walls: the model has none, and a wall changes where a ball goes. A ball pushed into a
    corridor's floor slides along it, where the model has it move away diagonally, and it
    slides into a disk that closes the corridor (B3's block disk, every entry measured). The
    check therefore also simulates each position axis held still, as an axis-aligned wall
    holds it (PointMaze's walls are), and an action must pass all three.

    Unlike `KeepOutBrake`, which bounds the speed along the region's normal, this counts the
    braking the action box really allows along the ball's path (each axis brakes on its own),
    so it holds where the path and the normal differ, as along a wall.

    regions: `guides.KeepOutDisk` objects; accel: velocity change per second per unit of
    action (PointMaze 23.4, fitted on its data); dt: seconds per env step; max_action: the
    action box's half-width; max_speed: the env's velocity clip per axis (PointMaze 5.0; None:
    no clip).
    """

    def __init__(
        self,
        regions: Sequence,
        accel: float,
        dt: float,
        max_action: float = 1.0,
        max_speed: float | None = None,
        brake: float = 0.9,
        margin: float = 0.02,
        grid: int = 21,
        position_dims: Sequence[int] | None = None,
        velocity_dims: Sequence[int] | None = None,
    ):
        _set_point_mass(self, regions, accel, dt, max_action, brake, margin)
        if max_speed is not None and not max_speed > 0:
            raise ValueError(f"KeepOutShield max_speed must be > 0 or None, got {max_speed}")
        if grid < 2:
            raise ValueError(f"KeepOutShield grid must be >= 2 points per axis, got {grid}")
        self.max_speed = None if max_speed is None else float(max_speed)
        self.grid = int(grid)
        _set_layout(self, position_dims, velocity_dims)
        self.interventions = 0  # actions changed so far (a diagnostic)

    def __call__(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """observation (E, obs_dim), action (E, P) env units -> filtered action (E, P)."""
        if self.position_dims is None or self.velocity_dims is None:
            raise ValueError("KeepOutShield needs position_dims and velocity_dims")
        for region in self.regions:
            if list(region.dims) != self.position_dims:
                raise ValueError(
                    f"KeepOutShield region dims {list(region.dims)} differ from the position "
                    f"dims {self.position_dims} that the actions push"
                )
        single = observation.dim() == 1
        if single:
            observation, action = observation[None], action.reshape(1, -1)
        if action.shape[-1] != len(self.position_dims) or len(self.velocity_dims) != len(
            self.position_dims
        ):
            raise ValueError(
                f"KeepOutShield: actions of width {action.shape[-1]} must push the position dims "
                f"{self.position_dims} (velocities {self.velocity_dims}) one to one"
            )
        action = action.clamp(-self.max_action, self.max_action)
        if not self.regions:
            return action[0] if single else action
        p = observation[:, self.position_dims]
        v = observation[:, self.velocity_dims]
        if self.max_speed is not None:
            v = v.clamp(-self.max_speed, self.max_speed)
        safe = self._passes(p, v, action[:, None]).squeeze(1)  # (E,)
        if bool(safe.all()):
            return action[0] if single else action
        rows = torch.nonzero(~safe).flatten()
        lattice = torch.linspace(-self.max_action, self.max_action, self.grid).to(action)
        candidates = torch.cartesian_prod(*[lattice] * action.shape[1])  # (C, P)
        passes = self._passes(p[rows], v[rows], candidates.expand(len(rows), -1, -1))
        distance = (candidates[None] - action[rows, None]).norm(dim=-1)
        distance = distance.masked_fill(~passes, float("inf"))
        best = distance.argmin(dim=1)
        step = self.accel * self.dt * self.max_action
        stop = -(v[rows] / step).clamp(-1.0, 1.0) * self.max_action  # brake as hard as needed
        chosen = torch.where(passes.any(dim=1)[:, None], candidates[best], stop)
        self.interventions += len(rows)
        action = action.clone()
        action[rows] = chosen
        return action[0] if single else action

    def _passes(self, p: torch.Tensor, v: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """p, v (E, P); candidates (E, C, P) -> (E, C) bool: after the action, the brake stops
        the ball clear of every region, with the wall-free model and with each axis held."""
        n_axes = p.shape[1]
        masks = [torch.ones(n_axes)] + [1.0 - torch.eye(n_axes)[i] for i in range(n_axes)]
        decel = self.brake * self.accel * self.dt * self.max_action  # speed shed per step, per axis
        passes = torch.ones(candidates.shape[:2], dtype=torch.bool, device=p.device)
        # Per region and env: the distance a position must keep. A ball already closer than
        # radius + margin may not get closer; one that starts inside is let out its plan's way.
        floors = []
        for region in self.regions:
            now = (p - region.center.to(p)).norm(dim=-1)  # (E,)
            floor = torch.minimum(now, torch.full_like(now, region.radius + self.margin))
            floors.append(floor.masked_fill(now < region.radius, -math.inf))
        for mask in masks:
            mask = mask.to(p)
            vel = (v[:, None] + self.accel * self.dt * candidates) * mask
            pos = p[:, None] + self.dt * vel
            positions = [pos]
            # Braking each axis at `decel` per step stops the fastest one in this many steps.
            steps = int(torch.ceil(vel.abs().max() / decel).item()) if vel.numel() else 0
            for _ in range(steps):
                vel = torch.sign(vel) * (vel.abs() - decel).clamp(min=0.0)
                pos = pos + self.dt * vel
                positions.append(pos)
            path = torch.stack(positions, dim=2)  # (E, C, S, P)
            for region, floor in zip(self.regions, floors, strict=True):
                closest = (path - region.center.to(p)).norm(dim=-1).amin(dim=2)  # (E, C)
                passes &= closest >= floor[:, None] - 1e-6
        return passes
