"""Return conditioning (Decision Diffuser): ask a return-conditioned model for a target return.

The model must be trained with `model.return_conditioning: true` (condition = the window's
return scaled to [0, 1] by the data's return range, dropped with probability
`diffusion.cond_dropout`); sampling then mixes the conditional and unconditional predictions
with classifier-free guidance weight `weight`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from diffplan.guidance import Guide, GuideContext, ModelInputs


class ReturnTargetWarning(UserWarning):
    """A target return outside the range of returns in the training data."""


class ReturnConditioning(Guide):
    """Condition the denoiser on a target return.

    target: a float, one per environment (E,), or a function of the current observations
        (E, obs_dim) env units -> (E,) (a start-dependent target, e.g. the data's upper
        expectile of the return from here: `diffplan.state_models`, kind "start-return",
        which gives return units: use normalized=False). With normalized=True (default) it is on
        the [0, 1] scale of the data's return range (0 = worst window, 1 = best; Decision
        Diffuser uses 0.9); with normalized=False it is in return units (discounted
        return-to-go, the trainer's discount) and is converted with ctx.return_range.
    weight: classifier-free guidance weight w in eps_u + w (eps_c - eps_u) (DD: 1.2;
        1 = plain conditioning, > 1 extrapolates towards the condition).

    A target outside the data's range is allowed (DD-style extrapolation) but warns with
    `ReturnTargetWarning`: the model never saw such returns, so expect at best the nearest
    return it knows. A non-finite target is a ValueError.
    """

    def __init__(
        self,
        target: float | Sequence[float] | torch.Tensor = 0.9,
        weight: float = 1.2,
        normalized: bool = True,
    ):
        self.target_fn = target if callable(target) else None
        if self.target_fn is None:
            self.target = torch.as_tensor(target, dtype=torch.float32).reshape(-1)
        else:
            self.target = torch.zeros(1)  # replaced at each plan by target_fn(observation)
        if not torch.isfinite(self.target).all():
            raise ValueError(f"ReturnConditioning target must be finite, got {target}")
        if not math.isfinite(weight):
            raise ValueError(f"ReturnConditioning weight must be finite, got {weight}")
        self.weight = float(weight)
        self.normalized = normalized

    def normalized_target(self, ctx: GuideContext) -> torch.Tensor:
        """(E,) targets on the model's [0, 1] conditioning scale."""
        if self.target_fn is not None:
            if ctx.observation is None:
                raise ValueError("a start-dependent return target needs the current observation")
            with torch.no_grad():
                self.target = self.target_fn(ctx.observation).float().reshape(-1).cpu()
            if not torch.isfinite(self.target).all():
                raise ValueError("the start-dependent return target gave NaN or inf")
        target = self.target.to(ctx.device)
        if len(target) not in (1, ctx.n_envs):
            raise ValueError(
                f"ReturnConditioning has {len(target)} targets, planning for {ctx.n_envs} envs"
            )
        if not self.normalized:
            if ctx.return_range is None:
                raise ValueError(
                    "a target in return units needs the data's return range, and this model has "
                    "none: train it with model.return_conditioning: true (or pass return_range "
                    "to the planner)"
                )
            lo, hi = ctx.return_range
            target = (target - lo) / max(hi - lo, 1e-8)
        if ((target < 0) | (target > 1)).any():
            warnings.warn(
                f"target return {self._describe()} lies outside the training data's return "
                f"range {self._range(ctx)}; the model never saw such returns",
                ReturnTargetWarning,
                stacklevel=3,
            )
        return target.expand(ctx.n_envs)

    def model_inputs(self, ctx: GuideContext) -> ModelInputs:
        cond = ctx.per_candidate(self.normalized_target(ctx))[:, None]  # (B, 1)
        return ModelInputs(cond=cond, weight=self.weight)

    def _describe(self) -> str:
        values = ", ".join(f"{v:.3g}" for v in self.target.tolist())
        return values if not self.normalized else f"{values} (normalized)"

    def _range(self, ctx: GuideContext) -> str:
        if self.normalized or ctx.return_range is None:
            return "[0, 1]"
        lo, hi = ctx.return_range
        return f"[{lo:.3g}, {hi:.3g}]"
