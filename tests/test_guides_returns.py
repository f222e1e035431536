"""Return conditioning (Decision Diffuser) on the toy two-mode data: a return-conditioned model
from the real trainer must give high-return plans (going up) for a high target and low-return
plans (going down) for a low one."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffplan.config import config_from_dict
from diffplan.guidance import GuideContext
from diffplan.trainer import train
from guides import ReturnConditioning, ReturnTargetWarning
from planners import MPCPlanner


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["train"].update(steps=400, save_every=1000, log_every=100)
    raw["data"]["synthetic_episodes"] = 128
    raw["model"]["return_conditioning"] = True
    out = tmp_path_factory.mktemp("returns")
    return train(config_from_dict(raw), out, device="cpu", progress=False)


def plan_returns(checkpoint, guide, n_envs=1):
    planner = MPCPlanner.from_checkpoint(
        str(checkpoint), guide=guide, n_candidates=32, sampling_steps=10, seed=1
    )
    plan = planner.plan(np.zeros((n_envs, 2), np.float32))
    # The toy reward is the y-step (actions[:, 1]): a plan's return is its summed y-actions.
    return plan.candidates[..., 1].sum(-1), planner  # (E, N)


def test_high_and_low_targets_give_different_returns(checkpoint):
    high, planner = plan_returns(checkpoint, ReturnConditioning(0.9))
    low, _ = plan_returns(checkpoint, ReturnConditioning(0.1))
    # Measured: mean plan return +0.52 (high) vs -0.55 (low); every plan in its mode.
    assert high.mean() - low.mean() > 0.6
    assert (high > 0).float().mean() > 0.9 and (low < 0).float().mean() > 0.9
    # The same target in return units gives the same plans (the planner knows the range).
    lo, hi = planner.return_range
    in_units, _ = plan_returns(
        checkpoint, ReturnConditioning(lo + 0.9 * (hi - lo), normalized=False)
    )
    assert torch.allclose(in_units, high, atol=1e-4)


def test_one_target_per_environment(checkpoint):
    returns, _ = plan_returns(checkpoint, ReturnConditioning([0.9, 0.1], weight=1.0), n_envs=2)
    assert (returns[0] > 0).all() and (returns[1] < 0).all()


def test_targets_outside_the_data_warn(checkpoint):
    with pytest.warns(ReturnTargetWarning, match="outside the training data's return range"):
        plan_returns(checkpoint, ReturnConditioning(1.5))
    _, planner = plan_returns(checkpoint, ReturnConditioning(0.5))
    hi = planner.return_range[1]
    with pytest.warns(ReturnTargetWarning, match="return range"):
        plan_returns(checkpoint, ReturnConditioning(hi + 1.0, normalized=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReturnTargetWarning)
        plan_returns(checkpoint, ReturnConditioning(1.0))  # the best return seen: no warning


def test_bad_targets_are_errors():
    from diffplan.normalizer import Normalizer
    from diffplan.spec import TrajectorySpec

    with pytest.raises(ValueError, match="finite"):
        ReturnConditioning(float("nan"))
    spec = TrajectorySpec(obs_dim=2, act_dim=2, horizon=8)
    ctx = GuideContext(spec=spec, normalizer=Normalizer.fit("limits", torch.randn(10, 4)))
    with pytest.raises(ValueError, match="return range"):
        ReturnConditioning(100.0, normalized=False).model_inputs(ctx)
    with pytest.raises(ValueError, match="2 targets, planning for 1"):
        ReturnConditioning([0.1, 0.2]).model_inputs(ctx)
    inputs = ReturnConditioning(0.9, weight=1.5).model_inputs(ctx)
    assert inputs.cond.shape == (1, 1) and inputs.weight == 1.5
