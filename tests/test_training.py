"""Trainer: exact resume, TensorBoard logs, and checkpoints that survive a failed save."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import diffplan.checkpoint as checkpoint_module
from diffplan.checkpoint import load_checkpoint, read_checkpoint
from diffplan.config import load_config
from diffplan.trainer import train

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
STEPS = 40


def tiny(steps: int, *extra: str):
    overrides = [f"train.steps={steps}", "train.save_every=20", "train.log_every=10", *extra]
    return load_config(TINY, overrides)


def read_losses(run: Path) -> list[tuple[int, float]]:
    with open(run / "losses.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = train(tiny(STEPS, "train.warmup_steps=30"), tmp_path / "a", progress=False)
    train(tiny(STEPS // 2, "train.warmup_steps=30"), tmp_path / "b", progress=False)
    resumed = train(
        tiny(STEPS, "train.warmup_steps=30"), tmp_path / "b", resume=True, progress=False
    )

    losses_a, losses_b = read_losses(tmp_path / "a"), read_losses(tmp_path / "b")
    assert [s for s, _ in losses_a] == list(range(1, STEPS + 1))
    assert losses_a == losses_b, "per-step losses must continue exactly after --resume"
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["step"] == b["step"] == STEPS
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


def test_resume_refuses_a_changed_model(tmp_path):
    train(tiny(4), tmp_path, progress=False)
    with pytest.raises(Exception, match="model.dim"):
        train(tiny(8, "model.dim=8"), tmp_path, resume=True, progress=False)


def test_existing_run_is_not_overwritten_by_accident(tmp_path):
    train(tiny(2), tmp_path, progress=False)
    with pytest.raises(Exception, match="already holds a run"):
        train(tiny(2), tmp_path, progress=False)
    train(tiny(3), tmp_path, progress=False, overwrite=True)
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(20), tmp_path, progress=False)
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [10, 20]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def save_then_crash(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial bytes of a checkpoint")  # as if killed mid-write
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        train(tiny(STEPS), tmp_path, progress=False)  # saves at step 20 (ok), then 40 (fails)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)

    model = load_checkpoint(tmp_path / "last.pt")
    assert model.step == 20, "the last good checkpoint (step 20) must survive the failed save"
    assert not list(tmp_path.glob("*.tmp")), "temp files of the failed save must be removed"
    # ...and the run can be resumed from it.
    train(tiny(STEPS), tmp_path, resume=True, progress=False)
    assert read_checkpoint(tmp_path / "last.pt")["step"] == STEPS
    assert [s for s, _ in read_losses(tmp_path)] == list(range(1, STEPS + 1))


def test_trains_on_a_d4rl_file_with_the_locomotion_config(tmp_path):
    """The D4RL path end to end: an HDF5 file in the D4RL layout, Diffuser's hopper config
    (shrunk), a checkpoint whose spec and normalizer match the file."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    n, obs_dim, act_dim = 400, 11, 3
    timeouts = np.zeros(n, bool)
    timeouts[199] = timeouts[399] = True
    path = tmp_path / "hopper-medium-v2.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, obs_dim)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32)
        f["rewards"] = rng.uniform(0, 1, size=n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = timeouts
    config = load_config(
        TINY.with_name("hopper-medium-v2.yaml"),
        [f"data.dataset={path}", "model.horizon=8", "model.dim=8", "model.dim_mults=[1,2]",
         "train.steps=4", "train.save_every=4", "train.device=cpu"],
    )  # fmt: skip
    loaded = load_checkpoint(train(config, tmp_path / "run", progress=False))
    assert (loaded.spec.obs_dim, loaded.spec.act_dim, loaded.step) == (obs_dim, act_dim, 4)
    assert loaded.normalizer.kind == "gaussian"  # Diffuser's locomotion normalizer
