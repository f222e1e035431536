"""States-only planning with inverse dynamics: the MLP recovers actions of a known linear
system, the file is checked against its model, and the planner acts through it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from diffplan.checkpoint import load_checkpoint
from diffplan.cli import main as cli
from diffplan.config import config_from_dict
from diffplan.errors import CheckpointError
from diffplan.inverse_dynamics import load_inverse_dynamics, step_pairs, train_inverse_dynamics
from diffplan.trainer import load_episodes, train
from planners import MPCPlanner

A = np.array([[1.0, 0.1], [0.0, 0.9]])  # s' = A s + B a: a point mass with damping
B = np.array([[0.0, 0.0], [0.5, -0.3]]) + np.array([[0.2, 0.1], [0.0, 0.0]])


def linear_system(episodes: int = 60, length: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs, act = [], []
    for _ in range(episodes):
        s = rng.uniform(-1, 1, 2)
        for _ in range(length):
            a = rng.uniform(-1, 1, 2)
            obs.append(s)
            act.append(a)
            s = A @ s + B @ a
    n = episodes * length
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    return np.array(obs), np.array(act), timeouts


@pytest.fixture(scope="module")
def states_only_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear")
    obs, act, timeouts = linear_system()
    path = root / "linear.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = obs.astype(np.float32), act.astype(np.float32)
        f["rewards"] = np.zeros(len(obs), np.float32)
        f["terminals"], f["timeouts"] = np.zeros(len(obs), bool), timeouts
    config = config_from_dict(
        {
            "name": "linear",
            "data": {"source": "d4rl", "dataset": str(path)},
            "model": {"horizon": 8, "dim": 8, "dim_mults": [1, 2], "states_only": True},
            "diffusion": {"n_timesteps": 10},
            "train": {"steps": 20, "batch_size": 16, "save_every": 20, "device": "cpu"},
            "plan": {"action_mode": "inverse-dynamics", "n_candidates": 2, "sampling_steps": 2},
            "task": {"type": "gym", "env": "Pendulum-v1"},
        }
    )
    checkpoint = train(config, root / "run", progress=False)
    return checkpoint, config


def test_states_only_model_plans_observations_only(states_only_run):
    checkpoint, _ = states_only_run
    loaded = load_checkpoint(checkpoint)
    assert loaded.spec.act_dim == 0 and loaded.spec.transition_dim == 2


def test_inverse_dynamics_recovers_linear_actions(states_only_run, tmp_path):
    checkpoint, config = states_only_run
    out = train_inverse_dynamics(
        checkpoint, tmp_path / "inverse.pt", steps=1500, lr=3e-3, hidden=64, progress=False
    )
    model = load_inverse_dynamics(out, load_checkpoint(checkpoint))
    obs, act, timeouts = linear_system(episodes=10, seed=1)  # unseen transitions
    keep = ~timeouts
    s, s_next = obs[:-1][keep[:-1]], obs[1:][keep[:-1]]
    predicted = model(torch.as_tensor(s), torch.as_tensor(s_next)).numpy()
    error = np.abs(predicted - act[:-1][keep[:-1]]).mean()
    # Actions span [-1, 1]; the map is linear and exactly invertible here.
    assert error < 0.08, error
    pairs = step_pairs(load_episodes(config, keep_actions=True), stride=1)
    assert len(pairs[0]) == 60 * 49


def test_planner_acts_through_inverse_dynamics_and_checks_the_file(states_only_run, tmp_path):
    checkpoint, _ = states_only_run
    assert cli(["train-inverse", "--checkpoint", str(checkpoint), "--steps", "50",
                "--no-progress"]) == 0  # fmt: skip
    assert (checkpoint.parent / "inverse.pt").is_file()
    # Refuses to overwrite without --overwrite, and never the checkpoint itself.
    assert cli(["train-inverse", "--checkpoint", str(checkpoint), "--steps", "5"]) == 1
    assert cli(["train-inverse", "--checkpoint", str(checkpoint), "--out", str(checkpoint),
                "--overwrite"]) == 1  # fmt: skip
    planner = MPCPlanner.from_checkpoint(str(checkpoint))  # the plan section picks the mode
    assert planner.action_mode == "inverse-dynamics"
    actions = planner.act(np.zeros((3, 2)))
    assert actions.shape == (3, 2) and np.isfinite(actions).all()
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else"}, foreign)
    with pytest.raises(CheckpointError, match="not a diffplan inverse-dynamics file"):
        MPCPlanner.from_checkpoint(str(checkpoint), inverse_dynamics=str(foreign))
    with pytest.raises(ValueError, match="states only"):
        MPCPlanner.from_checkpoint(str(checkpoint), action_mode="diffused")
