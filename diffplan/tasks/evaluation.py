"""One evaluation loop for every task: E envs in lockstep, fixed episode starts, scores ± SE.

:func:`evaluate_policy` runs any object with the policy interface (batched over env slots)

    reset(env_indices: list[int]) -> None            slots that start a new episode
    act(observations (R, obs_dim), goals (R, goal_dim) | None, env_indices (R,)) -> (R, act_dim)

in env units. Episode i is started by ``task.reset(env, i)`` on whichever slot is free, so
every policy meets the same episodes whatever the number of slots. An episode ends on
``terminated or truncated`` (a fallen Hopper is never stepped again); its slot then takes
the next episode, and only live slots are passed to ``act`` (R <= E rows).

    slot 0: | episode 0 ........ | episode 3 ..... |
    slot 1: | episode 1 ...| episode 2 ............ | (idle)

Results (:class:`EvalResult`) are generic: returns, lengths, terminations, normalized scores
for each of the task's refs, success and steps to the first success when the env's info
reports ``success``, ms per decision; ``task_info`` holds the task's own settings.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diffplan.tasks.base import Task


class Policy(Protocol):
    def reset(self, env_indices: list[int] | None = None) -> None: ...

    def act(self, observations: np.ndarray, goals: np.ndarray | None, env_indices=None): ...


class RandomPolicy:
    """Uniform random actions from the task's action box, seeded once (a task's ref_min)."""

    def __init__(self, action_space: Any, seed: int = 123):
        from gymnasium.spaces import Box

        self.space = Box(
            action_space.low, action_space.high, shape=action_space.shape, dtype=np.float32
        )
        self.space.seed(seed)

    @classmethod
    def for_task(cls, task: Task, seed: int = 123) -> RandomPolicy:
        env = task.make_env()
        try:
            return cls(env.action_space, seed)
        finally:
            env.close()

    def reset(self, env_indices: list[int] | None = None) -> None:
        pass  # stateless; the RNG stream deliberately continues across episodes

    def act(self, observations: np.ndarray, goals=None, env_indices=None) -> np.ndarray:
        return np.stack([self.space.sample() for _ in range(len(observations))])


def mean_se(x: Any) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def _pm(se: float | None, digits: int) -> str:
    """' ± SE', or a note that one episode has no standard error (never '± nan')."""
    if se is None or not math.isfinite(se):
        return " (1 episode: no SE)"
    return f" ± {se:.{digits}f}"


def jsonable(v: Any) -> Any:
    """NaN -> None and numpy -> Python, so ``json.dumps`` gives strict JSON."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class EvalResult:
    """Per-episode metrics and aggregates of one :func:`evaluate_policy` run.

    JSON fields (``to_dict()``; NaN written as null):

    - ``task`` (e.g. "pointmaze-umaze"), ``description``, ``task_info`` (the task's settings),
      ``episodes, seed, n_envs, max_episode_steps, policy``
    - ``returns``, ``lengths`` (env steps), ``terminated`` per episode; ``return_mean,
      return_se`` (SE with ddof=1), ``length_mean``
    - ``scores``: one entry per normalization of the task, the primary first: ``{label,
      ref_min, ref_max, source, mean, se}`` of 100 (return - ref_min) / (ref_max - ref_min)
    - ``successes`` (info["success"] at least once) and ``steps_to_goal`` (1-based step of
      the first success, null if never), ``success_rate, steps_to_goal_mean`` (successes
      only); null when the env never reports success
    - ``act_time_per_decision_s`` (time in ``policy.act`` / env steps), ``act_time_per_call_s``,
      ``act_calls``, ``wall_time_s``; ``plans`` (env decisions that drew a new plan, when the
      policy says which: an MPC planner's ``replanned``)
    - ``paths``: for the first recorded episodes, ``{episode, start, goal, xy}`` (the task's
      ``position`` of each step), when the task records positions
    """

    task: str
    description: str
    episodes: int
    seed: int
    n_envs: int
    max_episode_steps: int | None
    policy: str
    returns: list[float]
    lengths: list[int]
    terminated: list[bool]
    return_mean: float
    return_se: float
    length_mean: float
    scores: list[dict[str, Any]]
    successes: list[bool] | None
    steps_to_goal: list[float] | None
    success_rate: float | None
    steps_to_goal_mean: float | None
    act_time_per_decision_s: float
    act_time_per_call_s: float
    act_calls: int
    wall_time_s: float
    plans: int | None = None
    task_info: dict[str, Any] = field(default_factory=dict)
    paths: list[dict[str, Any]] = field(default_factory=list)
    # Share of executed actions outside the env's action space (the env clips them): a
    # planner that copies out-of-bounds data acts differently than it planned.
    actions_out_of_bounds: float = 0.0

    @property
    def score_mean(self) -> float:
        """The primary normalized score (NaN when the task has no refs)."""
        return self.scores[0]["mean"] if self.scores else math.nan

    @property
    def score_se(self) -> float:
        return self.scores[0]["se"] if self.scores else math.nan

    def score(self, label: str) -> dict[str, Any]:
        for s in self.scores:
            if s["label"] == label:
                return s
        raise KeyError(f"no score labelled {label!r}; have {[s['label'] for s in self.scores]}")

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def to_json(self, path: str | Path) -> None:
        from diffplan.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    def format_table(self) -> str:
        rows = [
            f"{self.description}: policy {self.policy}, {self.episodes} episodes, "
            f"seed {self.seed}, {self.n_envs} env(s)",
            f"  return                {self.return_mean:10.2f}{_pm(self.return_se, 2)}",
        ]
        for s in self.scores:
            label = f"normalized ({s['label']})"
            rows.append(
                f"  {label:<22}{s['mean']:8.1f}{_pm(s['se'], 1)}   refs "
                f"{s['ref_min']:.2f} / {s['ref_max']:.2f} ({s['source']})"
            )
        if self.success_rate is not None:
            rows.append(f"  success rate          {100 * self.success_rate:8.1f} %")
            rows.append(
                f"  steps to 1st success  {self.steps_to_goal_mean or math.nan:8.1f} "
                "(successes only)"
            )
        terminated = sum(self.terminated)
        rows.append(
            f"  episode length        {self.length_mean:8.1f}   ({terminated} of "
            f"{self.episodes} terminated early)"
        )
        rows.append(
            f"  act time              {1e3 * self.act_time_per_decision_s:8.3f} ms/decision, "
            f"{1e3 * self.act_time_per_call_s:.3f} ms/call ({self.act_calls} calls)"
        )
        if self.plans is not None:
            rows.append(
                f"  plans drawn           {self.plans:8d}   "
                f"({self.plans / max(sum(self.lengths), 1):.3f} per decision)"
            )
        if self.actions_out_of_bounds > 0:
            rows.append(
                f"  out-of-bounds actions {100 * self.actions_out_of_bounds:8.1f} %   (outside "
                "the action space: the env clipped them)"
            )
        rows.append(f"  wall time             {self.wall_time_s:8.1f} s")
        return "\n".join(rows)


def evaluate_policy(
    policy: Policy,
    task: Task | str,
    episodes: int = 100,
    seed: int = 123,
    n_envs: int = 1,
    progress: bool = True,
    record_paths: int = 0,
    max_episode_steps: int | None = None,
    record_plans: dict[int, dict] | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes of ``policy`` on ``task`` with ``n_envs`` lockstep slots.

    task: a Task, or an env name as `diffplan evaluate --env` takes it ("pointmaze-umaze",
    "hopper", any registered gymnasium id such as "MyRoom-v0").

    max_episode_steps: cut every episode after this many steps (quick tests); the env's own
    limit applies otherwise. record_plans: a dict that receives, for the first
    ``record_paths`` episodes, the first plan a planner made (``candidates``, ``best``) when
    the policy exposes ``replanned`` and ``last_plan`` (as ``MPCPlanner`` does).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    if isinstance(task, str):
        from diffplan.tasks import resolve_env, task_class

        family, env = resolve_env(task)
        task = task_class(family)(env)
    t_start = time.perf_counter()
    task.prepare(episodes, seed)
    n_envs = min(n_envs, episodes)
    envs = [task.make_env() for _ in range(n_envs)]
    act_shape = envs[0].action_space.shape
    act_dtype = envs[0].action_space.dtype
    act_low = np.asarray(getattr(envs[0].action_space, "low", -np.inf), dtype=np.float64)
    act_high = np.asarray(getattr(envs[0].action_space, "high", np.inf), dtype=np.float64)
    out_of_bounds = 0

    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    terminated = np.zeros(episodes, dtype=bool)
    first_success = np.full(episodes, np.nan)
    reports_success = False
    paths: dict[int, dict[str, Any]] = {}
    slot_episode = np.full(n_envs, -1)
    raw: list[Any] = [None] * n_envs
    act_time, act_calls, decisions = 0.0, 0, 0
    plans = 0 if hasattr(policy, "replanned") else None
    next_episode = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"eval {task.name}", unit="ep")

    def start(slots: list[int]) -> None:
        nonlocal next_episode
        started = []
        for k in slots:
            if next_episode >= episodes:
                slot_episode[k] = -1
                continue
            i = next_episode
            next_episode += 1
            raw[k], _ = task.reset(envs[k], i)
            slot_episode[k] = i
            started.append(k)
            if i < record_paths:
                pos = task.position(raw[k])
                if pos is not None:
                    paths[i] = {"episode": i, "start": pos, "goal": task.goal(raw[k]), "xy": [pos]}
        if started:
            policy.reset(started)

    start(list(range(n_envs)))
    while (slot_episode >= 0).any():
        live = [int(k) for k in np.flatnonzero(slot_episode >= 0)]
        obs = np.stack([task.observation(raw[k]) for k in live])
        goal_list = [task.goal(raw[k]) for k in live]
        goals = None if any(g is None for g in goal_list) else np.stack(goal_list)
        t0 = time.perf_counter()
        actions = np.asarray(policy.act(obs, goals, live), dtype=np.float64)
        act_time += time.perf_counter() - t0
        act_calls += 1
        decisions += len(live)
        if plans is not None:
            plans += int(np.count_nonzero(policy.replanned))
        if actions.shape != (len(live), *act_shape):
            raise ValueError(
                f"policy.act returned shape {actions.shape}, expected {(len(live), *act_shape)}"
            )
        if not np.isfinite(actions).all():
            raise ValueError(f"policy {type(policy).__name__} returned a non-finite action")
        outside = (actions < act_low - 1e-6) | (actions > act_high + 1e-6)
        out_of_bounds += int(outside.reshape(len(live), -1).any(axis=1).sum())
        if record_plans is not None:
            _record_first_plans(policy, live, slot_episode, record_paths, record_plans)
        finished = []
        for j, k in enumerate(live):
            i = slot_episode[k]
            o, r, term, trunc, info = envs[k].step(actions[j].astype(act_dtype))
            raw[k] = o
            returns[i] += float(r)
            lengths[i] += 1
            if "success" in info:
                reports_success = True
                if info["success"] and np.isnan(first_success[i]):
                    first_success[i] = lengths[i]
            if i in paths:
                paths[i]["xy"].append(task.position(o))
            if max_episode_steps is not None and lengths[i] >= max_episode_steps:
                trunc = True
            if term or trunc:
                terminated[i] = bool(term)
                finished.append(k)
                if bar is not None:
                    bar.update(1)
        if finished:
            start(finished)
    if bar is not None:
        bar.close()
    for env in envs:
        env.close()

    ret_mean, ret_se = mean_se(returns)
    scores = []
    for refs in task.refs():
        mean, se = mean_se(refs.normalize(returns))
        scores.append(
            {"label": refs.label, "ref_min": refs.ref_min, "ref_max": refs.ref_max,
             "source": refs.source, "mean": mean, "se": se}
        )  # fmt: skip
    successes = ~np.isnan(first_success)
    return EvalResult(
        task=task.name,
        description=task.describe(),
        episodes=episodes,
        seed=seed,
        n_envs=n_envs,
        max_episode_steps=max_episode_steps,
        policy=getattr(policy, "description", type(policy).__name__),
        returns=returns.tolist(),
        lengths=lengths.tolist(),
        terminated=terminated.tolist(),
        return_mean=ret_mean,
        return_se=ret_se,
        length_mean=float(lengths.mean()),
        scores=scores,
        successes=successes.tolist() if reports_success else None,
        steps_to_goal=first_success.tolist() if reports_success else None,
        success_rate=float(successes.mean()) if reports_success else None,
        steps_to_goal_mean=(
            float(np.nanmean(first_success)) if reports_success and successes.any() else None
        ),
        act_time_per_decision_s=act_time / max(decisions, 1),
        act_time_per_call_s=act_time / max(act_calls, 1),
        act_calls=act_calls,
        wall_time_s=time.perf_counter() - t_start,
        plans=plans,
        task_info=task.info(),
        paths=[{**p, "xy": np.asarray(p["xy"])} for _, p in sorted(paths.items())],
        actions_out_of_bounds=out_of_bounds / max(int(lengths.sum()), 1),
    )


def _record_first_plans(policy, live, slot_episode, record: int, out: dict[int, dict]) -> None:
    replanned = getattr(policy, "replanned", None)
    plan = getattr(policy, "last_plan", None)
    if replanned is None or plan is None or not np.any(replanned):
        return
    for p, j in enumerate(np.flatnonzero(replanned)):
        episode = int(slot_episode[live[j]])
        if episode < record and episode not in out:
            out[episode] = {
                "candidates": plan.candidates[p].detach().cpu().numpy(),
                "best": plan.best[p].detach().cpu().numpy(),
            }
