"""Value guidance (Diffuser): push noisy plans up a learned value V(x_t, t), rank plans by V.

`ValueGuide` is Diffuser's recipe; `ValueRanking` only ranks finished plans (no gradients),
the strongest variant in recent studies ("sample N, keep the best by the critic").
"""

from __future__ import annotations

import torch
from torch import nn

from diffplan.guidance import Guide, GuideContext


class ValueGuide(Guide):
    """Gradient ascent on a value net V(x_t, t) -> (B,) during sampling, and ranking by it.

    Before each denoising step (`guide_steps` times) x_t moves by
    scale * grad_x V(x_t, t), times the posterior variance if `scale_grad_by_std`, not at all
    for t < `t_stopgrad`; `grad_clip` bounds each entry's move (normalized units) per step.
    The score of a finished plan is V(plan, t=0); `diagnostics` reports it as "value".

    V is taken in return units whenever the net has `to_returns` (the `ValueFunction` that
    `diffplan.value_training.load_value` gives), as Diffuser's value net regresses raw
    returns: its scales carry over. scale=0 is pure ranking (the sampler then skips the
    gradient loop entirely).
    """

    def __init__(
        self,
        value_net: nn.Module,
        scale: float = 0.1,
        guide_steps: int = 2,
        t_stopgrad: int = 2,
        scale_grad_by_std: bool = True,
        grad_clip: float | None = None,
    ):
        if guide_steps < 1:
            raise ValueError(f"guide_steps must be >= 1, got {guide_steps}")
        self.value_net = value_net
        self.scale = float(scale)
        self.guide_steps = guide_steps
        self.t_stopgrad = t_stopgrad
        self.scale_grad_by_std = scale_grad_by_std
        self.grad_clip = grad_clip

    @property
    def uses_gradient(self) -> bool:
        return self.scale != 0.0

    def objective(self, x: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        """scale * V(x_t, t), times the posterior variance if `scale_grad_by_std`, and 0 for
        t < t_stopgrad: per plan, so its gradient is exactly Diffuser's step."""
        active = ctx.t >= self.t_stopgrad  # (B,)
        if self.scale == 0.0 or not active.any():
            return None
        weight = self.scale * active.to(x.dtype)
        if self.scale_grad_by_std:
            weight = weight * ctx.posterior_variance.reshape(-1)
        return weight * self._value(x, ctx.t)

    def values(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        """(B, H, D) env-unit plans -> (B,) predicted return (return units when known)."""
        t = torch.zeros(len(plans), dtype=torch.long, device=plans.device)
        with torch.no_grad():
            return self._value(ctx.normalize(plans), t)

    def _value(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        value = self.value_net(x, t)
        to_returns = getattr(self.value_net, "to_returns", None)
        return value if to_returns is None else to_returns(value)

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        return self.values(plans, ctx)

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        return {"value": self.values(plans, ctx)}


class ValueRanking(ValueGuide):
    """Sample unguided, keep the candidate with the highest V(plan, 0): `ValueGuide(scale=0)`."""

    def __init__(self, value_net: nn.Module):
        super().__init__(value_net, scale=0.0)
