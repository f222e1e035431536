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
* **Reading.** HDF5 datasets whose spaces are Box or a Dict of Box are read in bulk with h5py
  (`diffplan.data.minari_hdf5`, same result as Minari's API, ~10x faster); anything else goes
  through ``MinariDataset.iterate_episodes``. ``reader="minari"`` forces Minari's API. A
  progress bar shows for datasets of 100,000 steps or more (``progress=`` overrides).
* **Cache.** The loaded arrays are cached as ``.npy`` files (`diffplan.data.cache`) and later
  loads memory-map them (a 1M-step dataset: well under a second instead of a full read). The
  cache sits next to the dataset, in ``<dataset folder>/.diffplan-cache/`` (hidden, so Minari
  ignores it), or, when that folder is not writable, under ``$XDG_CACHE_HOME/diffplan``
  (default ``~/.cache/diffplan``); ``$DIFFPLAN_CACHE_DIR`` or ``cache_dir=`` puts it there
  instead. An entry is keyed by the size, mtime, ctime and inode of every file in ``data/``
  and by the load options (``info_keys``, ``goal_info_key``), the loader and the Minari
  version; a stale, truncated or foreign entry is ignored and rewritten, never trusted
  (CRC-32 of every array). Writes are atomic. Opt out with ``cache=False`` or
  ``DIFFPLAN_MINARI_CACHE=0``; delete the ``.diffplan-cache`` folder to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.data.minari_hdf5 import observation_keys
from diffplan.errors import DatasetError

_VERSION = re.compile(r"-v(\d+)$")
# Bump when the loading rules change, so that caches written by older code are not used.
LOADER_VERSION = 1
CACHE_ENV = "DIFFPLAN_MINARI_CACHE"  # 0 / false / no / off: no cache
CACHE_DIR_ENV = "DIFFPLAN_CACHE_DIR"
PROGRESS_MIN_STEPS = 100_000


DEFAULT_DATASETS_ROOT = Path("data") / "minari"  # relative to the working directory
MINARI_HOME_ROOT = Path("~/.minari/datasets")  # Minari's own default, not used by diffplan


def datasets_root(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where local Minari datasets live, and why: ``root`` (``data.root``, ``--root``), else
    ``$MINARI_DATASETS_PATH``, else ``./data/minari`` (absolute path, origin)."""
    if root is not None:
        return Path(root).expanduser().absolute(), "data.root"
    env = os.environ.get("MINARI_DATASETS_PATH")
    if env:
        path = Path(env).expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise DatasetError(
                f"MINARI_DATASETS_PATH={env} is a file, not a folder; point it at the folder "
                "that holds the datasets (or unset it to use ./data/minari)"
            )
        return path, "$MINARI_DATASETS_PATH"
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


@contextlib.contextmanager
def minari_datasets_root(root: str | os.PathLike | None) -> Iterator[None]:
    """Point Minari at ``root`` for the block (it reads MINARI_DATASETS_PATH per call); None
    means diffplan's one default (:func:`datasets_root`), never Minari's own ~/.minari."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(datasets_root(root)[0])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


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
    keys = observation_keys(list(obs))
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
    *,
    cache: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    reader: str = "auto",
) -> Episodes:
    """Read every episode of a local Minari dataset into `Episodes` (rules: module docstring).

    goal_info_key: take the goals from this info key (T or T+1 rows) instead of a dict
    observation's ``desired_goal``.
    cache: use and write the on-disk cache (default: on unless ``$DIFFPLAN_MINARI_CACHE=0``);
    cache_dir: where (default: next to the dataset, see the module docstring).
    progress: show a progress bar while reading the dataset (default: 100,000 steps or more).
    reader: "auto" (bulk h5py read where supported, else Minari's API) or "minari".

    ``metadata`` on the result holds env ids/specs and reference scores when present.
    """
    if reader not in ("auto", "minari"):
        raise ValueError(f"reader must be 'auto' or 'minari', got {reader!r}")
    data_path = resolve_minari_path(dataset, root)
    if cache is None:
        cache = os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    key = entries = None
    if cache:
        key = _cache_key(data_path, info_keys, goal_info_key)
        if key is not None:
            from diffplan.data.cache import load_cached

            entries = _cache_entries(data_path, key, cache_dir)
            for entry in entries:
                episodes = load_cached(entry, key, {"path": str(data_path)})
                if episodes is not None:
                    return episodes
    try:
        episodes = _read_minari(data_path, info_keys, goal_info_key, progress, reader)
    except BlockingIOError as e:  # HDF5 file locking: a writer (or a crashed one) holds it
        raise DatasetError(
            f"the Minari dataset at {data_path} is locked by another process (is it still being "
            f"written?); load it once that process ends (a stale lock from a killed writer: "
            f"HDF5_USE_FILE_LOCKING=FALSE)"
        ) from e
    if entries and _cache_key(data_path, info_keys, goal_info_key) == key:
        _write_cache(entries, key, episodes)  # (not when the files changed while being read)
    return episodes


def _cache_key(data_path: Path, info_keys: Sequence[str], goal_info_key: str | None) -> dict | None:
    from diffplan.data.cache import file_fingerprint

    try:
        files = file_fingerprint(data_path)
        minari_version = importlib.metadata.version("minari")
    except (OSError, importlib.metadata.PackageNotFoundError):
        return None
    return {
        "files": files,
        "info_keys": sorted(set(info_keys)),
        "goal_info_key": goal_info_key,
        "loader": LOADER_VERSION,
        "minari": minari_version,
    }


def _digest(x: Any) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()[:16]


def _cache_entries(data_path: Path, key: dict, cache_dir) -> list[Path]:
    """Where the cache entry for these load options may live, in order of preference."""
    name = "episodes-" + _digest([key["info_keys"], key["goal_info_key"]])
    per_dataset = _digest(str(data_path.resolve()))
    base = cache_dir or os.environ.get(CACHE_DIR_ENV)
    if base:
        return [Path(base).expanduser() / "minari" / per_dataset / name]
    home = data_path.parent if data_path.name == "data" else data_path
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return [home / ".diffplan-cache" / name, user / "diffplan" / "minari" / per_dataset / name]


def _write_cache(entries: list[Path], key: dict, episodes: Episodes) -> None:
    from diffplan.data.cache import save_cached

    errors = []
    for entry in entries:
        try:
            save_cached(entry, key, episodes)
            return
        except Exception as e:  # a cache that cannot be written costs speed, never the load
            errors.append(f"{entry}: {e}")
    warnings.warn(
        f"could not write the dataset cache ({'; '.join(errors)}); the next load reads the "
        f"dataset again (set {CACHE_DIR_ENV} to a writable folder, or {CACHE_ENV}=0)",
        stacklevel=3,
    )


def _read_minari(
    data_path: Path,
    info_keys: Sequence[str],
    goal_info_key: str | None,
    progress: bool | None,
    reader: str,
) -> Episodes:
    import minari  # deferred: the existence check above must not pay for (or trigger) Minari

    metadata = data_path / "metadata.json"
    try:
        json.loads(metadata.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problem = (
            "is empty"
            if metadata.is_file() and metadata.stat().st_size == 0
            else (f"cannot be read ({e})" if isinstance(e, OSError) else f"is not valid JSON ({e})")
        )
        raise DatasetError(
            f"Minari dataset at {data_path.parent}: {metadata} {problem}; restore it, or "
            "delete the dataset's folder and make it again (the command that made it, e.g. "
            "`diffplan data ...`)"
        ) from None
    try:
        ds = minari.MinariDataset(data_path)
    except Exception as e:  # unsupported version, missing keys, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(
            f"cannot open Minari dataset at {data_path}: {first}; check {metadata} or make the "
            "dataset again"
        ) from None

    if progress is None:
        try:
            progress = int(ds.storage.total_steps) >= PROGRESS_MIN_STEPS
        except (KeyError, TypeError, ValueError):
            progress = False
    desc = f"loading {ds.id}"
    if reader == "auto":
        from diffplan.data.minari_hdf5 import read_hdf5

        flat = read_hdf5(ds.storage, info_keys, goal_info_key, progress=progress, desc=desc)
        if flat is not None:
            return Episodes(**flat, metadata=_metadata(ds, data_path))

    from tqdm.auto import tqdm

    episodes = []
    bar = tqdm(
        ds.iterate_episodes(),
        total=len(ds.episode_indices),
        desc=desc,
        unit="ep",
        disable=not progress,
        mininterval=0.5,
    )
    for i, ep in enumerate(bar):  # (the bar closes itself when the loop ends)
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
