"""Rank plans by an in-support critic: Q(first state, first action) (IDQL, Diffusion Veteran).

The diffusion model proposes N plans from the data's distribution; the critic, trained by
expectile regression on the same data (`diffplan train-critic`), picks the one whose first
action it expects to lead to the highest return the data supports. No gradients: the plans
stay samples of the model, so they never leave the data for the critic's sake.
"""

from __future__ import annotations

import torch
from torch import nn

from diffplan.guidance import Guide, GuideContext


class CriticRanking(Guide):
    """score(plans) = critic.q(s_0, a_0) of each plan (env units); `diagnostics` reports it
    as "q". `critic` is any module with `q(obs (B, obs_dim), act (B, act_dim)) -> (B,)`, e.g.
    `diffplan.critic.load_critic(...)`. Needs plans that hold actions (a joint model).
    action_low / action_high: the env's action space; actions are scored as the env will
    execute them (clipped)."""

    def __init__(self, critic: nn.Module, action_low=None, action_high=None):
        self.critic = critic
        # Score the action the env will execute: a planned action beyond the action space is
        # clipped by the env, and the critic never saw it (its Q there is extrapolation).
        self.action_low = None if action_low is None else torch.as_tensor(action_low).float()
        self.action_high = None if action_high is None else torch.as_tensor(action_high).float()

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        if ctx.spec.act_dim == 0:
            raise ValueError(
                "CriticRanking scores a plan's first action, and this model plans states "
                "only; use a joint [action | state] model"
            )
        first = plans[:, 0]
        actions = ctx.spec.actions(first)
        if self.action_low is not None:
            low, high = self.action_low.to(actions.device), self.action_high.to(actions.device)
            actions = torch.maximum(torch.minimum(actions, high), low)
        with torch.no_grad():
            return self.critic.q(ctx.spec.observations(first), actions)

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        return {"q": self.score(plans, ctx)}
