"""Hindsight reward relabelling (diffplan/data/relabel.py) and the windows' return horizon."""

import math

import numpy as np
import pytest

from diffplan.config import config_from_dict
from diffplan.data import Episodes, TrajectoryWindows, fit_normalizer, returns_to_go
from diffplan.data.relabel import goal_rewards, next_positions, relabel_rewards
from diffplan.errors import ConfigError
from diffplan.spec import TrajectorySpec
from diffplan.tasks.pointmaze.maze import GOAL_CELLS, MazeGrid


def _episodes(terminated_second: bool = False) -> Episodes:
    """Two episodes on a line: x = 0, 1, 2 (goal g0) then x = 3, 4 (goal g1); y = 0."""
    xs = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    obs = np.stack([xs, np.zeros(5), np.ones(5), np.zeros(5)], axis=1).astype(np.float32)
    goals = np.array([[2.0, 0.0]] * 3 + [[4.0, 1.0]] * 2, np.float32)
    # stored dense rewards w.r.t. each episode's own goal, on the position after the step
    nxt = np.array([1.0, 2.0, 2.0, 4.0, 4.0])
    stored = np.exp(-np.hypot(nxt - goals[:, 0], goals[:, 1])).astype(np.float32)
    terms = np.zeros(5, bool)
    terms[-1] = terminated_second
    return Episodes(
        observations=obs,
        actions=np.zeros((5, 2), np.float32),
        rewards=stored,
        lengths=[3, 2],
        terminations=terms,
        goals=goals,
    )


def test_next_positions_and_goal_rewards():
    eps = _episodes()
    np.testing.assert_array_equal(next_positions(eps)[:, 0], [1, 2, 2, 4, 4])
    r = goal_rewards(np.array([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4]]), [0.0, 0.0], "dense")
    np.testing.assert_allclose(r, [1.0, math.exp(-5.0), math.exp(-0.5)])
    s = goal_rewards(np.array([[0.0, 0.45], [0.0, 0.46]]), [0.0, 0.0], "sparse")
    np.testing.assert_array_equal(s, [1.0, 0.0])
    with pytest.raises(ConfigError, match="dense or sparse"):
        goal_rewards(np.zeros((1, 2)), [0.0, 0.0], "shaped")


def test_relabel_fixed_goal_and_own_goals():
    eps = _episodes()
    out = relabel_rewards(eps, [0.0, 0.0])
    np.testing.assert_allclose(out.rewards, np.exp(-np.array([1.0, 2.0, 2.0, 4.0, 4.0])), 1e-6)
    assert out.metadata["relabel"] == {"goal": [0.0, 0.0], "reward_type": "dense"}
    assert np.shares_memory(out.observations, eps.observations)  # rewards only are new
    # each step's own goal reproduces the stored rewards (exactly here: the last steps of these
    # hand-made episodes do not move)
    np.testing.assert_allclose(relabel_rewards(eps, eps.goals).rewards, eps.rewards, 1e-6)
    sparse = relabel_rewards(eps, [2.0, 0.3], "sparse")
    np.testing.assert_array_equal(sparse.rewards, [0, 1, 1, 0, 0])
    with pytest.raises(ConfigError, match="shape"):
        relabel_rewards(eps, [0.0, 0.0, 0.0])


def test_return_horizon_exact_values():
    eps = relabel_rewards(_episodes(), [0.0, 0.0])
    r = eps.rewards.astype(np.float64)  # float32 storage: exp(-[1, 2, 2, 4, 4]) to 1e-7
    np.testing.assert_allclose(r, np.exp(-np.array([1.0, 2.0, 2.0, 4.0, 4.0])), rtol=1e-6)
    g = 0.5
    # to the episode's end (the default): unchanged behaviour
    full = returns_to_go(eps, g)
    np.testing.assert_allclose(full[:3], [r[0] + g * r[1] + g**2 * r[2], r[1] + g * r[2], r[2]])
    # two steps: the last reward repeats past the end of a truncated episode
    h2 = returns_to_go(eps, g, horizon=2)
    want = [r[0] + g * r[1], r[1] + g * r[2], r[2] + g * r[2], r[3] + g * r[4], r[4] + g * r[4]]
    np.testing.assert_allclose(h2, want, rtol=1e-12)
    # horizon 1 = the reward itself; an episode ended by termination pads with zeros
    np.testing.assert_allclose(returns_to_go(eps, g, horizon=1), r, rtol=1e-12)
    term = relabel_rewards(_episodes(terminated_second=True), [0.0, 0.0])
    assert term.terminations[-1]
    h3 = returns_to_go(term, g, termination_penalty=-1.0, horizon=3)
    np.testing.assert_allclose(h3[3:], [r[3] + g * (r[4] - 1.0), r[4] - 1.0], rtol=1e-12)
    with pytest.raises(ConfigError, match=">= 1"):
        returns_to_go(eps, g, horizon=0)


def test_windows_use_return_horizon():
    eps = relabel_rewards(_episodes(), [0.0, 0.0])
    spec = TrajectorySpec(4, 2, horizon=2, stride=1)
    norm = fit_normalizer(eps, "limits")
    win = TrajectoryWindows(eps, spec, norm, discount=1.0, return_horizon=2)
    r = eps.rewards.astype(np.float64)
    got = win.batch(np.arange(len(win)))["returns"][:, 0].numpy()
    np.testing.assert_allclose(got, [r[0] + r[1], r[1] + r[2], 2 * r[2], r[3] + r[4], 2 * r[4]])
    assert win.return_range == pytest.approx((2 * r[4], r[0] + r[1]))


def test_config_fields_and_goal_cells():
    cfg = config_from_dict(
        {"data": {"reward_goal": [-1, 1], "reward_type": "dense", "return_horizon": 125}}
    )
    assert cfg.data.reward_goal == [-1.0, 1.0] and cfg.data.return_horizon == 125
    assert config_from_dict({}).data.reward_goal is None
    # the goals written in configs/b2-*.yaml are the B1 goal cells' centres
    for maze, xy in (("umaze", [-1.0, 1.0]), ("medium", [2.5, -2.5])):
        np.testing.assert_allclose(MazeGrid.from_name(maze).cell_to_xy(GOAL_CELLS[maze]), xy)
