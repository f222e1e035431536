"""Subgoals round a keep-out disk that closes the short way: routes through the data's
positions (planners.RouteMap) and the wrapper that hands the planner one leg at a time."""

import numpy as np
import pytest

from guides import KeepInData, KeepOutDisk
from planners import RouteMap, SubgoalPlanner


def ring_support() -> KeepInData:
    """Positions visited along the border of the square [0, 4]^2: a ring-shaped corridor."""
    t = np.linspace(0.0, 4.0, 401)
    zeros, fours = np.zeros_like(t), np.full_like(t, 4.0)
    sides = [(t, zeros), (fours, t), (t, fours), (zeros, t)]
    points = np.concatenate([np.stack(side, 1) for side in sides])
    return KeepInData(points, radius=0.2, cell=0.05)


START, GOAL = np.array([0.0, 0.0]), np.array([4.0, 0.0])


def test_route_goes_the_long_way_round_a_disk_on_the_short_side():
    support = ring_support()
    open_map = RouteMap(support)
    assert len(open_map.route(START, GOAL)) < 100  # the bottom side, 4 units of 0.05 cells
    assert [g.tolist() for g in open_map.subgoals(START, GOAL)] == [GOAL.tolist()]

    blocked = RouteMap(support, [KeepOutDisk((2.0, 0.0), 0.3)], clearance=0.1)
    route = blocked.route(START, GOAL)
    assert route[:, 1].max() == pytest.approx(4.0, abs=0.15)  # over the top: 12 units
    legs = blocked.subgoals(START, GOAL)
    assert len(legs) == 2 and np.array_equal(legs[-1], GOAL)
    # The first leg ends on the far side, where going back through the disk is no shorter:
    # the free route from the start to it is as long as the leg.
    free = blocked.distances_from(START, avoid_regions=False)
    assert free[blocked.nearest_node(legs[0], avoid_regions=False)] > 5.0
    assert legs[0][1] > 2.0

    # Disks on both sides cut the goal off: no route, the planner keeps its goal.
    cut = RouteMap(support, [KeepOutDisk((2.0, 0.0), 0.3), KeepOutDisk((2.0, 4.0), 0.3)])
    assert cut.route(START, GOAL) is None
    assert [g.tolist() for g in cut.subgoals(START, GOAL)] == [GOAL.tolist()]
    with pytest.raises(ValueError, match="dims"):
        RouteMap(support, [KeepOutDisk((2.0, 0.0), 0.3, dims=[1, 2])])


class RecordingPlanner:
    position_dims = [0, 1]

    def __init__(self):
        self.goals, self.resets = [], []

    def reset(self, env_indices=None):
        self.resets.append(env_indices)

    def act(self, observation, goal, env_indices=None):
        self.goals.append(np.array(goal, dtype=float))
        return np.zeros((len(observation), 2))


def test_subgoal_planner_hands_over_one_leg_at_a_time():
    route_map = RouteMap(ring_support(), [KeepOutDisk((2.0, 0.0), 0.3)], clearance=0.1)
    inner = RecordingPlanner()
    planner = SubgoalPlanner(inner, route_map, switch_radius=0.5)
    leg = route_map.subgoals(START, GOAL)[0]
    # Two envs: env 0 must detour; env 1 (already past the disk) goes straight to its goal.
    obs = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    planner.act(obs, np.stack([GOAL, GOAL]))
    np.testing.assert_allclose(inner.goals[-1], [leg, GOAL])
    assert planner.legs_planned == [2, 1]
    # Env 0 arrives near the leg's end: it gets the goal and a fresh episode clock.
    obs[0, :2] = leg + 0.1
    planner.act(obs, np.stack([GOAL, GOAL]))
    np.testing.assert_allclose(inner.goals[-1], [GOAL, GOAL])
    assert inner.resets[-1] == [0]
    # A new episode plans its legs again; other attributes are the wrapped planner's.
    planner.reset([0])
    obs[0, :2] = START
    planner.act(obs, np.stack([GOAL, GOAL]))
    np.testing.assert_allclose(inner.goals[-1][0], leg)
    assert planner.position_dims == [0, 1]
    # A loop whose finished envs drop out passes the live slots: env 1 alone keeps its goal,
    # and the legs were copied, so changing the caller's goal array changes nothing planned.
    goal = GOAL.copy()
    planner.act(obs[1:], goal[None], env_indices=[1])
    goal[:] = 9.0
    np.testing.assert_allclose(inner.goals[-1], [GOAL])
    planner.act(obs[:1], GOAL[None], env_indices=[0])
    np.testing.assert_allclose(inner.goals[-1], [leg])
    # One observation (obs_dim,), and a task without a goal, pass through.
    planner.reset()
    planner.act(obs[0], GOAL)
    np.testing.assert_allclose(inner.goals[-1], leg)
    planner.act(obs, None)
    assert inner.goals[-1].shape == ()  # None, as given
    for bad, match in (({"switch_radius": 0.0}, "switch_radius"), ({"tolerance": 0}, "tolerance")):
        with pytest.raises(ValueError, match=match):
            SubgoalPlanner(inner, route_map, **bad)
    with pytest.raises(ValueError, match="route map's dims"):
        planner.act(obs, np.zeros((2, 3)))
