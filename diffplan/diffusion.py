"""Gaussian diffusion over normalized trajectories: schedule, training loss, and one sampler.

`Diffusion.sample` is the single sampling entry point: DDPM or DDIM with any number of steps
K <= n_timesteps, inpainting (mask + values), a `Guide` acting at every step (gradients,
inpainting, model inputs), classifier-free guidance, and warm starts from a previous plan.
All tensors here are normalized; guides get env units through their `GuideContext`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diffplan.guidance import Guide, GuideContext, Inpainting
from diffplan.spec import TrajectorySpec

PREDICTIONS = ("x0", "epsilon", "v")
SCHEDULES = ("cosine", "linear")
SAMPLERS = ("ddpm", "ddim")


def cosine_beta_schedule(n_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (as in Diffuser)."""
    steps = n_timesteps + 1
    x = torch.linspace(0, steps, steps, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return betas.clamp(0, 0.999).float()


def linear_beta_schedule(n_timesteps: int) -> torch.Tensor:
    scale = 1000 / n_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, n_timesteps, dtype=torch.float32)


def loss_weights(
    spec: TrajectorySpec,
    action_weight: float = 1.0,
    loss_discount: float = 1.0,
    dim_weights: list[float] | None = None,
) -> torch.Tensor:
    """(H, D) weights: per dimension x discount**step, with `action_weight` on the first action."""
    per_dim = torch.ones(spec.transition_dim)
    if dim_weights is not None:
        if len(dim_weights) != spec.transition_dim:
            raise ValueError(
                f"dim_weights has {len(dim_weights)} entries; the transition has "
                f"{spec.transition_dim} dims (act_dim + obs_dim)"
            )
        per_dim = torch.tensor(dim_weights, dtype=torch.float32)
    per_step = loss_discount ** torch.arange(spec.horizon, dtype=torch.float32)
    weights = per_step[:, None] * per_dim[None, :]
    weights[0, spec.action_slice] = action_weight
    return weights


@dataclass
class Samples:
    x: torch.Tensor  # (B, H, D) normalized plans
    chain: list[torch.Tensor] | None = None  # x at each step, when asked for


class Diffusion(nn.Module):
    """Noise schedule + denoiser + loss + sampler.

    Timesteps t run 0..T-1; alphas_cumprod[t] is the signal level of x_t.
    `condition_steps` are the planned steps whose observations are inpainted from the data
    during training (Diffuser: [0] for locomotion, [0, H-1] for mazes).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: TrajectorySpec,
        n_timesteps: int = 20,
        schedule: str = "cosine",
        prediction: str = "x0",
        action_weight: float = 10.0,
        loss_discount: float = 1.0,
        dim_weights: list[float] | None = None,
        condition_steps: tuple[int, ...] = (0,),
        clip_denoised: float | None = 1.0,
        cond_dropout: float = 0.25,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.model = model
        self.spec = spec
        self.n_timesteps = n_timesteps
        self.prediction = prediction
        self.clip_denoised = clip_denoised
        self.cond_dropout = cond_dropout
        self.condition_steps = tuple(int(s) % spec.horizon for s in condition_steps)
        betas = (
            cosine_beta_schedule(n_timesteps)
            if schedule == "cosine"
            else (linear_beta_schedule(n_timesteps))
        )
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, dim=0), persistent=False)
        self.register_buffer(
            "weights",
            loss_weights(spec, action_weight, loss_discount, dim_weights),
            persistent=False,
        )
        mask = torch.zeros(spec.horizon, spec.transition_dim, dtype=torch.bool)
        mask[list(self.condition_steps), spec.observation_slice] = True
        self.register_buffer("train_condition_mask", mask, persistent=False)

    # ----- the forward process and the loss -------------------------------------------------

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps (-1 means 'clean') -> (B, 1, 1) signal levels."""
        abar = torch.where(
            t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones_like(t, dtype=torch.float32)
        )
        return abar[:, None, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def loss(
        self,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Weighted denoising loss on a batch of clean normalized windows x0: (B, H, D).

        Inpainted (conditioned) entries carry no loss: the sampler overwrites them anyway.
        With `cond` (B, C), each sample's condition is dropped with probability cond_dropout
        so that the same network also learns the unconditional model (classifier-free guidance).
        """
        batch = x0.shape[0]
        t = torch.randint(0, self.n_timesteps, (batch,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        x_t = torch.where(self.train_condition_mask, x0, x_t)
        cond_mask = None
        if cond is not None:
            keep = torch.rand(batch, device=x0.device, generator=generator)
            cond_mask = keep >= self.cond_dropout
        out = self.model(x_t, t, cond, cond_mask)
        abar = self._abar(t)
        if self.prediction == "x0":
            target = x0
        elif self.prediction == "epsilon":
            target = noise
        else:
            target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
        weights = self.weights * (~self.train_condition_mask)
        return ((out - target) ** 2 * weights).sum() / (weights.sum() * batch)

    # ----- the reverse process ---------------------------------------------------------------

    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_weight: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) for x_t; with `cond`, classifier-free guidance in one batched call."""
        if cond is None:
            out = self.model(x_t, t)
        elif cond_weight == 1.0:
            out = self.model(x_t, t, cond, torch.ones(len(t), dtype=torch.bool, device=t.device))
        else:
            both = self.model(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                torch.cat([cond, cond]),
                torch.cat(
                    [torch.ones_like(t, dtype=torch.bool), torch.zeros_like(t, dtype=torch.bool)]
                ),
            )
            out_cond, out_uncond = both.chunk(2)
            _, eps_c = self._to_x0_eps(x_t, t, out_cond)
            _, eps_u = self._to_x0_eps(x_t, t, out_uncond)
            eps = eps_u + cond_weight * (eps_c - eps_u)
            abar = self._abar(t)
            x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
            return self._clip(x_t, t, x0, eps)
        x0, eps = self._to_x0_eps(x_t, t, out)
        return self._clip(x_t, t, x0, eps)

    def _to_x0_eps(self, x_t, t, out):
        abar = self._abar(t)
        if self.prediction == "x0":
            return out, (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
        if self.prediction == "epsilon":
            return (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), out
        x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * out
        eps = (1 - abar).sqrt() * x_t + abar.sqrt() * out
        return x0, eps

    def _clip(self, x_t, t, x0, eps):
        if self.clip_denoised is None:
            return x0, eps
        x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
        abar = self._abar(t)
        return x0, (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def timesteps(self, steps: int | None, start: int | None = None) -> list[int]:
        """Decreasing timesteps to visit: `steps` of them, evenly spaced from `start` to 0."""
        start = self.n_timesteps - 1 if start is None else start
        if not 0 <= start < self.n_timesteps:
            raise ValueError(f"start timestep {start} outside 0..{self.n_timesteps - 1}")
        steps = start + 1 if steps is None else steps
        if not 1 <= steps <= self.n_timesteps:
            raise ValueError(
                f"sampling steps must be in 1..{self.n_timesteps} (the training steps), got {steps}"
            )
        grid = torch.linspace(start, 0, min(steps, start + 1)).round().long().tolist()
        return sorted(set(grid), reverse=True)

    def sample(
        self,
        batch_size: int,
        *,
        inpaint: Inpainting | None = None,
        guide: Guide | None = None,
        ctx: GuideContext | None = None,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float | None = None,
        warm_start: torch.Tensor | None = None,
        warm_start_t: int | None = None,
        cond: torch.Tensor | None = None,
        cond_weight: float = 1.0,
        generator: torch.Generator | None = None,
        return_chain: bool = False,
        temperature: float = 1.0,
    ) -> Samples:
        """Draw `batch_size` normalized plans (B, H, D).

        inpaint: known entries (normalized units), re-applied after every step.
        guide, ctx: a Guide and its context; its inpainting (env units) merges with `inpaint`,
            its model inputs override `cond`, its gradient moves x_t before each denoising step.
        sampler: "ddpm" (ancestral; eta=1) or "ddim" (eta defaults to 0), over `steps` timesteps.
        warm_start: (B, H, D) normalized plan noised to timestep `warm_start_t`; denoising
            starts there instead of from pure noise.
        temperature: scale of the starting noise (1: the model's distribution; below 1 draws
            closer to its modes, e.g. less of the behaviour policy's action noise).

        Runs under `torch.inference_mode` unless a guide takes gradients (then `no_grad`, with
        autograd enabled around the guide's gradient only); returns ordinary tensors either way.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        eta = (1.0 if sampler == "ddpm" else 0.0) if eta is None else eta
        device = self.alphas_cumprod.device
        shape = (batch_size, self.spec.horizon, self.spec.transition_dim)
        with torch.no_grad():
            if guide is not None:
                if ctx is None:
                    raise ValueError("sampling with a guide needs a GuideContext (ctx)")
                guide_inpaint = guide.inpaint(ctx)
                if guide_inpaint is not None:
                    guide_inpaint = Inpainting(
                        guide_inpaint.mask.to(device),
                        ctx.normalize(guide_inpaint.values.to(device, torch.float32)),
                    )
                    inpaint = guide_inpaint if inpaint is None else inpaint.merge(guide_inpaint)
                inputs = guide.model_inputs(ctx)
                if inputs is not None:
                    cond, cond_weight = inputs.cond.to(device), inputs.weight
        use_gradient = guide is not None and guide.uses_gradient

        if warm_start is not None:
            if warm_start.shape != shape:
                raise ValueError(f"warm_start has shape {tuple(warm_start.shape)}, need {shape}")
            start_t = self.n_timesteps // 2 if warm_start_t is None else warm_start_t
            ts = self.timesteps(steps, start_t)
        else:
            ts = self.timesteps(steps)
        mode = torch.no_grad() if use_gradient else torch.inference_mode()
        with mode:
            x, chain = self._denoise(
                ts, shape, inpaint, guide if use_gradient else None, ctx, eta, warm_start,
                cond, cond_weight, generator, return_chain, temperature,
            )  # fmt: skip
        if not use_gradient:  # inference tensors cannot be modified outside inference mode
            x = x.clone()
            chain = None if chain is None else [c.clone() for c in chain]
        return Samples(x=x, chain=chain)

    def _schedule(self, ts: list[int], eta: float) -> list[tuple[torch.Tensor, ...]]:
        """Per visited timestep: (abar, abar_prev, posterior variance, sigma, direction), each
        (1, 1, 1), with exactly the float32 arithmetic of the per-step formulas."""
        t_now = torch.tensor(ts, device=self.alphas_cumprod.device)
        abar = self._abar(t_now)
        abar_prev = self._abar(torch.cat([t_now[1:], t_now.new_full((1,), -1)]))
        # Variance of the (respaced) DDPM posterior q(x_prev | x_t, x0).
        posterior_var = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
        sigma = eta * posterior_var.sqrt()
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
        return list(
            zip(
                abar_prev.sqrt().split(1),
                posterior_var.split(1),
                sigma.split(1),
                direction.split(1),
                strict=True,
            )
        )

    def _denoise(
        self, ts, shape, inpaint, guide, ctx, eta, warm_start, cond, cond_weight, generator,
        return_chain, temperature=1.0,
    ):  # fmt: skip
        """The reverse process over timesteps `ts` (see `sample`); `guide` only when it takes
        gradients."""
        device = self.alphas_cumprod.device
        batch_size = shape[0]
        if warm_start is not None:
            noise = torch.randn(shape, device=device, generator=generator)
            if temperature != 1.0:
                noise = noise * temperature
            x = self.q_sample(warm_start, torch.full((batch_size,), ts[0], device=device), noise)
        else:
            x = torch.randn(shape, device=device, generator=generator)
            if temperature != 1.0:
                x = x * temperature
        if inpaint is not None:
            x = inpaint.apply(x)
        chain = [x] if return_chain else None

        schedule = self._schedule(ts, eta)
        for i, (t_now, (sqrt_abar_prev, posterior_var, sigma, direction)) in enumerate(
            zip(ts, schedule, strict=True)
        ):
            last = i + 1 == len(ts)
            t = torch.full((batch_size,), t_now, device=device, dtype=torch.long)
            if guide is not None:
                ctx.t, ctx.step, ctx.n_steps = t, i, len(ts)
                ctx.posterior_variance = posterior_var.expand(batch_size, 1, 1)
                ctx.denoise = lambda x_t, t=t: self.predict(x_t, t, cond, cond_weight)[0]
                for _ in range(guide.guide_steps):
                    with torch.enable_grad():
                        delta = guide.gradient(x, ctx)
                    if delta is not None:
                        x = x + delta.detach()
                    if inpaint is not None:
                        x = inpaint.apply(x)
            x0, eps = self.predict(x, t, cond, cond_weight)
            x = sqrt_abar_prev * x0 + direction * eps
            if not last and eta > 0:
                x = x + sigma * torch.randn(shape, device=device, generator=generator)
            if inpaint is not None:
                x = inpaint.apply(x)
            if return_chain:
                chain.append(x)
        return x, chain
