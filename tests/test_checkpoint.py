"""Checkpoints: weights_only round trip in a fresh process, and one clear error per bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffplan.checkpoint import load_checkpoint, read_checkpoint
from diffplan.config import load_config
from diffplan.errors import CheckpointError
from diffplan.trainer import train

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CODE = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from diffplan.checkpoint import load_checkpoint
model = load_checkpoint(sys.argv[1])
inpaint, cond = model.example_conditions(8, torch.Generator().manual_seed(3))
x = model.diffusion.sample(8, inpaint=inpaint, cond=cond, sampler="ddim", steps=5,
                           generator=torch.Generator().manual_seed(3)).x
np.save(sys.argv[2], model.normalizer.unnormalize(x).numpy())
"""


class NotAWeight:
    """A custom class: saving it pickles a reference to code."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    overrides = ["train.steps=10", "model.return_conditioning=true"]
    path = train(load_config(ROOT / "configs" / "tiny.yaml", overrides), run, progress=False)
    yield path
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def transformer_checkpoint(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run-transformer")
    overrides = ["train.steps=10", "model.return_conditioning=true", "model.type=transformer",
                 "model.dim=16", "model.depth=2", "model.heads=2"]  # fmt: skip
    path = train(load_config(ROOT / "configs" / "tiny.yaml", overrides), run, progress=False)
    yield path
    torch.set_num_threads(threads)


def test_transformer_round_trip_in_a_fresh_process(transformer_checkpoint, tmp_path):
    from diffplan.transformer import TrajectoryTransformer

    model = load_checkpoint(transformer_checkpoint)
    assert isinstance(model.diffusion.model, TrajectoryTransformer)
    assert model.config.model.type == "transformer" and model.config.model.heads == 2
    test_round_trip_in_a_fresh_process_gives_identical_samples(transformer_checkpoint, tmp_path)


def test_round_trip_in_a_fresh_process_gives_identical_samples(checkpoint, tmp_path):
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)  # plain data only
    assert raw["format"] == "diffplan-checkpoint" and raw["version"] == 1
    for key in ("config", "spec", "normalizer", "return_range", "ema", "model", "optimizer",
                "step", "rng"):  # fmt: skip
        assert key in raw, key

    out = tmp_path / "fresh.npy"
    subprocess.run([sys.executable, "-c", SAMPLE_CODE, str(checkpoint), str(out)], check=True,
                   cwd=ROOT, timeout=120)  # fmt: skip
    there = np.load(out)

    model = load_checkpoint(checkpoint)  # the same steps, in this process
    inpaint, cond = model.example_conditions(8, torch.Generator().manual_seed(3))
    x = model.diffusion.sample(8, inpaint=inpaint, cond=cond, sampler="ddim", steps=5,
                               generator=torch.Generator().manual_seed(3)).x  # fmt: skip
    here = model.normalizer.unnormalize(x).numpy()
    assert here.shape == (8, 16, 4)
    np.testing.assert_array_equal(here, there)


def test_loaded_model_is_ready_to_sample(checkpoint):
    model = load_checkpoint(checkpoint)
    assert not model.diffusion.training
    assert model.step == 10 and model.cond_dim == 1
    lo, hi = model.return_range
    assert lo < hi
    raw = read_checkpoint(checkpoint)
    for name, value in model.diffusion.state_dict().items():
        assert torch.equal(value, raw["ema"][name]), f"{name} is not the EMA weight"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{size}.pt"
        bad.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="truncated or corrupt|corrupt"):
            load_checkpoint(bad)


def test_random_bytes(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_foreign_files_are_not_diffplan_checkpoints(tmp_path):
    state_dict = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), state_dict)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(3), "epoch": 4}, plain)
    for path in (state_dict, plain):
        with pytest.raises(CheckpointError, match="not a diffplan checkpoint"):
            load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"format": "diffplan-checkpoint", "version": 1, "obj": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="refusing to load pickled code"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(checkpoint, tmp_path):
    raw = read_checkpoint(checkpoint)
    raw["version"] = 99
    path = tmp_path / "future.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="version 99.*upgrade diffplan"):
        load_checkpoint(path)


def test_checkpoint_knows_how_far_its_data_moves_per_planned_step(checkpoint):
    """The data's step statistics are stored at training time (StepLimit reads them); without
    them the stored example windows give a limit."""
    from guides import StepLimit

    model = load_checkpoint(checkpoint)
    stats = model.raw["meta"]["state_jumps"]
    assert stats["stride"] == 1 and len(stats["limit"]) == model.spec.obs_dim
    assert all(0 < lo <= hi for lo, hi in zip(stats["limit"], stats["max"], strict=True))
    assert torch.equal(StepLimit.from_checkpoint(model).limit, torch.tensor(stats["limit"]))
    del model.raw["meta"]["state_jumps"]  # an older checkpoint
    fallback = model.state_jump_limit()
    assert fallback.shape == (model.spec.obs_dim,) and (fallback > 0).all()
