"""Data path: Episodes validation, Minari and D4RL loaders, training windows."""

import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from diffplan.data import (
    Episodes,
    TrajectoryWindows,
    fit_normalizer,
    flatten_observations,
    load_d4rl_hdf5,
    load_minari,
)
from diffplan.errors import ConfigError, DatasetError
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec


def _ep(t, obs_dim=3, act_dim=2, seed=0, **extra):
    rng = np.random.default_rng(seed)
    d = {
        "observations": rng.normal(size=(t, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (t, act_dim)).astype(np.float32),
        "rewards": np.ones(t, np.float32),
    }
    d.update(extra)
    return d


# ---------------------------------------------------------------- Episodes
def test_episodes_flat_storage_and_views():
    eps = Episodes.from_episodes([_ep(3, seed=0), _ep(5, seed=1), _ep(2, seed=2)])
    assert len(eps) == 3 and eps.n_steps == 10
    assert (eps.obs_dim, eps.act_dim) == (3, 2)
    np.testing.assert_array_equal(eps.lengths, [3, 5, 2])
    np.testing.assert_array_equal(eps.episode_starts, [0, 3, 8])
    assert eps.episode_index(1) == slice(3, 8)
    assert eps.observations.shape == (10, 3) and eps.observations.dtype == np.float32
    ep = eps[1]
    assert len(ep) == 5 and ep.index == 1
    assert np.shares_memory(ep.observations, eps.observations)  # a view, not a copy
    np.testing.assert_array_equal(ep.actions, _ep(5, seed=1)["actions"])
    assert [len(e) for e in eps] == [3, 5, 2]
    assert not eps.terminations.any() and eps[-1].index == 2
    s = eps.summary()
    assert s["episodes"] == 3 and s["steps"] == 10
    assert (s["min_length"], s["max_length"]) == (2, 5)
    assert s["mean_length"] == pytest.approx(10 / 3) and s["mean_return"] == pytest.approx(10 / 3)
    sub = eps.select([2, 0])
    np.testing.assert_array_equal(sub.lengths, [2, 3])
    np.testing.assert_array_equal(sub[1].observations, eps[0].observations)


def test_episodes_direct_constructor():
    eps = Episodes(
        observations=np.zeros((5, 2)),
        actions=np.zeros((5, 1)),
        rewards=np.arange(5.0),
        lengths=[2, 3],
        terminations=np.array([0, 1, 0, 0, 0]),
    )
    assert eps.observations.dtype == np.float32 and eps.terminations.dtype == bool
    np.testing.assert_array_equal(eps.episode_returns(), [1.0, 9.0])
    with pytest.raises(
        DatasetError, match="field 'actions' has 4 rows but the episode lengths sum to 5"
    ):
        Episodes(np.zeros((5, 2)), np.zeros((4, 1)), np.zeros(5), lengths=[2, 3])


def test_episodes_reject_nan_with_location():
    bad = _ep(6, seed=1)
    bad["observations"][4, 1] = np.nan
    with pytest.raises(
        DatasetError, match=r"episode 1, field 'observations' has NaN/inf at step 4"
    ):
        Episodes.from_episodes([_ep(3), bad])
    bad = _ep(6)
    bad["rewards"][2] = np.inf
    with pytest.raises(DatasetError, match=r"episode 2, field 'rewards' has NaN/inf at step 2"):
        Episodes.from_episodes([_ep(3), _ep(4), bad])


def test_episodes_validation_errors():
    mismatched = _ep(4)
    mismatched["actions"] = mismatched["actions"][:3]
    with pytest.raises(DatasetError, match=r"episode 1, field 'actions' has 3 steps but"):
        Episodes.from_episodes([_ep(2), mismatched])
    ints = _ep(4)
    ints["observations"] = np.zeros((4, 3), np.int64)
    with pytest.raises(DatasetError, match=r"episode 0, field 'observations' has dtype int64"):
        Episodes.from_episodes([ints])
    with pytest.raises(DatasetError, match=r"episode 1 is empty"):
        Episodes.from_episodes([_ep(2), _ep(0)])
    with pytest.raises(DatasetError, match=r"episode 1, field 'observations' has per-step shape"):
        Episodes.from_episodes([_ep(2), _ep(2, obs_dim=4)])
    with pytest.raises(DatasetError, match=r"episode 0 has no field 'actions'"):
        Episodes.from_episodes([{"observations": np.zeros((2, 1)), "rewards": np.zeros(2)}])
    with pytest.raises(DatasetError, match="no episodes"):
        Episodes.from_episodes([])
    with pytest.raises(DatasetError, match=r"episode 1 is empty"):
        Episodes(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), lengths=[2, 0])


# ------------------------------------------------------------------ Minari
def test_flatten_observations_rule():
    t = 3
    obs = {
        "observation": np.ones((t, 4)),
        "achieved_goal": np.full((t, 2), 5.0),
        "desired_goal": np.full((t, 2), 9.0),
        "z_extra": np.full((t, 1), 7.0),
        "a_extra": np.full((t, 1), 6.0),
    }
    flat, goals = flatten_observations(obs, 0)
    np.testing.assert_array_equal(flat[0], [1, 1, 1, 1, 6, 7])  # observation, then sorted keys
    np.testing.assert_array_equal(goals[0], [9, 9])
    flat, goals = flatten_observations({"b": np.full((t, 1), 2.0), "a": np.ones((t, 2))}, 0)
    np.testing.assert_array_equal(flat[0], [1, 1, 2])  # no 'observation' key: sorted keys
    assert goals is None


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    import minari
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    root = tmp_path_factory.mktemp("minari")
    box = lambda n: spaces.Box(-np.inf, np.inf, (n,), np.float64)  # noqa: E731
    obs_space = spaces.Dict(
        {"observation": box(4), "achieved_goal": box(2), "desired_goal": box(2)}
    )
    buffers = []
    for i, t in enumerate((5, 3)):
        pos = np.arange((t + 1) * 4, dtype=np.float64).reshape(t + 1, 4) + 100 * i
        buffers.append(
            EpisodeBuffer(
                observations={
                    "observation": pos,
                    "achieved_goal": pos[:, :2],
                    "desired_goal": np.full((t + 1, 2), float(i)),
                },
                actions=np.full((t, 2), 0.5, np.float32),
                rewards=np.arange(t, dtype=np.float64),
                terminations=np.r_[np.zeros(t - 1, bool), i == 0],
                truncations=np.r_[np.zeros(t - 1, bool), i == 1],
                infos={"success": np.arange(t + 1) % 2 == 0},
            )
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        with pytest.warns(UserWarning):  # Minari nags about author/permalink metadata
            minari.create_dataset_from_buffers(
                "diffplan/pointmaze-test-v0",
                buffers,
                env="CartPole-v1",  # only its spec is stored (cheap); spaces are given below
                observation_space=obs_space,
                action_space=spaces.Box(-1, 1, (2,), np.float32),
                ref_min_score=0.0,
                ref_max_score=10.0,
                expert_policy=None,
            )
    return root


def test_load_minari_by_id_and_path(minari_root, monkeypatch):
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    eps = load_minari("diffplan/pointmaze-test-v0", root=minari_root, info_keys=["success"])
    np.testing.assert_array_equal(eps.lengths, [5, 3])  # T actions; the T+1-th obs is dropped
    assert (eps.obs_dim, eps.act_dim, eps.goal_dim) == (4, 2, 2)
    np.testing.assert_array_equal(eps[0].observations[-1], [16, 17, 18, 19])  # step 4, not 5
    np.testing.assert_array_equal(eps[1].observations[0], [100, 101, 102, 103])
    np.testing.assert_array_equal(eps[1].goals, np.ones((3, 2)))
    np.testing.assert_array_equal(eps[0].rewards, [0, 1, 2, 3, 4])
    assert eps[0].terminations[-1] and not eps[0].truncations.any()
    assert eps[1].truncations[-1] and not eps[1].terminations.any()
    np.testing.assert_array_equal(eps[0].infos["success"], [True, False, True, False, True])
    assert eps.metadata["dataset_id"] == "diffplan/pointmaze-test-v0"
    assert eps.metadata["ref_max_score"] == 10.0
    assert eps.metadata["env_id"] == eps.metadata["eval_env_id"] == "CartPole-v1"
    # also by directory path, and by id without version via the environment variable
    by_path = load_minari(minari_root / "diffplan" / "pointmaze-test-v0")
    np.testing.assert_array_equal(by_path.observations, eps.observations)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    assert load_minari("diffplan/pointmaze-test").n_steps == 8


def test_dataset_locked_by_a_writer_is_a_one_line_error(minari_root, tmp_path):
    # Another process holds the HDF5 file open for writing, as `diffplan data` does while it
    # writes: the load names the lock, not an h5py traceback.
    ds = tmp_path / "locked"
    shutil.copytree(minari_root / "diffplan" / "pointmaze-test-v0", ds)
    (h5,) = ds.rglob("*.hdf5")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import h5py, sys, time; f = h5py.File({str(h5)!r}, 'a'); "
            "print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(DatasetError, match="locked by another process") as info:
            load_minari(ds, cache=False)
        assert "\n" not in str(info.value)
    finally:
        writer.kill()
        writer.wait()
    assert load_minari(ds, cache=False).n_steps == 8  # released: it loads


def test_missing_minari_dataset_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        load_minari("diffplan/pointmaze-umaze-v0")
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "diffplan" / "pointmaze-umaze-v0") in msg
    assert "diffplan data pointmaze --maze umaze" in msg
    assert not any(tmp_path.iterdir())  # looking must not create folders
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        load_minari(tmp_path)


@pytest.mark.parametrize("damage", ["", "{not json", "\xff\xfe"])
def test_damaged_minari_metadata_names_the_file_and_the_fix(minari_root, tmp_path, damage):
    ds = tmp_path / "damaged"
    shutil.copytree(minari_root / "diffplan" / "pointmaze-test-v0", ds)
    metadata = ds / "data" / "metadata.json"
    metadata.write_bytes(damage.encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        load_minari(ds, cache=False)
    msg = str(info.value)
    assert "\n" not in msg and str(metadata) in msg and "make it again" in msg
    assert ("is empty" in msg) == (damage == "")


def test_minari_datasets_path_naming_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    from diffplan.cli import main

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(not_a_folder))
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_minari("diffplan/pointmaze-umaze-v0")
    args = ["data", "pointmaze", "--maze", "umaze", "--steps", "10", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MINARI_DATASETS_PATH" in err and "not a folder" in err
    assert not_a_folder.read_text() == "x"


# -------------------------------------------------------------------- D4RL
def _write_d4rl(path, n=10, timeouts=True, drop=()):
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, bool)
    terminals[2] = True
    data = {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.normal(size=(n, 2)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
    }
    if timeouts:
        data["timeouts"] = np.zeros(n, bool)
        data["timeouts"][6] = True
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if k not in drop:
                f[k] = v
        f["infos/goal"] = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 2))
        f["infos/qpos"] = np.zeros((n, 5))
        f["metadata/algorithm"] = "test"
    return data


def test_d4rl_split_matches_sequence_dataset(tmp_path):
    path = tmp_path / "maze.hdf5"
    data = _write_d4rl(path)
    eps = load_d4rl_hdf5(path)
    # ends after terminal at 2 and timeout at 6; trailing 7..9 is unfinished -> dropped
    np.testing.assert_array_equal(eps.lengths, [3, 4])
    np.testing.assert_array_equal(eps[1].rewards, [3, 4, 5, 6])
    np.testing.assert_array_equal(eps.observations, data["observations"][:7])
    np.testing.assert_array_equal(eps.terminations, [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(eps.truncations, [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(eps[1].goals[:, 0], [3, 4, 5, 6])
    assert eps.infos["qpos"].shape == (7, 5) and eps.metadata["dropped_trailing_steps"] == 3
    kept = load_d4rl_hdf5(path, keep_incomplete=True)
    np.testing.assert_array_equal(kept.lengths, [3, 4, 3])


def test_d4rl_without_timeouts_uses_max_episode_steps(tmp_path):
    path = tmp_path / "old.hdf5"
    _write_d4rl(path, timeouts=False)
    eps = load_d4rl_hdf5(path, max_episode_steps=3)
    # rows 0-2 end at the terminal (also 3 steps); 3-5 cut at 3 steps; 6-8 cut; 9 dropped
    np.testing.assert_array_equal(eps.lengths, [3, 3, 3])
    np.testing.assert_array_equal(eps.truncations, [0, 0, 0, 0, 0, 1, 0, 0, 1])
    eps = load_d4rl_hdf5(path, max_episode_steps=4)
    np.testing.assert_array_equal(eps.lengths, [3, 4])  # terminal at 2, then a 4-step cut


def test_d4rl_errors(tmp_path):
    path = tmp_path / "noact.hdf5"
    _write_d4rl(path, drop=("actions",))
    with pytest.raises(DatasetError, match=r"noact\.hdf5 has no 'actions' dataset"):
        load_d4rl_hdf5(path)
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"this is not an HDF5 file at all" * 10)
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        load_d4rl_hdf5(garbage)
    good = tmp_path / "good.hdf5"
    _write_d4rl(good)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        load_d4rl_hdf5(truncated)
    with pytest.raises(DatasetError, match="does not exist"):
        load_d4rl_hdf5(tmp_path / "nope.hdf5")
    short = tmp_path / "short.hdf5"
    _write_d4rl(short, drop=("observations",))
    with h5py.File(short, "a") as f:
        f["observations"] = np.zeros((9, 3), np.float32)
    with pytest.raises(DatasetError, match="'observations' has 9 rows but 'rewards' has 10"):
        load_d4rl_hdf5(short)
    nan = tmp_path / "nan.hdf5"
    _write_d4rl(nan)
    with h5py.File(nan, "a") as f:
        f["actions"][4, 1] = np.nan
    with pytest.raises(DatasetError, match="episode 1, field 'actions' has NaN/inf at step 1"):
        load_d4rl_hdf5(nan)


# ----------------------------------------------------------------- windows
@pytest.fixture
def two_episodes():
    obs0 = np.arange(6, dtype=np.float32).reshape(3, 2)
    obs1 = 10 + np.arange(8, dtype=np.float32).reshape(4, 2)
    return Episodes.from_episodes(
        [
            dict(
                observations=obs0,
                actions=np.full((3, 1), 0.5, np.float32),
                rewards=np.array([1, 2, 3], np.float32),
                terminations=np.array([0, 0, 1], bool),
                goals=np.full((3, 2), 7.0, np.float32),
            ),
            dict(
                observations=obs1,
                actions=np.full((4, 1), -0.5, np.float32),
                rewards=np.ones(4, np.float32),
                truncations=np.array([0, 0, 0, 1], bool),
                goals=np.full((4, 2), 8.0, np.float32),
            ),
        ]
    )


def test_windows_drop_returns_and_layout(two_episodes):
    norm = fit_normalizer(two_episodes, "limits")
    assert norm.dim == 3
    spec = TrajectorySpec(obs_dim=2, act_dim=1, horizon=2)
    ds = TrajectoryWindows(
        two_episodes, spec, norm, end_policy="drop", discount=0.5, termination_penalty=-10.0
    )
    assert len(ds) == 2 + 3
    assert [ds.window_location(i) for i in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    # episode 0 terminated: rewards 1, 2, 3-10 -> G = [0.25, -1.5, -7]; episode 1: not
    returns = [float(ds[i]["returns"]) for i in range(5)]
    np.testing.assert_allclose(returns, [0.25, -1.5, 1.875, 1.75, 1.5])
    assert ds.return_range == pytest.approx((-1.5, 1.875))
    item = ds[3]
    assert item["x"].shape == (2, 3) and item["x"].dtype == torch.float32
    env = norm.unnormalize(item["x"])
    np.testing.assert_allclose(env[:, 1:].numpy(), [[12, 13], [14, 15]], atol=1e-5)
    np.testing.assert_allclose(env[:, 0].numpy(), [-0.5, -0.5], atol=1e-6)
    torch.testing.assert_close(item["start"], item["x"][0, 1:])
    torch.testing.assert_close(item["end"], item["x"][1, 1:])
    torch.testing.assert_close(item["goal"], torch.tensor([8.0, 8.0]))
    assert item["valid"].dtype == torch.bool and item["valid"].all()
    # batch() is the stacked __getitem__
    b = ds.batch(torch.tensor([4, 0, 3]))
    for k, v in b.items():
        torch.testing.assert_close(v[2], item[k])
    assert b["x"].shape == (3, 2, 3) and b["returns"].shape == (3, 1)


def test_windows_stride_and_pad(two_episodes):
    norm = fit_normalizer(two_episodes, "gaussian")
    strided = TrajectoryWindows(
        two_episodes, TrajectorySpec(2, 1, horizon=2, stride=2), norm, "drop"
    )
    assert [strided.window_location(i) for i in range(len(strided))] == [(0, 0), (1, 0), (1, 1)]
    env = norm.unnormalize(strided[2]["x"])
    np.testing.assert_allclose(env[:, 1:].numpy(), [[12, 13], [16, 17]], atol=1e-4)

    ds = TrajectoryWindows(two_episodes, TrajectorySpec(2, 1, horizon=3), norm, "pad", discount=1.0)
    assert len(ds) == 3 + 4  # a window may start at every step
    item = ds[2]  # episode 0, step 2: one real step then padding
    np.testing.assert_array_equal(item["valid"].numpy(), [True, False, False])
    env = norm.unnormalize(item["x"]).numpy()
    np.testing.assert_allclose(env[:, 1:], [[4, 5]] * 3, atol=1e-4)  # last obs repeated
    np.testing.assert_allclose(env[:, 0], [0.5, 0, 0], atol=1e-5)  # zero actions
    assert float(item["returns"]) == pytest.approx(3.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader))["x"].shape == (4, 3, 3)


def test_windows_errors(two_episodes):
    norm = fit_normalizer(two_episodes, "limits")
    with pytest.raises(DatasetError, match="spans .* = 5 env steps .* longest episode has 4"):
        TrajectoryWindows(two_episodes, TrajectorySpec(2, 1, horizon=3, stride=2), norm, "drop")
    with pytest.raises(ConfigError, match="obs_dim=3"):
        TrajectoryWindows(two_episodes, TrajectorySpec(3, 1, horizon=2), norm)
    with pytest.raises(ConfigError, match="end_policy 'wrap'"):
        TrajectoryWindows(two_episodes, TrajectorySpec(2, 1, horizon=2), norm, "wrap")
    with pytest.raises(ConfigError, match="normalizer has dim 2"):
        TrajectoryWindows(
            two_episodes,
            TrajectorySpec(2, 1, horizon=2),
            Normalizer.fit("limits", np.zeros((3, 2))),
        )
