"""Offline-RL peers (BC, IQL, TD3+BC from d3rlpy 2.8.1) on a diffplan Minari dataset, scored
with diffplan's locomotion protocol, so the results table compares against the same data,
env and evaluation seeds as the diffusion planner.

Runs in its own venv (d3rlpy pins gymnasium 1.0.0; diffplan needs 1.4), so this file does
not import diffplan: it reads the Minari HDF5 file with h5py and re-implements the protocol.

    make peers   # creates .venv-peers (torch CPU first, then d3rlpy 2.8.1, mujoco, h5py)
    OMP_NUM_THREADS=1 nice -n 10 .venv-peers/bin/python examples/peers_d3rlpy.py \
        --algo bc --steps 20000 --eval-every 10000
    OMP_NUM_THREADS=1 nice -n 10 .venv-peers/bin/python examples/peers_d3rlpy.py \
        --algo iql --steps 200000 --eval-every 20000
    OMP_NUM_THREADS=1 nice -n 10 .venv-peers/bin/python examples/peers_d3rlpy.py \
        --algo td3bc --steps 100000 --eval-every 20000

Defaults: --dataset data/minari/diffplan/hopper-medium-v0/data/main_data.hdf5,
--out runs/peers/hopper-medium-<algo>.json, --env Hopper-v5, --episodes 50, --seed 123.

Hyperparameters: d3rlpy's config defaults (BCConfig, IQLConfig, TD3PlusBCConfig), plus the
preprocessing that d3rlpy's own D4RL reproductions (reproductions/offline/*.py at v2.8.1)
add for that algorithm:
  - IQL: ReturnBasedRewardScaler(multiplier=1000.0) (iql.py). iql.py's other settings equal
    the defaults, except a cosine LR schedule on the actor (T_max=500000, tied to its
    500k-step run); that is a schedule, not a scaler, and is left out here.
  - TD3+BC: StandardObservationScaler() (td3_plus_bc.py); its other settings equal the
    defaults.
  - BC: no reproduction script exists; plain defaults, no scalers.

Protocol (diffplan.tasks.locomotion): gymnasium.make(env, max_episode_steps=1000); episode i
starts with env.reset(seed=seed + i); the policy's deterministic action (algo.predict) until
terminated or truncated. Reported: mean return and D4RL-normalized score, each +- standard
error (std ddof=1 / sqrt(n)). "best" picks the checkpoint on these same evaluation episodes,
so it is optimistic; "last" is the unbiased number.
"""

from __future__ import annotations

import os

# One math thread: the machine's other core is busy; set before torch/numpy load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_DATASET = "data/minari/diffplan/hopper-medium-v0/data/main_data.hdf5"
MAX_EPISODE_STEPS = 1000
# D4RL's Hopper refs (random / expert returns), the same numbers diffplan uses.
D4RL_REFS = {"Hopper-v5": (-20.272305, 3234.3)}
ALGOS = ("bc", "iql", "td3bc")


def load_minari(path: Path):
    """Read a Minari HDF5 file into flat arrays for d3rlpy's MDPDataset.

    Each `episode_k` group holds T+1 observations (the last is the state after the final
    step) and T actions/rewards/flags; d3rlpy wants T observations per episode and marks
    episode ends through terminals/timeouts, so the trailing observation is dropped.
    """
    obs, act, rew, term, trunc = [], [], [], [], []
    with h5py.File(path, "r") as f:
        # Sort numerically: h5py lists groups alphabetically (episode_10 before episode_2).
        names = sorted((k for k in f if re.fullmatch(r"episode_\d+", k)), key=lambda k: int(k[8:]))
        for name in names:
            g = f[name]
            t = g["actions"].shape[0]
            if g["observations"].shape[0] != t + 1:
                raise ValueError(
                    f"{name}: expected {t + 1} observations, got {g['observations'].shape[0]}"
                )
            te = np.asarray(g["terminations"], dtype=bool)
            tr = np.asarray(g["truncations"], dtype=bool)
            if not (te[-1] or tr[-1]):
                # d3rlpy splits episodes on these flags; an open end would merge two episodes.
                tr = tr.copy()
                tr[-1] = True
            obs.append(np.asarray(g["observations"][:t], dtype=np.float32))
            act.append(np.asarray(g["actions"], dtype=np.float32))
            rew.append(np.asarray(g["rewards"], dtype=np.float32))
            term.append(te)
            trunc.append(tr)
    if not names:
        raise ValueError(f"{path}: no episode_* groups (not a Minari HDF5 file?)")
    return (
        np.concatenate(obs), np.concatenate(act), np.concatenate(rew),
        np.concatenate(term).astype(np.float32), np.concatenate(trunc).astype(np.float32),
        len(names),
    )  # fmt: skip


def make_algo(name: str):
    import d3rlpy

    if name == "bc":
        cfg = d3rlpy.algos.BCConfig()
        note = "BCConfig defaults; d3rlpy ships no BC reproduction script, so no scalers"
    elif name == "iql":
        cfg = d3rlpy.algos.IQLConfig(
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)
        )
        note = (
            "IQLConfig defaults + ReturnBasedRewardScaler(multiplier=1000) as in d3rlpy's"
            " reproductions/offline/iql.py; its actor cosine LR schedule (T_max=500000) not used"
        )
    else:
        cfg = d3rlpy.algos.TD3PlusBCConfig(
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler()
        )
        note = (
            "TD3PlusBCConfig defaults + StandardObservationScaler as in d3rlpy's"
            " reproductions/offline/td3_plus_bc.py"
        )
    return cfg.create(device="cpu:0"), note


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def evaluate(algo, env_id: str, episodes: int, seed: int) -> dict:
    """diffplan's protocol; all episodes step in lockstep so predict() runs on one batch."""
    import gymnasium as gym

    envs = [gym.make(env_id, max_episode_steps=MAX_EPISODE_STEPS) for _ in range(episodes)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=int)
    terminated = np.zeros(episodes, dtype=bool)
    live = list(range(episodes))
    act_dtype = envs[0].action_space.dtype
    while live:
        actions = algo.predict(np.stack([obs[i] for i in live]).astype(np.float32))
        still = []
        for a, i in zip(actions, live, strict=True):
            o, r, term, trunc, _ = envs[i].step(np.asarray(a, dtype=act_dtype))
            obs[i] = o
            returns[i] += float(r)
            lengths[i] += 1
            if term or trunc:
                terminated[i] = bool(term)
            else:
                still.append(i)
        live = still
    for e in envs:
        e.close()
    lo, hi = D4RL_REFS[env_id]
    r_mean, r_se = mean_se(returns)
    d_mean, d_se = mean_se(100.0 * (returns - lo) / (hi - lo))
    return {
        "return_mean": r_mean, "return_se": r_se, "d4rl_mean": d_mean, "d4rl_se": d_se,
        "length_mean": float(lengths.mean()), "terminated": int(terminated.sum()),
        "returns": [float(r) for r in returns], "lengths": [int(n) for n in lengths],
    }  # fmt: skip


def write_json(path: Path, data: dict) -> None:
    # Temp file in the same folder + os.replace: a reader never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def summary(c: dict) -> dict:
    return {k: c[k] for k in ("step", "wall_s", "return_mean", "return_se", "d4rl_mean", "d4rl_se")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=ALGOS, required=True)
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="Minari main_data.hdf5")
    p.add_argument("--steps", type=int, default=100_000, help="gradient steps")
    p.add_argument("--eval-every", type=int, default=20_000)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument(
        "--seed", type=int, default=123, help="evaluation seeds: seed .. seed+episodes-1"
    )
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--env", default="Hopper-v5", choices=sorted(D4RL_REFS))
    p.add_argument("--out", default=None, help="default runs/peers/hopper-medium-<algo>.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    args = p.parse_args()
    if args.steps < 1 or args.eval_every < 1 or args.episodes < 2:
        p.error("--steps and --eval-every must be >= 1, --episodes >= 2 (for a standard error)")
    out = Path(args.out or f"runs/peers/hopper-medium-{args.algo}.json")
    if out.exists() and not args.overwrite:
        try:
            done = json.loads(out.read_text()).get("finished", False)
        except (OSError, ValueError):
            done = None
        state = {True: "a finished run", False: "an unfinished run", None: "an unreadable file"}
        print(f"{out} already holds {state[done]}; pass --overwrite to replace it", file=sys.stderr)
        return 2

    import d3rlpy
    import torch

    torch.set_num_threads(1)
    d3rlpy.seed(args.train_seed)

    t_load = time.perf_counter()
    obs, act, rew, term, trunc, n_episodes = load_minari(Path(args.dataset))
    dataset = d3rlpy.dataset.MDPDataset(
        observations=obs, actions=act, rewards=rew, terminals=term, timeouts=trunc,
        action_space=d3rlpy.ActionSpace.CONTINUOUS,
    )  # fmt: skip
    print(
        f"dataset: {n_episodes} episodes, {len(act):,} transitions"
        f" ({int(term.sum())} terminal) in {time.perf_counter() - t_load:.1f} s",
        flush=True,
    )

    algo, note = make_algo(args.algo)
    result = {
        "algo": args.algo,
        "d3rlpy_version": d3rlpy.__version__,
        "torch_version": torch.__version__,
        "hyperparameters": None,  # filled at the first evaluation, scalers fitted by then
        "hyperparameters_note": note,
        "train_seed": args.train_seed,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "dataset": {"path": str(Path(args.dataset).resolve()), "episodes": n_episodes,
                    "transitions": int(len(act)), "terminals": int(term.sum())},
        "protocol": {"env": args.env, "max_episode_steps": MAX_EPISODE_STEPS,
                     "episodes": args.episodes, "seeds": [args.seed, args.seed + args.episodes - 1],
                     "reset": "env.reset(seed=seed + i)", "policy": "algo.predict (deterministic)",
                     "d4rl_refs": list(D4RL_REFS[args.env]), "se": "std(ddof=1)/sqrt(n)"},
        "command": " ".join([sys.executable, *sys.argv]),
        "checkpoints": [],
        "finished": False,
    }  # fmt: skip

    t0 = time.perf_counter()

    def on_step(algo_, epoch: int, step: int) -> None:
        if step % args.eval_every and step != args.steps:
            return
        if result["hyperparameters"] is None:
            # Serialized only now: an unfitted StandardObservationScaler cannot serialize.
            result["hyperparameters"] = json.loads(algo_.config.serialize())
        t_eval = time.perf_counter()
        ev = evaluate(algo_, args.env, args.episodes, args.seed)
        ck = {"step": step, "wall_s": round(time.perf_counter() - t0, 1),
              "eval_s": round(time.perf_counter() - t_eval, 1), **ev}  # fmt: skip
        result["checkpoints"].append(ck)
        write_json(out, result)
        print(f"step {step:>7,}  wall {ck['wall_s']:>7.0f} s  return {ev['return_mean']:7.1f}"
              f" ± {ev['return_se']:5.1f}  D4RL {ev['d4rl_mean']:5.1f} ± {ev['d4rl_se']:4.1f}"
              f"  (eval {ck['eval_s']:.0f} s)", flush=True)  # fmt: skip

    # Epoch length only needs to divide --steps (d3rlpy trains n_steps // per_epoch epochs);
    # evaluations are triggered per step by the callback, not at epoch ends.
    per_epoch = math.gcd(args.steps, args.eval_every)
    for _ in algo.fitter(
        dataset, n_steps=args.steps, n_steps_per_epoch=per_epoch,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(), show_progress=False,
        save_interval=10**9, callback=on_step,
    ):  # fmt: skip
        pass

    cks = result["checkpoints"]
    result["last"] = summary(cks[-1])
    result["best"] = summary(max(cks, key=lambda c: c["d4rl_mean"]))
    result["best_note"] = "chosen on the evaluation episodes themselves: optimistic"
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["finished"] = True
    write_json(out, result)

    print(
        f"\n{args.algo} on {Path(args.dataset).parent.parent.name}, {args.env},"
        f" {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1})"
    )
    print(f"{'step':>8} {'return':>16} {'D4RL':>13}")
    for c in cks:
        print(
            f"{c['step']:>8,} {c['return_mean']:8.1f} ± {c['return_se']:5.1f}"
            f" {c['d4rl_mean']:6.1f} ± {c['d4rl_se']:4.1f}"
        )
    b = result["best"]
    print(
        f"last: D4RL {cks[-1]['d4rl_mean']:.1f} ± {cks[-1]['d4rl_se']:.1f};"
        f" best: step {b['step']:,} D4RL {b['d4rl_mean']:.1f} ± {b['d4rl_se']:.1f};"
        f" wall {result['wall_s']:.0f} s -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
