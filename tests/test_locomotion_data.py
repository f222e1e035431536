"""Locomotion datasets made here, D4RL's way: SAC run -> exported policies -> datasets.

Everything is tiny (a 300-step SAC run, a few thousand dataset steps) and lives in tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from diffplan.cli import main
from diffplan.errors import ConfigError, DiffplanError
from diffplan.tasks.locomotion.datasets import (
    dataset_refs,
    export_policy,
    generate_mujoco_dataset,
    load_card,
)
from diffplan.tasks.locomotion.envs import D4RL_REFS
from diffplan.tasks.locomotion.policy import (
    GaussianMLPPolicy,
    PolicyError,
    load_policy,
    save_policy,
)

ROOT = Path(__file__).resolve().parent.parent
HAVE_SB3 = importlib.util.find_spec("stable_baselines3") is not None
EPISODES = 5  # episodes of the measured returns (100 for real policies)


def _synthetic_run(out: Path) -> Path:
    """A SAC-run folder without stable-baselines3: random actors, a random-action replay."""
    import gymnasium as gym

    (out / "snapshots").mkdir(parents=True)
    snaps = []
    for k, step in enumerate((100, 200, 300)):
        torch.manual_seed(step)
        pol = GaussianMLPPolicy(11, 3, [32, 32], -np.ones(3), np.ones(3))
        save_policy(pol, out / "snapshots" / f"step_{step:07d}.pt", "hopper", "Hopper-v5", {})
        snaps.append(
            {
                "step": step,
                "wall_s": 0.1 * step,
                "return_mean": [9.0, 20.0, 30.0][k],
                "return_se": 1.0,
                "eval_episodes": 3,
                "buffer_rows": step - 1,
            }
        )
    env, rng = gym.make("Hopper-v5"), np.random.default_rng(0)
    rows = {
        k: []
        for k in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    }
    obs = env.reset(seed=0)[0]
    for _ in range(300):
        a = rng.uniform(-1, 1, 3).astype(np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        for k, v in zip(rows, (obs, nxt, a, r, term or trunc, trunc and not term), strict=True):
            rows[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    np.savez(out / "replay.npz", **{k: np.asarray(v, np.float32) for k, v in rows.items()})
    log = {
        "snapshots": snaps,
        "env": "hopper",
        "env_id": "Hopper-v5",
        "seed": 0,
        "steps_target": 300,
        "algo": "SAC (SB3)",
        "wall_s": 30.0,
    }
    (out / "snapshots.json").write_text(json.dumps(log))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 300-step SAC run (snapshots every 100 steps) made through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("sac") / "hopper"
    if not HAVE_SB3:
        return _synthetic_run(out)
    args = f"data train-policy --env hopper --steps 300 --seed 0 --snapshot-every 100 --out {out}"
    assert main([*args.split(), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def policies(run_dir, tmp_path_factory):
    """expert (CLI) and medium (function) exported from the run into a tmp policy dir."""
    out = tmp_path_factory.mktemp("policies")
    args = f"data export-policy --env hopper --level expert --run {run_dir} --out {out}"
    assert main([*args.split(), "--episodes", str(EPISODES)]) == 0
    export_policy(run_dir, "medium", out_dir=out, episodes=EPISODES)
    return out


def _load(dataset_id: str, root: Path):
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        return minari.load_dataset(dataset_id)
    finally:
        os.environ.pop("MINARI_DATASETS_PATH") if old is None else os.environ.update(
            MINARI_DATASETS_PATH=old
        )


def _episodes(dataset) -> list:
    return list(dataset.iterate_episodes())


def _arrays(dataset) -> dict[str, np.ndarray]:
    eps = _episodes(dataset)
    return {
        k: np.concatenate([getattr(e, k) for e in eps])
        for k in ("observations", "actions", "rewards", "terminations", "truncations")
    }


# ------------------------------------------------------------------ behaviour policies


@pytest.mark.skipif(not HAVE_SB3, reason="stable-baselines3 is not installed")
def test_train_export_reload_same_actions(run_dir, policies):
    from stable_baselines3 import SAC

    log = json.loads((run_dir / "snapshots.json").read_text())
    assert [s["step"] for s in log["snapshots"]] == [100, 200, 300]
    assert (run_dir / "sac.zip").is_file() and (run_dir / "replay.npz").is_file()
    assert len(np.load(run_dir / "replay.npz")["rewards"]) == log["snapshots"][-1]["buffer_rows"]

    path = policies / "hopper-expert.pt"
    payload = torch.load(path, weights_only=True)  # no pickled code needed to read it
    assert payload["format"] == "diffplan-policy" and payload["env"] == "hopper"
    card = json.loads((policies / "hopper-expert.json").read_text())
    assert card["training"]["step"] == 300 and card["training"]["seed"] == 0
    assert card["return"]["episodes"] == EPISODES and card["return"]["head"] == "stochastic"
    assert "train-policy --env hopper" in card["training"]["command"]
    assert "export-policy" in card["command"] and card["training"]["wall_s"] is not None
    assert card["refs"]["ref_max_score"] == card["return"]["mean"]
    assert card["refs"]["ref_min_score"] == card["refs"]["random"]["mean"]
    medium = load_card("hopper", "medium", policies)
    assert medium["training"]["step"] in (100, 200)  # a snapshot before the expert's
    assert medium["selection"]["target_return"] == pytest.approx(
        log["snapshots"][-1]["return_mean"] / 3
    )

    policy = load_policy(path, env="hopper")
    obs = np.random.default_rng(1).normal(size=(8, 11)).astype(np.float32)
    agent = SAC.load(run_dir / "sac.zip", device="cpu")
    sb3_action, _ = agent.predict(obs, deterministic=True)
    np.testing.assert_allclose(policy.act(obs, deterministic=True), sb3_action, atol=1e-5)
    snapshot = load_policy(run_dir / "snapshots" / "step_0000300.pt", env="hopper")
    draws = [p.act(obs, generator=torch.Generator().manual_seed(7)) for p in (policy, snapshot)]
    np.testing.assert_array_equal(draws[0], draws[1])
    other = policy.act(obs, generator=torch.Generator().manual_seed(8))
    assert not np.allclose(draws[0], other)
    # An exported policy is never replaced silently.
    with pytest.raises(FileExistsError):
        export_policy(run_dir, "expert", out_dir=policies, episodes=EPISODES)


# ------------------------------------------------------------------ datasets


def test_random_dataset_through_cli(policies, tmp_path, capsys):
    root = tmp_path / "minari"
    args = (
        f"data mujoco --env hopper --level random --steps 2000 --seed 3 --root {root}"
        f" --policy-dir {policies} --n-envs 3 --no-progress"
    ).split()
    assert main(args) == 0
    assert "normalized" in capsys.readouterr().out
    ds = _load("diffplan/hopper-random-v0", root)
    meta = ds.storage.metadata
    card = load_card("hopper", "expert", policies)
    assert meta["ref_min_score"] == card["refs"]["random"]["mean"]
    assert meta["ref_max_score"] == card["return"]["mean"]
    assert meta["d4rl_refs"] == {
        "ref_min_score": D4RL_REFS["hopper"][0],
        "ref_max_score": D4RL_REFS["hopper"][1],
    }
    eval_spec = ds.recover_environment(eval_env=True).spec
    assert eval_spec.id == "Hopper-v5" and eval_spec.max_episode_steps == 1000
    summary = json.loads(
        (root / "diffplan" / "hopper-random-v0" / "generation_summary.json").read_text()
    )
    assert summary == meta["generation_summary"]
    assert ds.total_steps == summary["steps"] == 2000
    assert summary["episodes"] == ds.total_episodes and summary["episodes_cut"] <= 1

    # Episodes end exactly where the env ended them, and nowhere else.
    eps = _episodes(ds)
    for e in eps:
        flags = e.terminations | e.truncations
        assert flags[-1] and not flags[:-1].any()
        assert len(e.observations) == len(e) + 1
        if e.terminations[-1]:
            assert len(e) < 1000
    assert sum(e.terminations[-1] for e in eps) >= len(eps) - 1  # a random hopper falls
    # Replaying the stored actions from each env's seeded first episode reproduces it.
    import gymnasium as gym

    with h5py.File(root / "diffplan" / "hopper-random-v0" / "data" / "main_data.hdf5") as f:
        seeded = {int(g.attrs["id"]): int(g.attrs["seed"]) for g in f.values() if "seed" in g.attrs}
    assert len(seeded) == 3
    env = gym.make("Hopper-v5", max_episode_steps=1000)
    for k, s in seeded.items():
        e = eps[k]
        np.testing.assert_array_equal(env.reset(seed=s)[0], e.observations[0])
        for t, a in enumerate(e.actions):
            o, r, term, trunc, _ = env.step(a)
            np.testing.assert_array_equal(o, e.observations[t + 1])
            assert r == e.rewards[t] and term == e.terminations[t] and trunc == e.truncations[t]

    # diffplan's own Minari reader takes it as it is.
    from diffplan.data.minari_source import load_minari

    loaded = load_minari("diffplan/hopper-random-v0", root=root)
    np.testing.assert_array_equal(loaded.lengths, [len(e) for e in eps])


def test_policy_dataset_is_deterministic_for_a_seed(policies, tmp_path):
    kw = dict(root=tmp_path, policy_dir=policies, progress=False, n_envs=4)
    a = generate_mujoco_dataset("hopper", "medium", 1500, seed=5, dataset_id="tt/a-v0", **kw)
    generate_mujoco_dataset("hopper", "medium", 1500, seed=5, dataset_id="tt/b-v0", **kw)
    generate_mujoco_dataset("hopper", "medium", 1500, seed=6, dataset_id="tt/c-v0", **kw)
    da, db, dc = (_arrays(_load(f"tt/{x}-v0", tmp_path)) for x in "abc")
    for k in da:
        np.testing.assert_array_equal(da[k], db[k])
    assert not np.array_equal(da["actions"], dc["actions"])
    assert a["policies"]["medium"]["sha256"] == load_card("hopper", "medium", policies)["sha256"]
    # actions come from the stochastic head: not the deterministic action of the observation
    obs = _episodes(_load("tt/a-v0", tmp_path))[0].observations[:-1].astype(np.float32)
    det = load_policy(policies / "hopper-medium.pt").act(obs, deterministic=True)
    assert not np.allclose(det, _episodes(_load("tt/a-v0", tmp_path))[0].actions)


def test_medium_expert_holds_both_parts(policies, tmp_path):
    kw = dict(root=tmp_path, policy_dir=policies, progress=False, n_envs=4, seed=2)
    s = generate_mujoco_dataset("hopper", "medium-expert", 2000, **kw)
    generate_mujoco_dataset("hopper", "medium", 1000, **kw)
    generate_mujoco_dataset("hopper", "expert", 1000, **kw)
    me, m, e = (
        _arrays(_load(f"diffplan/hopper-{lv}-v0", tmp_path))
        for lv in ("medium-expert", "medium", "expert")
    )
    assert len(me["rewards"]) == 2000
    for k in me:
        np.testing.assert_array_equal(me[k], np.concatenate([m[k], e[k]]))
    assert [p["level"] for p in s["parts"]] == ["medium", "expert"]
    assert [p["steps"] for p in s["parts"]] == [1000, 1000]
    assert set(s["policies"]) == {"medium", "expert"}


def test_medium_replay_is_the_replay_prefix(run_dir, policies, tmp_path):
    card = load_card("hopper", "medium", policies)
    log = json.loads((run_dir / "snapshots.json").read_text())
    rows = {s["step"]: s["buffer_rows"] for s in log["snapshots"]}[card["training"]["step"]]
    s = generate_mujoco_dataset(
        "hopper",
        "medium-replay",
        root=tmp_path,
        policy_dir=policies,
        run_dir=run_dir,
        progress=False,
    )
    assert s["steps"] == rows and s["replay"]["buffer_rows"] == rows
    eps = _episodes(_load("diffplan/hopper-medium-replay-v0", tmp_path))
    replay = np.load(run_dir / "replay.npz")
    got = np.concatenate([e.observations[:-1] for e in eps])
    np.testing.assert_allclose(got, replay["observations"][:rows], rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([e.actions for e in eps]), replay["actions"][:rows])
    np.testing.assert_allclose(
        np.concatenate([e.rewards for e in eps]), replay["rewards"][:rows].ravel()
    )
    dones = replay["dones"][:rows].ravel() != 0
    ends = np.cumsum([len(e) for e in eps]) - 1
    np.testing.assert_array_equal(np.flatnonzero(dones), ends[: dones.sum()])
    for e in eps:  # the last observation of an episode is its last next_observation
        assert e.observations.shape == (len(e) + 1, 11)
    # More steps than the prefix holds, or no run dir: refused before anything is written.
    with pytest.raises(ConfigError, match="replay rows"):
        generate_mujoco_dataset(
            "hopper",
            "medium-replay",
            steps=rows + 1,
            root=tmp_path / "x",
            policy_dir=policies,
            run_dir=run_dir,
            progress=False,
        )
    with pytest.raises(DiffplanError, match="not found"):
        generate_mujoco_dataset(
            "hopper",
            "medium-replay",
            root=tmp_path / "x",
            policy_dir=policies,
            run_dir=tmp_path / "nope",
            progress=False,
        )
    assert not (tmp_path / "x" / "diffplan").exists()


def test_medium_replay_from_a_rerun_needs_rerun_and_says_so(run_dir, policies, tmp_path):
    """A run whose snapshot at the medium step differs from the medium policy file (a rerun of
    that run on another machine) is refused, unless --rerun; then the dataset records it."""
    import shutil

    import torch

    card = load_card("hopper", "medium", policies)
    rerun = tmp_path / "rerun"
    shutil.copytree(run_dir, rerun)
    snap = rerun / "snapshots" / f"step_{card['training']['step']:07d}.pt"
    payload = torch.load(snap, weights_only=True)
    payload["state_dict"]["mu.bias"] += 1e-3
    torch.save(payload, snap)
    kw = dict(policy_dir=policies, run_dir=rerun, progress=False)
    with pytest.raises(DiffplanError, match="differs from the medium policy.*--rerun"):
        generate_mujoco_dataset("hopper", "medium-replay", root=tmp_path / "a", **kw)
    assert not (tmp_path / "a" / "diffplan").exists()
    s = generate_mujoco_dataset("hopper", "medium-replay", root=tmp_path / "b", rerun=True, **kw)
    assert s["replay"]["snapshot_is_medium_policy"] is False
    assert s["episodes"] >= 1
    # The shipped run itself is recognised as the medium policy's.
    same = generate_mujoco_dataset(
        "hopper", "medium-replay", root=tmp_path / "c", rerun=True, **{**kw, "run_dir": run_dir}
    )
    assert same["replay"]["snapshot_is_medium_policy"] is True
    # Another seed is not a rerun.
    log = json.loads((rerun / "snapshots.json").read_text())
    (rerun / "snapshots.json").write_text(json.dumps({**log, "seed": 7}))
    with pytest.raises(DiffplanError, match="seed 7"):
        generate_mujoco_dataset("hopper", "medium-replay", root=tmp_path / "d", rerun=True, **kw)
    with pytest.raises(ConfigError, match="--rerun applies to medium-replay only"):
        generate_mujoco_dataset("hopper", "medium", root=tmp_path / "e", rerun=True, **kw)


def test_d4rl_format_round_trips(policies, tmp_path):
    from diffplan.data.d4rl_source import load_d4rl_hdf5

    kw = dict(seed=4, root=tmp_path, policy_dir=policies, progress=False, n_envs=3)
    out = tmp_path / "hopper-medium.hdf5"
    generate_mujoco_dataset("hopper", "medium", 1200, fmt="d4rl", out=out, **kw)
    generate_mujoco_dataset("hopper", "medium", 1200, **kw)
    eps = _episodes(_load("diffplan/hopper-medium-v0", tmp_path))
    with h5py.File(out) as f:
        for k in ("observations", "next_observations", "actions", "rewards"):
            assert f[k].dtype == np.float32, k
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
        np.testing.assert_array_equal(
            f["next_observations"][:-1][~(f["terminals"][:-1] | f["timeouts"][:-1])],
            f["observations"][1:][~(f["terminals"][:-1] | f["timeouts"][:-1])],
        )
        assert f.attrs["ref_max_score"] == load_card("hopper", "expert", policies)["return"]["mean"]
    got = load_d4rl_hdf5(out)
    assert got.metadata["dropped_trailing_steps"] == 0
    np.testing.assert_array_equal(got.lengths, [len(e) for e in eps])
    np.testing.assert_array_equal(
        got.observations, np.concatenate([e.observations[:-1] for e in eps]).astype(np.float32)
    )
    np.testing.assert_array_equal(got.terminations, np.concatenate([e.terminations for e in eps]))
    np.testing.assert_array_equal(got.truncations, np.concatenate([e.truncations for e in eps]))
    assert (out.parent / "hopper-medium.generation_summary.json").is_file()
    with pytest.raises(DiffplanError, match="exists; pass --overwrite"):
        generate_mujoco_dataset("hopper", "medium", 1200, fmt="d4rl", out=out, **kw)


def test_never_overwrites_and_validates_first(policies, tmp_path):
    kw = dict(root=tmp_path, policy_dir=policies, progress=False, n_envs=2)
    generate_mujoco_dataset("hopper", "random", 300, seed=0, **kw)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_mujoco_dataset("hopper", "random", 300, seed=1, **kw)
    s = generate_mujoco_dataset("hopper", "random", 400, seed=1, overwrite=True, **kw)
    assert _load("diffplan/hopper-random-v0", tmp_path).total_steps == s["steps"] == 400
    with pytest.raises(ConfigError, match="unknown level"):
        generate_mujoco_dataset("hopper", "mediocre", 300, dataset_id="tt/l-v0", **kw)
    with pytest.raises(ConfigError, match="unknown locomotion env"):
        generate_mujoco_dataset("ant", "random", 300, dataset_id="tt/l-v0", **kw)
    with pytest.raises(PolicyError, match="export-policy"):  # no policies: nothing written
        generate_mujoco_dataset(
            "hopper",
            "expert",
            300,
            root=tmp_path,
            policy_dir=tmp_path / "e",
            dataset_id="tt/l-v0",
            progress=False,
        )
    assert not (tmp_path / "tt").exists()


def test_refs_are_measured_once_and_cached_in_the_card(policies, tmp_path):
    pols = tmp_path / "pols"
    shutil.copytree(policies, pols)
    path = pols / "hopper-expert.json"
    card = json.loads(path.read_text())
    del card["refs"]
    path.write_text(json.dumps(card))
    refs = dataset_refs("hopper", pols, episodes=EPISODES, seed=1)
    cached = json.loads(path.read_text())["refs"]
    assert cached["random"]["episodes"] == EPISODES and cached["random"]["seed"] == 1
    assert refs["ref_min_score"] == cached["random"]["mean"] != cached["ref_max_score"]
    assert refs["ref_max_score"] == card["return"]["mean"]
    stamp = path.stat().st_mtime_ns
    s = generate_mujoco_dataset("hopper", "random", 200, root=tmp_path, policy_dir=pols,
                                progress=False, n_envs=2)  # fmt: skip
    assert path.stat().st_mtime_ns == stamp  # not measured again
    assert s["dataset_refs"]["ref_min_score"] == refs["ref_min_score"]


# ------------------------------------------------------------------ bad policy files


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_policy_dir(policies: Path, tmp_path: Path, kind: str) -> Path:
    bad = tmp_path / f"bad-{kind}"
    shutil.copytree(policies, bad)
    path = bad / "hopper-medium.pt"
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "other-env":
        pol = GaussianMLPPolicy(17, 6, [8], -np.ones(6), np.ones(6))
        save_policy(pol, path, "walker2d", "Walker2d-v5", {})
    else:
        torch.save({"format": "diffplan-policy", "x": _Evil(str(tmp_path / "pwned"))}, path)
    return bad


@pytest.mark.parametrize(
    "kind,words",
    [
        ("truncated", "truncated or corrupt"),
        ("other-env", "'walker2d', not 'hopper'"),
        ("pickled", "pickled code"),
    ],
)
def test_bad_policy_file_is_one_line_error(policies, tmp_path, capsys, kind, words):
    bad = _bad_policy_dir(policies, tmp_path, kind)
    with pytest.raises(PolicyError, match=words.replace("(", r"\(")):
        generate_mujoco_dataset(
            "hopper", "medium", 300, root=tmp_path, policy_dir=bad, progress=False
        )
    capsys.readouterr()
    args = f"data mujoco --env hopper --level medium-expert --steps 300 --root {tmp_path}"
    code = main([*args.split(), "--policy-dir", str(bad), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("diffplan: error: "), err
    assert words in err[0]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "diffplan").exists()


def test_pickled_policy_through_the_command(policies, tmp_path):
    """The real command in a fresh process: exit code 1, one line on stderr, no code run."""
    bad = _bad_policy_dir(policies, tmp_path, "pickled")
    env = {**os.environ, "DIFFPLAN_DEBUG": "", "PYTHONPATH": str(ROOT)}
    args = (
        f"data mujoco --env hopper --level medium --steps 100 --policy-dir {bad} --root {tmp_path}"
    )
    cmd = [sys.executable, "-m", "diffplan.cli", *args.split()]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("diffplan: error: ") and "pickled code" in lines[0]
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ the data command


def test_data_usage_errors_are_one_line(capsys):
    for args in (
        ["data", "mujoco", "--env", "hopper", "--level", "mediocre"],
        ["data", "mujoco", "--env", "ant", "--level", "random"],
        ["data", "export-policy", "--env", "hopper"],
        ["data"],
    ):
        with pytest.raises(SystemExit) as info:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and err[0].startswith("diffplan: error:")


def test_data_errors_are_one_line(tmp_path, capsys):
    cases = [
        (f"data export-policy --env hopper --level expert --run {tmp_path / 'none'}", "not found"),
        (f"data mujoco --env hopper --level medium --out x.hdf5 --policy-dir {tmp_path}", "d4rl"),
        ("data mujoco --env hopper --level random --steps 0", ">= 1"),  # a usage error: 2
        (
            f"data mujoco --env hopper --level medium --format d4rl --policy-dir {tmp_path} --out "
            f"{tmp_path / 'hopper-medium.pt'} --overwrite",
            "the medium behaviour policy it reads",
        ),
    ]
    for args, words in cases:
        try:
            code = main(args.split())
        except SystemExit as e:  # argparse: a flag out of its declared range
            code = e.code
        assert code == (2 if "--steps 0" in args else 1)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("diffplan: error: ") and words in err[0], err


def test_pointmaze_data_command_unchanged(tmp_path, capsys):
    args = f"data pointmaze --maze umaze --steps 300 --root {tmp_path} --no-progress".split()
    assert main(args) == 0
    assert "dataset_id               diffplan/pointmaze-umaze-v0" in capsys.readouterr().out
    assert (tmp_path / "diffplan" / "pointmaze-umaze-v0" / "data" / "metadata.json").is_file()
