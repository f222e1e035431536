"""Composition of guides (`Compose`, `a + b`): merged inpainting and its conflicts, gradients
that add exactly, weighted scores, merged diagnostics, and goal + keep-out + value ranking
together in one planner (small untrained nets: this tests the plumbing, not the quality)."""

import numpy as np
import pytest
import torch

from diffplan.diffusion import Diffusion
from diffplan.guidance import Compose, GuideContext
from diffplan.networks import TemporalUnet, ValueNet
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec
from diffplan.value_training import ValueFunction
from guides import (
    Constraint,
    Goal,
    KeepOutDisk,
    ReturnConditioning,
    Smoothness,
    ValueGuide,
    ValueRanking,
    Waypoints,
)
from planners import MPCPlanner

SPEC = TrajectorySpec(obs_dim=4, act_dim=2, horizon=16)
N = 4


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    data = torch.cat([torch.rand(500, 2) * 2 - 1, torch.rand(500, 4) * 4 - 2], dim=1)
    normalizer = Normalizer.fit("limits", data)
    value = ValueFunction(ValueNet(SPEC.transition_dim, SPEC.horizon, 8, (1, 2)), (-10.0, 10.0))
    value.eval().requires_grad_(False)
    diffusion = Diffusion(TemporalUnet(SPEC.transition_dim, 8, (1, 2)), SPEC, n_timesteps=10)
    return normalizer, value, diffusion.eval().requires_grad_(False)


def context(normalizer, **kw):
    ctx = GuideContext(
        spec=SPEC,
        normalizer=normalizer,
        n_candidates=N,
        observation=torch.zeros(1, 4),
        position_dims=[0, 1],
        velocity_dims=[2, 3],
        **kw,
    )
    ctx.t = torch.full((N,), 5)
    ctx.step, ctx.n_steps = 9, 10
    ctx.posterior_variance = torch.full((N, 1, 1), 0.05)
    return ctx


def test_inpainting_merges_and_conflicts_are_errors(parts):
    ctx = context(parts[0])
    merged = (Goal([1.0, 1.0]) + Waypoints([5], [[0.0, 0.5]])).inpaint(ctx)
    assert merged.mask[0, [5, -1]][:, SPEC.observation_dims([0, 1])].all()
    same = Compose([Goal([1.0, 1.0], step=5), Waypoints([5], [[1.0, 1.0]])]).inpaint(ctx)
    assert same.mask[0].sum() == 2  # the same value twice is no conflict
    with pytest.raises(ValueError, match="same plan entry"):
        Compose([Goal([1.0, 1.0], step=5), Waypoints([5], [[0.0, 0.0]])]).inpaint(ctx)
    with pytest.raises(ValueError, match="both condition the denoiser"):
        (ReturnConditioning(0.9) + ReturnConditioning(0.1)).model_inputs(ctx)


def test_composed_gradient_is_the_sum_of_the_parts(parts):
    normalizer, value, diffusion = parts
    ctx = context(normalizer, step=9)
    ctx.denoise = lambda x_t: diffusion.predict(x_t, ctx.t)[0]  # as the sampler sets it
    x = torch.randn(N, SPEC.horizon, SPEC.transition_dim)
    x[:, :, SPEC.observation_dims([0])] = 0.05  # near the disk's centre: the cost is active
    value_guide = ValueGuide(value, scale=0.3)
    disk = Constraint(KeepOutDisk((0.0, 0.0), 1.0), weight=2.0, active_fraction=1.0)
    smooth = Constraint(Smoothness(0.5), weight=0.1, active_fraction=1.0)
    total = Compose([value_guide, disk, smooth]).gradient(x, ctx)
    parts_sum = value_guide.gradient(x, ctx) + disk.gradient(x, ctx) + smooth.gradient(x, ctx)
    assert torch.allclose(total, parts_sum, rtol=1e-4, atol=1e-5)  # one backward pass: rounding
    assert torch.allclose(
        (value_guide + disk).gradient(x, ctx),
        value_guide.gradient(x, ctx) + disk.gradient(x, ctx),
        rtol=1e-4,
        atol=1e-5,
    )
    # Each part's own weight scales it linearly.
    tenth = ValueGuide(value, scale=0.1).gradient(x, ctx)
    assert torch.allclose(value_guide.gradient(x, ctx), 3 * tenth, rtol=1e-5, atol=1e-8)
    assert tenth.abs().sum() > 0 and disk.gradient(x, ctx).abs().sum() > 0
    # Ranking-only parts add nothing and do not count towards guide_steps.
    assert Compose([ValueRanking(value), disk]).guide_steps == 1
    assert Compose([ValueGuide(value, guide_steps=3), disk]).guide_steps == 3
    assert torch.equal(Compose([ValueRanking(value), disk]).gradient(x, ctx), disk.gradient(x, ctx))


def test_gradient_guides_share_one_denoiser_pass(parts):
    """Three constraints on the denoised plan and a value guide: one forward and one backward
    pass through the denoiser per guide step (not one per constraint); a clipped guide
    keeps its own pass."""
    normalizer, value, diffusion = parts
    ctx = context(normalizer, step=9)
    calls = []

    def denoise(x_t):
        calls.append(1)
        return diffusion.predict(x_t, ctx.t)[0]

    ctx.denoise = denoise
    x = torch.randn(N, SPEC.horizon, SPEC.transition_dim)
    disks = [Constraint(KeepOutDisk((0.1 * k, 0.0), 1.0), name=f"d{k}") for k in range(3)]
    composed = Compose([ValueGuide(value, scale=0.3), *disks])
    together = composed.gradient(x, ctx)
    assert len(calls) == 1
    calls.clear()
    separate = sum(g.gradient(x, ctx) for g in composed.guides)
    assert len(calls) == 3  # the value guide needs no denoiser
    assert torch.allclose(together, separate, rtol=1e-4, atol=1e-5)
    calls.clear()
    clipped = Constraint(KeepOutDisk((0.0, 0.0), 1.0), grad_clip=1e-3)
    step = Compose([*disks, clipped]).gradient(x, ctx)
    assert len(calls) == 2
    expected = sum(g.gradient(x, ctx) for g in disks) + clipped.gradient(x, ctx)
    assert torch.allclose(step, expected, rtol=1e-4, atol=1e-5)


def test_scores_add_with_weights_and_diagnostics_merge(parts):
    normalizer, value, _ = parts
    ctx = context(normalizer)
    plans = normalizer.unnormalize(torch.randn(N, SPEC.horizon, SPEC.transition_dim).clamp(-1, 1))
    ranking = ValueRanking(value)
    disk = Constraint(KeepOutDisk((0.0, 0.0), 1.0))
    composed = Compose([ranking, disk], score_weights=[2.0, 0.5])
    assert torch.equal(
        composed.score(plans, ctx), 2.0 * ranking.score(plans, ctx) + 0.5 * disk.score(plans, ctx)
    )
    # The value is in return units: V on the [0, 1] scale mapped onto (-10, 10).
    t0 = torch.zeros(N, dtype=torch.long)
    raw = value.net(normalizer.normalize(plans), t0)
    assert torch.allclose(ranking.score(plans, ctx), -10.0 + 20.0 * raw)
    diagnostics = composed.diagnostics(plans, ctx)
    assert set(diagnostics) == {"value", "violation/keep_out_disk"}


def test_goal_keep_out_and_value_ranking_in_one_planner(parts):
    normalizer, value, diffusion = parts
    goal = Goal([1.5, 1.5])
    disk = Constraint(KeepOutDisk((0.75, 0.75), 0.3), weight=1.0)
    planner = MPCPlanner(
        diffusion,
        normalizer,
        SPEC,
        guide=[goal, disk, ValueRanking(value)],
        n_candidates=N,
        sampling_steps=4,
        position_dims=[0, 1],
        velocity_dims=[2, 3],
    )
    plan = planner.plan(np.zeros((2, 4), np.float32))
    positions = SPEC.observations(plan.candidates)[..., :2]
    assert torch.equal(positions[:, :, -1], torch.full((2, N, 2), 1.5))  # goal exact
    assert torch.equal(plan.best_index, plan.scores.argmax(1))
    assert set(plan.diagnostics) == {"value", "violation/keep_out_disk"}
    assert plan.diagnostics["value"].shape == (2,)
    # Return conditioning composes with ranking: the model inputs pass through.
    inputs = (ReturnConditioning(0.9) + ValueRanking(value)).model_inputs(context(normalizer))
    assert inputs.cond.shape == (N, 1) and inputs.weight == 1.2
