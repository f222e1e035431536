"""One-file checkpoints: config, spec, normalizer, weights (raw + EMA), optimizer and RNG state.

The file holds only tensors and plain Python containers/scalars/strings, so it loads with
`torch.load(weights_only=True)` and a file from a stranger cannot run code. Writes are atomic
(temp file in the same directory, fsync, rename): a kill during a save leaves the previous
checkpoint intact (and a `.NAME.*.tmp` file that the next `train` removes). A file whose
tensors hold NaN/inf is refused on load.

    {"format": "diffplan-checkpoint", "version": 1, "config": {...}, "spec": {...},
     "normalizer": {...}, "return_range": [lo, hi] | None, "cond_dim": int, "step": int,
     "ema": state_dict, "model": state_dict, "optimizer": state_dict | None,
     "rng": {name: ByteTensor} | None, "examples": {"x": (K, H, D), "returns": (K, 1)} | None,
     "meta": {...}}
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffplan.config import Config, config_from_dict
from diffplan.diffusion import Diffusion
from diffplan.distributed import resolve_device
from diffplan.errors import CheckpointError, ConfigError
from diffplan.guidance import Inpainting
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec

FORMAT = "diffplan-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("config", "spec", "normalizer", "ema", "step")


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `payload` (format/version tags added) to `path` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _plain({"format": FORMAT, "version": VERSION, **payload}, "checkpoint")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave half-written temp files behind; the old `path` is untouched.
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable (best effort: not every filesystem allows it).
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _plain(obj: Any, where: str) -> Any:
    """`obj` with only tensors and plain containers/scalars/strings (what weights_only loads);
    str/int/float subclasses (e.g. torch.__version__) become their base type."""
    if obj is None or isinstance(obj, torch.Tensor) or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, dict):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(
        f"{where} is a {type(obj).__name__}; checkpoints hold only tensors, numbers, strings, "
        f"lists and dicts (so that they load with weights_only=True)"
    )


def first_non_finite(obj: Any, where: str = "") -> str | None:
    """The name of the first floating-point tensor in `obj` (nested dicts/lists) that holds
    NaN or inf, or None."""
    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        return where or "a tensor" if bad else None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{where}[{key!r}]" if where else str(key))
        if found:
            return found
    return None


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict, validated; every failure is one clear `CheckpointError`."""
    from diffplan.preflight import check_input_file

    path = check_input_file(path, "checkpoint")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load pickled code; this file was not written by diffplan"
            ) from None
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint (unreadable pickle)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as e:
        detail = str(e).split(".")[0] or type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({detail})") from None
    except Exception as e:  # arbitrary bytes can fail the unpickler in any way
        raise CheckpointError(
            f"{path} is not a checkpoint (unreadable: {type(e).__name__}); pass a last.pt "
            "written by `diffplan train`"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a diffplan checkpoint (no '{FORMAT}' format tag; a plain state_dict "
            f"or another program's file?)"
        )
    version = raw.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this diffplan reads "
            f"(up to {VERSION}); upgrade diffplan"
        )
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it has no '{missing[0]}' entry")
    bad = first_non_finite({k: raw.get(k) for k in ("ema", "model", "normalizer", "optimizer")})
    if bad:
        raise CheckpointError(
            f"{path} holds NaN/inf values (in {bad}): the run that wrote it diverged; use an "
            f"earlier checkpoint or retrain with a lower train.lr"
        )
    return raw


@dataclass
class LoadedModel:
    """A trained model ready to sample: EMA weights, eval mode, with everything to use it."""

    config: Config
    spec: TrajectorySpec
    normalizer: Normalizer
    diffusion: Diffusion
    return_range: tuple[float, float] | None
    step: int
    cond_dim: int
    path: Path
    raw: dict = field(repr=False)

    @property
    def device(self) -> torch.device:
        return self.diffusion.alphas_cumprod.device

    def normalize_return(self, value: torch.Tensor | float) -> torch.Tensor:
        """Env-unit return(s) -> the model's [0, 1] conditioning scale, (B, 1)."""
        if self.return_range is None:
            raise CheckpointError(f"{self.path} was trained without return conditioning")
        lo, hi = self.return_range
        value = torch.as_tensor(value, dtype=torch.float32, device=self.device).reshape(-1, 1)
        return (value - lo) / max(hi - lo, 1e-8)

    def state_jump_limit(self) -> torch.Tensor | None:
        """(obs_dim,) env units: how far the training data moves between two consecutive
        planned states (its 99.9 % quantile, stored at training time; for older checkpoints
        the largest jump in the stored example windows). None if neither is there."""
        stats = self.raw.get("meta", {}).get("state_jumps") or {}
        if stats.get("limit") is not None:
            return torch.tensor(stats["limit"], dtype=torch.float32)
        examples = self.raw.get("examples")
        if not examples or examples["x"].shape[1] < 2:
            return None
        obs = self.spec.observations(self.normalizer.unnormalize(examples["x"].float()))
        return (obs[:, 1:] - obs[:, :-1]).abs().flatten(0, 1).amax(0)

    def example_conditions(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Inpainting | None, torch.Tensor | None]:
        """Conditions taken from `n` training windows stored in the checkpoint: the observations
        at the model's condition steps (as inpainting), and their returns when the model is
        return-conditioned. Lets `diffplan sample` draw realistic plans without the dataset."""
        examples = self.raw.get("examples")
        if not examples:
            return None, None
        x = examples["x"].to(self.device)
        pick = torch.randint(len(x), (n,), generator=generator).to(self.device)
        mask = torch.zeros(self.spec.horizon, self.spec.transition_dim, dtype=torch.bool)
        mask[list(self.diffusion.condition_steps), self.spec.observation_slice] = True
        inpaint = Inpainting(mask.to(self.device), x[pick])
        cond = None
        if self.cond_dim > 0 and examples.get("returns") is not None:
            cond = self.normalize_return(examples["returns"].to(self.device)[pick])
        return inpaint, cond


def diffusion_from_checkpoint(raw: dict, weights: str = "ema") -> Diffusion:
    """Rebuild the model of a raw checkpoint dict with its `weights` ("ema" or "model")."""
    from diffplan.model import build_diffusion

    config = config_from_dict(raw["config"], source="checkpoint")
    spec = TrajectorySpec.from_dict(raw["spec"])
    diffusion = build_diffusion(config, spec, cond_dim=int(raw.get("cond_dim", 0)))
    diffusion.load_state_dict(raw[weights])
    return diffusion


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint for sampling (EMA weights, eval mode) onto `device` (cpu, cuda,
    cuda:N or auto, see `resolve_device`)."""
    device = resolve_device(device)
    path = Path(path)
    raw = read_checkpoint(path, map_location="cpu")
    try:
        config = config_from_dict(raw["config"], source=f"{path} (stored config)")
        spec = TrajectorySpec.from_dict(raw["spec"])
        normalizer = Normalizer.from_state_dict(raw["normalizer"])
        diffusion = diffusion_from_checkpoint(raw, "ema")
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} does not match this diffplan's model: {first}") from None
    diffusion.to(device).eval()
    for p in diffusion.parameters():
        p.requires_grad_(False)
    rr = raw.get("return_range")
    return LoadedModel(
        config=config,
        spec=spec,
        normalizer=normalizer,
        diffusion=diffusion,
        return_range=None if rr is None else (float(rr[0]), float(rr[1])),
        step=int(raw["step"]),
        cond_dim=int(raw.get("cond_dim", 0)),
        path=path,
        raw=raw,
    )


def read_part(path: str | os.PathLike, fmt: str, version: int | None, what: str, fix: str) -> dict:
    """The raw dict of a file that belongs to a diffusion model (a value net, critic, state
    model or inverse dynamics): loaded weights-only, its format tag and version checked, no
    NaN/inf in its weights. Every failure is one `CheckpointError` naming the file and `fix`;
    checking that it belongs to *this* model is the caller's part."""
    from diffplan.preflight import check_input_file

    path = check_input_file(path, what)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and truncation errors all mean one thing here
        raise CheckpointError(
            f"{path} is not a readable {what} ({type(e).__name__}); {fix}"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise CheckpointError(f"{path} is not a diffplan {what} (no '{fmt}' tag); {fix}")
    if version is not None and raw.get("version") != version:
        raise CheckpointError(f"{path} has {what} format version {raw.get('version')!r}; {fix}")
    bad = first_non_finite(raw.get("state_dict"))
    if bad:
        raise CheckpointError(f"{path} holds NaN/inf values (in {bad}); {fix}")
    return raw
