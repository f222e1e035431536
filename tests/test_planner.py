"""MPC planner and inpainting guides on a small (untrained) model: shapes, exact
conditioning, errors, the replanning schedule, warm starts and the PD tracker."""

import math

import numpy as np
import pytest
import torch

from diffplan.diffusion import Diffusion
from diffplan.networks import TemporalUnet
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec
from guides import Goal, Waypoints
from planners import MPCPlanner, PDTracker

SPEC = TrajectorySpec(obs_dim=4, act_dim=2, horizon=16, stride=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    diffusion = Diffusion(TemporalUnet(SPEC.transition_dim, 16, (1, 2)), SPEC, n_timesteps=10)
    rng = np.random.default_rng(0)
    data = np.concatenate(
        [rng.uniform(-1, 1, (2000, 2)), rng.uniform(-2, 2, (2000, 2)), rng.normal(0, 1, (2000, 2))],
        axis=1,
    ).astype(np.float32)
    return diffusion, Normalizer.fit("limits", data)


def make_planner(model, **settings):
    diffusion, normalizer = model
    settings.setdefault("n_candidates", 4)
    settings.setdefault("sampling_steps", 3)
    settings.setdefault("position_dims", [0, 1])
    settings.setdefault("velocity_dims", [2, 3])
    return MPCPlanner(diffusion, normalizer, SPEC, **settings)


def test_action_shapes_and_bounds_single_and_batch(model):
    planner = make_planner(model)
    single = planner.act(np.zeros(4))
    assert single.shape == (2,)
    planner.reset()
    batch = planner.act(np.zeros((3, 4)))
    assert batch.shape == (3, 2)
    # The data's actions lie in [-1, 1]; a limits normalizer with clipped x0 keeps them there.
    assert np.all(np.abs(batch) <= 1.0 + 1e-5)
    assert planner.last_plan.candidates.shape == (3, 4, SPEC.horizon, SPEC.transition_dim)


def test_start_and_goal_inpainted_exactly(model):
    planner = make_planner(model, guide=[Goal(zero_velocity=True)])
    obs = np.array([[0.5, -0.5, 0.1, 0.2], [-1.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    goal = np.array([[1.5, 1.5], [-1.5, 0.25]], dtype=np.float32)
    plan = planner.plan(obs, goal)
    observations = SPEC.observations(plan.candidates)  # (E, N, H, obs_dim)
    assert torch.equal(observations[:, :, 0], torch.as_tensor(obs)[:, None].expand(-1, 4, -1))
    assert torch.equal(observations[:, :, -1, :2], torch.as_tensor(goal)[:, None].expand(-1, 4, -1))
    assert torch.all(observations[:, :, -1, 2:] == 0)
    # The goal's score ranks candidates: the chosen one has the highest score.
    assert torch.equal(plan.best_index, plan.scores.argmax(dim=1))


def test_waypoints_and_conflicts(model):
    planner = make_planner(model, guide=[Waypoints([5, 10], [[0.1, 0.2], [0.3, 0.4]])])
    plan = planner.plan(np.zeros(4))
    assert torch.allclose(
        SPEC.observations(plan.best)[0, [5, 10], :2], torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    )
    clash = make_planner(model, guide=[Goal([1.0, 1.0], step=5), Waypoints([5], [[0.0, 0.0]])])
    with pytest.raises(ValueError, match="same plan entry"):
        clash.plan(np.zeros(4))


def test_bad_inputs_are_clear_errors(model):
    planner = make_planner(model, guide=[Goal()])
    with pytest.raises(ValueError, match="obs_dim=4"):
        planner.act(np.zeros(3), goal=[0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        planner.act(np.array([0.0, np.nan, 0.0, 0.0]), goal=[0.0, 0.0])
    with pytest.raises(ValueError, match="outside the range of the training data"):
        planner.act(np.zeros(4), goal=[10.0, 0.0])
    with pytest.raises(ValueError, match="no position"):
        planner.act(np.zeros(4))


def test_replans_on_schedule_and_after_reset(model, monkeypatch):
    planner = make_planner(model, replan_every=4)
    calls = []
    original = planner.plan
    monkeypatch.setattr(planner, "plan", lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(8):
        planner.act(np.zeros((2, 4)))
    assert len(calls) == 2  # steps 0 and 4
    planner.reset([1])
    planner.act(np.zeros((2, 4)))
    assert len(calls) == 3
    open_loop = make_planner(model, replan_every=0)
    # Diffused actions step through the one plan: the k-th action is the plan's k-th action.
    plan_actions = None
    for k in range(5):
        action = open_loop.act(np.zeros(4))
        if plan_actions is None:
            plan_actions = SPEC.actions(open_loop.last_plan.best)[0].numpy()
        np.testing.assert_allclose(action, plan_actions[k], atol=1e-6)


def test_warm_start_continues_from_the_shifted_previous_plan(model, monkeypatch):
    planner = make_planner(model, warm_start=True, warm_start_t=2, replan_every=2)
    diffusion = planner.diffusion
    seen = []
    original = diffusion.sample

    def spy(*args, **kwargs):
        seen.append((kwargs.get("warm_start"), kwargs.get("warm_start_t")))
        return original(*args, **kwargs)

    monkeypatch.setattr(diffusion, "sample", spy)
    planner.act(np.zeros((2, 4)))
    first = planner.last_plan.best_normalized.clone()  # (E, H, D)
    planner.act(np.zeros((2, 4)))
    planner.act(np.zeros((2, 4)))  # replans here, two env steps after the first plan
    assert seen[0][0] is None  # nothing to continue from on the first call
    warm, level = seen[1]
    assert level == 2
    shifted = torch.cat([first[:, 2:], first[:, -1:].expand(-1, 2, -1)], dim=1)
    assert torch.equal(warm, shifted.repeat_interleave(4, dim=0))
    planner.reset()
    planner.act(np.zeros((2, 4)))
    assert seen[2][0] is None  # a new episode starts cold


def test_strided_warm_start_is_moved_by_part_of_a_planned_step(model, monkeypatch):
    """Two env steps into a stride-4 plan, the warm start lies half-way between planned steps
    (not the unshifted plan, which would restart every new plan behind the state)."""
    spec = TrajectorySpec(obs_dim=4, act_dim=2, horizon=16, stride=4)
    diffusion, normalizer = model
    planner = MPCPlanner(
        Diffusion(diffusion.model, spec, n_timesteps=10), normalizer, spec, n_candidates=2,
        sampling_steps=3, warm_start=True, warm_start_t=2, replan_every=2, action_mode="track",
        position_dims=[0, 1], velocity_dims=[2, 3],
    )  # fmt: skip
    seen = []
    original = planner.diffusion.sample
    monkeypatch.setattr(
        planner.diffusion, "sample",
        lambda *a, **k: seen.append(k.get("warm_start")) or original(*a, **k),
    )  # fmt: skip
    planner.act(np.zeros(4))
    first = planner.last_plan.best_normalized[0]  # (H, D)
    planner.act(np.zeros(4))
    planner.act(np.zeros(4))  # replans two env steps (half a planned step) later
    middle = 0.5 * (first[:-1] + first[1:])
    expected = torch.cat([middle, first[-1:]])  # past the end: the last planned step held
    torch.testing.assert_close(seen[1][0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen[1][1], expected, rtol=0, atol=1e-6)


def test_pd_tracker_interpolates_and_holds():
    tracker = PDTracker(
        [0, 1], [2, 3], kp=2.0, kd=0.5, lookahead=1, action_low=None, action_high=None
    )
    plan = torch.zeros(1, 4, 4)
    plan[0, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # x advances 1 per planned step
    plan[0, :, 2] = 1.0  # vx
    obs = torch.zeros(1, 4)
    # stride 2, offset 0: target is halfway between planned steps 0 and 1 -> x = 0.5
    action = tracker(plan, obs, torch.tensor([0]), stride=2)
    assert torch.allclose(action, torch.tensor([[2.0 * 0.5 + 0.5 * 1.0, 0.0]]))
    # Past the end: hold the last position, at rest.
    action = tracker(plan, obs, torch.tensor([10]), stride=2)
    assert torch.allclose(action, torch.tensor([[2.0 * 3.0, 0.0]]))


def _track_arc(tracker: PDTracker, action_filter=None) -> tuple[float, float, torch.Tensor]:
    """Track a strided plan along an arc just outside a keep-out disk of radius 0.5 (centre 0)
    on a point mass: (closest distance to the centre, final distance to the arc's end, plan)."""
    stride, horizon, dt = 4, 12, 0.1
    angles = torch.linspace(math.pi, 0.0, horizon)
    pos = 0.65 * torch.stack([angles.cos(), angles.sin()], -1)
    vel = torch.zeros_like(pos)
    vel[:-1] = (pos[1:] - pos[:-1]) / (stride * dt)
    plan = torch.cat([pos, vel], -1)[None]
    p, v, closest = pos[0].clone(), vel[0].clone(), math.inf
    for k in range((horizon - 1) * stride + 10):
        state = torch.cat([p, v])[None]
        a = tracker(plan, state, torch.tensor([k]), stride)
        a = (a if action_filter is None else action_filter(state, a))[0]
        v = v + dt * a  # semi-implicit Euler point mass
        p = p + dt * v
        closest = min(closest, p.norm().item())
    return closest, (p - pos[-1]).norm().item(), plan


def test_far_lookahead_cuts_the_bend_unless_it_shortens_there():
    """Aiming 16 env steps ahead drives the chord of the arc, into the disk the plan goes
    round; with a bend tolerance the lookahead shortens in the bend and the path stays out."""
    far = PDTracker([0, 1], [2, 3], lookahead=16, action_low=None, action_high=None)
    closest, _, _ = _track_arc(far)
    assert closest < 0.5
    bend_aware = PDTracker(
        [0, 1], [2, 3], lookahead=16, bend_tolerance=0.05, action_low=None, action_high=None
    )
    closest, miss, _ = _track_arc(bend_aware)
    assert closest > 0.5 and miss < 0.1
    # On a straight plan nothing bends: the full lookahead is kept.
    line = torch.zeros(1, 8, 4)
    line[0, :, 0] = torch.arange(8.0)
    ahead = bend_aware.steps_ahead(line, torch.tensor([0]), 4, torch.zeros(1, 2))
    assert ahead.item() == 16
    with pytest.raises(ValueError, match="lookahead"):
        PDTracker(lookahead=0)


def test_tracked_path_around_a_disk_stays_out():
    """A strided plan that goes around a keep-out disk (its states and the segments between
    them outside, as the segment-aware cost asks) is followed by the PD tracker (default
    gains) on a point mass without entering the disk."""
    from guides import KeepOutDisk

    tracker = PDTracker([0, 1], [2, 3], action_low=None, action_high=None)
    closest, miss, plan = _track_arc(tracker)
    assert KeepOutDisk((0.0, 0.0), 0.5)(plan, plan).item() == 0.0
    assert closest > 0.5, f"the tracked path came {closest:.3f} from the centre (r 0.5)"
    assert miss < 0.1  # and it arrived


def test_braking_filter_keeps_a_far_lookahead_out_of_the_disk():
    """The 16-step lookahead cuts through the disk the plan goes round; with the braking
    filter (the same disk, the toy's dynamics: dv = dt * a) the ball stays out and arrives."""
    from guides import KeepOutDisk
    from planners import KeepOutBrake

    def far():
        return PDTracker([0, 1], [2, 3], lookahead=16, action_low=-5.0, action_high=5.0)

    closest, _, _ = _track_arc(far())
    assert closest < 0.5
    brake = KeepOutBrake([KeepOutDisk((0.0, 0.0), 0.5)], accel=1.0, dt=0.1, max_action=5.0,
                         position_dims=[0, 1], velocity_dims=[2, 3])  # fmt: skip
    closest, miss, _ = _track_arc(far(), brake)
    assert closest > 0.5 and miss < 0.1
    # Far from the disk, or moving away from it, the action passes unchanged.
    state = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.6, 0.0, 0.5, 0.0]])
    action = torch.tensor([[-1.0, 0.5], [-0.5, 2.0]])
    torch.testing.assert_close(brake(state, action), action)
    with pytest.raises(ValueError, match="brake"):
        KeepOutBrake([], accel=1.0, dt=0.1, brake=0.0)


def test_shield_keeps_the_ball_out_where_the_plan_goes_round():
    """The 16-step lookahead cuts into the disk; with the shield the ball stays out and still
    arrives. Away from the disk, or moving away from it, actions pass unchanged."""
    from guides import KeepOutDisk
    from planners import KeepOutShield

    shield = KeepOutShield([KeepOutDisk((0.0, 0.0), 0.5)], accel=1.0, dt=0.1, max_action=5.0,
                           margin=0.0, position_dims=[0, 1], velocity_dims=[2, 3])  # fmt: skip
    far = PDTracker([0, 1], [2, 3], lookahead=16, action_low=-5.0, action_high=5.0)
    closest, miss, _ = _track_arc(far, shield)
    assert closest >= 0.5 - 1e-6 and miss < 0.1
    assert shield.interventions > 0
    state = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.6, 0.0, 0.5, 0.0]])
    action = torch.tensor([[-1.0, 0.5], [-0.5, 2.0]])
    torch.testing.assert_close(shield(state, action), action)
    torch.testing.assert_close(shield(state[0], action[0]), action[0])  # one env, (obs_dim,)
    # A ball inside the margin may not get closer; one inside the disk is let out its way.
    near = KeepOutShield([KeepOutDisk((0.0, 0.0), 0.5)], accel=1.0, dt=0.1, max_action=5.0,
                         margin=0.2, position_dims=[0, 1], velocity_dims=[2, 3])  # fmt: skip
    in_margin = torch.tensor([[0.6, 0.0, 0.0, 0.0]])
    assert near(in_margin, torch.tensor([[-5.0, 0.0]]))[0, 0] > -0.5
    inside = torch.tensor([[0.2, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(near(inside, action[:1]), action[:1])
    for bad, match in (
        ({"brake": 0.0}, "brake"),
        ({"grid": 1}, "grid"),
        ({"max_speed": 0}, "max_speed"),
    ):
        with pytest.raises(ValueError, match=match):
            KeepOutShield([], accel=1.0, dt=0.1, **bad)
    with pytest.raises(ValueError, match="dims"):
        KeepOutShield([KeepOutDisk((0.0, 0.0), 0.5)], accel=1.0, dt=0.1, position_dims=[2, 3],
                      velocity_dims=[0, 1])(state, action)  # fmt: skip


def test_shield_holds_along_a_wall_in_pointmaze():
    """B3's block disk closes Medium's 1-wide top corridor. A ball driven down-right past the
    corridor's mouth hits the corridor floor and slides along it into the disk; the braking
    filter, which brakes along the disk's normal (mostly into the floor), lets it in, and the
    shield, which also simulates the ball held on an axis, keeps it out (real MuJoCo env)."""
    from diffplan.tasks.pointmaze.envs import make_eval_env
    from guides import KeepOutDisk
    from planners import KeepOutBrake, KeepOutShield

    env = make_eval_env("medium")
    disk = KeepOutDisk((-0.5, 0.5), 0.5)
    dims = {"position_dims": [0, 1], "velocity_dims": [2, 3]}

    def closest(action_filter) -> float:
        env.reset(seed=0)
        point = env.unwrapped.point_env
        point.set_state(np.array([-1.5, 1.3]), np.zeros(2))
        obs, distance = np.concatenate([point.data.qpos, point.data.qvel]), math.inf
        for _ in range(150):
            action = np.clip(10.0 * (np.array([0.0, -0.3]) - obs[:2]) - 0.5 * obs[2:], -1, 1)
            if action_filter is not None:
                state = torch.as_tensor(obs[None], dtype=torch.float32)
                action = action_filter(state, torch.as_tensor(action[None]).float())[0].numpy()
            obs = env.step(action)[0]["observation"]
            distance = min(distance, float(np.hypot(obs[0] + 0.5, obs[1] - 0.5)))
        return distance

    try:
        assert closest(None) < 0.3  # straight in, along the floor
        assert closest(KeepOutBrake([disk], accel=23.4, dt=0.01, **dims)) < 0.45
        shield = KeepOutShield([disk], accel=23.4, dt=0.01, max_speed=5.0, **dims)
        assert closest(shield) >= 0.5
    finally:
        env.close()


def test_strided_plans_need_tracking_for_open_loop(model):
    diffusion, normalizer = model
    strided = TrajectorySpec(obs_dim=4, act_dim=2, horizon=16, stride=4)
    with pytest.raises(ValueError, match="track"):
        MPCPlanner(diffusion, normalizer, strided, replan_every=0)


def test_goal_first_plan_arrival_shrinks_the_horizon_and_holds_the_goal(model):
    planner = make_planner(model, guide=[Goal(zero_velocity=True, arrival="first-plan")],
                           replan_every=3)  # fmt: skip
    goal = np.array([1.0, -1.0], dtype=np.float32)
    for step in range(7):
        planner.act(np.zeros(4), goal=goal)
        observations = SPEC.observations(planner.last_plan.best[0])
        if step in (0, 3, 6):  # a new plan: it arrives at planned step H-1-step and stays
            arrive = SPEC.horizon - 1 - step
            assert torch.all(observations[arrive:, :2] == torch.as_tensor(goal)), step
            assert torch.all(observations[arrive:, 2:] == 0), step
            assert not torch.all(observations[arrive - 1, :2] == torch.as_tensor(goal)), step


def test_goal_is_held_once_the_ball_is_there(model):
    """Goal(hold_within=r): a ball within r of the goal plans to stay from its next step on;
    farther away the first plan's arrival time still decides where the goal is held."""
    goal = np.array([1.0, -1.0], dtype=np.float32)
    guide = Goal(zero_velocity=True, arrival="first-plan", hold_within=0.3)
    planner = make_planner(model, guide=[guide], replan_every=1)
    near = np.array([[0.9, -0.95, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    planner.act(near, goal=goal)
    observations = SPEC.observations(planner.last_plan.best)  # (2, H, 4)
    assert torch.all(observations[0, 1:, :2] == torch.as_tensor(goal))
    assert torch.all(observations[0, 1:, 2:] == 0)
    assert not torch.all(observations[1, -2, :2] == torch.as_tensor(goal))  # arrives at H-1
    assert torch.all(observations[1, -1, :2] == torch.as_tensor(goal))
    with pytest.raises(ValueError, match="hold_within"):
        Goal(hold_within=0.0)


def test_a_start_state_just_outside_the_data_is_planned_from(model):
    planner = make_planner(model)
    obs = np.array([1.2, 2.3, 0.0, 0.0], dtype=np.float32)  # beyond the fitted [-1, 1] / [-2, 2]
    planner.act(obs)
    assert torch.equal(SPEC.observations(planner.last_plan.best)[0, 0], torch.as_tensor(obs))


def test_env_slots_keep_their_own_plans_and_report_replans(model):
    planner = make_planner(model, replan_every=3)
    obs = np.zeros((3, 4), np.float32)
    planner.act(obs, env_indices=[0, 1, 2])
    assert planner.replanned.tolist() == [True, True, True]
    plan_1 = planner._plans[1].clone()
    # Slot 1 finished its episode: only slots 0 and 2 are stepped; slot 1 keeps its plan.
    planner.act(obs[:2], env_indices=[0, 2])
    planner.act(obs[:2], env_indices=[0, 2])
    assert planner.replanned.tolist() == [False, False]
    assert torch.equal(planner._plans[1], plan_1)
    planner.act(obs[:2], env_indices=[0, 2])  # 3 steps since their plans: both replan
    assert planner.replanned.tolist() == [True, True]
    planner.reset([1])  # slot 1 starts a new episode: it replans at once, alone
    planner.act(obs[:1], env_indices=[1])
    assert planner.replanned.tolist() == [True]
    assert planner.last_plan.best.shape == (1, SPEC.horizon, SPEC.transition_dim)
    with pytest.raises(ValueError, match="distinct slots"):
        planner.act(obs[:2], env_indices=[0, 0])


def test_planner_api_misuse_is_a_clear_error(model):
    planner = make_planner(model, guide=[Goal()])
    with pytest.raises(ValueError, match="not a scalar"):
        planner.act(np.zeros(4), goal=1.0)
    with pytest.raises(ValueError, match="2 goals for 3 observations"):
        planner.act(np.zeros((3, 4)), goal=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="obs_dim=4"):
        planner.act(np.zeros(5))


def test_non_finite_actions_are_refused(model):
    from diffplan.guidance import Guide

    class Broken(Guide):  # e.g. a cost whose gradient is NaN somewhere
        def gradient(self, x, ctx):
            return torch.full_like(x, float("nan"))

    planner = make_planner(model, guide=[Broken()])
    with pytest.raises(ValueError, match="non-finite action.*Broken"):
        planner.act(np.zeros(4))
