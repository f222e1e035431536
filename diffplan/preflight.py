"""Checks made before any work starts, none of which needs torch: run folders, output files,
datasets on disk, and temp files left behind by a killed save.

The rule they enforce: nothing a user owns is overwritten or deleted without an explicit
flag (`--overwrite`, `--resume`), and a bad input is refused before anything is changed. The
CLI calls them before importing torch, so that a wrong path answers in a fraction of a second;
`train` and `train_value` call them too, for API users.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from diffplan.errors import CheckpointError, ConfigError, DiffplanError

# What `train` writes into a run folder, and so what `--overwrite` replaces (nothing else).
RUN_OUTPUTS = ("last.pt", "config.yaml", "losses.csv")
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard


def default_run_dir(name: str) -> Path:
    """Where `train` writes when no --out is given: runs/<config name>."""
    return Path("runs") / name


# ----------------------------------------------------------------------------- temp files


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temp files that an atomic write of `path` leaves when killed mid-write: `.NAME.*.tmp`
    next to it (`save_checkpoint`, `save_config`)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def remove_stale_temp_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Delete the temp files of `paths` (a killed save's leftovers, never a finished file)."""
    removed = []
    for path in paths:
        for tmp in temp_files(path):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _is_temp_file(path: Path) -> bool:
    """A killed save's leftover, or the lock of the run writing there (diffplan.runlock)."""
    name = path.name
    if name == ".diffplan.lock":
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in RUN_OUTPUTS)


# ----------------------------------------------------------------------------- run folders


def check_run_dir(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (changing nothing) a run folder that `train` must not write into.

    New runs need a new or empty folder; a folder with anything in it (an old run, or files
    of the user's own such as a config.yaml) needs `--resume` (continue its last.pt) or
    `--overwrite` (replace train's own outputs: RUN_OUTPUTS and TensorBoard event files).
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError(
            "--resume continues a run and --overwrite replaces it; pass one of them, not both"
        )
    if out.exists() and not out.is_dir():
        raise DiffplanError(f"--out {out} is a file, not a directory; choose a folder for the run")
    last = out / "last.pt"
    if resume:
        if not last.is_file():
            what = "the folder does not exist" if not out.exists() else "no checkpoint was saved"
            raise CheckpointError(
                f"nothing to resume: {last} not found ({what}); drop --resume to start a new run"
                f"{' (with --overwrite to replace the files there)' if out.exists() else ''}"
            )
        return
    if overwrite or not out.is_dir():
        return
    held = sorted(p.name for p in out.iterdir() if not _is_temp_file(p))
    if last.exists():
        raise DiffplanError(
            f"{out} already holds a run ({last}); pass --resume to continue it, --overwrite to "
            f"start over, or choose another --out"
        )
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise DiffplanError(
            f"{out} is not empty (it holds {shown}) and train writes into a new or empty folder; "
            f"choose another --out, or pass --overwrite to replace train's own files there "
            f"({', '.join(RUN_OUTPUTS)}, TensorBoard events)"
        )


def prepare_run_dir(out: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Create the run folder; remove the temp files of killed saves and, with `overwrite`, the
    previous run's outputs. Call only after every input has been validated. Returns what was
    removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files([out / name for name in RUN_OUTPUTS])
    if overwrite:
        old = [out / name for name in RUN_OUTPUTS] + sorted(out.glob(EVENTS_GLOB))
        for path in old:
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


# ----------------------------------------------------------------------------- output files


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output_file(
    path: str | os.PathLike,
    overwrite: bool = False,
    flag: str = "--out",
    inputs: Sequence[tuple[str | os.PathLike, str]] = (),
    example: str = "out.pt",
) -> Path:
    """Refuse an output path that would destroy something: one of the command's `inputs`
    ((path, "what it is") pairs; even with --overwrite), a directory, or an existing file
    without `overwrite`. Returns the path."""
    path = Path(path)
    for other, what in inputs:
        if _same_file(path, Path(other)):
            raise DiffplanError(
                f"{flag} {path} is {what}; writing there would replace it: choose another file, "
                f"e.g. {Path(other).parent / example}"
            )
    if path.is_dir():
        raise DiffplanError(
            f"{flag} {path} is a directory; give a file path, e.g. {path / example}"
        )
    if path.exists() and not path.is_file():
        raise DiffplanError(f"{flag} {path} exists and is not a regular file; choose another path")
    if path.exists() and not overwrite:
        raise DiffplanError(f"{flag} {path} exists; pass --overwrite to replace it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DiffplanError(f"{flag} {path}: {parent} is a file, not a directory")
    return path


# What matplotlib's savefig writes (checked here without importing matplotlib).
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def check_plot_path(path: str | os.PathLike, flag: str = "--plot") -> Path:
    """A plot file name whose extension matplotlib can write, so that a long run never ends
    in a save that fails."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise DiffplanError(
            f"{flag} {path}: cannot write a plot as '{path.suffix or '(no extension)'}'; use "
            f"one of .{', .'.join(PLOT_FORMATS)} (e.g. {path.with_suffix('.png')})"
        )
    return path


def check_input_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """An input file that must exist: a missing path or a directory is a `CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{what} {path} is a directory, not a file; pass the file inside it, e.g. "
            f"{path / 'last.pt'}"
        )
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found")
    return path


def check_value_paths(
    diffusion_checkpoint: str | os.PathLike, out_path: str | os.PathLike, overwrite: bool = False
) -> None:
    """Refuse, before anything is loaded, a value file that would replace the diffusion
    checkpoint, a directory, or an existing file (unless `overwrite`); the checkpoint must
    exist. Needs no torch (the CLI calls it first)."""
    check_input_file(diffusion_checkpoint, "checkpoint")
    check_output_file(
        out_path,
        overwrite,
        "--out",
        inputs=[(diffusion_checkpoint, "the diffusion checkpoint given as --checkpoint")],
        example="value.pt",
    )


# ----------------------------------------------------------------------------- datasets


def check_dataset_available(data) -> Path | None:
    """Fail fast (no torch, nothing read) when the dataset named by `data` (a DataConfig) is
    not on disk. Returns its location (None for synthetic data)."""
    if data.source == "synthetic":
        return None
    if not data.dataset:
        raise ConfigError(f"data.dataset is empty; name the {data.source} dataset to train on")
    if data.source == "minari":
        from diffplan.data.minari_source import resolve_minari_path

        return resolve_minari_path(data.dataset, data.root)
    if data.source == "d4rl":
        from diffplan.data.d4rl_source import check_d4rl_path

        return check_d4rl_path(data.dataset)
    raise ConfigError(f"unknown data.source '{data.source}'; use minari, d4rl or synthetic")
