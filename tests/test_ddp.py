"""DDP training under torchrun: 2 gloo processes on the CPU end with identical replicas."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from diffplan.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_keep_identical_weights(tmp_path):
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only: no network needed
        "OMP_NUM_THREADS": "1",
        "DIFFPLAN_DEBUG": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "diffplan.cli", "train", "--config", "configs/tiny.yaml", "--out", str(tmp_path),
        "--device", "cpu", "--no-progress", "train.steps=12", "train.save_every=6",
        "train.batch_size=32",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    raw = read_checkpoint(tmp_path / "last.pt")
    assert raw["step"] == 12
    assert raw["meta"]["world_size"] == 2
    # Measured inside the run: max |w_rank - w_rank0| over all parameters after the last step.
    assert raw["meta"]["replica_max_diff"] == 0.0
    # Each rank keeps its own noise stream (different diffusion noise per slice of the batch).
    noise_states = raw["rng"]["noise"]
    assert len(noise_states) == 2 and not torch.equal(noise_states[0], noise_states[1])
    # Only rank 0 writes: one event file, one losses.csv with one row per step.
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert len((tmp_path / "losses.csv").read_text().splitlines()) == 1 + 12
