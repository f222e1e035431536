"""`Episodes`: a validated, ragged collection of episodes stored as flat concatenated arrays.

Memory is proportional to the number of steps (never episodes x longest episode); an
`Episode` is a view of array slices into the flat storage, never a copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffplan.errors import DatasetError

# Fields that must hold real numbers (an integer observation array is almost always a bug,
# e.g. image bytes or indices, so it is rejected instead of silently cast).
_FLOAT_FIELDS = ("observations", "actions", "rewards", "goals")


@dataclass(frozen=True)
class Episode:
    """One episode: slices (views) of the flat arrays of an `Episodes`."""

    index: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    goals: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def total_return(self) -> float:
        """Undiscounted sum of rewards."""
        return float(self.rewards.sum(dtype=np.float64))


def _where(episode: int | None, name: str) -> str:
    return f"episode {episode}, field '{name}'" if episode is not None else f"field '{name}'"


def _as_float(arr: Any, name: str, episode: int | None, ndim: int) -> np.ndarray:
    """Check dtype/shape of one float field and return it as float32."""
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.floating):
        raise DatasetError(
            f"{_where(episode, name)} has dtype {a.dtype}, expected floating point; "
            f"cast it explicitly (e.g. .astype(np.float32)) if the values are real numbers"
        )
    if name == "rewards" and a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]  # (T, 1) rewards are common; accept them
    if a.ndim != ndim:
        want = "(T,)" if ndim == 1 else "(T, dim)"
        raise DatasetError(
            f"{_where(episode, name)} has shape {a.shape}, expected {want}; "
            f"reshape it (e.g. x.reshape(len(x), -1))"
        )
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_bool(arr: Any, name: str, episode: int | None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DatasetError(f"{_where(episode, name)} has shape {a.shape}, expected (T,)")
    if a.dtype != np.bool_:
        if not (np.issubdtype(a.dtype, np.number) and np.isin(a, (0, 1)).all()):
            raise DatasetError(
                f"{_where(episode, name)} must be boolean (or 0/1), got dtype {a.dtype}; "
                f"convert it with (x != 0)"
            )
        a = a != 0
    return np.ascontiguousarray(a)


class Episodes:
    """Ragged episodes stored flat.

    Arrays (N = total steps): ``observations (N, obs_dim) float32``, ``actions (N, act_dim)
    float32``, ``rewards (N,) float32``, ``terminations (N,) bool``, ``truncations (N,) bool``,
    optional ``goals (N, goal_dim) float32`` and ``infos`` (name -> ``(N, ...)`` array).
    Episode i occupies rows ``episode_starts[i] : episode_starts[i] + lengths[i]``.
    Everything is validated on construction; failures raise `DatasetError`.
    """

    def __init__(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        terminations: np.ndarray | None = None,
        truncations: np.ndarray | None = None,
        goals: np.ndarray | None = None,
        infos: Mapping[str, np.ndarray] | None = None,
        metadata: dict | None = None,
    ) -> None:
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise DatasetError(
                f"lengths must be a 1-D integer array, got {lengths.dtype} {lengths.shape}"
            )
        if len(lengths) == 0:
            raise DatasetError("dataset has no episodes; check the source file or filter")
        empty = np.flatnonzero(lengths <= 0)
        if len(empty):
            raise DatasetError(
                f"episode {int(empty[0])} is empty (length {int(lengths[empty[0]])}); "
                f"drop empty episodes before building Episodes"
            )
        self.lengths = lengths.astype(np.int64)
        self.episode_starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        n = int(self.lengths.sum())

        self.observations = _as_float(observations, "observations", None, 2)
        self.actions = _as_float(actions, "actions", None, 2)
        self.rewards = _as_float(rewards, "rewards", None, 1)
        self.goals = None if goals is None else _as_float(goals, "goals", None, 2)
        self.terminations = (
            np.zeros(n, bool)
            if terminations is None
            else _as_bool(terminations, "terminations", None)
        )
        self.truncations = (
            np.zeros(n, bool) if truncations is None else _as_bool(truncations, "truncations", None)
        )
        self.infos = {k: np.asarray(v) for k, v in (infos or {}).items()}
        self.metadata: dict = dict(metadata or {})

        for name, arr in self._fields():
            if len(arr) != n:
                raise DatasetError(
                    f"field '{name}' has {len(arr)} rows but the episode lengths sum to {n}; "
                    f"every field needs one row per step"
                )
        for name in _FLOAT_FIELDS:
            arr = getattr(self, name)
            if arr is None:
                continue
            bad = ~np.isfinite(arr)
            if bad.ndim > 1:
                bad = bad.any(axis=tuple(range(1, bad.ndim)))
            if bad.any():
                row = int(np.argmax(bad))
                ep = int(np.searchsorted(self.episode_starts, row, side="right") - 1)
                step = row - int(self.episode_starts[ep])
                raise DatasetError(
                    f"episode {ep}, field '{name}' has NaN/inf at step {step}; "
                    f"clean or drop that episode before loading"
                )

    def _fields(self) -> Iterator[tuple[str, np.ndarray]]:
        yield "observations", self.observations
        yield "actions", self.actions
        yield "rewards", self.rewards
        yield "terminations", self.terminations
        yield "truncations", self.truncations
        if self.goals is not None:
            yield "goals", self.goals
        for k, v in self.infos.items():
            yield f"infos/{k}", v

    @classmethod
    def from_episodes(
        cls, episodes: Sequence[Mapping[str, Any]], metadata: dict | None = None
    ) -> Episodes:
        """Build from per-episode dicts with keys ``observations``, ``actions``, ``rewards``,
        optional ``terminations``/``truncations`` (default all False), ``goals``, ``infos``."""
        if len(episodes) == 0:
            raise DatasetError("dataset has no episodes; check the source file or filter")
        cols: dict[str, list[np.ndarray]] = {
            k: [] for k in ("observations", "actions", "rewards", "terminations", "truncations")
        }
        goals: list[np.ndarray] = []
        infos: dict[str, list[np.ndarray]] = {}
        lengths = []
        has_goals = "goals" in episodes[0] and episodes[0]["goals"] is not None
        info_keys = sorted((episodes[0].get("infos") or {}).keys())
        dims: dict[str, tuple] = {}
        for i, ep in enumerate(episodes):
            for key in ("observations", "actions", "rewards"):
                if key not in ep:
                    raise DatasetError(f"episode {i} has no field '{key}'; every episode needs it")
            obs = _as_float(ep["observations"], "observations", i, 2)
            t = len(obs)
            if t == 0:
                raise DatasetError(
                    f"episode {i} is empty (0 steps); drop empty episodes before building Episodes"
                )
            row = {
                "observations": obs,
                "actions": _as_float(ep["actions"], "actions", i, 2),
                "rewards": _as_float(ep["rewards"], "rewards", i, 1),
                "terminations": _as_bool(ep["terminations"], "terminations", i)
                if ep.get("terminations") is not None
                else np.zeros(t, bool),
                "truncations": _as_bool(ep["truncations"], "truncations", i)
                if ep.get("truncations") is not None
                else np.zeros(t, bool),
            }
            if has_goals != (ep.get("goals") is not None):
                raise DatasetError(
                    f"episode {i}, field 'goals' is {'missing' if has_goals else 'present'} "
                    f"unlike episode 0; give goals for all episodes or for none"
                )
            if has_goals:
                row["goals"] = _as_float(ep["goals"], "goals", i, 2)
            ep_infos = dict(ep.get("infos") or {})
            if sorted(ep_infos) != info_keys:
                raise DatasetError(
                    f"episode {i}, field 'infos' has keys {sorted(ep_infos)} but episode 0 has "
                    f"{info_keys}; use the same info keys in every episode"
                )
            for k in info_keys:
                row[f"infos/{k}"] = np.asarray(ep_infos[k])
            for name, arr in row.items():
                if len(arr) != t:
                    raise DatasetError(
                        f"episode {i}, field '{name}' has {len(arr)} steps but 'observations' has "
                        f"{t}; every field needs one row per step"
                    )
                shape = arr.shape[1:]
                if name in dims and dims[name] != shape:
                    raise DatasetError(
                        f"episode {i}, field '{name}' has per-step shape {shape} but episode 0 "
                        f"has {dims[name]}; all episodes must share dimensions"
                    )
                dims.setdefault(name, shape)
            for k in cols:
                cols[k].append(row[k])
            if has_goals:
                goals.append(row["goals"])
            for k in info_keys:
                infos.setdefault(k, []).append(row[f"infos/{k}"])
            lengths.append(t)
        return cls(
            observations=np.concatenate(cols["observations"]),
            actions=np.concatenate(cols["actions"]),
            rewards=np.concatenate(cols["rewards"]),
            terminations=np.concatenate(cols["terminations"]),
            truncations=np.concatenate(cols["truncations"]),
            goals=np.concatenate(goals) if has_goals else None,
            infos={k: np.concatenate(v) for k, v in infos.items()},
            lengths=np.asarray(lengths, np.int64),
            metadata=metadata,
        )

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.lengths)

    def episode_index(self, i: int) -> slice:
        """Rows of the flat arrays that belong to episode i."""
        i = self._check_index(i)
        s = int(self.episode_starts[i])
        return slice(s, s + int(self.lengths[i]))

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes")
        return int(i) % n

    def __getitem__(self, i: int) -> Episode:
        i = self._check_index(i)
        sl = self.episode_index(i)
        return Episode(
            index=i,
            observations=self.observations[sl],
            actions=self.actions[sl],
            rewards=self.rewards[sl],
            terminations=self.terminations[sl],
            truncations=self.truncations[sl],
            goals=None if self.goals is None else self.goals[sl],
            infos={k: v[sl] for k, v in self.infos.items()},
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def states_only(self) -> Episodes:
        """The same episodes with zero-width actions (for a states-only diffusion model)."""
        return Episodes(
            observations=self.observations,
            actions=self.actions[:, :0],
            rewards=self.rewards,
            terminations=self.terminations,
            truncations=self.truncations,
            goals=self.goals,
            infos=self.infos,
            lengths=self.lengths,
            metadata=self.metadata,
        )

    def select(self, indices: Sequence[int] | np.ndarray) -> Episodes:
        """A new `Episodes` with the given episodes (in that order), e.g. for a train/val split."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            raise DatasetError("select() got no episode indices; pass at least one")
        rows = np.concatenate(
            [
                np.arange(self.episode_starts[i], self.episode_starts[i] + self.lengths[i])
                for i in idx
            ]
        )
        return Episodes(
            observations=self.observations[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            terminations=self.terminations[rows],
            truncations=self.truncations[rows],
            goals=None if self.goals is None else self.goals[rows],
            infos={k: v[rows] for k, v in self.infos.items()},
            lengths=self.lengths[idx],
            metadata=self.metadata,
        )

    @property
    def n_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def goal_dim(self) -> int | None:
        return None if self.goals is None else int(self.goals.shape[1])

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, (n_episodes,) float64."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def state_jumps(self, stride: int = 1) -> np.ndarray:
        """|o_{t+stride} - o_t| within episodes, (M, obs_dim): how far the data moves between
        two consecutive planned states."""
        n = self.n_steps
        episode = np.repeat(np.arange(len(self.lengths)), self.lengths)
        t = np.arange(max(n - stride, 0))
        valid = episode[t] == episode[t + stride]
        t = t[valid]
        return np.abs(self.observations[t + stride] - self.observations[t])

    def summary(self) -> dict[str, float | int]:
        """Counts and basic statistics, e.g. for logging."""
        return {
            "episodes": len(self),
            "steps": self.n_steps,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "mean_length": float(self.lengths.mean()),
            "min_length": int(self.lengths.min()),
            "max_length": int(self.lengths.max()),
            "mean_return": float(self.episode_returns().mean()),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"Episodes(episodes={s['episodes']}, steps={s['steps']}, obs_dim={s['obs_dim']}, "
            f"act_dim={s['act_dim']}, goals={self.goal_dim})"
        )
