"""Stop at a plan's best state: for planners that must find a goal they are not told.

A diffusion model learns the data's motion; when the data never stops at the goal (PointMaze:
the data controller picks a new goal on arrival), every plan that passes the goal also leaves
it, and a planner steered by a value or a return target finds the goal and drives on. A goal
told to the planner can be held by inpainting (`Goal(hold_within=...)`); an untold one is
only known through the reward. `HoldAtBest` reads a learned reward of each planned state
(`diffplan.state_models`, kind "reward", trained on the same relabelled data) and, where
a chosen plan reaches a state that the data rates near the top of its reward range,
executes the plan up to its best state and then stays there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffplan.guidance import Guide, GuideContext


class HoldAtBest(Guide):
    """Cut each chosen plan at its highest-reward state and hold that state to the end.

    reward: observations (..., obs_dim), env units -> (...) reward of arriving there, e.g.
        `load_state_model(path, loaded, "reward")`; it must have `target_range` (the data's
        min and max reward) unless `min_reward` is given.
    level: hold only where the best state's predicted reward reaches this fraction of the
        data's reward range (0 = its minimum, 1 = its maximum); a plan whose best state is
        lower runs unchanged, so a planner that must first move away from the goal (round a
        wall) is never stopped at its start.
    min_reward: the same threshold in reward units (overrides `level`).
    refine: move the held position uphill on the learned reward, at most this far (env units;
        0: off), in `refine_steps` steps: planned states are `stride` env steps apart, so the
        best one may lie a few tenths from where the reward peaks, and a ball held there
        forgoes that much reward at every remaining step. Needs ctx.position_dims. It trusts
        the learned reward's slope: an under-trained one that peaks in a wall corner pulls the
        hold there (README B2, Medium).

    Held steps keep the best state's observation with its velocity dims (ctx.velocity_dims)
    set to zero; their actions are left as sampled, so use it with a planner that tracks the
    planned states (action_mode="track").
    """

    def __init__(
        self,
        reward: Callable[[torch.Tensor], torch.Tensor],
        level: float = 0.8,
        min_reward: float | None = None,
        refine: float = 0.0,
        refine_steps: int = 20,
    ):
        if not refine >= 0:
            raise ValueError(f"HoldAtBest refine must be a distance >= 0, got {refine}")
        if min_reward is None:
            if not 0.0 <= level <= 1.0:
                raise ValueError(f"HoldAtBest level must lie in [0, 1], got {level}")
            if not hasattr(reward, "target_range"):
                raise ValueError(
                    "HoldAtBest needs min_reward=... for a reward function without a "
                    "target_range (a diffplan StateModel has one)"
                )
            lo, hi = reward.target_range
            min_reward = lo + level * (hi - lo)
        self.reward = reward
        self.min_reward = float(min_reward)
        self.refine, self.refine_steps = float(refine), int(refine_steps)

    def finalize(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        spec = ctx.spec
        observations = spec.observations(plans)  # (E, H, obs_dim)
        with torch.no_grad():
            rewards = self.reward(observations)  # (E, H)
        best_reward, best_step = rewards.max(dim=1)
        hold = best_reward >= self.min_reward
        if not hold.any():
            return plans
        steps = torch.arange(spec.horizon, device=plans.device)[None, :]
        after = (steps > best_step[:, None]) & hold[:, None]  # (E, H)
        held = observations[torch.arange(len(plans)), best_step].clone()  # (E, obs_dim)
        if ctx.velocity_dims:
            held[:, ctx.velocity_dims] = 0.0
        if self.refine > 0 and ctx.position_dims:
            held = self._uphill(held, list(ctx.position_dims))
        out = plans.clone()
        out[..., spec.observation_slice] = torch.where(
            after[..., None], held[:, None, :], observations
        )
        return out

    def _uphill(self, held: torch.Tensor, dims: list[int]) -> torch.Tensor:
        """Fixed-length steps along the reward's gradient in the position dims, kept within
        `refine` of the start (a learned reward is only trusted near the plan)."""
        start = held[:, dims]
        position = start.clone()
        index = torch.as_tensor(dims, dtype=torch.long, device=held.device)
        n = max(self.refine_steps, 1)
        for k in range(self.refine_steps):
            with torch.enable_grad():
                x = position.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.reward(held.index_copy(1, index, x)).sum(), x)
            direction = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            # Steps shrink linearly (about 2 x refine in all): far enough to arrive, then settle.
            position = position + 4.0 * self.refine / n * (1 - k / n) * direction
            moved = position - start
            scale = (self.refine / moved.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1)
            position = start + moved * scale
        out = held.clone()
        out[:, dims] = position
        return out

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            rewards = self.reward(ctx.spec.observations(plans))
        return {"best_reward": rewards.max(dim=1).values}
