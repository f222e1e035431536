"""Locomotion datasets made here the way D4RL made theirs (BENCHMARKS.md B6).

Behaviour policies come from one SAC run (:mod:`diffplan.tasks.locomotion.policy_training`):

    diffplan data train-policy --env hopper                      # runs/policies/hopper
    diffplan data export-policy --env hopper --level expert      # last snapshot
    diffplan data export-policy --env hopper --level medium      # return ~ expert / 3
    diffplan data mujoco --env hopper --level medium             # diffplan/hopper-medium-v0

Levels (D4RL's definitions):

* ``random``: uniform actions from the action space (``np.random.default_rng(seed)``).
* ``medium`` / ``expert``: the shipped policy file ``policies/<env>-<level>.pt``, actions
  sampled from its stochastic (tanh-Gaussian) head with ``torch.Generator().manual_seed(seed)``.
* ``medium-replay``: the SAC run's replay buffer (``replay.npz``) up to the medium snapshot's
  ``buffer_rows``, in order, split into episodes on its dones / timeouts.
* ``medium-expert``: the medium and the expert dataset of half the steps each, with the same
  seed, concatenated (medium first): exactly what ``--level medium`` and ``--level expert``
  write with ``--steps N/2``.

Rollouts: ``n_envs`` gymnasium envs (``Hopper-v5`` ..., 1000-step limit) stepped in lockstep,
one batched policy call per step. Env ``i`` is reset once with the ``i``-th seed of
``np.random.SeedSequence(seed)``, then without a seed. An episode ends where the env
terminates (``terminations`` set at that step) or at 1000 steps (``truncations``). Envs start
new episodes while fewer than ``steps`` steps have been taken, and finish the episodes they
are in; episodes are then ordered by start (step, env) and the first ``steps`` steps are kept,
so at most one episode, the last, is cut short: it is stored truncated and the summary says
``last_episode_unfinished``. Everything is deterministic for a (seed, n_envs).

Reference scores: ``ref_min_score`` / ``ref_max_score`` are the mean returns of the random
policy and of the expert policy (stochastic head) over 100 episodes, measured once when the
policy is exported and cached in the policy card (``policies/<env>-expert.json``). D4RL's refs
(:data:`~diffplan.tasks.locomotion.envs.D4RL_REFS`) are stored beside them under ``d4rl_refs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.data.minari_source import minari_datasets_root
from diffplan.errors import ConfigError, DiffplanError
from diffplan.files import write_json_atomic
from diffplan.tasks.locomotion.envs import (
    D4RL_REFS,
    ENV_IDS,
    MAX_EPISODE_STEPS,
    env_id_for,
    family_of,
)
from diffplan.tasks.locomotion.policy import GaussianMLPPolicy, PolicyError, load_policy

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_LEVELS = ("medium", "expert")
DEFAULT_STEPS = 1_000_000
DEFAULT_STEPS_MEDIUM_EXPERT = 2_000_000
N_ENVS = 10
REF_EPISODES = 100
EVAL_SEED = 100_000  # seed of the 100-episode returns on the cards (refs included)
POLICY_DIR = Path(__file__).resolve().parent / "policies"
CODE_PERMALINK = "diffplan/tasks/locomotion/datasets.py (diffplan repository)"


# ----------------------------------------------------------------------------- names


def check_env(env: str) -> str:
    """'hopper' / 'Hopper-v5' -> 'hopper' (ConfigError for other envs)."""
    env_id_for(env)  # raises the one-line ConfigError
    return family_of(env)


def check_level(level: str, allowed: tuple[str, ...] = LEVELS) -> str:
    if level not in allowed:
        raise ConfigError(f"unknown level '{level}'; choose one of {', '.join(allowed)}")
    return level


def default_dataset_id(env: str, level: str) -> str:
    return f"diffplan/{check_env(env)}-{check_level(level)}-v0"


def default_steps(level: str) -> int | None:
    """1,000,000 (2,000,000 for medium-expert); None for medium-replay (the whole prefix)."""
    if level == "medium-replay":
        return None
    return DEFAULT_STEPS_MEDIUM_EXPERT if level == "medium-expert" else DEFAULT_STEPS


def default_run_dir(env: str) -> Path:
    return Path("runs") / "policies" / check_env(env)


def policy_path(env: str, level: str, policy_dir: str | os.PathLike | None = None) -> Path:
    return Path(policy_dir or POLICY_DIR) / f"{check_env(env)}-{level}.pt"


def card_path(env: str, level: str, policy_dir: str | os.PathLike | None = None) -> Path:
    return policy_path(env, level, policy_dir).with_suffix(".json")


def load_card(env: str, level: str, policy_dir: str | os.PathLike | None = None) -> dict:
    path = card_path(env, level, policy_dir)
    if not path.is_file():
        raise PolicyError(
            f"policy card {path} not found; export the policy with `diffplan data export-policy"
            f" --env {check_env(env)} --level {level}`"
        )
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PolicyError(f"policy card {path} is not readable JSON: {str(e)[:100]}") from None
    if not isinstance(card, dict) or card.get("env") != check_env(env):
        raise PolicyError(f"policy card {path} is not a card of a {check_env(env)} policy")
    return card


def load_level_policy(
    env: str, level: str, policy_dir: str | os.PathLike | None = None
) -> GaussianMLPPolicy:
    """The shipped (or exported) policy of a level; PolicyError names the fix."""
    path = policy_path(env, level, policy_dir)
    if not path.is_file():
        raise PolicyError(
            f"no {check_env(env)} {level} policy: {path} not found; export one from a SAC run"
            f" with `diffplan data export-policy --env {check_env(env)} --level {level}`"
        )
    return load_policy(path, env=check_env(env))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("gymnasium", "mujoco", "minari", "torch", "numpy", "stable-baselines3"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mean_se(x: np.ndarray) -> tuple[float | None, float | None]:
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return None, None
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se


def normalized(value: float | None, refs: tuple[float, float] | None) -> float | None:
    """D4RL's normalized score: 100 (R - ref_min) / (ref_max - ref_min)."""
    if value is None or refs is None or refs[0] is None or refs[1] is None:
        return None
    return 100.0 * (value - refs[0]) / (refs[1] - refs[0])


# ----------------------------------------------------------------------------- refs


class RandomActor:
    """Uniform actions in the action box, from ``np.random.default_rng(seed)``."""

    def __init__(self, low, high, seed: int):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    def act(self, obs, deterministic: bool = False, generator=None) -> np.ndarray:
        n = len(obs) if np.ndim(obs) == 2 else 1
        a = self.rng.uniform(self.low, self.high, size=(n, len(self.low))).astype(np.float32)
        return a if np.ndim(obs) == 2 else a[0]


def _action_bounds(env_id: str) -> tuple[np.ndarray, np.ndarray]:
    import gymnasium as gym

    e = gym.make(env_id)
    low, high = e.action_space.low.copy(), e.action_space.high.copy()
    e.close()
    return low, high


def measure_returns(
    policy: GaussianMLPPolicy | None,
    env: str,
    episodes: int = REF_EPISODES,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """Mean ± SE return over `episodes` episodes (None: the uniform random policy)."""
    from diffplan.tasks.locomotion.policy_training import evaluate_returns

    env_id = env_id_for(env)
    actor = policy if policy is not None else RandomActor(*_action_bounds(env_id), seed=seed)
    t0 = time.perf_counter()
    rets = evaluate_returns(actor, env_id, episodes, seed=seed)
    mean, se = _mean_se(rets)
    return {
        "mean": mean,
        "se": se,
        "episodes": int(episodes),
        "seed": int(seed),
        "head": "uniform random" if policy is None else "stochastic",
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def dataset_refs(
    env: str,
    policy_dir: str | os.PathLike | None = None,
    episodes: int = REF_EPISODES,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """ref_min_score / ref_max_score of `env`, from (and cached in) the expert policy's card.

    ref_max is the expert card's own measured return (stochastic head); ref_min the random
    policy's mean return over `episodes` episodes, measured once and written into the card.
    """
    env = check_env(env)
    path = card_path(env, "expert", policy_dir)
    if not path.is_file():
        raise PolicyError(
            f"the dataset refs (ref_max_score) need the {env} expert policy's card {path}, which"
            f" is missing; export it with `diffplan data export-policy --env {env} --level expert`"
        )
    card = load_card(env, "expert", policy_dir)
    refs = dict(card.get("refs") or {})
    changed = False
    if (refs.get("random") or {}).get("mean") is None:
        refs["random"] = measure_returns(None, env, episodes, seed)
        changed = True
    expert = card.get("return") or {}
    if expert.get("mean") is None:
        raise PolicyError(f"policy card {path} has no measured return; re-export the policy")
    if refs.get("expert") != expert:
        refs["expert"] = expert
        changed = True
    refs["ref_min_score"] = refs["random"]["mean"]
    refs["ref_max_score"] = expert["mean"]
    if changed or card.get("refs") != refs:
        card["refs"] = refs
        try:
            write_json_atomic(path, card, indent=1)
        except OSError as e:  # a read-only install: use the refs, measure again next time
            print(f"note: could not cache the refs in {path} ({e.strerror})", file=sys.stderr)
    return refs


# ----------------------------------------------------------------------------- export


def _read_run(run_dir: Path) -> dict:
    log_path = run_dir / "snapshots.json"
    if not run_dir.is_dir():
        raise DiffplanError(
            f"SAC run directory {run_dir} not found; train one with `diffplan data train-policy`"
            " or pass --run"
        )
    if not log_path.is_file():
        raise DiffplanError(f"{run_dir} holds no snapshots.json; it is not a SAC run directory")
    try:
        log = json.loads(log_path.read_text())
    except (OSError, ValueError) as e:
        raise DiffplanError(f"{log_path} is not readable JSON: {str(e)[:100]}") from None
    if not log.get("snapshots"):
        raise DiffplanError(f"{run_dir} has no snapshot yet; let the SAC run reach one first")
    if log.get("env") not in ENV_IDS:
        raise DiffplanError(f"{log_path} names no known env ({log.get('env')!r})")
    return log


def _snapshot_file(run_dir: Path, step: int) -> Path:
    return run_dir / "snapshots" / f"step_{step:07d}.pt"


def select_snapshot(
    log: dict, level: str, step: int | None = None, expert_step: int | None = None
) -> tuple[dict, dict]:
    """(snapshot entry, selection record). expert: the last snapshot; medium: the snapshot
    before the expert's whose logged return is closest to one third of the expert's."""
    snaps = sorted(log["snapshots"], key=lambda s: s["step"])
    by_step = {s["step"]: s for s in snaps}
    if step is not None:
        if step not in by_step:
            steps = [s["step"] for s in snaps]
            raise DiffplanError(
                f"the run has no snapshot at step {step}; its {len(steps)} snapshots are at"
                f" steps {steps[0]}..{steps[-1]}"
            )
        return by_step[step], {"rule": f"--step {step}"}
    if level == "expert":
        return snaps[-1], {"rule": "last snapshot of the run"}
    expert = by_step.get(expert_step) if expert_step is not None else None
    expert = expert or snaps[-1]
    candidates = [s for s in snaps if s["step"] < expert["step"]]
    if not candidates:
        raise DiffplanError(
            "the run has no snapshot before the expert's; a medium policy needs one whose return"
            " is about a third of the expert's (let the run go on, or pass --step)"
        )
    target = expert["return_mean"] / 3.0
    chosen = min(candidates, key=lambda s: (abs(s["return_mean"] - target), s["step"]))
    return chosen, {
        "rule": "snapshot whose logged return is closest to one third of the expert's (D4RL)",
        "expert_step": expert["step"],
        "expert_return_logged": expert["return_mean"],
        "target_return": target,
        "chosen_return_logged": chosen["return_mean"],
        "logged_eval_episodes": chosen.get("eval_episodes"),
    }


def export_policy(
    run_dir: str | os.PathLike,
    level: str,
    step: int | None = None,
    out_dir: str | os.PathLike | None = None,
    episodes: int = REF_EPISODES,
    seed: int = EVAL_SEED,
    overwrite: bool = False,
    command: str | None = None,
    env: str | None = None,
) -> dict[str, Any]:
    """Copy a snapshot of a SAC run as ``<out_dir>/<env>-<level>.pt`` and write its card.

    expert = the last snapshot, medium = the snapshot whose logged return is closest to one
    third of the expert's (the expert card's snapshot when one exists in `out_dir`), unless
    `step` picks one. The policy's return is measured over `episodes` episodes with the
    stochastic head; the card caches the random-policy ref (and the expert's return) so that
    generating datasets never measures them again. Returns the card.
    """
    check_level(level, POLICY_LEVELS)
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    run_dir = Path(run_dir)
    log = _read_run(run_dir)
    if env is not None and check_env(env) != log["env"]:
        raise DiffplanError(f"{run_dir} holds a {log['env']} run, not {check_env(env)}; pass --run")
    env = log["env"]
    env_id = env_id_for(env)
    out_dir = Path(out_dir) if out_dir is not None else POLICY_DIR
    dst, card_dst = policy_path(env, level, out_dir), card_path(env, level, out_dir)
    if (dst.exists() or card_dst.exists()) and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
    expert_step = None
    if level == "medium" and card_path(env, "expert", out_dir).is_file():
        expert_step = load_card(env, "expert", out_dir).get("training", {}).get("step")
    snap, selection = select_snapshot(log, level, step, expert_step)
    src = _snapshot_file(run_dir, snap["step"])
    policy = load_policy(src, env=env)

    print(
        f"{env} {level}: snapshot step {snap['step']} ({selection['rule']}); measuring its"
        f" return over {episodes} episodes",
        flush=True,
    )
    ret = measure_returns(policy, env, episodes, seed)
    refs: dict[str, Any] = {}
    others = [
        c
        for c in (card_dst, card_path(env, "expert", out_dir), card_path(env, "medium", out_dir))
        if c.is_file()
    ]
    for other in others:  # a cached random ref of the same protocol is reused
        with contextlib.suppress(OSError, ValueError, AttributeError):
            r = (json.loads(other.read_text()).get("refs") or {}).get("random")
            if r and r.get("episodes") == episodes and r.get("seed") == seed:
                refs["random"] = r
                break
    if "random" not in refs:
        refs["random"] = measure_returns(None, env, episodes, seed)
    if level == "expert":
        refs["expert"] = ret
    elif card_path(env, "expert", out_dir).is_file():
        refs["expert"] = load_card(env, "expert", out_dir).get("return")
    if refs.get("expert"):
        refs["ref_min_score"] = refs["random"]["mean"]
        refs["ref_max_score"] = refs["expert"]["mean"]
    refs["d4rl"] = {"ref_min_score": D4RL_REFS[env][0], "ref_max_score": D4RL_REFS[env][1]}

    steps = [s["step"] for s in sorted(log["snapshots"], key=lambda s: s["step"])]
    every = steps[1] - steps[0] if len(steps) > 1 else steps[0]
    train_command = (
        f"diffplan data train-policy --env {env} --steps {log.get('steps_target')} --seed"
        f" {log.get('seed')} --snapshot-every {every} --out {run_dir}"
    )
    command = command or (
        f"diffplan data export-policy --env {env} --level {level} --run {run_dir}"
        + (f" --step {step}" if step is not None else "")
    )
    meta = {
        "level": level,
        "step": snap["step"],
        "return_mean": ret["mean"],
        "return_se": ret["se"],
        "return_episodes": episodes,
        "seed": log.get("seed"),
        "wall_s": snap.get("wall_s"),
    }
    from diffplan.tasks.locomotion.policy import save_policy

    save_policy(policy, dst, env, env_id, meta)
    card = {
        "env": env,
        "env_id": env_id,
        "level": level,
        "policy_file": dst.name,
        "sha256": _sha256(dst),
        "network": {
            "hidden": policy.hidden,
            "obs_dim": policy.obs_dim,
            "act_dim": policy.act_dim,
            "head": "tanh-squashed Gaussian (SAC actor)",
        },
        "training": {
            "algo": log.get("algo", "SAC (SB3)"),
            "step": snap["step"],
            "steps_target": log.get("steps_target"),
            "wall_s": snap.get("wall_s"),
            "run_wall_s": log.get("wall_s"),
            "seed": log.get("seed"),
            "snapshot_every": every,
            "run_dir": str(run_dir),
            "snapshot": str(src.relative_to(run_dir)),
            "logged_return_mean": snap.get("return_mean"),
            "logged_return_se": snap.get("return_se"),
            "logged_eval_episodes": snap.get("eval_episodes"),
            "buffer_rows": snap.get("buffer_rows"),
            "command": train_command,
        },
        "selection": selection,
        "return": ret,
        "normalized_return_d4rl": normalized(ret["mean"], D4RL_REFS[env]),
        "refs": refs,
        "command": command,
        "versions": _versions(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(card_dst, card, indent=1)
    if level == "expert":  # keep the other cards' cached refs in step with the new expert
        med = card_path(env, "medium", out_dir)
        if med.is_file():
            with contextlib.suppress(OSError, ValueError):
                other = json.loads(med.read_text())
                other["refs"] = {**(other.get("refs") or {}), **refs}
                write_json_atomic(med, other, indent=1)
    print(
        f"{env} {level}: return {ret['mean']:.1f} ± {ret['se']:.1f} ({episodes} episodes,"
        f" D4RL-normalized {card['normalized_return_d4rl']:.1f}) -> {dst}",
        flush=True,
    )
    return card


# ----------------------------------------------------------------------------- rollouts


class _Episodes:
    """Episodes as lists of arrays: obs (T+1, d), actions (T, a), rewards (T,), end flags.

    `cut[k]`: episode k was cut by the step budget (stored truncated, not a real ending).
    """

    def __init__(self):
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []
        self.terminated: list[bool] = []
        self.truncated: list[bool] = []
        self.seeds: list[int | None] = []
        self.cut: list[bool] = []

    def add(self, obs, actions, rewards, terminated, truncated, seed=None, cut=False) -> None:
        self.obs.append(obs)
        self.actions.append(actions)
        self.rewards.append(rewards)
        self.terminated.append(bool(terminated))
        self.truncated.append(bool(truncated))
        self.seeds.append(seed)
        self.cut.append(bool(cut))

    def extend(self, other: _Episodes) -> None:
        for k in ("obs", "actions", "rewards", "terminated", "truncated", "seeds", "cut"):
            getattr(self, k).extend(getattr(other, k))

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.rewards], dtype=np.int64)

    def complete_returns(self) -> np.ndarray:
        """Returns of the episodes that ended in the env (termination or time limit)."""
        return np.array(
            [
                float(r.sum(dtype=np.float64))
                for r, c in zip(self.rewards, self.cut, strict=True)
                if not c
            ]
        )


def rollout(
    policy: GaussianMLPPolicy | None,
    env: str,
    steps: int,
    seed: int = 0,
    n_envs: int = N_ENVS,
    progress: bool = True,
    desc: str = "",
) -> _Episodes:
    """`steps` steps of `policy` (None: uniform random) in `n_envs` lockstep envs (module doc)."""
    import gymnasium as gym

    env_id = env_id_for(env)
    envs = [gym.make(env_id, max_episode_steps=MAX_EPISODE_STEPS) for _ in range(n_envs)]
    space = envs[0].action_space
    if policy is None:
        actor: Any = RandomActor(space.low, space.high, seed)
    else:
        actor = policy
    gen = torch.Generator().manual_seed(seed)
    env_seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n_envs)]
    obs_dim, act_dim = envs[0].observation_space.shape[0], space.shape[0]
    L = MAX_EPISODE_STEPS
    ob = np.zeros((n_envs, L + 1, obs_dim))
    ac = np.zeros((n_envs, L, act_dim), dtype=np.float32)
    rw = np.zeros((n_envs, L))
    t = np.zeros(n_envs, dtype=np.int64)
    for i, e in enumerate(envs):
        ob[i, 0] = e.reset(seed=env_seeds[i])[0]
    first = np.ones(n_envs, dtype=bool)
    started = [(0, i) for i in range(n_envs)]  # (tick, env) of each env's current episode
    finished: list[tuple[tuple[int, int], tuple]] = []
    active = np.ones(n_envs, dtype=bool)
    taken, tick = 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc or f"{env} rollouts", unit="step", mininterval=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of ~10 observations: one thread is fastest
    try:
        while active.any():
            idx = np.flatnonzero(active)
            cur = ob[idx, t[idx]]
            acts = actor.act(cur.astype(np.float32), deterministic=False, generator=gen)
            tick += 1
            for k, i in enumerate(idx):
                ti = t[i]
                o, r, term, trunc, _ = envs[i].step(acts[k])
                ac[i, ti] = acts[k]
                rw[i, ti] = r
                ob[i, ti + 1] = o
                t[i] = ti + 1
                taken += 1
                if term or trunc:
                    n = ti + 1
                    finished.append(
                        (
                            started[i],
                            (
                                ob[i, : n + 1].copy(),
                                ac[i, :n].copy(),
                                rw[i, :n].copy(),
                                term,
                                trunc,
                                env_seeds[i] if first[i] else None,
                            ),
                        )
                    )
                    first[i] = False
                    if taken < steps:
                        ob[i, 0] = envs[i].reset()[0]
                        t[i] = 0
                        started[i] = (tick, i)
                    else:
                        active[i] = False
            if bar is not None:
                bar.update(min(len(idx), max(0, steps - bar.n)))
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
        for e in envs:
            e.close()
    finished.sort(key=lambda f: f[0])
    out = _Episodes()
    total = 0
    for _, (o, a, r, term, trunc, s) in finished:
        if total >= steps:
            break
        n = len(r)
        if total + n > steps:  # the budget ends inside this episode: keep its start, truncated
            n = steps - total
            out.add(o[: n + 1], a[:n], r[:n], False, True, s, cut=True)
            break
        out.add(o, a, r, term, trunc, s)
        total += n
    return out


def _replay_source(
    run_dir: Path, medium_card: dict, medium: GaussianMLPPolicy, rerun: bool = False
) -> dict:
    """Validate a run dir for medium-replay: the medium snapshot's buffer_rows and replay.npz.

    The run must be the one the medium policy was exported from (its snapshot at the medium
    step equals the policy file), or, with `rerun`, a rerun of it: same env, seed and
    snapshot step, whose weights differ (SAC is not bit-reproducible across machines). The
    returned record says which (`snapshot_is_medium_policy`) and the rerun snapshot's return.
    """
    log = _read_run(run_dir)
    env = medium_card["env"]
    if log["env"] != env:
        raise DiffplanError(f"{run_dir} holds a {log['env']} run, not {env}; pass the {env} run")
    training = medium_card.get("training", {})
    step = training.get("step")
    snap = {s["step"]: s for s in log["snapshots"]}.get(step)
    if snap is None:
        raise DiffplanError(
            f"{run_dir} has no snapshot at step {step}, the medium policy's; pass the SAC run the"
            " medium policy was exported from (--run)"
        )
    snap_file = _snapshot_file(run_dir, step)
    same = None
    if snap_file.is_file():
        theirs = load_policy(snap_file, env=env).state_dict()
        mine = medium.state_dict()
        same = theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
    if same is False and not rerun:
        raise DiffplanError(
            f"{snap_file} differs from the medium policy file: {run_dir} is not the run the"
            " medium policy was exported from; pass that run (--run), or --rerun to use a rerun"
            " of it (same seed) as it is"
        )
    if same is not True and log.get("seed") != training.get("seed"):
        raise DiffplanError(
            f"{run_dir} ran with seed {log.get('seed')}, the medium policy's run with seed"
            f" {training.get('seed')}; medium-replay needs that run or a rerun of it (same seed)"
        )
    rows = snap.get("buffer_rows")
    replay = run_dir / "replay.npz"
    if rows is None or not replay.is_file():
        raise DiffplanError(f"{run_dir} has no replay.npz (or no buffer_rows for step {step})")
    try:
        with np.load(replay) as data:
            have = len(data["rewards"])
            missing = {"observations", "next_observations", "actions", "dones", "timeouts"} - set(
                data.files
            )
    except (OSError, ValueError, KeyError) as e:
        raise DiffplanError(f"{replay} is not a readable replay buffer: {str(e)[:100]}") from None
    if missing:
        raise DiffplanError(f"{replay} lacks {sorted(missing)}; not a diffplan replay buffer")
    if have < rows:
        raise DiffplanError(
            f"{replay} holds {have} rows, fewer than the {rows} of the medium snapshot"
        )
    return {
        "run_dir": str(run_dir),
        "replay": str(replay),
        "medium_step": step,
        "buffer_rows": int(rows),
        "replay_rows": int(have),
        "snapshot_is_medium_policy": same,
        "snapshot_return_logged": snap.get("return_mean"),
        "medium_policy_return_logged": training.get("logged_return_mean"),
    }


def replay_episodes(
    replay: str | os.PathLike, rows: int, action_low=None, action_high=None
) -> _Episodes:
    """The first `rows` rows of an SB3 replay buffer, split into episodes on dones/timeouts.

    SB3 stores `dones` = terminated or truncated and `timeouts` = truncated by the time limit,
    and actions scaled to [-1, 1] (mapped back to the action box here). A last episode cut by
    `rows` is stored truncated (and marked cut).
    """
    with np.load(replay) as d:
        obs = d["observations"][:rows].astype(np.float64)
        nxt = d["next_observations"][:rows].astype(np.float64)
        act = d["actions"][:rows].astype(np.float32)
        rew = d["rewards"][:rows].astype(np.float64).reshape(rows)
        dones = d["dones"][:rows].reshape(rows) != 0
        timeouts = d["timeouts"][:rows].reshape(rows) != 0
    if action_low is not None:
        lo, hi = np.asarray(action_low, np.float32), np.asarray(action_high, np.float32)
        act = (lo + 0.5 * (act + 1.0) * (hi - lo)).astype(np.float32)
    out = _Episodes()
    ends = np.flatnonzero(dones)
    if rows and (len(ends) == 0 or ends[-1] != rows - 1):
        ends = np.append(ends, rows - 1)
    start = 0
    for e in ends:
        o = np.concatenate([obs[start : e + 1], nxt[e : e + 1]])
        cut = not dones[e]  # only the last row can end an episode without a done
        term = bool(dones[e] and not timeouts[e])
        trunc = bool(timeouts[e]) or cut
        out.add(o, act[start : e + 1], rew[start : e + 1], term, trunc, cut=cut)
        start = e + 1
    return out


# ----------------------------------------------------------------------------- writers


def _last_flag(n: int, value: bool) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[-1] = value
    return flags


def _write_minari(
    eps: _Episodes, dataset_id: str, env_spec, refs: dict, metadata: dict, description: str
):
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            id=k,
            seed=eps.seeds[k],
            observations=eps.obs[k],
            actions=eps.actions[k],
            rewards=eps.rewards[k],
            terminations=_last_flag(len(eps.rewards[k]), eps.terminated[k]),
            truncations=_last_flag(len(eps.rewards[k]), eps.truncated[k]),
            infos={},
        )
        for k in range(len(eps))
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*author_email.*")
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env_spec,
            eval_env=env_spec,
            algorithm_name=metadata["algorithm"],
            author="diffplan",
            code_permalink=CODE_PERMALINK,
            ref_min_score=refs["ref_min_score"],
            ref_max_score=refs["ref_max_score"],
            num_episodes_average_score=int(refs["expert"]["episodes"]),
            description=description,
            requirements=[
                f"{k}=={v}" for k, v in _versions().items() if k in ("gymnasium", "mujoco")
            ],
        )
    dataset.storage.update_metadata({k: v for k, v in metadata.items() if k != "algorithm"})
    return dataset


def _write_d4rl(eps: _Episodes, out: Path, refs: dict, summary: dict, metadata: dict) -> None:
    """D4RL layout: float32 arrays, bool terminals/timeouts; provenance as root attributes."""
    import h5py

    n = int(eps.lengths.sum())
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    ends = np.cumsum(eps.lengths) - 1
    terminals[ends] = eps.terminated
    timeouts[ends] = eps.truncated
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f["observations"] = np.concatenate([o[:-1] for o in eps.obs]).astype(np.float32)
            f["next_observations"] = np.concatenate([o[1:] for o in eps.obs]).astype(np.float32)
            f["actions"] = np.concatenate(eps.actions).astype(np.float32)
            f["rewards"] = np.concatenate(eps.rewards).astype(np.float32)
            f["terminals"] = terminals
            f["timeouts"] = timeouts
            f.attrs["ref_min_score"] = refs["ref_min_score"]
            f.attrs["ref_max_score"] = refs["ref_max_score"]
            for k, v in metadata.items():
                f.attrs[k] = v if isinstance(v, str | int | float) else json.dumps(v)
            f.attrs["generation_summary"] = json.dumps(summary)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- generate


def _part_summary(eps: _Episodes, d4rl: tuple, refs: tuple) -> dict[str, Any]:
    rets = eps.complete_returns()
    mean, se = _mean_se(rets)
    lengths = eps.lengths
    return {
        "episodes": len(eps),
        "steps": int(lengths.sum()),
        "episodes_terminated": int(sum(eps.terminated)),
        "episodes_time_limit": int(
            sum(
                tr and not te and n == MAX_EPISODE_STEPS
                for te, tr, n in zip(eps.terminated, eps.truncated, lengths, strict=True)
            )
        ),
        "episodes_cut": int(sum(eps.cut)),  # by the step budget: stored truncated
        "last_episode_unfinished": bool(eps.cut and eps.cut[-1]),
        "mean_episode_length": float(lengths.mean()) if len(lengths) else 0.0,
        "return_episodes": len(rets),
        "return_mean": mean,
        "return_se": se,
        "normalized_d4rl_mean": normalized(mean, d4rl),
        "normalized_d4rl_se": None if se is None else abs(100.0 * se / (d4rl[1] - d4rl[0])),
        "normalized_dataset_mean": normalized(mean, refs),
        "normalized_dataset_se": None if se is None else abs(100.0 * se / (refs[1] - refs[0])),
    }


def format_summary(s: dict) -> str:
    def num(x, f=".1f"):
        return "n/a" if x is None else format(x, f)

    cut = f", {s['episodes_cut']} cut by the step budget" if s["episodes_cut"] else ""
    lines = [
        f"{s['env']} {s['level']}: {s['episodes']} episodes, {s['steps']:,} steps"
        f" ({s['episodes_terminated']} terminated, {s['episodes_time_limit']} at the"
        f" {MAX_EPISODE_STEPS}-step limit{cut})",
        f"  return      {num(s['return_mean'])} ± {num(s['return_se'])} (mean ± SE over"
        f" {s['return_episodes']} complete episodes)",
        f"  normalized  {num(s['normalized_d4rl_mean'])} ± {num(s['normalized_d4rl_se'])} with"
        f" D4RL refs {s['d4rl_refs']['ref_min_score']:g} / {s['d4rl_refs']['ref_max_score']:g}",
        f"  normalized  {num(s['normalized_dataset_mean'])} ± {num(s['normalized_dataset_se'])}"
        f" with the dataset refs {s['dataset_refs']['ref_min_score']:.1f} /"
        f" {s['dataset_refs']['ref_max_score']:.1f} (random / expert policy)",
    ]
    for p in s.get("parts", []):
        lines.append(
            f"  part {p['level']:7s} {p['episodes']} episodes, {p['steps']:,} steps, return"
            f" {num(p['return_mean'])} ± {num(p['return_se'])}, normalized (D4RL)"
            f" {num(p['normalized_d4rl_mean'])}"
        )
    lines.append(
        f"  wrote {s['path']} in {s['wall_time_s']:.1f} s (simulation {s['simulation_time_s']:.1f}"
        f" s, {s['steps_per_s']:,.0f} steps/s; write {s['write_time_s']:.1f} s)"
    )
    return "\n".join(lines)


def generate_mujoco_dataset(
    env: str,
    level: str,
    steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    root: str | os.PathLike | None = None,
    fmt: str = "minari",
    out: str | os.PathLike | None = None,
    policy_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    n_envs: int = N_ENVS,
    command: str | None = None,
    rerun: bool = False,
) -> dict[str, Any]:
    """Generate a D4RL-style locomotion dataset (module docstring) and write it.

    ``fmt="minari"``: Minari dataset `dataset_id` (default ``diffplan/<env>-<level>-v0``) under
    `root` (default ``$MINARI_DATASETS_PATH``). ``fmt="d4rl"``: one D4RL-layout HDF5 file
    `out` (default ``<root or data>/<env>-<level>-v0.hdf5``). `steps`: 1,000,000 (2,000,000
    for medium-expert); for medium-replay, default all replay rows up to the medium snapshot.
    `rerun` (medium-replay): accept a rerun of the medium policy's SAC run, see `_replay_source`.
    Every input is checked before anything is written; an existing dataset is replaced only
    with ``overwrite=True``. Returns the generation summary (also printed, stored in the
    metadata and as ``generation_summary.json``).
    """
    t0 = time.perf_counter()
    env = check_env(env)
    check_level(level)
    env_id = env_id_for(env)
    if fmt not in ("minari", "d4rl"):
        raise ConfigError(f"unknown format '{fmt}'; choose minari or d4rl")
    if steps is None:
        steps = default_steps(level)
    elif steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if n_envs < 1:
        raise ConfigError(f"n_envs must be >= 1, got {n_envs}")
    if rerun and level != "medium-replay":
        raise ConfigError(f"--rerun applies to medium-replay only, not {level}")
    dataset_id = dataset_id or default_dataset_id(env, level)

    # Where it goes: refuse an existing dataset before any work.
    if fmt == "minari":
        from minari.dataset.minari_dataset import parse_dataset_id
        from minari.storage.datasets_root_dir import get_dataset_path

        try:
            parse_dataset_id(dataset_id)
        except ValueError:
            raise ConfigError(
                f"malformed Minari dataset id {dataset_id!r}; ids look like"
                " namespace/name-vN, e.g. diffplan/hopper-medium-v0"
            ) from None
        with minari_datasets_root(root):
            target = Path(get_dataset_path(dataset_id))
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"Minari dataset {dataset_id!r} already exists at {target}; pass overwrite=True"
                " (--overwrite) to replace it"
            )
    else:
        target = (
            Path(out)
            if out is not None
            else (Path(root or "data") / f"{dataset_id.split('/')[-1]}.hdf5")
        )
        from diffplan.preflight import check_output_file

        # Never one of its inputs (a behaviour policy file), even with --overwrite.
        policies = [(policy_path(env, lvl, policy_dir), f"the {lvl} behaviour policy it reads")
                    for lvl in ("medium", "expert")]  # fmt: skip
        check_output_file(target, overwrite, "--out", policies, example=f"{env}-{level}-v2.hdf5")

    # What it needs: policy files, the run dir, the refs.
    needs = {
        "medium": ["medium"],
        "expert": ["expert"],
        "medium-expert": ["medium", "expert"],
        "medium-replay": ["medium"],
        "random": [],
    }[level]
    policies = {lv: load_level_policy(env, lv, policy_dir) for lv in needs}
    cards = {lv: load_card(env, lv, policy_dir) for lv in needs}
    replay_src = None
    if level == "medium-replay":
        run = Path(run_dir) if run_dir is not None else default_run_dir(env)
        replay_src = _replay_source(run, cards["medium"], policies["medium"], rerun=rerun)
        if steps is None:
            steps = replay_src["buffer_rows"]
        elif steps > replay_src["buffer_rows"]:
            raise ConfigError(
                f"--steps {steps} exceeds the {replay_src['buffer_rows']} replay rows up to the"
                f" medium snapshot (step {replay_src['medium_step']}); medium-replay holds no more"
            )
    refs = dataset_refs(env, policy_dir)
    ref_pair = (refs["ref_min_score"], refs["ref_max_score"])

    # Make it.
    t_sim = time.perf_counter()
    parts = []
    if level == "medium-replay":
        low, high = _action_bounds(env_id)
        eps = replay_episodes(replay_src["replay"], steps, low, high)
    elif level == "medium-expert":
        half = steps // 2
        eps = _Episodes()
        for lv, n in (("medium", half), ("expert", steps - half)):
            part = rollout(policies[lv], env, n, seed, n_envs, progress, f"{env}-{lv}")
            parts.append({"level": lv, **_part_summary(part, D4RL_REFS[env], ref_pair)})
            eps.extend(part)
    else:
        eps = rollout(policies.get(level), env, steps, seed, n_envs, progress, f"{env}-{level}")
    sim_time = time.perf_counter() - t_sim

    summary: dict[str, Any] = {
        "dataset_id": dataset_id if fmt == "minari" else None,
        "format": fmt,
        "env": env,
        "env_id": env_id,
        "level": level,
        "seed": seed,
        "n_envs": n_envs if level != "medium-replay" else None,
        **_part_summary(eps, D4RL_REFS[env], ref_pair),
        "d4rl_refs": {"ref_min_score": D4RL_REFS[env][0], "ref_max_score": D4RL_REFS[env][1]},
        "dataset_refs": {
            "ref_min_score": ref_pair[0],
            "ref_max_score": ref_pair[1],
            "random": refs["random"],
            "expert": refs["expert"],
        },
    }
    if parts:
        summary["parts"] = parts
    if replay_src:
        summary["replay"] = replay_src
    summary["policies"] = {
        lv: {
            "file": str(policy_path(env, lv, policy_dir)),
            "sha256": _sha256(policy_path(env, lv, policy_dir)),
            "training_step": cards[lv].get("training", {}).get("step"),
            "return_mean": (cards[lv].get("return") or {}).get("mean"),
        }
        for lv in needs
    }
    summary["command"] = command
    summary["simulation_time_s"] = sim_time
    summary["steps_per_s"] = summary["steps"] / max(sim_time, 1e-9)
    summary["versions"] = _versions()

    algorithm = {
        "random": "uniform random actions",
        "medium": "SAC (stable-baselines3) medium snapshot, stochastic head",
        "expert": "SAC (stable-baselines3) final policy, stochastic head",
        "medium-replay": "SAC (stable-baselines3) replay buffer up to the medium snapshot",
        "medium-expert": "SAC medium + expert policies (stochastic heads), concatenated",
    }[level]
    metadata = {
        "algorithm": algorithm,
        "d4rl_refs": summary["d4rl_refs"],
        "dataset_refs": summary["dataset_refs"],
        "behaviour_policies": {
            lv: {
                k: cards[lv].get(k)
                for k in ("policy_file", "sha256", "training", "selection", "return")
            }
            for lv in needs
        },
    }
    description = (
        f"D4RL-style {env} {level} dataset made with diffplan (BENCHMARKS.md B6): {algorithm};"
        f" {env_id}, {MAX_EPISODE_STEPS}-step limit, episodes end where the env terminates."
        " ref_min/max_score: random / expert policy returns over "
        f"{refs['expert']['episodes']} episodes; D4RL's refs under d4rl_refs."
    )
    import gymnasium as gym

    spec_env = gym.make(env_id, max_episode_steps=MAX_EPISODE_STEPS)
    env_spec = spec_env.spec
    spec_env.close()

    t_write = time.perf_counter()
    if fmt == "minari":
        with minari_datasets_root(root):
            if target.exists():  # overwrite=True: replaced only now, once the data exists
                shutil.rmtree(target)
            summary["path"] = str(target)
            try:
                dataset = _write_minari(eps, dataset_id, env_spec, refs, metadata, description)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
        summary_path = target / "generation_summary.json"
    else:
        summary["path"] = str(target)
        _write_d4rl(eps, target, refs, summary, metadata)
        summary_path = target.with_name(target.stem + ".generation_summary.json")
    summary["write_time_s"] = time.perf_counter() - t_write
    summary["wall_time_s"] = time.perf_counter() - t0
    if fmt == "minari":
        dataset.storage.update_metadata({"generation_summary": summary})
    write_json_atomic(summary_path, summary)
    print(format_summary(summary), file=sys.stdout, flush=True)
    return summary
