"""Load a local Minari dataset into `Episodes` with Minari's own API; never downloads.

Rules (documented here because they decide what the model sees):

* **Location.** ``dataset`` is either a path to a dataset directory (the folder that holds
  ``data/``, or ``data/`` itself) or a Minari id such as ``diffplan/pointmaze-umaze-v0``,
  looked up under ``root``, else ``$MINARI_DATASETS_PATH``, else ``data/minari`` in the
  working directory (`datasets_root`; the one default of every command and of the demo).
  An id without ``-vN`` picks the highest local version. The folder is checked on disk
  *before* Minari is asked, so a missing dataset fails at once (no network attempt).
* **T+1 observations.** Minari stores T+1 observations (reset + every step) and T actions;
  the final observation is dropped, so row t is (observation_t, action_t, reward_t).
* **Dict observations** (e.g. PointMaze ``observation``/``achieved_goal``/``desired_goal``):
  ``desired_goal`` becomes ``goals`` (never part of the observation); when ``observation``
  exists, ``achieved_goal`` is dropped (it duplicates the position inside ``observation``)
  and ``observations = concat(observation, *other keys in sorted order)``; without an
  ``observation`` key, all remaining keys are concatenated in sorted order. Every value is
  flattened per step. Nested dicts are an error.
* **Infos.** Only the info keys named in ``info_keys`` are kept; arrays with T+1 rows are
  aligned with the observations (last row dropped).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.errors import DatasetError

_VERSION = re.compile(r"-v(\d+)$")


DEFAULT_DATASETS_ROOT = Path("data") / "minari"  # relative to the working directory
MINARI_HOME_ROOT = Path("~/.minari/datasets")  # Minari's own default, not used by diffplan


def datasets_root(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where local Minari datasets live, and why: ``root`` (``data.root``, ``--root``), else
    ``$MINARI_DATASETS_PATH``, else ``./data/minari`` (absolute path, origin)."""
    if root is not None:
        return Path(root).expanduser().absolute(), "data.root"
    env = os.environ.get("MINARI_DATASETS_PATH")
    if env:
        return Path(env).expanduser().absolute(), "$MINARI_DATASETS_PATH"
    return DEFAULT_DATASETS_ROOT.absolute(), "the default; set MINARI_DATASETS_PATH to change it"


def _local_ids(base: Path, limit: int = 20) -> list[str]:
    """Dataset ids under base (folders holding data/); cheap directory walk, no Minari call."""
    if not base.is_dir():
        return []
    found = sorted(
        p.parent.relative_to(base).as_posix() for p in base.glob("**/data") if p.is_dir()
    )
    return found[:limit]


def _creation_hint(dataset: str) -> str:
    m = re.search(r"pointmaze-([a-z0-9_]+?)(?:-v\d+)?$", dataset)
    if m:
        return f"create it with `diffplan data pointmaze --maze {m.group(1)}`"
    m = re.search(
        r"(hopper|walker2d|halfcheetah)-(random|medium-replay|medium-expert|medium|expert)"
        r"(?:-v\d+)?$",
        dataset,
    )
    if m:
        return f"create it with `diffplan data mujoco --env {m.group(1)} --level {m.group(2)}`"
    return "generate it locally (see `diffplan data --help`); nothing is downloaded"


def resolve_minari_path(dataset: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The ``data/`` folder of a local Minari dataset; `DatasetError` says where it looked."""
    p = Path(dataset).expanduser()
    if p.is_dir():
        for cand in (p / "data", p):
            if (cand / "metadata.json").is_file():
                return cand
        raise DatasetError(
            f"{p} is a directory but not a Minari dataset (no data/metadata.json); "
            f"pass the dataset folder or a Minari id"
        )
    dataset = str(dataset)
    base, origin = datasets_root(root)
    cand = base / dataset / "data"
    if (cand / "metadata.json").is_file():
        return cand
    if not _VERSION.search(dataset):
        parent, name = (base / dataset).parent, Path(dataset).name
        versions = []
        if parent.is_dir():
            for d in parent.iterdir():
                m = re.fullmatch(re.escape(name) + r"-v(\d+)", d.name)
                if m and (d / "data" / "metadata.json").is_file():
                    versions.append((int(m.group(1)), d / "data"))
        if versions:
            return max(versions)[1]
    local = _local_ids(base)
    elsewhere = MINARI_HOME_ROOT.expanduser()
    hint = ""
    if elsewhere != base and (elsewhere / dataset).is_dir():
        hint = f"; a copy exists in {elsewhere}: set MINARI_DATASETS_PATH={elsewhere} to use it"
    raise DatasetError(
        f"Minari dataset '{dataset}' not found: looked in {base / dataset} ({origin}){hint}; "
        f"local datasets there: {local or 'none'}; {_creation_hint(dataset)} "
        f"or point root=/MINARI_DATASETS_PATH at the folder that holds it"
    )


def read_minari_metadata(
    dataset: str | os.PathLike, root: str | os.PathLike | None = None
) -> dict | None:
    """The metadata.json of a local Minari dataset (env specs, ref scores), or None if absent.

    Read as plain JSON: no Minari import, fast enough to call at evaluation time."""
    try:
        path = resolve_minari_path(dataset, root)
    except DatasetError:
        return None
    try:
        return json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError):
        return None


def _flat(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object:
        raise DatasetError(
            f"Minari {what} is not a numeric array; only Box/Dict-of-Box spaces are supported"
        )
    return a.reshape(len(a), -1)


def flatten_observations(obs: Any, episode: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply the module's dict-observation rule: returns (observations, goals or None)."""
    if not isinstance(obs, dict):
        return _flat(obs, f"observations (episode {episode})"), None
    for k, v in obs.items():
        if isinstance(v, dict):
            raise DatasetError(
                f"episode {episode}, field 'observations/{k}' is a nested dict; "
                f"flatten the observation space before creating the dataset"
            )
    keys = [k for k in obs if k != "desired_goal"]
    if "observation" in keys:
        keys = ["observation"] + sorted(
            k for k in keys if k not in ("observation", "achieved_goal")
        )
    else:
        keys = sorted(keys)
    if not keys:
        raise DatasetError(
            f"episode {episode}, field 'observations' has no usable keys besides desired_goal"
        )
    observations = np.concatenate([_flat(obs[k], f"observations/{k}") for k in keys], axis=1)
    goals = (
        _flat(obs["desired_goal"], "observations/desired_goal") if "desired_goal" in obs else None
    )
    return observations, goals


def _metadata(ds: Any, data_path: Path) -> dict:
    raw = ds.storage.metadata
    meta: dict = {"source": "minari", "path": str(data_path), "dataset_id": ds.id}
    for key in ("env_spec", "eval_env_spec"):
        spec_json = raw.get(key)
        if isinstance(spec_json, str):
            # keep the JSON: gym.make(EnvSpec.from_json(s)) re-creates the env (maze layout too)
            meta[f"{key}_json"] = spec_json
            try:
                meta[key.replace("_spec", "_id")] = json.loads(spec_json)["id"]
            except (ValueError, KeyError, TypeError):
                pass
    if "env_id" in meta and "eval_env_id" not in meta:  # Minari evaluates on env when unset
        meta["eval_env_id"], meta["eval_env_spec_json"] = meta["env_id"], meta["env_spec_json"]
    for key in ("ref_min_score", "ref_max_score", "minari_version", "algorithm_name"):
        if raw.get(key) is not None:
            meta[key] = raw[key]
    return meta


def load_minari(
    dataset: str | os.PathLike,
    root: str | os.PathLike | None = None,
    info_keys: Sequence[str] = (),
    goal_info_key: str | None = None,
) -> Episodes:
    """Read every episode of a local Minari dataset into `Episodes` (rules: module docstring).

    goal_info_key: take the goals from this info key (T or T+1 rows) instead of a dict
    observation's ``desired_goal``.

    ``metadata`` on the result holds env ids/specs and reference scores when present.
    """
    data_path = resolve_minari_path(dataset, root)
    import minari  # deferred: the existence check above must not pay for (or trigger) Minari

    try:
        ds = minari.MinariDataset(data_path)
    except Exception as e:  # corrupt metadata, unsupported version, ...
        raise DatasetError(f"cannot open Minari dataset at {data_path}: {e}") from e

    episodes = []
    for i, ep in enumerate(ds.iterate_episodes()):
        t = len(ep.rewards)
        obs, goals = flatten_observations(ep.observations, i)
        if len(obs) != t + 1:
            raise DatasetError(
                f"episode {i}, field 'observations' has {len(obs)} rows, expected {t + 1} "
                f"(Minari stores T+1 observations for T steps); the dataset is malformed"
            )
        infos = {}
        for k in info_keys:
            if k not in ep.infos:
                raise DatasetError(
                    f"episode {i}, field 'infos/{k}' does not exist; available: {sorted(ep.infos)}"
                )
            v = np.asarray(ep.infos[k])
            infos[k] = v[:t]  # T+1 rows are aligned with observations: drop the last
        if goal_info_key is not None:
            if goal_info_key not in ep.infos:
                raise DatasetError(
                    f"episode {i} has no 'infos/{goal_info_key}' to read goals from "
                    f"(data.goal_info_key); available: {sorted(ep.infos)}"
                )
            goals = _flat(np.asarray(ep.infos[goal_info_key]), f"infos/{goal_info_key}")
        episodes.append(
            {
                "observations": obs[:t],
                "actions": _flat(ep.actions, f"actions (episode {i})"),
                "rewards": ep.rewards,
                "terminations": ep.terminations,
                "truncations": ep.truncations,
                "goals": None if goals is None else goals[:t],
                "infos": infos,
            }
        )
    if not episodes:
        raise DatasetError(f"Minari dataset at {data_path} has no episodes; regenerate it")
    return Episodes.from_episodes(episodes, metadata=_metadata(ds, data_path))
