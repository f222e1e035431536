"""The diffusion model learns a known trajectory distribution: closeness, modes, inpainting,
DDIM vs DDPM, warm starts, prediction types and step-count errors (one small model per module)."""

from __future__ import annotations

import pytest
import torch

from diffplan.config import Config
from diffplan.data.synthetic import make_synthetic, two_mode_end_y
from diffplan.data.windows import fit_normalizer, transitions
from diffplan.guidance import Inpainting
from diffplan.model import build_diffusion
from diffplan.spec import TrajectorySpec

HORIZON = 16
N_SAMPLES = 256


def _config(prediction: str = "x0") -> Config:
    config = Config()
    config.model.horizon, config.model.dim, config.model.dim_mults = HORIZON, 16, [1, 2]
    config.diffusion.n_timesteps = 20
    config.diffusion.prediction = prediction
    config.diffusion.action_weight = 1.0
    return config


def _train(config: Config, data: torch.Tensor, spec: TrajectorySpec, steps: int):
    torch.manual_seed(0)
    diffusion = build_diffusion(config, spec)
    optimizer = torch.optim.AdamW(diffusion.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(data), (64,), generator=gen)
        loss = diffusion.loss(data[idx], generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return diffusion.eval(), losses


@pytest.fixture(scope="module")
def setup():
    """Two-mode paths of exactly one window each, and a model trained 400 steps on them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is fastest and immune to busy machines
    episodes = make_synthetic("two_mode", n_episodes=512, length=HORIZON, seed=0)
    normalizer = fit_normalizer(episodes, "limits")
    data = torch.from_numpy(normalizer.normalize(transitions(episodes))).reshape(-1, HORIZON, 4)
    spec = TrajectorySpec(obs_dim=2, act_dim=2, horizon=HORIZON)
    diffusion, _ = _train(_config(), data, spec, steps=400)
    mask = torch.zeros(HORIZON, spec.transition_dim, dtype=torch.bool)
    mask[0, spec.observation_slice] = True  # the start state, as during training
    inpaint = Inpainting(mask, data[torch.arange(N_SAMPLES) % len(data)])
    yield {"data": data, "spec": spec, "norm": normalizer, "model": diffusion, "inpaint": inpaint}
    torch.set_num_threads(threads)


def dynamics_residual(x: torch.Tensor, spec: TrajectorySpec, normalizer) -> float:
    """Mean |o_{t+1} - o_t - a_t| in env units: 0 on the data, large on noise."""
    env = normalizer.unnormalize(x)
    obs, act = spec.observations(env), spec.actions(env)
    return (obs[:, 1:] - obs[:, :-1] - act[:, :-1]).norm(dim=-1).mean().item()


def mode_fractions(x: torch.Tensor, spec: TrajectorySpec, normalizer) -> tuple[float, float, float]:
    """Fractions of plans ending in the upper mode, the lower mode, and near the midpoint y=0."""
    end_y = spec.observations(normalizer.unnormalize(x))[:, -1, 1]
    y_mode = two_mode_end_y(HORIZON)  # about 0.53
    up = (end_y > 0.5 * y_mode).float().mean().item()
    down = (end_y < -0.5 * y_mode).float().mean().item()
    mid = (end_y.abs() < 0.2 * y_mode).float().mean().item()
    return up, down, mid


def _sample(s, seed: int = 1, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return s["model"].sample(N_SAMPLES, inpaint=s["inpaint"], generator=gen, **kwargs).x


def test_samples_are_closer_to_the_data_than_noise(setup):
    spec, norm = setup["spec"], setup["norm"]
    samples = _sample(setup, sampler="ddpm")
    noise = torch.randn_like(samples)
    r_samples, r_noise = (
        dynamics_residual(samples, spec, norm),
        dynamics_residual(noise, spec, norm),
    )
    assert r_samples < 0.1 * r_noise, (
        f"dynamics residual |o_t+1 - o_t - a_t| of samples {r_samples:.4f} should be < 10% of "
        f"that of the initial noise {r_noise:.4f}"
    )


def test_two_modes_are_covered_and_not_averaged(setup):
    up, down, mid = mode_fractions(_sample(setup, sampler="ddpm"), setup["spec"], setup["norm"])
    assert up >= 0.2 and down >= 0.2, f"each mode needs >= 20% of samples: up {up}, down {down}"
    assert mid <= 0.1, f"at most 10% of samples may end near the midpoint y=0, got {mid}"


def test_inpainted_entries_equal_their_conditions_exactly(setup):
    inpaint = setup["inpaint"]
    for sampler, steps in (("ddpm", None), ("ddim", 5)):
        x = _sample(setup, sampler=sampler, steps=steps)
        mask = inpaint.mask.expand_as(x)
        assert torch.equal(x[mask], inpaint.values.expand_as(x)[mask]), sampler


def test_ddim_5_steps_stays_close_to_ddpm(setup):
    spec, norm = setup["spec"], setup["norm"]
    ddpm, ddim = _sample(setup, sampler="ddpm"), _sample(setup, sampler="ddim", steps=5)
    r_ddpm, r_ddim = dynamics_residual(ddpm, spec, norm), dynamics_residual(ddim, spec, norm)
    assert r_ddim < 2 * r_ddpm + 0.01, (
        f"DDIM-5 dynamics residual {r_ddim:.4f} should be within 2x (+0.01) of DDPM's {r_ddpm:.4f}"
    )
    up_ddpm, _, _ = mode_fractions(ddpm, spec, norm)
    up_ddim, down_ddim, mid_ddim = mode_fractions(ddim, spec, norm)
    assert abs(up_ddim - up_ddpm) <= 0.2, (
        f"upper-mode fraction DDIM-5 {up_ddim} vs DDPM {up_ddpm} must differ by <= 0.2"
    )
    assert min(up_ddim, down_ddim) >= 0.2 and mid_ddim <= 0.1, (up_ddim, down_ddim, mid_ddim)


def test_warm_start_at_low_noise_returns_close_to_the_plan(setup):
    plans = setup["data"][:N_SAMPLES]
    warm = _sample(setup, seed=2, sampler="ddim", warm_start=plans, warm_start_t=2)
    cold = _sample(setup, seed=2, sampler="ddim")
    d_warm, d_cold = (warm - plans).abs().mean().item(), (cold - plans).abs().mean().item()
    assert d_warm < 0.15 and d_warm < 0.5 * d_cold, (
        f"mean |warm - plan| (normalized units) {d_warm:.3f} should be < 0.15 and < half of a "
        f"cold start's {d_cold:.3f}"
    )


@pytest.mark.parametrize("prediction", ["x0", "epsilon", "v"])
def test_every_prediction_type_trains_without_nan(setup, prediction):
    diffusion, losses = _train(_config(prediction), setup["data"], setup["spec"], steps=40)
    assert all(torch.isfinite(torch.tensor(losses))), f"{prediction}: non-finite loss"
    assert sum(losses[-10:]) < sum(losses[:10]), f"{prediction}: loss did not decrease"
    x = diffusion.sample(8, sampler="ddim", steps=5, generator=torch.Generator().manual_seed(0)).x
    assert torch.isfinite(x).all(), f"{prediction}: non-finite samples"


def test_more_sampling_steps_than_training_steps_is_a_clear_error(setup):
    with pytest.raises(ValueError, match=r"sampling steps must be in 1\.\.20"):
        setup["model"].sample(2, sampler="ddim", steps=21)


# ----------------------------------------------------------------------------- transformer


def _transformer_config() -> Config:
    config = _config()
    config.model.type, config.model.dim, config.model.depth, config.model.heads = (
        "transformer",
        32,
        2,
        4,
    )
    return config


@pytest.fixture(scope="module")
def transformer(setup):
    """The same data and training budget as the U-Net of `setup`, with the transformer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    diffusion, losses = _train(_transformer_config(), setup["data"], setup["spec"], steps=400)
    yield {**setup, "model": diffusion, "losses": losses}
    torch.set_num_threads(threads)


def test_transformer_shapes_and_identity_start():
    from diffplan.transformer import TrajectoryTransformer

    net = TrajectoryTransformer(transition_dim=5, horizon=12, dim=16, depth=2, heads=4, cond_dim=1)
    x, t = torch.randn(3, 12, 5), torch.tensor([0, 5, 19])
    out = net(x, t, cond=torch.randn(3, 1), cond_mask=torch.tensor([True, False, True]))
    assert out.shape == (3, 12, 5)
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero: the output layer starts at 0
    with pytest.raises(ValueError, match="built for plans of 12 steps, got 8"):
        net(torch.randn(3, 8, 5), t)
    with pytest.raises(ValueError, match="divisible by heads"):
        TrajectoryTransformer(transition_dim=5, horizon=12, dim=18, heads=4)


def test_transformer_learns_the_two_modes_to_the_unets_bar(transformer):
    """The U-Net tests' bars, on the same data, steps and samples."""
    spec, norm = transformer["spec"], transformer["norm"]
    samples = _sample(transformer, sampler="ddpm")
    r_samples = dynamics_residual(samples, spec, norm)
    r_noise = dynamics_residual(torch.randn_like(samples), spec, norm)
    assert r_samples < 0.1 * r_noise, (r_samples, r_noise)
    up, down, mid = mode_fractions(samples, spec, norm)
    assert up >= 0.2 and down >= 0.2 and mid <= 0.1, (up, down, mid)
    x = _sample(transformer, sampler="ddim", steps=5)
    mask = transformer["inpaint"].mask.expand_as(x)
    assert torch.equal(x[mask], transformer["inpaint"].values.expand_as(x)[mask])


def test_low_temperature_draws_nearer_the_modes_and_one_changes_nothing(setup):
    """temperature < 1 scales the starting noise: samples spread less within each mode (less
    of the data's noise) and still cover both modes; temperature 1 is the plain sampler."""
    spec, norm = setup["spec"], setup["norm"]
    plain = _sample(setup, sampler="ddim", steps=5)
    assert torch.equal(plain, _sample(setup, sampler="ddim", steps=5, temperature=1.0))
    cool = _sample(setup, sampler="ddim", steps=5, temperature=0.3)

    def spread_within_modes(x):
        end_y = spec.observations(norm.unnormalize(x))[:, -1, 1]
        up, down = end_y[end_y > 0], end_y[end_y <= 0]
        return (up.std() + down.std()).item() / 2

    assert spread_within_modes(cool) < spread_within_modes(plain)
    up, down, mid = mode_fractions(cool, spec, norm)
    assert up >= 0.2 and down >= 0.2 and mid <= 0.1
