"""Dynamic plausibility: a plan whose states jump further between planned steps than the data
ever moves is not a plan the agent can follow (e.g. a constraint gradient that pushed it
through a wall). `StepLimit` measures each plan's largest jump against the data's and ranks
implausible plans below every plausible one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffplan.guidance import Guide, GuideContext
from guides.constraints import HARD_PENALTY


class StepLimit(Guide):
    """Score plans by how far their largest step exceeds the data's.

    limit: (obs_dim,) or one number per dim in `dims`, env units: the largest plausible
        |s_{k+1} - s_k| between consecutive planned states; `StepLimit.from_checkpoint`
        reads the training data's (its 99.9 % quantile, stored by `diffplan train`).
    dims: observation dims to check (default: all; with a per-dim `limit` of obs_dim).
    tolerance: a plan is implausible when some jump exceeds tolerance x limit.
    Score: -penalty * sum over steps and dims of max(0, |jump| / limit - tolerance), so any
    plausible candidate outranks every implausible one. Diagnostics: "jump_ratio", each plan's
    largest |jump| / limit (1 = the data's largest step).
    """

    def __init__(
        self,
        limit: float | Sequence[float] | torch.Tensor,
        dims: Sequence[int] | None = None,
        tolerance: float = 1.5,
        penalty: float = HARD_PENALTY,
    ):
        self.limit = torch.as_tensor(limit, dtype=torch.float32).reshape(-1)
        if not torch.isfinite(self.limit).all() or (self.limit < 0).any():
            raise ValueError("StepLimit limit must be finite and >= 0")
        if tolerance <= 0:
            raise ValueError(f"StepLimit tolerance must be > 0, got {tolerance}")
        self.dims = None if dims is None else list(dims)
        self.tolerance, self.penalty = float(tolerance), float(penalty)

    @classmethod
    def from_checkpoint(cls, loaded, dims: Sequence[int] | None = None, **kwargs) -> StepLimit:
        """The limit of the data `loaded` (a `LoadedModel`) was trained on."""
        limit = loaded.state_jump_limit()
        if limit is None:
            raise ValueError(f"{loaded.path} holds no data statistics to take a step limit from")
        if dims is not None:
            limit = limit[list(dims)]
        return cls(limit, dims=dims, **kwargs)

    def ratios(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        """(B, H-1, len(dims)) |jump| / limit of env-unit plans (B, H, D)."""
        obs = ctx.spec.observations(plans)
        if self.dims is not None:
            obs = obs[..., self.dims]
        limit = self.limit.to(obs)
        if limit.numel() not in (1, obs.shape[-1]):
            raise ValueError(
                f"StepLimit has {limit.numel()} limits for {obs.shape[-1]} checked dims; give "
                "one per dim (or pass dims=[...])"
            )
        jumps = (obs[:, 1:] - obs[:, :-1]).abs()
        return jumps / limit.clamp(min=1e-8)

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        with torch.no_grad():
            excess = (self.ratios(plans, ctx) - self.tolerance).clamp(min=0)
            return -self.penalty * excess.sum((-1, -2))

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"jump_ratio": self.ratios(plans, ctx).amax((-1, -2))}
