"""diffplan: Diffuser-style trajectory-diffusion planning for offline RL.

The data path: `diffplan.data` -> `diffplan.normalizer` -> `diffplan.diffusion` ->
`diffplan.trainer` -> one checkpoint file (`diffplan.checkpoint`) -> `planners` + `guides`.
Imports here stay light (no torch, gymnasium or minari at import time).
"""

__version__ = "0.1.0"

from diffplan.config import Config, load_config  # noqa: E402
from diffplan.errors import CheckpointError, ConfigError, DatasetError, DiffplanError  # noqa: E402


def __getattr__(name: str):
    # TrajectorySpec needs torch: imported on first use, so that `diffplan --help` stays fast.
    if name == "TrajectorySpec":
        from diffplan.spec import TrajectorySpec

        return TrajectorySpec
    raise AttributeError(f"module 'diffplan' has no attribute '{name}'")


def load_checkpoint(path, device="cpu"):
    """Load a trained model for sampling; see `diffplan.checkpoint.load_checkpoint`."""
    from diffplan.checkpoint import load_checkpoint as _load

    return _load(path, device)


__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DatasetError",
    "DiffplanError",
    "TrajectorySpec",
    "__version__",
    "load_checkpoint",
    "load_config",
]
