"""The protocol through which guides steer sampling, and the context they see.

A guide implements any subset of these hooks (all optional; the defaults do nothing):

    inpaint(ctx)          -> Inpainting in env units   fix entries of the plan (start, goal, ...)
    objective(x, ctx)     -> (B,) tensor               a differentiable objective of normalized
                                                       x_t; its gradient is the step added to x_t
    gradient(x, ctx)      -> (B, H, D) tensor          a step added to normalized x_t, for steps
                                                       that are not an objective's gradient
    model_inputs(ctx)     -> ModelInputs               condition the denoiser (e.g. a return)
    score(plans, ctx)     -> (B,) tensor               rank finished plans (env units; higher wins)
    finalize(plans, ctx)  -> (E, H, D) tensor          edit the chosen plans before they run
                                                       (env units; e.g. stop at their best state)

Guides that give an `objective` share ONE backward pass when composed: their objectives are
summed (and the denoiser's estimate x0_hat(x_t), `ctx.denoise`, is computed once for all of
them) before a single autograd call; `gradient` is for steps that post-process a gradient
(e.g. clipping), which cannot be summed before the backward pass.

Shapes: B = E * N (E environments x N candidates, environment-major), H = horizon,
D = act_dim + obs_dim laid out as `TrajectorySpec` says. Guides speak env units; the context
converts. The `guides` package implements concrete guides; this file is the core's side of the
contract, so that `diffplan` never imports `guides`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffplan.spec import TrajectorySpec


@dataclass
class Inpainting:
    """Known entries of a plan: `values` where `mask` is True. Shapes broadcast to (B, H, D)."""

    mask: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool:
            raise TypeError("Inpainting.mask must be a bool tensor")
        if not torch.isfinite(torch.where(self.mask, self.values, 0.0)).all():
            raise ValueError("Inpainting values must be finite where the mask is set")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.values.to(x.dtype), x)

    def merge(self, other: Inpainting | None) -> Inpainting:
        """Union of two inpaintings; the same entry fixed to two different values is an error."""
        if other is None:
            return self
        mask_a, mask_b = torch.broadcast_tensors(self.mask, other.mask)
        values_a, values_b = torch.broadcast_tensors(self.values, other.values)
        shape = torch.broadcast_shapes(mask_a.shape, values_a.shape, values_b.shape)
        mask_a, mask_b = mask_a.expand(shape), mask_b.expand(shape)
        values_a, values_b = values_a.expand(shape), values_b.expand(shape)
        both = mask_a & mask_b
        if both.any() and not torch.allclose(values_a[both], values_b[both], atol=1e-6):
            where = both.nonzero()[0].tolist()
            raise ValueError(
                f"two guides fix the same plan entry (batch, step, dim)={tuple(where)} to "
                f"different values; remove one of them or fix different steps"
            )
        return Inpainting(mask_a | mask_b, torch.where(mask_b, values_b, values_a))


@dataclass
class ModelInputs:
    """A conditioning vector for the denoiser and its classifier-free guidance weight.

    eps = eps_uncond + weight * (eps_cond - eps_uncond); weight 1 is plain conditioning.
    """

    cond: torch.Tensor  # (B, C), in the model's (normalized) conditioning units
    weight: float = 1.0

    def merge(self, other: ModelInputs | None) -> ModelInputs:
        if other is None:
            return self
        raise ValueError("two guides both condition the denoiser; use only one of them")


@dataclass
class GuideContext:
    """What a guide may look at: the plan layout, unit conversion, the planning state and,
    inside the sampling loop, the current diffusion step."""

    spec: TrajectorySpec
    normalizer: object  # diffplan.normalizer.Normalizer over the transition vector
    n_envs: int = 1
    n_candidates: int = 1
    observation: torch.Tensor | None = None  # (E, obs_dim) env units: the current state
    goal: torch.Tensor | None = None  # (E, goal_dim) env units, when the task has a goal
    episode_step: torch.Tensor | None = None  # (E,) env steps since each episode began
    return_range: tuple[float, float] | None = None
    # Which observation dims are positions / velocities (the task's state layout; the planner
    # passes them): guides like Goal default to these.
    position_dims: list[int] | None = None
    velocity_dims: list[int] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Filled in by the sampler at each denoising step:
    t: torch.Tensor | None = None  # (B,) integer diffusion timestep of x_t
    step: int = 0  # 0 .. n_steps-1, in sampling order
    n_steps: int = 1
    posterior_variance: torch.Tensor | None = None  # (B, 1, 1)
    # x_t -> the model's x0 estimate (normalized, differentiable), for costs on a clean plan
    denoise: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.n_envs * self.n_candidates

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize(x)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(x)

    def per_candidate(self, per_env: torch.Tensor) -> torch.Tensor:
        """(E, ...) -> (E * N, ...), environment-major like the sampled batch."""
        return per_env.repeat_interleave(self.n_candidates, dim=0)


class Guide:
    """Base class of all guides. Override the hooks you need; compose with `+` or `Compose`."""

    #: gradient steps per denoising step (Diffuser's n_guide_steps)
    guide_steps: int = 1
    #: True for guides that read the goal handed to the planner (`ctx.goal`): a planner with
    #: none of them warns once that the goal it was given goes unused
    uses_goal: bool = False
    #: bound on each entry of the step (normalized units); None: unclipped. A clipped step
    #: needs the guide's own backward pass (clipping does not commute with summing).
    grad_clip: float | None = None

    def inpaint(self, ctx: GuideContext) -> Inpainting | None:
        return None

    def objective(self, x: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        """(B,) differentiable in `x` (normalized x_t, requires grad); None: no step now."""
        return None

    def gradient(self, x: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        if not self.has_objective:
            return None
        step = objective_gradient([self], x, ctx)
        if step is None or self.grad_clip is None:
            return step
        return step.clamp(-self.grad_clip, self.grad_clip)

    def model_inputs(self, ctx: GuideContext) -> ModelInputs | None:
        return None

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        return None

    def finalize(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        """The chosen plans (E, H, D), env units, as they should be executed (ctx has
        n_candidates=1). Default: unchanged."""
        return plans

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        """Per-plan numbers worth reporting with each decision (e.g. constraint violation)."""
        return {}

    def reset(self) -> None:
        """Forget per-episode state."""

    @property
    def has_objective(self) -> bool:
        return type(self).objective is not Guide.objective

    @property
    def uses_gradient(self) -> bool:
        return self.has_objective or type(self).gradient is not Guide.gradient

    @property
    def step_is_objective_gradient(self) -> bool:
        """True when this guide's step is exactly the gradient of its objective, so that it
        may share a backward pass with other guides (not when it clips its step)."""
        return (
            self.has_objective and type(self).gradient is Guide.gradient and self.grad_clip is None
        )

    def __add__(self, other: Guide) -> Compose:
        return Compose([self, other])


def objective_gradient(guides: list[Guide], x: torch.Tensor, ctx: GuideContext):
    """grad_x of the summed objectives of `guides`: one backward pass, and the denoiser's
    estimate of x0 computed at most once (shared by every guide that asks for it)."""
    x = x.detach().requires_grad_(True)
    denoise, cache = ctx.denoise, {}

    def shared_denoise(x_t: torch.Tensor) -> torch.Tensor:
        if x_t is not x:
            return denoise(x_t)
        if "x0" not in cache:
            cache["x0"] = denoise(x)
        return cache["x0"]

    ctx.denoise = shared_denoise if denoise is not None else None
    try:
        total = None
        for g in guides:
            part = g.objective(x, ctx)
            if part is not None and part.requires_grad:
                total = part.sum() if total is None else total + part.sum()
    finally:
        ctx.denoise = denoise
    if total is None:
        return None
    (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    return grad


class Compose(Guide):
    """Several guides acting as one: gradients add, inpaintings merge (conflicts are errors),
    scores add with weights, model inputs merge (at most one guide may set them)."""

    def __init__(self, guides: list[Guide], score_weights: list[float] | None = None):
        flat: list[Guide] = []
        for g in guides:
            if not isinstance(g, Guide):
                raise TypeError(f"Compose expects Guide objects, got {type(g).__name__}")
            flat.extend(g.guides if isinstance(g, Compose) and score_weights is None else [g])
        self.guides = flat
        self.score_weights = score_weights or [1.0] * len(flat)
        if len(self.score_weights) != len(flat):
            raise ValueError("score_weights needs one weight per guide")
        self.guide_steps = max([g.guide_steps for g in flat if g.uses_gradient], default=1)

    def inpaint(self, ctx: GuideContext) -> Inpainting | None:
        merged = None
        for g in self.guides:
            part = g.inpaint(ctx)
            merged = part if merged is None else merged.merge(part)
        return merged

    def gradient(self, x: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        active = [g for g in self.guides if g.uses_gradient]
        shared = [g for g in active if g.step_is_objective_gradient]
        total = objective_gradient(shared, x, ctx) if shared else None
        for g in active:
            if g not in shared:
                part = g.gradient(x, ctx)
                if part is not None:
                    total = part if total is None else total + part
        return total

    def model_inputs(self, ctx: GuideContext) -> ModelInputs | None:
        merged = None
        for g in self.guides:
            part = g.model_inputs(ctx)
            merged = part if merged is None else merged.merge(part)
        return merged

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        total = None
        for g, w in zip(self.guides, self.score_weights, strict=True):
            part = g.score(plans, ctx)
            if part is not None:
                total = w * part if total is None else total + w * part
        return total

    def finalize(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        for g in self.guides:
            plans = g.finalize(plans, ctx)
        return plans

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for g in self.guides:
            out.update(g.diagnostics(plans, ctx))
        return out

    def reset(self) -> None:
        for g in self.guides:
            g.reset()

    @property
    def uses_gradient(self) -> bool:
        return any(g.uses_gradient for g in self.guides)
