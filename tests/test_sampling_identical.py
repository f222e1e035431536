"""The sampler's fast path (inference mode, schedule computed once per call) draws exactly the
samples of the straightforward per-step loop it replaced, bit for bit, for a fixed seed."""

import numpy as np
import pytest
import torch

from diffplan.diffusion import Diffusion
from diffplan.guidance import GuideContext, Inpainting
from diffplan.networks import TemporalUnet, ValueNet
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec
from guides import Goal, StartState, ValueGuide


@torch.no_grad()
def reference_sample(
    self, batch_size, *, inpaint=None, guide=None, ctx=None, sampler="ddim", steps=None,
    eta=None, warm_start=None, warm_start_t=None, cond=None, cond_weight=1.0, generator=None,
    return_chain=False,
):  # fmt: skip
    """`Diffusion.sample` as of commit 517ea48 (per-step schedule, no_grad throughout)."""
    eta = (1.0 if sampler == "ddpm" else 0.0) if eta is None else eta
    device = self.alphas_cumprod.device
    shape = (batch_size, self.spec.horizon, self.spec.transition_dim)
    if guide is not None:
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
        start_t = self.n_timesteps // 2 if warm_start_t is None else warm_start_t
        ts = self.timesteps(steps, start_t)
        noise = torch.randn(shape, device=device, generator=generator)
        x = self.q_sample(warm_start, torch.full((batch_size,), ts[0], device=device), noise)
    else:
        ts = self.timesteps(steps)
        x = torch.randn(shape, device=device, generator=generator)
    if inpaint is not None:
        x = inpaint.apply(x)
    chain = [x] if return_chain else None
    for i, t_now in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        t = torch.full((batch_size,), t_now, device=device, dtype=torch.long)
        abar = self._abar(t)
        abar_prev = self._abar(torch.full_like(t, t_prev))
        posterior_var = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
        if use_gradient:
            ctx.t, ctx.step, ctx.n_steps = t, i, len(ts)
            ctx.posterior_variance = posterior_var
            ctx.denoise = lambda x_t, t=t: self.predict(x_t, t, cond, cond_weight)[0]
            for _ in range(guide.guide_steps):
                with torch.enable_grad():
                    delta = guide.gradient(x, ctx)
                if delta is not None:
                    x = x + delta.detach()
                if inpaint is not None:
                    x = inpaint.apply(x)
        x0, eps = self.predict(x, t, cond, cond_weight)
        sigma = eta * posterior_var.sqrt()
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
        x = abar_prev.sqrt() * x0 + direction * eps
        if t_prev >= 0 and eta > 0:
            x = x + sigma * torch.randn(shape, device=device, generator=generator)
        if inpaint is not None:
            x = inpaint.apply(x)
        if return_chain:
            chain.append(x)
    return x, chain


SPEC = TrajectorySpec(obs_dim=4, act_dim=2, horizon=8)


def _diffusion(prediction="x0", clip=1.0, cond_dim=0, n_timesteps=12):
    torch.manual_seed(0)
    model = TemporalUnet(SPEC.transition_dim, 8, (1, 2), cond_dim=cond_dim)
    return Diffusion(
        model, SPEC, n_timesteps=n_timesteps, prediction=prediction, clip_denoised=clip
    ).eval()


def _both(diffusion, batch=6, seed=3, **kwargs):
    fast = diffusion.sample(batch, generator=torch.Generator().manual_seed(seed), **kwargs)
    ref_x, ref_chain = reference_sample(
        diffusion, batch, generator=torch.Generator().manual_seed(seed), **kwargs
    )
    return fast, ref_x, ref_chain


CASES = {
    "ddim-all-steps": {},
    "ddim-4": {"steps": 4},
    "ddim-eta": {"steps": 5, "eta": 0.5},
    "ddpm": {"sampler": "ddpm"},
    "ddpm-3": {"sampler": "ddpm", "steps": 3},
    "chain": {"steps": 3, "return_chain": True},
}


@pytest.mark.parametrize("prediction, clip", [("x0", 1.0), ("epsilon", None), ("v", 1.0)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_samples_bit_identical_to_the_per_step_loop(case, prediction, clip):
    diffusion = _diffusion(prediction, clip)
    fast, ref_x, ref_chain = _both(diffusion, **CASES[case])
    assert torch.equal(fast.x, ref_x)
    if ref_chain is not None:
        assert len(fast.chain) == len(ref_chain)
        assert all(torch.equal(a, b) for a, b in zip(fast.chain, ref_chain, strict=True))
    assert not fast.x.is_inference()  # an ordinary tensor: callers may modify it in place
    fast.x.add_(1.0)


def test_inpainting_warm_start_and_conditioning_bit_identical():
    diffusion = _diffusion()
    rng = torch.Generator().manual_seed(7)
    mask = torch.zeros(SPEC.horizon, SPEC.transition_dim, dtype=torch.bool)
    mask[0, SPEC.observation_slice] = True
    inpaint = Inpainting(mask, torch.rand(SPEC.horizon, SPEC.transition_dim, generator=rng))
    warm = torch.rand(6, SPEC.horizon, SPEC.transition_dim, generator=rng) * 2 - 1
    for kwargs in (
        {"inpaint": inpaint, "sampler": "ddpm"},
        {"warm_start": warm, "warm_start_t": 3, "steps": 2},
        {"warm_start": warm, "inpaint": inpaint, "sampler": "ddpm", "steps": 4},
    ):
        fast, ref_x, _ = _both(diffusion, **kwargs)
        assert torch.equal(fast.x, ref_x), kwargs
    conditioned = _diffusion(cond_dim=1)
    cond = torch.linspace(-1, 1, 6)[:, None]
    for weight in (1.0, 1.8):
        fast, ref_x, _ = _both(conditioned, cond=cond, cond_weight=weight, steps=5)
        assert torch.equal(fast.x, ref_x), weight


def _context(batch):
    data = np.random.default_rng(0).uniform(-2, 2, (500, SPEC.transition_dim))
    return GuideContext(
        spec=SPEC,
        normalizer=Normalizer.fit("limits", data.astype(np.float32)),
        n_envs=2,
        n_candidates=batch // 2,
        observation=torch.tensor([[0.5, -0.5, 0.0, 0.1], [1.0, 1.0, 0.2, 0.0]]),
        goal=torch.tensor([[1.5, 1.5], [-1.0, 0.5]]),
        position_dims=[0, 1],
        velocity_dims=[2, 3],
    )


def test_guided_sampling_bit_identical():
    diffusion = _diffusion()
    torch.manual_seed(1)
    value = ValueNet(SPEC.transition_dim, SPEC.horizon, 8, (1, 2))
    for guide in (
        StartState() + Goal([1.0, 1.0]),  # inpainting only: inference mode
        StartState() + ValueGuide(value, scale=0.1, guide_steps=2, t_stopgrad=1),  # gradients
    ):
        results = []
        for sample in (diffusion.sample, None):
            generator = torch.Generator().manual_seed(5)
            kwargs = {"guide": guide, "ctx": _context(6), "steps": 4, "generator": generator}
            if sample is None:
                results.append(reference_sample(diffusion, 6, **kwargs)[0])
            else:
                results.append(sample(6, **kwargs).x)
        assert torch.equal(results[0], results[1]), guide
