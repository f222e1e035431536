"""An on-disk cache of loaded `Episodes`: flat ``.npy`` arrays, memory-mapped on a hit.

A cache entry is a folder holding one ``.npy`` file per array and a ``manifest.json`` that
records a *key* (what the arrays were made from: the source files' size, mtime, ctime and
inode, the load options, the loader and Minari versions), each array's dtype, shape and
CRC-32, and the `Episodes` metadata. An entry is used only when its key equals the current
key and every array matches its manifest; anything else (stale, truncated, foreign, a
missing file) is a miss, never an error, and the caller rewrites the entry.

Entries are written atomically: into a temporary sibling folder, renamed into place (a
stale entry is renamed away first and then deleted). Readers keep what they mapped even when
a writer replaces the entry, because files are never modified in place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from diffplan.data.episodes import Episodes

FORMAT = 1
_ARRAYS = ("observations", "actions", "rewards", "terminations", "truncations", "lengths")
_LEFTOVER_AGE_S = 3600  # temporary folders of crashed writers older than this are removed


def file_fingerprint(folder: Path) -> dict[str, list[int]]:
    """Size, mtime, ctime and inode of every file under `folder` (hidden entries skipped).

    ctime and inode change on any rewrite or replacement, even one that restores the mtime."""
    out: dict[str, list[int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            st = path.stat()
            key = path.relative_to(folder).as_posix()
            out[key] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1)) if a.size else 0


def load_cached(entry: Path, key: dict, path_metadata: dict | None = None) -> Episodes | None:
    """The `Episodes` stored in `entry` if its key equals `key` and its arrays check out;
    None otherwise. Arrays are memory-mapped copy-on-write (writable, the file never
    changes). `path_metadata` entries overwrite the stored metadata (e.g. the dataset path)."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return None
        arrays = {}
        for name, info in manifest["arrays"].items():
            arr = np.load(entry / info["file"], mmap_mode="c", allow_pickle=False)
            if (
                arr.dtype.str != info["dtype"]
                or list(arr.shape) != info["shape"]
                or _crc(arr) != info["crc32"]
            ):
                return None
            arrays[name] = arr
        infos = {name: arrays[f"infos/{name}"] for name in manifest["info_names"]}
        metadata = dict(manifest["metadata"])
        metadata.update(path_metadata or {})
        return Episodes(
            observations=arrays["observations"],
            actions=arrays["actions"],
            rewards=arrays["rewards"],
            lengths=arrays["lengths"],
            terminations=arrays["terminations"],
            truncations=arrays["truncations"],
            goals=arrays.get("goals"),
            infos=infos,
            metadata=metadata,
        )
    except Exception:  # a cache that cannot be read is a miss, whatever the reason
        return None


def _remove_leftovers(parent: Path, stem: str) -> None:
    now = time.time()
    for p in parent.glob(f".{stem}.*"):
        try:
            if now - p.stat().st_mtime > _LEFTOVER_AGE_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def save_cached(entry: Path, key: dict, episodes: Episodes) -> None:
    """Write `episodes` to the cache folder `entry` atomically; raises OSError on failure
    (nothing half-written is left under `entry`)."""
    parent = entry.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = parent / f".{entry.name}.tmp-{token}"
    tmp.mkdir()
    try:
        arrays = {name: getattr(episodes, name) for name in _ARRAYS}
        if episodes.goals is not None:
            arrays["goals"] = episodes.goals
        info_names = list(episodes.infos)
        for name in info_names:
            arrays[f"infos/{name}"] = episodes.infos[name]
        described = {}
        for i, (name, arr) in enumerate(arrays.items()):
            arr = np.ascontiguousarray(arr)
            if arr.dtype.hasobject:
                raise OSError(f"cannot cache the object array '{name}'")
            fname = f"{i:02d}.npy"
            with open(tmp / fname, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            described[name] = {
                "file": fname,
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "crc32": _crc(arr),
            }
        manifest = {
            "format": FORMAT,
            "key": key,
            "arrays": described,
            "info_names": info_names,
            "metadata": episodes.metadata,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        old = None
        if entry.exists():
            old = parent / f".{entry.name}.old-{token}"
            os.rename(entry, old)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # not lost to a concurrent writer of the same entry
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_leftovers(parent, entry.name)
