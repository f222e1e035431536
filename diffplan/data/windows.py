"""Windowed training samples: fixed-horizon (optionally strided) slices of episodes, normalized.

Only a small index of window starts is stored; the windows themselves are gathered on demand
with vectorised fancy indexing (``batch``), which the trainer prefers over a DataLoader.

End policy: ``"drop"`` keeps only windows whose H planned steps all lie inside the episode;
``"pad"`` lets a window start at any step and, past the episode's end, repeats the episode's
last observation with zero actions (zero in env units), marking those rows invalid in
``valid``.

Padding limit: ``padded_fraction`` is the share of all planned steps of all windows that lie
past their episode's end. Goal-reaching data pads by design (PointMaze episodes end at the
goal, and the shipped PointMaze configs train at about 60 %), but when episodes are much
shorter than a plan the model mostly learns to stand still. Above ``PADDING_WARN_FRACTION``
(75 %) a `DiffplanWarning` says so; above ``MAX_PADDED_FRACTION`` (90 %) it is a
`DatasetError` (lower the horizon or stride, use longer episodes, or ``end_policy="drop"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.signal import lfilter

from diffplan.data.episodes import Episodes
from diffplan.errors import ConfigError, DatasetError, DiffplanWarning
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec

END_POLICIES = ("pad", "drop")
CONDITIONS = ("returns", "start", "end", "goal")
PADDING_WARN_FRACTION = 0.75  # more padded planned steps than this: a warning
MAX_PADDED_FRACTION = 0.9  # more than this: an error (see the module docstring)


def transitions(episodes: Episodes) -> np.ndarray:
    """The joint transition vectors [action | observation] of every step, (N, act+obs)."""
    return np.concatenate([episodes.actions, episodes.observations], axis=-1)


def fit_normalizer(episodes: Episodes, kind: str, **kwargs) -> Normalizer:
    """Fit a `Normalizer` on the joint [action | observation] vectors of all steps."""
    return Normalizer.fit(kind, transitions(episodes), **kwargs)


def returns_to_go(
    episodes: Episodes,
    discount: float,
    termination_penalty: float = 0.0,
    horizon: int | None = None,
) -> np.ndarray:
    """Discounted return from every step to the end of its episode, (N,) float64.

    ``termination_penalty`` is added to the last reward of episodes that ended by termination.
    ``horizon`` h: the discounted return over the h steps from each step instead,
    sum_{k<h} discount^k r_{t+k}; past the episode's end the last reward repeats (the ball stays
    where the ``pad`` end policy leaves it), or is zero if the episode ended by termination.
    """
    if horizon is not None and horizon < 1:
        raise ConfigError(f"return horizon must be >= 1 env step, got {horizon}")
    rewards = episodes.rewards.astype(np.float64)
    out = np.empty_like(rewards)
    for start, length in zip(episodes.episode_starts, episodes.lengths, strict=True):
        r = rewards[start : start + length].copy()
        terminated = episodes.terminations[start + length - 1]
        if terminated:
            r[-1] += termination_penalty
        if horizon is not None:  # extend by h steps, then G^h_t = G_t - discount^h G_{t+h}
            r = np.concatenate([r, np.full(horizon, 0.0 if terminated else r[-1])])
        # G_t = r_t + discount * G_{t+1} is an IIR filter over the reversed rewards
        g = lfilter([1.0], [1.0, -discount], r[::-1])[::-1]
        if horizon is not None:
            g = g[:length] - discount**horizon * g[horizon : horizon + length]
        out[start : start + length] = g
    return out


class TrajectoryWindows(torch.utils.data.Dataset):
    """Windows of ``spec.horizon`` planned steps, ``spec.stride`` env steps apart.

    Each item is a dict of tensors (float32 except ``valid``): ``x (H, D)`` normalized
    [action | observation], ``valid (H,)`` bool (True where the planned step lies inside the
    episode), and the requested
    ``conditions``: ``returns (1,)`` discounted return-to-go from the window's first step
    (over ``return_horizon`` env steps when given, see `returns_to_go`),
    ``start``/``end (obs_dim,)`` normalized first/last planned observation, ``goal
    (goal_dim,)`` in env units at the first step (only when the episodes have goals).
    """

    def __init__(
        self,
        episodes: Episodes,
        spec: TrajectorySpec,
        normalizer: Normalizer,
        end_policy: str = "pad",
        discount: float = 0.99,
        termination_penalty: float = 0.0,
        conditions: Sequence[str] | None = None,
        return_horizon: int | None = None,
        max_padded_fraction: float = MAX_PADDED_FRACTION,
    ) -> None:
        if end_policy not in END_POLICIES:
            raise ConfigError(f"end_policy '{end_policy}' is unknown; choose 'pad' or 'drop'")
        if (spec.obs_dim, spec.act_dim) != (episodes.obs_dim, episodes.act_dim):
            raise ConfigError(
                f"spec has obs_dim={spec.obs_dim}, act_dim={spec.act_dim} but the dataset has "
                f"obs_dim={episodes.obs_dim}, act_dim={episodes.act_dim}; build the spec from it"
            )
        if normalizer.dim != spec.transition_dim:
            raise ConfigError(
                f"normalizer has dim {normalizer.dim} but transitions have {spec.transition_dim}; "
                f"fit it with fit_normalizer(episodes, kind)"
            )
        if not 0.0 <= discount <= 1.0:
            raise ConfigError(f"discount must be in [0, 1], got {discount}")
        if conditions is None:
            conditions = [c for c in CONDITIONS if c != "goal" or episodes.goals is not None]
        for c in conditions:
            if c not in CONDITIONS:
                raise ConfigError(f"unknown condition '{c}'; choose from {', '.join(CONDITIONS)}")
        if "goal" in conditions and episodes.goals is None:
            raise DatasetError("condition 'goal' was requested but the dataset has no goals")
        self.conditions = tuple(conditions)
        self.episodes, self.spec, self.normalizer = episodes, spec, normalizer
        self.end_policy = end_policy

        span = (spec.horizon - 1) * spec.stride + 1  # env steps covered by one window
        lengths = episodes.lengths
        counts = lengths if end_policy == "pad" else np.maximum(lengths - span + 1, 0)
        if counts.sum() == 0:
            raise DatasetError(
                f"no training window: a plan spans (horizon-1)*stride+1 = {span} env steps "
                f"(horizon {spec.horizon}, stride {spec.stride}) but the longest episode has "
                f"{int(lengths.max())}; lower horizon/stride or use end_policy='pad'"
            )
        # Window w starts at flat row _starts[w] of episode _ep[w]: O(#windows) ints only.
        self._ep = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
        first = np.repeat(episodes.episode_starts - np.cumsum(counts) + counts, counts)
        self._starts = first + np.arange(len(self._ep), dtype=np.int64)
        self._ep_end = (episodes.episode_starts + lengths)[self._ep]  # exclusive
        self.padded_fraction = self._padding(span, max_padded_fraction)

        # Normalize every step once (memory ~ the dataset) so batches are pure indexing.
        self._x = np.ascontiguousarray(normalizer.normalize(transitions(episodes)), np.float32)
        pad = np.concatenate([np.zeros(spec.act_dim), episodes.observations[0]])[None]
        self._pad_action = normalizer.normalize(pad.astype(np.float32))[0, spec.action_slice]
        self._offsets = np.arange(spec.horizon, dtype=np.int64) * spec.stride
        rtg = returns_to_go(episodes, discount, termination_penalty, return_horizon)
        self._rtg = rtg.astype(np.float32)

    def _padding(self, span: int, limit: float) -> float:
        """Share of planned steps past their episode's end; warns or raises (module docstring)."""
        horizon, stride = self.spec.horizon, self.spec.stride
        remaining = self._ep_end - self._starts  # env steps from each window's start on
        inside = np.minimum(horizon, (remaining + stride - 1) // stride)
        fraction = float(1.0 - inside.sum() / (len(inside) * horizon))
        if fraction <= min(PADDING_WARN_FRACTION, limit):
            return fraction
        lengths = self.episodes.lengths
        what = (
            f"{100 * fraction:.0f} % of the planned steps of the training windows are padding "
            f"past an episode's end: a plan spans {span} env steps (horizon {horizon} x stride "
            f"{stride}) but episodes are {int(lengths.min())}..{int(lengths.max())} steps long "
            f"(mean {lengths.mean():.0f})"
        )
        fix = "lower model.horizon or model.stride, or use longer episodes"
        if fraction > limit:
            raise DatasetError(
                f"{what}; that is above the {100 * limit:.0f} % limit "
                f"(diffplan.data.windows.MAX_PADDED_FRACTION): {fix}"
            )
        warnings.warn(
            f"{what}; the model will mostly learn to stand still: {fix}", DiffplanWarning, 3
        )
        return fraction

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def return_range(self) -> tuple[float, float]:
        """(min, max) of the window returns, e.g. to scale return conditioning to [0, 1]."""
        r = self._rtg[self._starts]
        return float(r.min()), float(r.max())

    def window_location(self, i: int) -> tuple[int, int]:
        """(episode index, step within the episode) where window i starts."""
        ep = int(self._ep[i])
        return ep, int(self._starts[i] - self.episodes.episode_starts[ep])

    def batch(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        """The items at ``indices``, stacked along a leading batch dim (vectorised)."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, np.int64)
        starts, ends = self._starts[idx], self._ep_end[idx]
        rows = starts[:, None] + self._offsets  # (B, H) flat env rows of each planned step
        valid = rows < ends[:, None]
        x = self._x[np.minimum(rows, ends[:, None] - 1)]  # past the end: last observation
        if not valid.all():
            x[..., self.spec.action_slice] = np.where(
                valid[..., None], x[..., self.spec.action_slice], self._pad_action
            )
        out = {"x": torch.from_numpy(x), "valid": torch.from_numpy(valid)}
        obs = self.spec.observation_slice
        if "returns" in self.conditions:
            out["returns"] = torch.from_numpy(self._rtg[starts][:, None])
        if "start" in self.conditions:
            out["start"] = torch.from_numpy(np.ascontiguousarray(x[:, 0, obs]))
        if "end" in self.conditions:
            out["end"] = torch.from_numpy(np.ascontiguousarray(x[:, -1, obs]))
        if "goal" in self.conditions:
            out["goal"] = torch.from_numpy(self.episodes.goals[starts])
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        return {k: v[0] for k, v in self.batch([i % len(self)]).items()}

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A uniformly random batch of windows (with replacement)."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)
        return self.batch(idx)
