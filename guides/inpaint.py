"""Inpainting guides: fix known states of the plan (start, goal, waypoints) in env units."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from diffplan.guidance import Guide, GuideContext, Inpainting

# Normalized values beyond this lie outside the data a limits/CDF normalizer was fitted on.
_RANGE_TOLERANCE = 1.05


def _fixed_states(
    ctx: GuideContext,
    steps: Sequence[int],
    dims: Sequence[int],
    values: torch.Tensor,
    what: str,
    check_range: bool = True,
) -> Inpainting:
    """Fix observation `dims` at planned `steps` to `values`: (E or 1, len(steps), len(dims))."""
    spec = ctx.spec
    columns = spec.observation_dims(list(dims))
    rows = []
    for s in steps:
        if not -spec.horizon <= s < spec.horizon:
            raise ValueError(f"{what}: step {s} outside the plan (horizon {spec.horizon})")
        rows.append(s % spec.horizon)
    values = values.to(ctx.device, torch.float32)
    if values.shape[0] not in (1, ctx.n_envs):
        raise ValueError(
            f"{what}: got values for {values.shape[0]} environments, planning for {ctx.n_envs}"
        )
    values = values.expand(ctx.n_envs, -1, -1)
    mask = torch.zeros(1, spec.horizon, spec.transition_dim, dtype=torch.bool, device=ctx.device)
    full = torch.zeros(ctx.n_envs, spec.horizon, spec.transition_dim, device=ctx.device)
    for i, row in enumerate(rows):
        mask[0, row, columns] = True
        full[:, row, columns] = values[:, i]
    if check_range:
        _check_in_data_range(ctx, full, mask, what)
    return Inpainting(mask, ctx.per_candidate(full))


def _check_in_data_range(ctx: GuideContext, full, mask, what: str) -> None:
    if getattr(ctx.normalizer, "kind", None) not in ("limits", "cdf"):
        return
    normalized = ctx.normalize(full)
    outside = (normalized.abs() > _RANGE_TOLERANCE) & mask
    if outside.any():
        env, step, dim = outside.nonzero()[0].tolist()
        value = full[env, step, dim].item()
        raise ValueError(
            f"{what}: value {value:.3f} for state dim {dim - ctx.spec.act_dim} lies outside the "
            f"range of the training data; give a target inside the environment (e.g. the maze)"
        )


class StartState(Guide):
    """Fix the first planned observation to the current state (the planner supplies it)."""

    def inpaint(self, ctx: GuideContext) -> Inpainting:
        if ctx.observation is None:
            raise ValueError("StartState needs the current observation in the GuideContext")
        obs = ctx.observation[:, None, :]
        # The current state is a fact, not a request: a state just beyond the data's range
        # (e.g. a ball nearer a wall than any recorded one) is planned from as it is.
        dims = range(ctx.spec.obs_dim)
        return _fixed_states(ctx, [0], dims, obs, "StartState", check_range=False)


class Goal(Guide):
    """Fix goal coordinates of one planned step (default: the last), optionally at rest.

    position: (goal_dim,) or (E, goal_dim) env units; None takes the goal the planner was given.
    dims: observation dims holding the position; None: the planner's `position_dims` (from
        the checkpoint's plan settings or the task, e.g. PointMaze x, y = 0, 1).
    zero_velocity: also fix `velocity_dims` (None: the planner's) to 0 at that step
        (Diffuser's Maze2D targets).
    arrival: "end" fixes the goal at `step` of every plan. "first-plan" is for replanning
        (MPC): every plan of an episode arrives when its first plan did, (H-1) * stride env
        steps after the episode began, and holds the goal at every planned step after that;
        so the horizon shrinks as the episode runs and a ball at the goal plans to stay.
        (With "end", each replan moves the arrival H-1 planned steps into the future.)
    hold_within: once the current position is within this distance of the goal (env units),
        the goal is held from planned step 1 on, so a ball at the goal plans to stay there
        (a model trained on data that never stops would otherwise plan to leave and return
        by the arrival step; every replan is another draw that may do so). None: off.
    check: optional ``check(goal, position)`` called per env with the goal and the current
        position (both env units, numpy) before planning; it raises ValueError for a goal the
        environment cannot offer (e.g. :meth:`MazeGrid.check_goal`: inside a wall, unreachable).
    Its score prefers plans that get close early: minus the mean distance to the goal over
    the plan, a proxy for the time spent at the goal.
    """

    #: reads the goal handed to the planner (`act(obs, goal=...)`)
    uses_goal = True

    def __init__(
        self,
        position: Sequence[float] | torch.Tensor | None = None,
        dims: Sequence[int] | None = None,
        step: int = -1,
        zero_velocity: bool = False,
        velocity_dims: Sequence[int] | None = None,
        score_weight: float = 1.0,
        arrival: str = "end",
        hold_within: float | None = None,
        check: Callable[[np.ndarray, np.ndarray | None], None] | None = None,
    ):
        if arrival not in ("end", "first-plan"):
            raise ValueError(f"Goal arrival must be 'end' or 'first-plan', got {arrival!r}")
        if arrival == "first-plan" and step != -1:
            raise ValueError("Goal(arrival='first-plan') chooses the step itself; leave step=-1")
        if hold_within is not None and not hold_within > 0:
            raise ValueError(f"Goal hold_within must be > 0 or None, got {hold_within}")
        self.arrival = arrival
        self.hold_within = hold_within
        self.position = None if position is None else torch.as_tensor(position, dtype=torch.float32)
        self._dims = None if dims is None else list(dims)
        self.step = step
        self.zero_velocity = zero_velocity
        self._velocity_dims = None if velocity_dims is None else list(velocity_dims)
        self.score_weight = score_weight
        self.check = check

    def dims_for(self, ctx: GuideContext) -> list[int]:
        dims = self._dims if self._dims is not None else ctx.position_dims
        if dims is None:
            raise ValueError(
                "Goal does not know which observation dims are positions: pass dims=[...] or "
                "plan with position_dims (a checkpoint's plan.position_dims / its task)"
            )
        return list(dims)

    def velocity_dims_for(self, ctx: GuideContext) -> list[int]:
        dims = self._velocity_dims if self._velocity_dims is not None else ctx.velocity_dims
        if dims is None:
            raise ValueError(
                "Goal(zero_velocity=True) needs velocity_dims=[...] or a planner with velocity_dims"
            )
        return list(dims)

    def target(self, ctx: GuideContext) -> torch.Tensor:
        """(E, len(dims)) goal positions in env units."""
        goal = self.position if self.position is not None else ctx.goal
        if goal is None:
            raise ValueError("Goal has no position: pass one, or give the planner a goal")
        goal = torch.as_tensor(goal, dtype=torch.float32, device=ctx.device)
        goal = goal.reshape(-1, goal.shape[-1])
        dims = self.dims_for(ctx)
        if goal.shape[-1] != len(dims):
            raise ValueError(
                f"Goal has {goal.shape[-1]} coordinates but dims={dims} names {len(dims)}"
            )
        if not torch.isfinite(goal).all():
            raise ValueError("Goal position contains NaN or inf")
        return goal.expand(ctx.n_envs, -1)

    def _check_goals(self, ctx: GuideContext, goals: torch.Tensor) -> None:
        positions = None
        if ctx.observation is not None:
            positions = ctx.observation[:, self.dims_for(ctx)].detach().cpu().numpy()
        for i, goal in enumerate(goals.detach().cpu().numpy()):
            self.check(goal, None if positions is None else positions[min(i, len(positions) - 1)])

    def inpaint(self, ctx: GuideContext) -> Inpainting:
        position_dims, goal = self.dims_for(ctx), self.target(ctx)
        dims, values = list(position_dims), goal
        if self.check is not None:
            self._check_goals(ctx, goal)
        if self.zero_velocity:
            velocity_dims = self.velocity_dims_for(ctx)
            dims += velocity_dims
            values = torch.cat([values, values.new_zeros(len(values), len(velocity_dims))], -1)
        clock = self.arrival == "first-plan" and ctx.episode_step is not None
        hold = self.hold_within is not None and ctx.observation is not None
        if not clock and not hold:
            return _fixed_states(ctx, [self.step], dims, values[:, None, :], "Goal")
        spec = ctx.spec
        steps = torch.arange(spec.horizon, device=ctx.device)[None, :]
        if clock:
            # Hold the goal from the planned step at which the episode's first plan arrives.
            elapsed = torch.div(ctx.episode_step.to(ctx.device), spec.stride, rounding_mode="floor")
            arrive = (spec.horizon - 1 - elapsed).clamp(1, spec.horizon - 1)  # (E,)
            held = steps >= arrive[:, None]
        else:
            held = (steps == self.step % spec.horizon).expand(ctx.n_envs, -1)
        if hold:
            position = ctx.observation[:, position_dims].to(ctx.device)
            near = (position - goal).norm(dim=-1)
            held = held | ((near <= self.hold_within)[:, None] & (steps >= 1))
        columns = torch.zeros(spec.transition_dim, dtype=torch.bool, device=ctx.device)
        columns[spec.observation_dims(dims)] = True
        mask = held[:, :, None] & columns  # (E, H, D)
        full = torch.zeros(mask.shape, device=ctx.device)
        full[:, :, spec.observation_dims(dims)] = values.to(ctx.device)[:, None, :]
        _check_in_data_range(ctx, full, mask, "Goal")
        return Inpainting(ctx.per_candidate(mask), ctx.per_candidate(full))

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        positions = ctx.spec.observations(plans)[..., self.dims_for(ctx)]  # (B, H, len(dims))
        goal = ctx.per_candidate(self.target(ctx))[:, None, :]
        return -self.score_weight * (positions - goal).norm(dim=-1).mean(dim=-1)


class Waypoints(Guide):
    """Fix given states at given planned steps: `states` (K, len(dims)) or (E, K, len(dims))."""

    def __init__(
        self,
        steps: Sequence[int],
        states: Sequence[Sequence[float]] | torch.Tensor,
        dims: Sequence[int] | None = None,
    ):
        self.steps = list(steps)
        self.states = torch.as_tensor(states, dtype=torch.float32)
        if self.states.dim() == 2:
            self.states = self.states[None]
        self.dims = None if dims is None else list(dims)
        if self.states.shape[1] != len(self.steps) or (
            self.dims is not None and self.states.shape[2] != len(self.dims)
        ):
            raise ValueError(
                f"Waypoints: states have shape {tuple(self.states.shape[1:])}, expected "
                f"(len(steps), len(dims)) = ({len(self.steps)}, {len(self.dims or [])})"
            )

    def inpaint(self, ctx: GuideContext) -> Inpainting:
        dims = self.dims if self.dims is not None else ctx.position_dims
        if dims is None or self.states.shape[2] != len(dims):
            raise ValueError(
                f"Waypoints: pass dims=[...] for the {self.states.shape[2]} coordinates given "
                "(or plan with matching position_dims)"
            )
        return _fixed_states(ctx, self.steps, dims, self.states, "Waypoints")
