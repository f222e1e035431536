"""Bad inputs, one row each: the command (or API call) fails with ONE line naming the problem
and the fix, exit code 1 (2 for usage errors), no traceback, and no file in the folder it was
pointed at changed (sha256 of every file before and after). Plus a kill -9 loop during
checkpoint saves."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from diffplan.checkpoint import load_checkpoint, read_checkpoint
from diffplan.cli import main
from diffplan.config import config_from_dict, load_config
from diffplan.data.synthetic import make_synthetic
from diffplan.data.windows import TrajectoryWindows, fit_normalizer
from diffplan.distributed import resolve_device
from diffplan.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DiffplanError,
    DiffplanWarning,
)
from diffplan.spec import TrajectorySpec
from diffplan.state_models import load_state_model, train_state_model
from diffplan.tasks import task_for
from diffplan.trainer import train
from diffplan.value_training import load_value, train_value

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
FAST = ["train.steps=4", "train.save_every=2", "train.log_every=2"]
NO_CUDA = "CUDA is not available; use --device cpu or auto"
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished tiny run: last.pt, config.yaml, losses.csv, events, and a value.pt."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(load_config(TINY, FAST), run, progress=False)
    train_value(run / "last.pt", run / "value.pt", steps=2, batch_size=8, progress=False)
    return run


@pytest.fixture
def folder(tmp_path, base, monkeypatch) -> Path:
    """tmp_path holding a copy of the run as run/; every row works inside it."""
    monkeypatch.delenv("DIFFPLAN_DEBUG", raising=False)
    shutil.copytree(base, tmp_path / "run")
    return tmp_path


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _with_nan(src: Path, dst: Path, section: str) -> None:
    raw = torch.load(src, weights_only=True)
    name = next(k for k, v in raw[section].items() if v.is_floating_point())
    raw[section][name].view(-1)[0] = float("nan")
    torch.save(raw, dst)


# ----------------------------------------------------------------------------- setups


def own_files(t: Path) -> None:
    """A folder with the user's own config.yaml and an old losses.csv, but no last.pt."""
    (t / "mine").mkdir()
    (t / "mine" / "config.yaml").write_text("# my own notes, not diffplan's\nname: mine\n")
    (t / "mine" / "losses.csv").write_text("step,loss,lr,grad_norm\n1,0.5,0.001,1.0\n")


def user_value_file(t: Path) -> None:
    (t / "run" / "mine.pt").write_bytes(b"the user's own file")


def nan_checkpoint(t: Path) -> None:
    _with_nan(t / "run" / "last.pt", t / "run" / "nan.pt", "ema")


def nan_run(t: Path) -> None:
    shutil.copytree(t / "run", t / "nanrun")
    _with_nan(t / "run" / "last.pt", t / "nanrun" / "last.pt", "model")


def a_file(t: Path) -> None:
    (t / "file").write_text("not a folder")


def yaml_syntax_error(t: Path) -> None:
    (t / "bad.yaml").write_text("name: x\ntrain:\n  steps: 5\n   lr: 0.1\n")


def yaml_list(t: Path) -> None:
    (t / "list.yaml").write_text("- train\n- model\n")


def yaml_misspelt(t: Path) -> None:
    (t / "typo.yaml").write_text("name: typo\ntrain:\n  stpes: 5\n")


def yaml_duplicate_key(t: Path) -> None:
    (t / "dup.yaml").write_text("name: dup\ntrain:\n  steps: 5\n  lr: 0.1\n  steps: 6\n")


def yaml_duplicate_section(t: Path) -> None:
    (t / "dup.yaml").write_text("name: dup\ntrain:\n  steps: 5\ntrain:\n  lr: 0.1\n")


def existing_plot(t: Path) -> None:
    (t / "run" / "samples.png").write_bytes(b"the user's plot")


def _lock(t: Path, pid: int) -> None:
    import json
    import socket

    record = {"pid": pid, "host": socket.gethostname(), "command": "train", "started": "then"}
    (t / "run" / ".diffplan.lock").write_text(json.dumps(record))


def live_lock(t: Path) -> None:
    """Another train writes into run/ now (this test's own pid: alive)."""
    _lock(t, os.getpid())


def stale_lock(t: Path) -> None:
    """A train into run/ was killed and left its lock (a pid that has exited)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _lock(t, child.pid)


# ----------------------------------------------------------------------------- CLI rows


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]  # the folder -> command-line arguments
    words: tuple[str, ...]  # the one error line contains each
    setup: Callable[[Path], None] | None = None  # runs before the checksums are taken
    absent: tuple[str, ...] = ()  # ...and none of these
    may_change: tuple[str, ...] = ()  # globs (relative to the folder) a failed run may write
    must_not_exist: tuple[str, ...] = ()
    marks: tuple = ()


def train_args(t: Path, out: str = "run", *extra: str) -> list[str]:
    return ["train", "--config", TINY, "--out", str(t / out), "--no-progress", *FAST, *extra]


def value_args(t: Path, out: str, *extra: str) -> list[str]:
    return ["train-value", "--checkpoint", str(t / "run/last.pt"), "--out", str(t / out),
            "--no-progress", "--steps", "2", *extra]  # fmt: skip


BAD_VALUES = [
    ("train.save_every=0", ">= 1"),
    ("train.log_every=0", ">= 1"),
    ("diffusion.n_timesteps=0", ">= 1"),
    ("diffusion.n_timesteps=-3", ">= 1"),
    ("train.steps=0", ">= 1"),
    ("train.batch_size=0", ">= 1"),
    ("train.ema_decay=1.0", "in [0, 1)"),
    ("train.ema_decay=-0.1", "in [0, 1)"),
    ("train.lr=0", "> 0"),
    ("train.lr=-1e-3", "> 0"),
    ("train.warmup_steps=-1", ">= 0"),
    ("train.grad_clip=0", "null or > 0"),
    ("train.device=gpu", "cpu, cuda, cuda:N or auto"),
    ("model.horizon=0", ">= 1"),
    ("model.horizon=15", "divisible by 2"),
    ("model.stride=0", ">= 1"),
    ("model.dim_mults=[]", "non-empty"),
    ("model.kernel_size=4", "odd"),
    ("data.discount=1.5", "in [0, 1]"),
    ("data.normalizer=minmax", "limits, gaussian, cdf"),
    ("diffusion.cond_dropout=1", "in [0, 1)"),
    ("diffusion.prediction=noise", "x0, epsilon, v"),
    ("diffusion.condition_steps=[16]", "planned steps in [-16, 16)"),
    ("value.steps=0", ">= 1"),
    ("plan.n_candidates=0", ">= 1"),
]

CASES = [
    # 1. train-value must not replace the diffusion model, an existing file or a folder.
    Case("value-out-is-the-checkpoint", lambda t: value_args(t, "run/last.pt"),
         ("--out", "is the diffusion checkpoint", "choose another file")),
    Case("value-out-is-the-checkpoint-by-another-name",
         lambda t: value_args(t, "run/../run/./last.pt", "--overwrite"),
         ("is the diffusion checkpoint",)),
    Case("value-out-exists", lambda t: value_args(t, "run/value.pt"),
         ("run/value.pt exists", "--overwrite")),
    Case("value-out-exists-user-file", lambda t: value_args(t, "run/mine.pt"),
         ("exists", "--overwrite"), setup=user_value_file),
    Case("value-out-is-a-directory", lambda t: value_args(t, "run"), ("is a directory",)),
    Case("value-out-is-a-directory-with-overwrite", lambda t: value_args(t, "run", "--overwrite"),
         ("is a directory", "value.pt")),
    Case("value-checkpoint-is-a-directory",
         lambda t: ["train-value", "--checkpoint", str(t / "run"), "--out", str(t / "v.pt")],
         ("is a directory", "last.pt"), absent=("not found",)),
    Case("value-steps-zero", lambda t: value_args(t, "v.pt", "--steps", "0"),
         ("argument --steps: must be >= 1, got 0",)),
    # 2. train refuses a non-empty folder without --resume or --overwrite.
    Case("train-into-folder-with-own-files", lambda t: train_args(t, "mine"),
         ("is not empty", "config.yaml", "losses.csv", "--overwrite"), setup=own_files),
    Case("train-into-existing-run", lambda t: train_args(t), ("already holds a run", "--resume")),
    Case("train-resume-and-overwrite", lambda t: train_args(t, "run", "--resume", "--overwrite"),
         ("not both",)),
    Case("train-resume-without-checkpoint", lambda t: train_args(t, "mine", "--resume"),
         ("nothing to resume", "last.pt"), setup=own_files),
    Case("train-out-is-a-file", lambda t: train_args(t, "file"), ("is a file",), setup=a_file),
    # 3. --overwrite deletes nothing until the config and the dataset check out.
    Case("overwrite-with-missing-dataset",
         lambda t: train_args(t, "run", "--overwrite", "data.source=d4rl",
                              f"data.dataset={t / 'missing.hdf5'}"),
         ("missing.hdf5 does not exist",)),
    Case("overwrite-with-unusable-dataset",
         lambda t: train_args(t, "run", "--overwrite", "model.horizon=512"),
         ("padding", "MAX_PADDED_FRACTION", "model.horizon")),
    Case("overwrite-with-bad-config", lambda t: train_args(t, "run", "--overwrite", "train.lr=0"),
         ("train.lr",)),
    # 5. NaN/inf: training stops before writing it; a checkpoint holding it is refused.
    Case("nan-loss-new-run", lambda t: train_args(t, "fresh", "train.lr=1e30"),
         ("diverged", "train.lr", "no checkpoint was written"),
         may_change=("fresh/*",), must_not_exist=("fresh/last.pt",)),
    Case("nan-loss-on-resume",
         lambda t: ["train", "--config", TINY, "--out", str(t / "run"), "--resume",
                    "--no-progress", "train.steps=40", "train.log_every=2", "train.lr=1e30"],
         ("diverged", "still holds step 4"),
         may_change=("run/config.yaml", "run/losses.csv", "run/events.out.tfevents.*")),
    Case("nan-checkpoint-info", lambda t: ["info", "--checkpoint", str(t / "run/nan.pt")],
         ("nan.pt", "NaN/inf"), setup=nan_checkpoint),
    Case("nan-checkpoint-sample",
         lambda t: ["sample", "--checkpoint", str(t / "run/nan.pt"), "--n", "2"],
         ("nan.pt", "NaN/inf"), setup=nan_checkpoint),
    Case("nan-checkpoint-resume", lambda t: train_args(t, "nanrun", "--resume", "train.steps=8"),
         ("last.pt", "NaN/inf"), setup=nan_run),
    # 6. One device resolution: no CUDA is one line with the fix.
    Case("sample-on-missing-cuda",
         lambda t: ["sample", "--checkpoint", str(t / "run/last.pt"), "--device", "cuda"],
         (NO_CUDA,), marks=(needs_no_cuda,)),
    Case("train-on-missing-cuda", lambda t: train_args(t, "fresh", "--device", "cuda"),
         (NO_CUDA,), marks=(needs_no_cuda,), must_not_exist=("fresh",)),
    Case("train-value-on-missing-cuda", lambda t: value_args(t, "v.pt", "--device", "cuda"),
         (NO_CUDA,), marks=(needs_no_cuda,)),
    Case("unknown-device",
         lambda t: ["sample", "--checkpoint", str(t / "run/last.pt"), "--device", "tpu"],
         ("unknown device 'tpu'", "cpu, cuda")),
    # 7. Config values and files.
    *[
        Case(f"config-{item}", lambda t, item=item: train_args(t, "run", item),
             (f"'{item.split('=')[0]}'", f"command-line override '{item}'", words))
        for item, words in BAD_VALUES
    ],
    Case("yaml-syntax-error",
         lambda t: ["train", "--config", str(t / "bad.yaml"), "--out", str(t / "fresh")],
         ("bad.yaml is not valid YAML", "line 4, column 6", "mapping values are not allowed"),
         setup=yaml_syntax_error, must_not_exist=("fresh",)),
    Case("yaml-top-level-list",
         lambda t: ["train", "--config", str(t / "list.yaml"), "--out", str(t / "fresh")],
         ("list.yaml", "mapping", "list"), setup=yaml_list),
    Case("misspelt-key-in-file",
         lambda t: ["train", "--config", str(t / "typo.yaml"), "--out", str(t / "fresh")],
         ("train.stpes", "typo.yaml", "'steps'"), setup=yaml_misspelt),
    Case("misspelt-key-on-command-line", lambda t: train_args(t, "run", "train.stpes=5"),
         ("train.stpes", "command-line override 'train.stpes=5'", "'steps'"),
         absent=(f"in {TINY}", "tiny.yaml")),
    Case("override-without-equals", lambda t: train_args(t, "run", "train.steps"),
         ("key=value",)),
    Case("missing-config-file", lambda t: ["train", "--config", str(t / "nope.yaml")],
         ("nope.yaml not found",)),
    # 8. Episodes much shorter than the plan.
    Case("episodes-shorter-than-the-plan", lambda t: train_args(t, "fresh", "model.horizon=512"),
         ("94 %", "padding", "above the 90 % limit"), must_not_exist=("fresh",)),
    # 9. refs and paths.
    Case("refs-zero-episodes", lambda t: ["refs", "--env", "pointmaze-umaze", "--episodes", "0"],
         ("--episodes: must be >= 1, got 0",)),
    Case("refs-json-is-a-directory",
         lambda t: ["refs", "--env", "pointmaze-umaze", "--episodes", "1", "--json",
                    str(t / "run")], ("is a directory",)),
    Case("info-on-a-directory", lambda t: ["info", "--checkpoint", str(t / "run")],
         ("is a directory", "last.pt")),
    # 11. Outputs never replace a user's file silently.
    Case("sample-plot-exists",
         lambda t: ["sample", "--checkpoint", str(t / "run/last.pt"), "--plot"],
         ("samples.png exists", "--overwrite"), setup=existing_plot),
    Case("sample-plot-is-the-checkpoint",
         lambda t: ["sample", "--checkpoint", str(t / "run/last.pt"), "--plot",
                    str(t / "run/last.pt"), "--overwrite"],
         ("is the checkpoint",)),
    Case("bench-json-exists", lambda t: ["bench", "train", "--json", str(t / "file")],
         ("file exists", "--overwrite"), setup=a_file),
    Case("flag-unknown-after-an-override", lambda t: train_args(t, "fresh", "--bogus"),
         ("unrecognized arguments: --bogus",), must_not_exist=("fresh",)),
    # 12. Inputs are never outputs; one writer per run folder; --resume never goes back.
    Case("evaluate-json-is-the-checkpoint",
         lambda t: ["evaluate", "--checkpoint", str(t / "run/last.pt"), "--json",
                    str(t / "run/last.pt"), "--overwrite"], ("is the checkpoint",)),
    Case("evaluate-plot-format-checked-before-the-evaluation",
         lambda t: ["evaluate", "--checkpoint", str(t / "run/last.pt"), "--plot",
                    str(t / "run/plans.gif")], ("cannot write a plot as '.gif'", ".png")),
    Case("resume-to-fewer-steps-than-done", lambda t: train_args(t, "run", "--resume",
                                                                 "train.steps=2"),
         ("at step 4 to train.steps=2", "never goes back", "nothing was changed")),
    Case("train-into-a-folder-another-train-writes",
         lambda t: train_args(t, "run", "--resume", "train.steps=6"),
         ("is being written by pid", "choose another output folder"), setup=live_lock),
    Case("train-value-into-a-folder-another-train-writes",
         lambda t: ["train-value", "--checkpoint", str(t / "run/last.pt"), "--out",
                    str(t / "run/value2.pt"), "--steps", "2"],
         ("is being written by pid",), setup=live_lock),
    # 13. YAML that would drop a setting silently; a misspelt section typed on the command line.
    Case("yaml-duplicate-key", lambda t: ["train", "--config", str(t / "dup.yaml"), "--out",
                                          str(t / "fresh")],
         ("line 5", "'steps' is written twice (first on line 3)"), setup=yaml_duplicate_key,
         must_not_exist=("fresh",)),
    Case("yaml-duplicate-section", lambda t: ["train", "--config", str(t / "dup.yaml"), "--out",
                                              str(t / "fresh")],
         ("'train' is written twice",), setup=yaml_duplicate_section, must_not_exist=("fresh",)),
    Case("misspelt-section-on-the-command-line", lambda t: train_args(t, "fresh", "trian.steps=4"),
         ("unknown config key 'trian'", "command-line override 'trian.steps=4'", "'train'"),
         absent=("tiny.yaml",), must_not_exist=("fresh",)),
    # 14. The task: section is checked by train, before any training, not first by evaluate.
    Case("train-unknown-task-type", lambda t: train_args(t, "fresh", "task.type=bogus"),
         ("unknown task type 'bogus'", "locomotion"), must_not_exist=("fresh",)),
    Case("train-unknown-task-option",
         lambda t: train_args(t, "fresh", "task.type=pointmaze", "task.env=umaze",
                              "task.options.bogus=1"),
         ("task.options.bogus",), must_not_exist=("fresh",)),
    Case("train-data-that-does-not-fit-the-task",
         lambda t: train_args(t, "fresh", "task.type=locomotion", "task.env=hopper"),
         ("obs_dim=", "hopper observes 11 dims", "task.env"), must_not_exist=("fresh",)),
    # 15. Every numeric flag has its range, checked as it is read (usage errors).
    Case("data-zero-steps", lambda t: ["data", "pointmaze", "--maze", "umaze", "--steps", "0",
                                       "--root", str(t / "data")],
         ("argument --steps: must be >= 1, got 0",), must_not_exist=("data",)),
    Case("data-negative-steps", lambda t: ["data", "pointmaze", "--maze", "umaze", "--steps",
                                           "-5", "--root", str(t / "data")],
         ("must be >= 1, got -5",), must_not_exist=("data",)),
    Case("evaluate-negative-threads",
         lambda t: ["evaluate", "--checkpoint", str(t / "run/last.pt"), "--threads", "-1"],
         ("argument --threads: must be >= 0",)),
    Case("train-value-negative-seed",
         lambda t: ["train-value", "--checkpoint", str(t / "run/last.pt"), "--out",
                    str(t / "run/v.pt"), "--seed", "-3"], ("argument --seed: must be >= 0",)),
    Case("evaluate-nan-value-scale",
         lambda t: ["evaluate", "--checkpoint", str(t / "run/last.pt"), "--value-scale", "nan"],
         ("must be a finite number",)),
    Case("evaluate-huge-episodes",
         lambda t: ["evaluate", "--checkpoint", str(t / "run/last.pt"), "--episodes", "1e12"],
         ("must be an integer",)),
    Case("data-into-a-folder-another-command-writes",
         lambda t: ["data", "pointmaze", "--maze", "umaze", "--steps", "10", "--root",
                    str(t / "run"), "--no-progress"],
         ("is being written by pid",), setup=live_lock),
    Case("sample-zero-plans", lambda t: ["sample", "--checkpoint", str(t / "run/last.pt"), "--n",
                                         "0"], ("argument --n: must be >= 1, got 0",)),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_cli_bad_input(case: Case, folder: Path, capsys):
    if case.setup:
        case.setup(folder)
    before = checksums(folder)
    try:
        code = main(case.argv(folder))
    except SystemExit as e:  # a usage error, found by argparse (exit code 2)
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("diffplan: error: "), lines[0]
    for word in case.words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    for word in case.absent:
        assert word not in lines[0], f"{word!r} in: {lines[0]}"
    after = checksums(folder)
    for name in set(before) | set(after):
        if any(Path(name).match(glob) for glob in case.may_change):
            continue
        assert before.get(name) == after.get(name), f"{name} changed"
    for name in case.must_not_exist:
        assert not (folder / name).exists(), f"{name} was written"
    assert not list(folder.rglob("*.tmp")), "temp files left behind"


# ----------------------------------------------------------------------------- API rows


def api_train(t: Path, out: str, *overrides: str, **kwargs) -> None:
    train(load_config(TINY, [*FAST, *overrides]), t / out, progress=False, **kwargs)


def short_windows(horizon: int) -> TrajectoryWindows:
    episodes = make_synthetic("lines", n_episodes=8, length=10)
    spec = TrajectorySpec(obs_dim=2, act_dim=2, horizon=horizon)
    return TrajectoryWindows(episodes, spec, fit_normalizer(episodes, "limits"))


def nan_value(t: Path) -> None:
    _with_nan(t / "run" / "value.pt", t / "run" / "nan-value.pt", "state_dict")


def mpc_on_cuda(t: Path) -> None:
    from planners import MPCPlanner

    MPCPlanner.from_checkpoint(str(t / "run/last.pt"), device="cuda")


def plan_to_maze_goal(t: Path, goal, maze_map=None) -> None:
    from diffplan.tasks.pointmaze import MazeGrid
    from guides import Goal
    from planners import MPCPlanner

    grid = MazeGrid(maze_map) if maze_map else MazeGrid.from_name("umaze")
    guide = Goal(dims=[0, 1], check=grid.check_goal)
    planner = MPCPlanner.from_checkpoint(str(t / "run/last.pt"), guide=guide, n_candidates=2)
    planner.act(np.array([-1.0, 0.0]), goal=np.asarray(goal))


# Two rooms with no door between them: (-1, 0) and (1, 0) are free but not connected.
TWO_ROOMS = [[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]]


def api(name, call, error, match, setup=None, marks=()):
    return pytest.param(call, error, match, setup, id=name, marks=marks)


API_CASES = [
    api("train-into-existing-run", lambda t: api_train(t, "run"), DiffplanError,
        "already holds a run"),
    api("train-into-folder-with-own-files", lambda t: api_train(t, "mine"), DiffplanError,
        "is not empty", own_files),
    api("train-overwrite-with-missing-dataset",
        lambda t: api_train(t, "run", "data.source=d4rl", "data.dataset=nope.hdf5",
                            overwrite=True),
        DatasetError, "nope.hdf5 does not exist"),
    api("train-overwrite-with-short-episodes",
        lambda t: api_train(t, "run", "model.horizon=512", overwrite=True), DatasetError,
        "MAX_PADDED_FRACTION"),
    api("train-with-a-config-changed-in-code",
        lambda t: train(_zero_save_every(), t / "fresh", progress=False), ConfigError,
        "train.save_every"),
    api("train-value-onto-its-checkpoint",
        lambda t: train_value(t / "run/last.pt", t / "run/last.pt", steps=1), DiffplanError,
        "is the diffusion checkpoint"),
    api("train-value-onto-an-existing-file",
        lambda t: train_value(t / "run/last.pt", t / "run/value.pt", steps=1), DiffplanError,
        "exists; pass --overwrite"),
    api("train-state-model-onto-its-checkpoint",
        lambda t: train_state_model(t / "run/last.pt", t / "run/last.pt", steps=1),
        DiffplanError, "is the diffusion checkpoint"),
    api("load-diffusion-checkpoint-as-state-model",
        lambda t: load_state_model(t / "run/last.pt", load_checkpoint(t / "run/last.pt")),
        CheckpointError, "is not a diffplan state model"),
    api("load-nan-checkpoint", lambda t: load_checkpoint(t / "run/nan.pt"), CheckpointError,
        r"nan\.pt holds NaN/inf", nan_checkpoint),
    api("load-nan-value", lambda t: load_value(t / "run/nan-value.pt", load_checkpoint(
        t / "run/last.pt")), CheckpointError, r"nan-value\.pt holds NaN/inf", nan_value),
    api("load-checkpoint-directory", lambda t: load_checkpoint(t / "run"), CheckpointError,
        "is a directory"),
    api("config-dict-bad-value", lambda t: config_from_dict({"train": {"log_every": 0}}),
        ConfigError, "'train.log_every' in <dict> must be >= 1"),
    api("plan-negative-bend-tolerance",
        lambda t: config_from_dict({"plan": {"lookahead": 16, "bend_tolerance": -0.1}}),
        ConfigError, "'plan.bend_tolerance' in <dict> must be null or a distance >= 0"),
    api("pointmaze-negative-goal-hold",
        lambda t: task_for(config_from_dict({"task": {"type": "pointmaze", "env": "umaze",
                                                      "options": {"goal_hold": -0.1}}})),
        ConfigError, "task.options.goal_hold must be a distance > 0 or null, got -0.1"),
    api("windows-mostly-padding", lambda t: short_windows(64), DatasetError,
        "91 % of the planned steps"),
    api("unknown-device", lambda t: resolve_device("tpu"), ConfigError, "unknown device"),
    api("load-checkpoint-on-missing-cuda",
        lambda t: load_checkpoint(t / "run/last.pt", device="cuda"), ConfigError, NO_CUDA,
        marks=needs_no_cuda),
    api("planner-on-missing-cuda", mpc_on_cuda, ConfigError, NO_CUDA, marks=needs_no_cuda),
    api("goal-inside-a-maze-wall", lambda t: plan_to_maze_goal(t, [0.0, 0.0]), ValueError,
        r"goal \(0.00, 0.00\) lies inside a wall \(cell \(2, 2\)\).*nearest free"),
    api("goal-outside-the-maze", lambda t: plan_to_maze_goal(t, [9.0, 0.0]), ValueError,
        "lies outside the maze"),
    api("goal-unreachable-in-the-maze", lambda t: plan_to_maze_goal(t, [1.0, 0.0], TWO_ROOMS),
        ValueError, r"cannot be reached from the ball's cell \(1, 1\)"),
]  # fmt: skip


def _zero_save_every():
    config = load_config(TINY, FAST)
    config.train.save_every = 0  # built in code: train() validates it anyway
    return config


@pytest.mark.parametrize("call, error, match, setup", API_CASES)
def test_api_bad_input(call, error, match, setup, folder: Path):
    if setup:
        setup(folder)
    before = checksums(folder)
    with pytest.raises(error, match=match) as info:
        call(folder)
    assert len(str(info.value).splitlines()) == 1
    assert checksums(folder) == before
    assert not (folder / "fresh").exists()


def test_mostly_padded_windows_warn_with_the_fraction():
    with pytest.warns(DiffplanWarning, match="83 % of the planned steps .* padding"):
        windows = short_windows(32)
    assert windows.padded_fraction == pytest.approx(1 - 55 / 320)


def test_input_errors_answer_before_torch_is_imported(tmp_path):
    """--help, --version and bad inputs never import torch (or scipy): they answer at once."""
    checkpoint = ROOT / "runs" / "nowhere" / "last.pt"
    commands = [
        ["--version"],
        ["--help"],
        ["train", "--help"],
        ["train", "--config", str(tmp_path / "nope.yaml")],
        ["train", "--config", TINY, "train.save_every=0"],
        ["train", "--config", str(ROOT / "configs" / "hopper-medium-v2.yaml"), "--out",
         str(tmp_path / "r"), "data.dataset=" + str(tmp_path / "missing.hdf5")],
        ["train", "--config", str(ROOT / "configs" / "pointmaze-umaze.yaml"), "--out",
         str(tmp_path / "r"), f"data.root={tmp_path}"],
        ["info", "--checkpoint", str(checkpoint)],
        ["sample", "--checkpoint", str(checkpoint)],
        ["train-value", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "v.pt")],
        ["refs", "--env", "pointmaze-umaze", "--episodes", "0"],
    ]  # fmt: skip
    code = (
        "import sys\n"
        "from diffplan.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    heavy = [m for m in ('torch', 'scipy') if m in sys.modules]\n"
        "    assert not heavy, (argv, heavy)\n"
    )
    env = {**os.environ, "DIFFPLAN_DEBUG": ""}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.perf_counter() - started < 20  # generous: a loaded 2-core machine


def test_resume_takes_over_the_stale_lock_of_a_killed_run_and_says_so(folder, capsys):
    stale_lock(folder)
    assert main(train_args(folder, "run", "--resume", "train.steps=6")) == 0
    err = capsys.readouterr().err
    assert "took over the stale lock of pid" in err and "no longer running" in err
    assert not (folder / "run" / ".diffplan.lock").exists()  # released when done
    assert load_checkpoint(folder / "run" / "last.pt").step == 6


# ----------------------------------------------------------------------------- kill -9


SLOW_SAVES = """
import os, sys, time
import torch
from diffplan.cli import main

real_save, saves = torch.save, [0]

def slow_save(obj, f, *args, **kwargs):
    # Checkpoint n: write the first bytes, then (n == PAUSE_AT) tell the test and wait for
    # its kill -9 in the middle of the write.
    saves[0] += 1
    f.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
    f.flush()
    if saves[0] == int(os.environ["PAUSE_AT"]):
        open(os.environ["MARKER"], "w").close()
        time.sleep(120)
    f.seek(0)
    f.truncate()
    real_save(obj, f, *args, **kwargs)

torch.save = slow_save
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    """A run killed (SIGKILL) in the middle of writing a checkpoint, three times in a row:
    last.pt always loads, and the next start removes the killed saves' temp files."""
    run, marker = tmp_path / "run", tmp_path / "saving"
    args = ["train", "--config", TINY, "--out", str(run), "--no-progress", "train.steps=100000",
            "train.save_every=1", "train.log_every=1", "train.batch_size=8"]  # fmt: skip
    step, stale = 0, set()
    for iteration, pause_at in enumerate((2, 3, 2)):
        marker.unlink(missing_ok=True)
        env = {**os.environ, "PAUSE_AT": str(pause_at), "MARKER": str(marker)}
        argv = args + (["--resume"] if iteration else [])
        proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVES, *argv], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never reached the save to kill"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()

        temps = {p.name for p in run.glob(".last.pt.*.tmp")}
        assert temps, "the kill should have left the half-written temp file"
        assert not temps & stale, "the previous start should have removed the old temp files"
        stale = temps
        # Saves 1 .. pause_at-1 of this process finished; save pause_at was killed.
        assert read_checkpoint(run / "last.pt")["step"] == step + pause_at - 1
        assert load_checkpoint(run / "last.pt").step == step + pause_at - 1
        step += pause_at - 1

    # The next start (here, in-process) cleans up and continues from the last good save.
    config = load_config(TINY, [f"train.steps={step + 2}", "train.save_every=1",
                                "train.log_every=1", "train.batch_size=8"])  # fmt: skip
    train(config, run, resume=True, progress=False)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "last.pt").step == step + 2
