"""Value guidance end to end on the toy two-mode data (paths go up or down; going up earns the
return): train a tiny diffusion model with the real trainer, its value net with `train_value`,
and check that gradients and ranking raise the value and the true return of plans."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffplan.checkpoint import load_checkpoint, save_checkpoint
from diffplan.config import config_from_dict
from diffplan.errors import CheckpointError
from diffplan.guidance import Compose, GuideContext
from diffplan.trainer import train
from diffplan.value_training import load_value, train_value
from guides import StartState, ValueGuide, ValueRanking
from planners import MPCPlanner

N = 64  # plans per comparison


def tiny_config(**data):
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["train"].update(steps=400, save_every=1000, log_every=100)
    raw["data"].update(synthetic_episodes=128, **data)
    raw["value"] = {"dim": 16, "dim_mults": [1, 2], "steps": 300, "batch_size": 64, "lr": 1e-3}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("value")
    ckpt = train(tiny_config(), out / "run", device="cpu", progress=False)
    value_path = train_value(ckpt, out / "value.pt", seed=0, progress=False)
    loaded = load_checkpoint(ckpt)
    return loaded, load_value(value_path, loaded), out, value_path


def sample(loaded, guide, seed=1):
    spec = loaded.spec
    ctx = GuideContext(
        spec=spec, normalizer=loaded.normalizer, n_candidates=N, observation=torch.zeros(1, 2)
    )
    full = Compose([StartState(), guide]) if guide is not None else StartState()
    gen = torch.Generator().manual_seed(seed)
    x = loaded.diffusion.sample(N, guide=full, ctx=ctx, steps=10, generator=gen).x
    return loaded.normalizer.unnormalize(x), ctx


def true_return(plans):
    # The toy reward is the y-step (actions[:, 1]): the plan's return is its summed y-actions.
    return plans[..., 1].sum(-1)


def test_value_checkpoint_is_one_safe_file(trained):
    _, value, _, path = trained
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "diffplan-value" and len(raw["fingerprint"]) == 16
    lo, hi = raw["return_range"]
    assert lo < 0 < hi  # down paths lose, up paths earn
    assert value.return_range == (lo, hi)
    assert not any(p.requires_grad for p in value.parameters())


def test_value_gradient_raises_value_and_true_return(trained):
    loaded, value, _, _ = trained
    plain, ctx = sample(loaded, None)
    default, _ = sample(loaded, ValueGuide(value))  # Diffuser's scale 0.1, in return units
    guided, _ = sample(loaded, ValueGuide(value, scale=1.0))
    ranker = ValueRanking(value)
    v_plain, v_default, v_guided = (ranker.score(p, ctx) for p in (plain, default, guided))
    r_plain, r_default, r_guided = (true_return(p) for p in (plain, default, guided))
    # Same model and seeds. Measured (mean over 64 plans; return range [-1.75, 1.73]):
    # value 0.39 -> 0.80 (scale 0.1) -> 1.46 (scale 1); true return 0.14 -> 0.26 -> 0.46;
    # share of plans going up 63% -> 75% -> 95%.
    assert v_default.mean() > v_plain.mean() + 0.15
    assert r_default.mean() > r_plain.mean() + 0.05
    assert v_guided.mean() > v_plain.mean() + 0.5
    assert r_guided.mean() > r_plain.mean() + 0.2
    assert (r_guided > 0).float().mean() > (r_plain > 0).float().mean() + 0.2
    # The value net agrees with the true return on finished plans.
    assert np.corrcoef(v_plain.numpy(), r_plain.numpy())[0, 1] > 0.8


def test_value_ranking_picks_the_high_return_mode(trained):
    loaded, value, _, _ = trained
    planner = MPCPlanner(
        loaded.diffusion,
        loaded.normalizer,
        loaded.spec,
        guide=ValueRanking(value),
        n_candidates=8,
        sampling_steps=10,
    )
    plan = planner.plan(np.zeros((6, 2), np.float32))
    assert torch.equal(plan.best_index, plan.scores.argmax(1))
    assert (true_return(plan.best) > 0).all()  # every env goes up
    assert torch.allclose(plan.diagnostics["value"], plan.scores.max(1).values)


def test_no_op_settings_leave_sampling_unchanged(trained):
    loaded, value, _, _ = trained
    plain, _ = sample(loaded, None)
    for guide in (ValueGuide(value, scale=0.0), ValueGuide(value, scale=1.0, t_stopgrad=1000)):
        same, _ = sample(loaded, guide)
        assert torch.equal(same, plain)


def test_value_from_another_model_is_rejected(trained, tmp_path):
    loaded, _, out, path = trained
    # Same data and layout, another schedule -> another fingerprint.
    raw = {**loaded.raw, "config": loaded.config.to_dict()}
    raw["config"]["diffusion"]["n_timesteps"] = 10
    other = load_checkpoint(save_checkpoint(raw, tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="another diffusion model"):
        load_value(path, other)
    # A diffusion checkpoint is not a value checkpoint.
    with pytest.raises(CheckpointError, match="not a diffplan value checkpoint"):
        load_value(out / "run" / "last.pt", loaded)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable value checkpoint"):
        load_value(tmp_path / "junk.pt", loaded)
