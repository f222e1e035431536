"""Constraint guidance: differentiable costs in env units that push plans out of forbidden sets.

A `Constraint` wraps a cost(observations (B, H, obs_dim), actions (B, H, act_dim)) -> (B,)
written in env units. While sampling it moves x_t down the gradient of the cost of the
model's denoised estimate of the plan (through the denoiser, so the plan changes as a whole);
it scores finished plans by -penalty * cost (feasibility first) and reports each plan's cost
as a diagnostic. The ready-made costs return the violation: how far inside the forbidden set
the plan goes, summed over planned steps and, for the keep-out sets, over the straight
segments between them (0 when the plan and the path between its states respect it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from diffplan.guidance import Guide, GuideContext

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HARD_PENALTY = 1000.0  # score per unit of violation: any infeasibility outweighs other scores


def _vector(values: float | Sequence[float] | None, n: int, what: str) -> torch.Tensor | None:
    if values is None:
        return None
    out = torch.as_tensor(values, dtype=torch.float32).reshape(-1).expand(n)
    if out.isnan().any():
        raise ValueError(f"{what} contains NaN")
    return out


def _boxes(values: float | Sequence, n: int, what: str) -> torch.Tensor:
    """(n,) or (K, n) box corners -> (K, n)."""
    out = torch.as_tensor(values, dtype=torch.float32)
    if out.ndim == 2:
        if out.shape[1] != n:
            raise ValueError(f"{what} has {out.shape[1]} coordinates per box, dims name {n}")
        if out.isnan().any():
            raise ValueError(f"{what} contains NaN")
        return out
    return _vector(values, n, what)[None, :]


class Cost:
    """A cost in env units. `hard` costs are constraints (feasibility first when scoring);
    soft ones (e.g. `Smoothness`) are preferences, scored with weight 1."""

    hard = True
    name = "cost"

    def __call__(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _segment_closest(points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """(..., H, d) planned points -> (..., H-1, d): the point of each straight segment between
    consecutive planned points that lies closest to `center`."""
    a, b = points[..., :-1, :], points[..., 1:, :]
    d = b - a
    t = ((center - a) * d).sum(-1, keepdim=True) / (d.pow(2).sum(-1, keepdim=True) + 1e-12)
    return a + t.clamp(0.0, 1.0) * d


def _segment_samples(points: torch.Tensor, n: int) -> torch.Tensor:
    """(..., H, d) -> (..., (H-1) * (n-1), d): n-1 evenly spaced interior points per segment."""
    a, b = points[..., :-1, None, :], points[..., 1:, None, :]
    frac = torch.arange(1, n, dtype=points.dtype, device=points.device)[:, None] / n
    inner = a + frac * (b - a)  # (..., H-1, n-1, d)
    return inner.flatten(-3, -2)


class KeepOutDisk(Cost):
    """Stay out of a disk (a ball in len(dims) dims).

    violation = sum_k max(0, r - |p_k - c|) over the planned states, plus (``segments=True``)
    the same depth for the straight segment between consecutive states (its point closest to
    the centre): a plan that steps over the disk between two strided states is a violation.
    """

    name = "keep_out_disk"

    def __init__(
        self,
        center: Sequence[float],
        radius: float,
        dims: Sequence[int] = (0, 1),
        segments: bool = True,
    ):
        self.dims = list(dims)
        self.center = _vector(center, len(self.dims), "KeepOutDisk center")
        if radius <= 0:
            raise ValueError(f"KeepOutDisk radius must be > 0, got {radius}")
        self.radius = float(radius)
        self.segments = segments

    def _depth(self, points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        distance = ((points - center).pow(2).sum(-1) + 1e-12).sqrt()  # eps: finite gradient
        return (self.radius - distance).clamp(min=0).sum(-1)

    def __call__(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        points = observations[..., self.dims]
        center = self.center.to(points)
        out = self._depth(points, center)
        if self.segments and points.shape[-2] > 1:
            out = out + self._depth(_segment_closest(points, center), center)
        return out


class _SampledPathCost(Cost):
    """A cost summed over the planned points (`dims`) and, with `segments`, over `samples` - 1
    evenly spaced points on each straight segment between consecutive planned points."""

    dims: list[int]
    segments: bool = True
    samples: int = 8

    def _depth(self, points: torch.Tensor) -> torch.Tensor:
        """(..., P, len(dims)) points -> (...,) summed violation."""
        raise NotImplementedError

    def __call__(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        p = observations[..., self.dims]
        out = self._depth(p)
        if self.segments and p.shape[-2] > 1:
            out = out + self._depth(_segment_samples(p, self.samples))
        return out


class KeepOutBox(_SampledPathCost):
    """Stay out of an axis-aligned box: violation = sum_k depth of p_k inside the box
    (distance to its nearest face, 0 outside), plus (``segments=True``) the depth of
    `samples` - 1 evenly spaced points on each segment between consecutive planned states.

    low / high: (len(dims),) for one box, or (K, len(dims)) for K boxes at once (e.g. the
    wall cells of a maze, `MazeGrid.wall_boxes`); the depths add over the boxes.
    """

    name = "keep_out_box"

    def __init__(
        self,
        low: Sequence[float],
        high: Sequence[float],
        dims: Sequence[int] = (0, 1),
        segments: bool = True,
        samples: int = 8,
    ):
        self.dims = list(dims)
        self.low = _boxes(low, len(self.dims), "KeepOutBox low")
        self.high = _boxes(high, len(self.dims), "KeepOutBox high")
        if self.low.shape != self.high.shape:
            raise ValueError(
                f"KeepOutBox low {tuple(self.low.shape)} and high {tuple(self.high.shape)} "
                "must describe the same boxes"
            )
        if (self.low >= self.high).any():
            raise ValueError("KeepOutBox needs low < high in every dim")
        if samples < 2:
            raise ValueError(f"KeepOutBox samples must be >= 2, got {samples}")
        self.segments, self.samples = segments, samples

    def _depth(self, p: torch.Tensor) -> torch.Tensor:
        low, high = self.low.to(p), self.high.to(p)  # (K, d)
        p = p[..., None, :]  # (..., P, 1, d)
        depth = torch.minimum(p - low, high - p).amin(-1)  # (..., P, K), > 0 only inside
        return depth.clamp(min=0).sum((-1, -2))


class _Bounds(Cost):
    def __init__(self, low, high, dims: Sequence[int] | None, what: str):
        if low is None and high is None:
            raise ValueError(f"{what} needs a low or a high bound")
        self.dims = None if dims is None else list(dims)
        self.low, self.high, self.what = low, high, what

    def _violation(self, values: torch.Tensor) -> torch.Tensor:
        if self.dims is not None:
            values = values[..., self.dims]
        n = values.shape[-1]
        out = values.new_zeros(values.shape[:-2])
        if self.low is not None:
            low = _vector(self.low, n, f"{self.what} low").to(values)
            out = out + (low - values).clamp(min=0).sum((-1, -2))
        if self.high is not None:
            high = _vector(self.high, n, f"{self.what} high").to(values)
            out = out + (values - high).clamp(min=0).sum((-1, -2))
        return out


class StateBounds(_Bounds):
    """Observation dims within [low, high] (scalars or one per dim; None = unbounded side)."""

    name = "state_bounds"

    def __init__(self, low=None, high=None, dims: Sequence[int] | None = None):
        super().__init__(low, high, dims, "StateBounds")

    def __call__(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self._violation(observations)


class ActionBounds(_Bounds):
    """Action dims within [low, high] (scalars or one per dim; None = unbounded side)."""

    name = "action_bounds"

    def __init__(self, low=None, high=None, dims: Sequence[int] | None = None):
        super().__init__(low, high, dims, "ActionBounds")

    def __call__(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self._violation(actions)


class Smoothness(Cost):
    """A soft cost: weight * sum of squared second differences (accelerations) over the plan,
    of observation `dims` (default: positions 0, 1) or of the actions (on="actions")."""

    hard = False
    name = "smoothness"

    def __init__(self, weight: float = 1.0, on: str = "observations", dims: Sequence[int] = (0, 1)):
        if on not in ("observations", "actions"):
            raise ValueError(f"Smoothness on must be 'observations' or 'actions', got {on!r}")
        self.weight, self.on, self.dims = float(weight), on, list(dims)

    def __call__(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        values = observations[..., self.dims] if self.on == "observations" else actions
        accel = values[..., 2:, :] - 2 * values[..., 1:-1, :] + values[..., :-2, :]
        return self.weight * accel.pow(2).sum((-1, -2))


class Constraint(Guide):
    """Steer plans away from a cost written in env units, and rank them by it.

    cost: a `Cost` or any callable(observations, actions) -> (B,) >= 0 (differentiable in
        torch for the gradient to act; without a gradient it only ranks).
    weight: the gradient step is -weight * grad_{x_t} cost (x_t normalized); `grad_clip`
        bounds each entry's move per step.
    on: "denoised" (default) evaluates the cost on the model's estimate x0_hat(x_t)
        (`ctx.denoise`; one extra backward pass through the denoiser per step); "noisy" on
        x_t itself (Diffuser-style, cheaper). Measured on the toy two-mode data with a disk on
        one route: "denoised" switches plans to the other route, while "noisy" moves single
        states out of the disk, which the denoiser pulls back or leaves as jumps that break
        the dynamics. Without `ctx.denoise` (another sampler) it falls back to "noisy".
    active_fraction: acts only in the last fraction of the denoising steps (1 = all, 0 =
        never, i.e. ranking only).
    penalty: score = -penalty * cost; default `HARD_PENALTY` (feasibility first) for hard
        costs and user callables, 1 for soft ones.
    Diagnostics: {"violation/<name>": cost per plan}.
    """

    def __init__(
        self,
        cost: Cost | CostFn,
        weight: float = 1.0,
        active_fraction: float = 1.0,
        grad_clip: float | None = None,
        penalty: float | None = None,
        guide_steps: int = 1,
        on: str = "denoised",
        name: str | None = None,
    ):
        if not callable(cost):
            raise TypeError(f"Constraint cost must be callable, got {type(cost).__name__}")
        if not 0.0 <= active_fraction <= 1.0:
            raise ValueError(f"active_fraction must be in [0, 1], got {active_fraction}")
        if on not in ("denoised", "noisy"):
            raise ValueError(f"Constraint on must be 'denoised' or 'noisy', got {on!r}")
        self.on = on
        self.cost = cost
        self.weight = float(weight)
        self.active_fraction = active_fraction
        self.grad_clip = grad_clip
        if penalty is None:
            penalty = HARD_PENALTY if getattr(cost, "hard", True) else 1.0
        self.penalty = float(penalty)
        self.guide_steps = guide_steps
        self.name = name or getattr(cost, "name", None) or getattr(cost, "__name__", "cost")

    @classmethod
    def from_callable(cls, cost: CostFn, **settings) -> Constraint:
        """A constraint from your own cost(observations, actions) -> (B,); its output is
        checked at every use (wrong shape or NaN/inf -> ValueError naming the problem)."""
        return cls(cost, **settings)

    def evaluate(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        """(B, H, D) env-unit plans -> (B,) cost, validated."""
        out = self.cost(ctx.spec.observations(plans), ctx.spec.actions(plans))
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"constraint '{self.name}' returned {type(out).__name__}; it must return a "
                f"torch tensor of shape ({len(plans)},), one cost per plan"
            )
        if out.shape != (len(plans),):
            raise ValueError(
                f"constraint '{self.name}' returned shape {tuple(out.shape)}; it must return "
                f"one cost per plan, shape ({len(plans)},) (sum over steps and dims yourself)"
            )
        bad = ~torch.isfinite(out)
        if bad.any():
            raise ValueError(
                f"constraint '{self.name}' returned NaN/inf for {int(bad.sum())} of "
                f"{len(plans)} plans"
            )
        return out

    @property
    def uses_gradient(self) -> bool:
        """False for a ranking-only constraint (weight 0 or active_fraction 0): the sampler
        then skips the gradient machinery."""
        return self.weight != 0.0 and self.active_fraction != 0.0

    def _active(self, ctx: GuideContext) -> bool:
        if self.weight == 0.0 or self.active_fraction == 0.0:
            return False
        n_active = max(1, round(self.active_fraction * ctx.n_steps))
        return ctx.step >= ctx.n_steps - n_active

    def objective(self, x: torch.Tensor, ctx: GuideContext) -> torch.Tensor | None:
        """-weight * cost of the denoised estimate (or of x_t itself), per plan."""
        if not self._active(ctx):
            return None
        denoise = getattr(ctx, "denoise", None)
        estimate = denoise(x) if self.on == "denoised" and denoise is not None else x
        cost = self.evaluate(ctx.unnormalize(estimate), ctx)
        if not cost.requires_grad:
            return None  # a cost without a gradient only ranks
        return -self.weight * cost

    def score(self, plans: torch.Tensor, ctx: GuideContext) -> torch.Tensor:
        with torch.no_grad():
            return -self.penalty * self.evaluate(plans, ctx)

    def diagnostics(self, plans: torch.Tensor, ctx: GuideContext) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {f"violation/{self.name}": self.evaluate(plans, ctx)}
