"""examples/why_diffusion.py on a small budget: the diffusion model's plans from the start go
round the obstacle on both sides; the mean-regression BC policy drives into it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "why_diffusion", Path(__file__).parents[1] / "examples" / "why_diffusion.py"
)
why = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("why_diffusion", why)  # dataclasses look their module up
_SPEC.loader.exec_module(why)


@pytest.fixture(scope="module")
def data():
    return why.make_dataset(seed=0)


def test_dataset_is_two_clean_modes_that_end_at_the_goal(data):
    again = why.make_dataset(seed=0)
    assert np.array_equal(data.observations, again.observations)  # seeded
    shares = why.class_shares([ep.observations for ep in data])
    assert shares["above"] == shares["below"] == 0.5 and shares["through"] == 0
    ends = np.stack([ep.observations[-1] for ep in data])
    assert (np.linalg.norm(ends - np.asarray(why.GOAL), axis=1) < why.GOAL_TOLERANCE).all()
    # The dynamics hold in the data: next position = position + action.
    ep = data[0]
    assert np.allclose(ep.observations[1:], ep.observations[:-1] + ep.actions[:-1], atol=1e-5)


def test_classify_path_on_hand_made_paths():
    x = np.linspace(0.0, 2.0, 21)
    assert why.classify_path(np.stack([x, 0.6 * np.ones_like(x)], 1)) == "above"
    assert why.classify_path(np.stack([x, -0.6 * np.ones_like(x)], 1)) == "below"
    assert why.classify_path(np.stack([x, np.zeros_like(x)], 1)) == "through"
    # Two points either side of the disk: the segment between them crosses it.
    assert why.classify_path(np.array([[0.5, 0.0], [1.5, 0.0]])) == "through"
    assert why.classify_path(np.array([[0.0, 0.0], [0.3, 0.0]])) == "short"


def test_diffusion_samples_both_ways_and_bc_averages_them_into_the_obstacle(data, tmp_path):
    ckpt = why.train_diffusion(data, tmp_path, steps=TRAIN_STEPS, dim=16, horizon=HORIZON)
    planner = why.make_planner(ckpt, n_candidates=64, seed=0)
    samples = why.class_shares(why.sample_plans(planner))
    # Bimodal: a substantial share on each side, few straight through the middle.
    assert samples["above"] > 0.2 and samples["below"] > 0.2, samples
    assert samples["through"] < 0.25, samples

    bc = why.train_bc(data, steps=3000, seed=0)
    paths = why.rollout(bc.act, why.eval_starts(40, seed=1))
    m = why.rollout_metrics(paths)
    # The mean of "above" and "below" is "straight ahead": BC enters the disk far more often
    # than the diffusion model's plans do, and fails the task often.
    assert m["entered_obstacle"] > 0.3 and m["entered_obstacle"] > samples["through"] + 0.2, m
    assert m["success"] < 0.7, m


TRAIN_STEPS, HORIZON = 1200, 16
