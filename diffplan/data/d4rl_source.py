"""Load a D4RL-layout HDF5 file into `Episodes` with h5py (the `d4rl` package is not needed).

Layout: ``observations (N, obs)``, ``actions (N, act)``, ``rewards (N,)``, ``terminals (N,)``,
optional ``timeouts (N,)`` and ``infos/*``: ``infos/goal`` becomes ``goals``, every other
numeric ``infos/<name>`` with N rows (``qpos``, ``qvel``, ...) goes to ``infos[<name>]``.

Episode split, as d4rl's ``sequence_dataset`` does it: an episode ends *after* step i when
``terminals[i] or timeouts[i]``; the trailing steps after the last such end are dropped
(``keep_incomplete=True`` keeps them as one more episode, with no end flag). Files without
``timeouts`` use d4rl's older rule: an episode is also cut once it reaches
``max_episode_steps`` steps (default 1000). Unlike d4rl's iterator, which resets its step
counter off by one so that every episode after the first is cut at 999 steps, every cut
here is exactly ``max_episode_steps`` steps. ``terminals`` become ``terminations``; the
``timeouts`` (or fallback cuts) become ``truncations``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.errors import DatasetError

_REQUIRED = ("observations", "actions", "rewards", "terminals")


def _episode_ends(
    terminals: np.ndarray, timeouts: np.ndarray | None, max_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive last-step indices of complete episodes, and the truncation flags."""
    if timeouts is not None:
        return np.flatnonzero(terminals | timeouts), timeouts.copy()
    # Fallback: cut segments between terminals every max_steps steps.
    truncs = np.zeros_like(terminals)
    seg_start = 0
    ends = []
    for term_end in list(np.flatnonzero(terminals)) + [len(terminals)]:
        cuts = np.arange(seg_start + max_steps - 1, term_end, max_steps)
        truncs[cuts] = True
        ends.extend(cuts.tolist())
        if term_end < len(terminals):
            ends.append(term_end)
        seg_start = term_end + 1
    return np.asarray(sorted(ends), dtype=np.int64), truncs


def check_d4rl_path(path: str | os.PathLike) -> Path:
    """The path of a D4RL file that exists; `DatasetError` otherwise (nothing is opened)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DatasetError(f"D4RL file {path} is a directory; pass the .hdf5 file itself")
    if not path.is_file():
        raise DatasetError(
            f"D4RL file {path} does not exist; check the path (nothing is downloaded)"
        )
    return path


def load_d4rl_hdf5(
    path: str | os.PathLike,
    max_episode_steps: int = 1000,
    keep_incomplete: bool = False,
) -> Episodes:
    """Read a D4RL HDF5 file and split it into episodes (rules: module docstring)."""
    path = check_d4rl_path(path)
    import h5py

    if max_episode_steps < 1:
        raise DatasetError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(
            f"{path} is not a readable HDF5 file ({e}); the file is truncated or not D4RL"
        ) from e
    try:
        with f:
            missing = [k for k in _REQUIRED if k not in f]
            if missing:
                raise DatasetError(
                    f"{path} has no '{missing[0]}' dataset (D4RL needs {', '.join(_REQUIRED)}); "
                    f"top-level keys are {sorted(f.keys())}"
                )
            data = {k: f[k][()] for k in _REQUIRED}
            timeouts = f["timeouts"][()] if "timeouts" in f else None
            n = len(data["rewards"])
            goals = None
            infos = {}
            if "infos" in f and isinstance(f["infos"], h5py.Group):
                for k, d in f["infos"].items():
                    if not isinstance(d, h5py.Dataset) or d.shape[:1] != (n,):
                        continue  # scalars, groups, per-episode tables: not per-step data
                    if not np.issubdtype(d.dtype, np.number) and d.dtype != np.bool_:
                        continue
                    if k == "goal":
                        goals = d[()]
                    else:
                        infos[k] = d[()]
    except DatasetError:
        raise
    except (OSError, KeyError, RuntimeError) as e:
        raise DatasetError(f"cannot read {path} ({e}); the file is truncated or corrupt") from e

    columns = {**data, **({} if timeouts is None else {"timeouts": timeouts})}
    if goals is not None:
        columns["infos/goal"] = goals
    for k, arr in columns.items():
        if len(arr) != n:
            raise DatasetError(
                f"{path}: '{k}' has {len(arr)} rows but 'rewards' has {n}; the file is inconsistent"
            )
    terminals = np.asarray(data["terminals"]).reshape(n) != 0
    timeouts = None if timeouts is None else np.asarray(timeouts).reshape(n) != 0
    ends, truncs = _episode_ends(terminals, timeouts, max_episode_steps)

    stop = int(ends[-1]) + 1 if len(ends) else 0
    if keep_incomplete and stop < n:
        ends = np.append(ends, n - 1)
        stop = n
    if stop == 0:
        raise DatasetError(
            f"{path} has no complete episode (no terminals/timeouts set); pass "
            f"keep_incomplete=True to keep the unfinished steps as one episode"
        )
    lengths = np.diff(np.concatenate([[-1], ends]))
    sl = slice(0, stop)
    metadata = {
        "source": "d4rl",
        "path": str(path),
        "dropped_trailing_steps": n - stop,
        "split": "terminals|timeouts"
        if timeouts is not None
        else f"terminals|{max_episode_steps} steps",
    }
    return Episodes(
        observations=data["observations"][sl],
        actions=data["actions"][sl],
        rewards=np.asarray(data["rewards"]).reshape(n)[sl],
        terminations=terminals[sl],
        truncations=truncs[sl],
        goals=None if goals is None else goals[sl],
        infos={k: v[sl] for k, v in infos.items()},
        lengths=lengths,
        metadata=metadata,
    )
