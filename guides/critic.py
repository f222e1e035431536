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
    `diffplan.critic.load_critic(...)`. Needs plans that hold actions (a joint model)."""

    def __init__(self, critic: nn.Module):
        self.critic = critic

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        if ctx.spec.act_dim == 0:
            raise ValueError(
                "CriticRanking scores a plan's first action, and this model plans states "
                "only; use a joint [action | state] model"
            )
        first = plans[:, 0]
        with torch.no_grad():
            return self.critic.q(ctx.spec.observations(first), ctx.spec.actions(first))

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        return {"q": self.score(plans, ctx)}
