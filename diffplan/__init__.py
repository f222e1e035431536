"""diffplan: Diffuser-style trajectory-diffusion planning for offline RL.

The data path: `diffplan.data` -> `diffplan.normalizer` -> `diffplan.diffusion` ->
`diffplan.trainer` -> one checkpoint file (`diffplan.checkpoint`) -> `planners` + `guides`.
Imports here stay light (no torch.utils.tensorboard, gymnasium or minari at import time).
"""

__version__ = "0.1.0"

from diffplan.config import Config, load_config  # noqa: E402
from diffplan.errors import CheckpointError, ConfigError, DatasetError, DiffplanError  # noqa: E402
from diffplan.spec import TrajectorySpec  # noqa: E402


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
