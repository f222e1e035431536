"""Behaviour policies for the locomotion datasets: SAC (stable-baselines3), as Minari made its own.

    diffplan data train-policy --env hopper --steps 1000000 --out runs/policies/hopper

The run directory holds everything needed to continue after a kill and to make the datasets:

    sac.zip            the SB3 agent (actor, critics, optimizers), saved every snapshot
    replay.npz         the replay buffer rows so far, in order (medium-replay is a prefix of it)
    snapshots/step_XXXXXXX.pt   the actor at each snapshot, as a weights-only policy file
    snapshots.json     per snapshot: step, wall time, stochastic-policy return (mean, se, n)
    tb/                TensorBoard logs (SB3's losses + snapshot returns)

stable-baselines3 is an optional extra (`pip install -e .[datagen]`): it is needed to train
behaviour policies, never to make datasets from the shipped ones, to train or to plan.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from diffplan.errors import DiffplanError
from diffplan.files import write_json_atomic
from diffplan.tasks.locomotion.envs import ENV_IDS, env_id_for
from diffplan.tasks.locomotion.policy import GaussianMLPPolicy, from_sb3_actor, save_policy


def evaluate_returns(
    policy: GaussianMLPPolicy,
    env_id: str,
    episodes: int,
    seed: int,
    deterministic: bool = False,
) -> np.ndarray:
    """Returns of `episodes` episodes run in lockstep (one env each, seeds seed, seed+1, ...)."""
    import gymnasium as gym

    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    gen = torch.Generator().manual_seed(seed)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = policy.act(obs[idx], deterministic=deterministic, generator=gen)
        for k, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(actions[k])
            returns[i] += r
            obs[i] = o
            if term or trunc:
                alive[i] = False
    for e in envs:
        e.close()
    return returns


def _save_replay(buffer, path: Path) -> int:
    """Store the filled rows of an SB3 replay buffer (never wrapped: capacity >= steps)."""
    n = buffer.buffer_size if buffer.full else buffer.pos
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        observations=buffer.observations[:n, 0],
        next_observations=buffer.next_observations[:n, 0],
        actions=buffer.actions[:n, 0],
        rewards=buffer.rewards[:n, 0],
        dones=buffer.dones[:n, 0],
        timeouts=buffer.timeouts[:n, 0],
    )
    os.replace(tmp, path)
    return n


def _restore_replay(buffer, path: Path) -> int:
    data = np.load(path)
    n = len(data["rewards"])
    buffer.observations[:n, 0] = data["observations"]
    buffer.next_observations[:n, 0] = data["next_observations"]
    buffer.actions[:n, 0] = data["actions"]
    buffer.rewards[:n, 0] = data["rewards"]
    buffer.dones[:n, 0] = data["dones"]
    buffer.timeouts[:n, 0] = data["timeouts"]
    buffer.pos, buffer.full = n % buffer.buffer_size, n >= buffer.buffer_size
    if n and not buffer.dones[n - 1, 0]:
        # The episode in flight at the save is cut here: mark the cut as a timeout, so it
        # splits episodes (medium-replay) without teaching the critic a false termination.
        buffer.dones[n - 1, 0] = buffer.timeouts[n - 1, 0] = 1.0
    return n


def train_policy(
    env: str,
    out: str | os.PathLike,
    steps: int = 1_000_000,
    seed: int = 0,
    snapshot_every: int = 20_000,
    eval_episodes: int = 10,
    threads: int = 1,
    progress: bool = True,
) -> Path:
    """Train (or continue training) SAC on `env` until `steps` env steps; returns the run dir."""
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        raise DiffplanError(
            "training behaviour policies needs stable-baselines3: pip install -e '.[datagen]'"
        ) from None
    import gymnasium as gym
    from tqdm import tqdm

    if steps <= 0 or snapshot_every <= 0 or eval_episodes <= 0:
        raise DiffplanError("--steps, --snapshot-every and --eval-episodes must be positive")
    env_id = env_id_for(env)
    torch.set_num_threads(threads)
    out = Path(out)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    agent_path, replay_path, log_path = out / "sac.zip", out / "replay.npz", out / "snapshots.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {"snapshots": []}
    if not log.get("env"):
        log.update(env=env, env_id=env_id, seed=seed, steps_target=steps, algo="SAC (SB3)")
    elif log["env"] != env:
        raise DiffplanError(f"{out} holds a {log['env']} run, not {env}; choose another --out")

    train_env = gym.make(env_id)
    if agent_path.exists():
        agent = SAC.load(agent_path, env=train_env, device="cpu", buffer_size=steps)
        restored = _restore_replay(agent.replay_buffer, replay_path)
        # Callbacks run before SB3 stores the step's transition: the buffer is one row short.
        if restored not in (agent.num_timesteps - 1, agent.num_timesteps):
            raise DiffplanError(
                f"{out}: agent at step {agent.num_timesteps} but replay buffer holds {restored}"
                " rows; the run folder is inconsistent"
            )
        # The episode in flight at the save is lost; start a fresh one (as after a timeout).
        agent._last_obs = None
        print(f"resuming {out} at step {agent.num_timesteps}")
    else:
        agent = SAC(
            "MlpPolicy",
            train_env,
            buffer_size=steps,
            seed=seed,
            device="cpu",
            verbose=0,
            tensorboard_log=str(out / "tb"),
        )
    wall_before = float(log.get("wall_s", 0.0))
    started = time.time()

    def snapshot(step: int) -> None:
        policy = from_sb3_actor(agent.actor, train_env.action_space)
        rets = evaluate_returns(policy, env_id, eval_episodes, seed=10_000 + seed)
        mean = float(rets.mean())
        se = float(rets.std(ddof=1) / math.sqrt(len(rets)))
        wall = wall_before + time.time() - started
        save_policy(
            policy,
            out / "snapshots" / f"step_{step:07d}.pt",
            env,
            env_id,
            {"step": step, "return_mean": mean, "return_se": se, "seed": seed, "wall_s": wall},
        )
        tmp = agent_path.with_name("sac.tmp.zip")
        agent.save(tmp)
        n = _save_replay(agent.replay_buffer, replay_path)
        os.replace(tmp, agent_path)
        log["snapshots"].append(
            {
                "step": step,
                "wall_s": round(wall, 1),
                "return_mean": mean,
                "return_se": se,
                "eval_episodes": eval_episodes,
                "buffer_rows": n,
            }
        )
        log["wall_s"] = wall
        write_json_atomic(log_path, log, indent=1)
        agent.logger.record("snapshot/return_mean", mean)
        bar.set_postfix(ret=f"{mean:.0f}")

    class Snapshots(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            if self.num_timesteps % snapshot_every == 0:
                snapshot(self.num_timesteps)
            return True

    done = agent.num_timesteps
    bar = tqdm(
        total=steps, initial=done, desc=f"SAC {env_id}", disable=not progress, mininterval=10
    )
    if done < steps:
        agent.learn(
            total_timesteps=steps - done,
            callback=Snapshots(),
            reset_num_timesteps=done == 0,
            tb_log_name="sac",
        )
    bar.close()
    if not log["snapshots"] or log["snapshots"][-1]["step"] != agent.num_timesteps:
        bar = tqdm(disable=True)
        snapshot(agent.num_timesteps)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", choices=sorted(ENV_IDS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot-every", type=int, default=20_000)
    args = p.parse_args(argv)
    train_policy(args.env, args.out, args.steps, args.seed, args.snapshot_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
