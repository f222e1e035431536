"""`diffplan bench train`: training and sampling speed of the networks in use (B5 of
docs/benchmarks.md).

Measures, per model size: training steps/s (loss + backward + clip + AdamW + EMA) at batch 32
and 256, one denoiser forward over 64 candidates, and a full 20-step DDPM sample of 64
candidates; plus parameter counts, peak memory and the device. Random inputs: speed does not
depend on the data.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from diffplan.config import Config, load_config
from diffplan.distributed import resolve_device
from diffplan.files import write_json_atomic
from diffplan.model import build_diffusion
from diffplan.networks import count_parameters
from diffplan.spec import TrajectorySpec
from diffplan.trainer import ema_update

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
POINTMAZE_CONFIG = TINY_CONFIG.with_name("pointmaze-umaze.yaml")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int, budget_s: float, min_repeats: int = 3) -> float:
    """Median seconds of fn() over `min_repeats`..`repeats` runs (no new run past `budget_s`);
    the median resists the spikes of a shared machine."""
    fn()  # warm-up (allocations, lazy init)
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (
        len(times) < repeats and time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(
    name: str,
    config: Config,
    spec: TrajectorySpec,
    device: torch.device,
    budget_s: float = 8.0,
) -> dict:
    """Speed figures for one model size (see module docstring)."""
    torch.manual_seed(0)
    diffusion = build_diffusion(config, spec).to(device)
    ema = copy.deepcopy(diffusion).requires_grad_(False)
    optimizer = torch.optim.AdamW(diffusion.parameters(), lr=config.train.lr)
    shape = (spec.horizon, spec.transition_dim)
    result = {
        "name": name,
        "horizon": spec.horizon,
        "transition_dim": spec.transition_dim,
        "dim": config.model.dim,
        "backbone": config.model.type,
        "dim_mults": list(config.model.dim_mults) if config.model.type == "unet" else None,
        "depth": config.model.depth if config.model.type == "transformer" else None,
        "n_timesteps": config.diffusion.n_timesteps,
        "params": count_parameters(diffusion.model),
    }
    for batch_size in (32, 256):
        x0 = torch.randn(batch_size, *shape, device=device).clamp(-1, 1)

        def train_step(x0=x0):
            loss = diffusion.loss(x0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
            optimizer.step()
            ema_update(ema, diffusion, 0.995)

        seconds = _timed(train_step, device, repeats=30, budget_s=budget_s / 4)
        result[f"train_steps_per_s_b{batch_size}"] = 1.0 / seconds
        result[f"train_samples_per_s_b{batch_size}"] = batch_size / seconds

    diffusion.eval()
    candidates = torch.randn(64, *shape, device=device)
    t = torch.full((64,), config.diffusion.n_timesteps - 1, device=device, dtype=torch.long)
    with torch.no_grad():
        forward_s = _timed(
            lambda: diffusion.model(candidates, t), device, repeats=20, budget_s=budget_s / 8
        )
    sample_steps = min(20, config.diffusion.n_timesteps)
    sample_s = _timed(
        lambda: diffusion.sample(64, sampler="ddpm", steps=sample_steps),
        device,
        repeats=5,
        budget_s=budget_s / 4,
    )
    result["forward_64_ms"] = 1000 * forward_s
    result["ddpm_sample_64_ms"] = 1000 * sample_s
    result["ddpm_sample_steps"] = sample_steps
    return result


def diffuser_reference_config() -> Config:
    """Diffuser's locomotion network: horizon 32, dim 32, mults 1-2-4-8, 20 diffusion steps."""
    config = Config()
    config.model.horizon, config.model.dim, config.model.dim_mults = 32, 32, [1, 2, 4, 8]
    config.diffusion.n_timesteps = 20
    config.diffusion.clip_denoised = None
    config.train.lr = 2e-4
    return config


def bench_train(
    json_path: str | None = None, device: str = "cpu", threads: int = 2, budget_s: float = 8.0
) -> dict:
    """Run the benchmark, print a table, optionally write JSON; returns the results."""
    dev = resolve_device(device)
    torch.set_num_threads(threads)
    if TINY_CONFIG.is_file():
        tiny = load_config(TINY_CONFIG)
    else:  # installed without the repository's configs/: the same sizes as configs/tiny.yaml
        tiny = Config()
        tiny.model.horizon, tiny.model.dim, tiny.model.dim_mults = 16, 16, [1, 2]
        tiny.train.lr = 1e-3
    models = [
        # Hopper/Walker-like layout: act 6 + obs 17 = 23.
        ("diffuser-ref", diffuser_reference_config(), TrajectorySpec(17, 6, 32)),
        # The tiny config on its synthetic data (2-D point: act 2 + obs 2).
        ("tiny", tiny, TrajectorySpec(2, 2, tiny.model.horizon, tiny.model.stride)),
    ]
    if POINTMAZE_CONFIG.is_file():  # the network the PointMaze results use (act 2 + obs 4)
        maze = load_config(POINTMAZE_CONFIG)
        spec = TrajectorySpec(4, 2, maze.model.horizon, maze.model.stride)
        models.append(("pointmaze", maze, spec))
        # The same plans through the transformer backbone, at a similar parameter count.
        dit = copy.deepcopy(maze)
        dit.model.type, dit.model.dim, dit.model.depth, dit.model.heads = "transformer", 128, 4, 4
        models.append(("pointmaze-transformer", dit, spec))
    wall = time.perf_counter()
    rows = [bench_model(name, cfg, spec, dev, budget_s) for name, cfg, spec in models]
    if dev.type == "cuda":
        peak_gpu = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_gpu = None
    report = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": peak_gpu,
        "wall_s": time.perf_counter() - wall,
        "models": rows,
    }
    print(format_table(report))
    if json_path:
        write_json_atomic(json_path, report)
        print(f"json: {json_path}")
    return report


def format_table(report: dict) -> str:
    head = (
        f"{'model':<22}{'H':>4}{'D':>4}{'params':>11}{'steps/s b32':>13}{'steps/s b256':>14}"
        f"{'fwd x64 ms':>12}{'ddpm x64 ms':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in report["models"]:
        lines.append(
            f"{r['name']:<22}{r['horizon']:>4}{r['transition_dim']:>4}{r['params']:>11,}"
            f"{r['train_steps_per_s_b32']:>13.1f}{r['train_steps_per_s_b256']:>14.2f}"
            f"{r['forward_64_ms']:>12.1f}{r['ddpm_sample_64_ms']:>13.0f}"
        )
    gpu = f", peak GPU {report['peak_gpu_mb']:.0f} MiB" if report["peak_gpu_mb"] else ""
    lines.append(
        f"device {report['device']} ({report['threads']} threads, torch {report['torch']}), "
        f"peak RSS {report['peak_rss_mb']:.0f} MiB{gpu}, {report['wall_s']:.0f} s; "
        f"ddpm = {report['models'][0]['ddpm_sample_steps']}-step DDPM sample"
    )
    return "\n".join(lines)


_DATA_PHASE = """
import json, os, resource, sys, time, zlib
from diffplan.data.minari_source import load_minari

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

args = json.loads(sys.argv[1])
before = rss()
start = time.perf_counter()
eps = load_minari(args["dataset"], root=args["root"], **args["options"])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
arrays = [eps.observations, eps.actions, eps.rewards, eps.terminations, eps.truncations]
arrays += [] if eps.goals is None else [eps.goals]
crc = 0
for a in arrays:
    crc = zlib.crc32(a.reshape(-1).view("u1"), crc)
print(json.dumps({
    "episodes": len(eps), "steps": eps.n_steps, "load_s": seconds,
    "raw_arrays_mib": sum(a.nbytes for a in arrays) / 2**20,
    "rss_before_mib": before,
    "peak_rss_mib": peak,
    "crc32": crc,
}))
"""


def _data_phase(dataset: str, root: str | None, options: dict) -> dict:
    """One load in a fresh interpreter, so that its peak memory is its own."""
    import subprocess
    import sys

    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    arg = json.dumps({"dataset": dataset, "root": root, "options": options})
    out = subprocess.run(
        [sys.executable, "-c", _DATA_PHASE, arg], env=env, stdout=subprocess.PIPE, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench data: loading {dataset} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_data(
    dataset: str, json_path: str | None = None, root: str | None = None, minari: bool = False
) -> dict:
    """Time and peak memory of loading a Minari dataset into `Episodes` (B5), against the
    raw size of its arrays: the first load (no cache: read the dataset, write the cache) and
    a later load (from the cache), each in a fresh process; with `minari`, also the load
    through Minari's per-episode API without a cache (the loader before the cache existed).
    The cache goes to a temporary folder, so the dataset's own cache is left alone."""
    import shutil
    import tempfile

    cache_dir = tempfile.mkdtemp(prefix="diffplan-bench-cache-")
    phases = []
    try:
        if minari:
            phases.append(("minari API, no cache", {"cache": False, "reader": "minari"}))
        phases.append(("first load (h5py, writes cache)", {"cache_dir": cache_dir}))
        phases.append(("later load (cache)", {"cache_dir": cache_dir}))
        rows = []
        for name, options in phases:
            row = _data_phase(dataset, root, {"progress": True, **options})
            row["phase"] = name
            row["extra_mib"] = row["peak_rss_mib"] - row["rss_before_mib"]
            row["extra_vs_raw"] = row["extra_mib"] / row["raw_arrays_mib"]
            rows.append(row)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    first = rows[0]
    report = {
        "dataset": dataset,
        "root": root,
        "episodes": first["episodes"],
        "steps": first["steps"],
        "raw_arrays_mib": first["raw_arrays_mib"],
        "identical_arrays": len({r["crc32"] for r in rows}) == 1,
        "phases": rows,
    }
    print(
        f"{dataset}: {report['episodes']} episodes, {report['steps']} steps, raw arrays "
        f"{report['raw_arrays_mib']:.0f} MiB; same arrays in every phase: "
        f"{report['identical_arrays']}"
    )
    print(f"{'phase':34s} {'load s':>8s} {'RSS before':>11s} {'peak RSS':>9s} {'extra / raw':>12s}")
    for r in rows:
        print(
            f"{r['phase']:34s} {r['load_s']:8.2f} {r['rss_before_mib']:8.0f} MiB "
            f"{r['peak_rss_mib']:5.0f} MiB {r['extra_vs_raw']:11.2f}x"
        )
    print("extra = peak RSS during the load - RSS before it (imports done: torch, numpy)")
    if json_path:
        write_json_atomic(json_path, report)
    return report
