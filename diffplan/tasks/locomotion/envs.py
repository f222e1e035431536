"""The MuJoCo locomotion environments of D4RL's table, as gymnasium -v5 ids, with their refs.

D4RL's v2 datasets were recorded on gym's -v3 envs; gymnasium's -v5 envs have the same
observation layout (Hopper 11, Walker2d 17, HalfCheetah 17 dims: qpos without the root x,
then qvel, in the same order) and action sizes (3, 6, 6), so D4RL files evaluate on -v5.
"""

from __future__ import annotations

from diffplan.errors import ConfigError

ENV_IDS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
DIMS = {"hopper": (11, 3), "walker2d": (17, 6), "halfcheetah": (17, 6)}  # (obs, act)
# D4RL's infos (REF_MIN_SCORE / REF_MAX_SCORE): random and expert policy returns.
D4RL_REFS = {
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "halfcheetah": (-280.178953, 12135.0),
}
MAX_EPISODE_STEPS = 1000


def env_id_for(env: str) -> str:
    """'hopper' -> 'Hopper-v5' (a full gymnasium id of these envs is accepted too)."""
    name = family_of(env)
    if name is None:
        raise ConfigError(
            f"unknown locomotion env '{env}'; choose one of {', '.join(sorted(ENV_IDS))}"
        )
    return ENV_IDS[name]


def family_of(env_id_or_name: str) -> str | None:
    """'Hopper-v5' / 'hopper' / 'hopper-medium-v2' -> 'hopper'; None for other envs."""
    key = env_id_or_name.lower().replace("_", "").split("/")[-1]
    for name in ENV_IDS:
        if key.startswith(name):
            return name
    if "/" in env_id_or_name:  # Minari ids: mujoco/hopper/medium-v0
        parts = env_id_or_name.lower().split("/")
        for p in parts:
            if p in ENV_IDS:
                return p
    return None
