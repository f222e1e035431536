"""Fuzz the command line's edge: a command, one of its flags or config keys, and a hostile
value (negative, zero, huge, NaN, wrong type, a folder, a file, the checkpoint itself,
unicode). Whatever is drawn: the command succeeds, or fails with exit code 1 or 2 and one
line on stderr without a traceback; and no file of the run it was pointed at changes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffplan.cli import main
from diffplan.config import load_config
from diffplan.trainer import train
from diffplan.value_training import train_value

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
FAST = ["train.steps=4", "train.save_every=2", "train.log_every=2"]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """run/ (a finished tiny run with a value net), a folder, a file; nothing else."""
    base = tmp_path_factory.mktemp("fuzz")
    run = base / "run"
    train(load_config(TINY, FAST), run, progress=False)
    train_value(run / "last.pt", run / "value.pt", steps=2, batch_size=8, progress=False)
    shutil.copytree(run, base / "pristine")  # to restore run/ after an allowed overwrite
    (base / "folder").mkdir()
    (base / "file.txt").write_text("the user's own file")
    return base


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# A hostile value, given the test's folder: what a careless or malicious user might type.
VALUES = [
    lambda t: "-1", lambda t: "0", lambda t: "1", lambda t: "-0.5", lambda t: "1e30",
    lambda t: "123456789012345678901234567890", lambda t: "nan", lambda t: "inf",
    lambda t: "abc", lambda t: "", lambda t: "[1, 2]", lambda t: "{a: 1}", lambda t: "ßλ∂😀",
    lambda t: "true", lambda t: "null", lambda t: str(t / "folder"), lambda t: str(t / "file.txt"),
    lambda t: str(t / "run" / "last.pt"), lambda t: str(t / "run" / "value.pt"),
    lambda t: str(t / "run"), lambda t: str(t / "missing" / "x.pt"),
]  # fmt: skip

CKPT = "{t}/run/last.pt"
OUTPUT_FLAGS = ("--out", "--json", "--plot")
# command -> (its fixed arguments, the flags / config keys to fuzz). `{t}` is the folder.
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "train": (["train", "--config", TINY, "--out", "{t}/new", "--no-progress", *FAST],
              ["--out", "--device", "--config", "train.steps", "train.lr", "train.batch_size",
               "model.horizon", "model.dim_mults", "diffusion.n_timesteps", "data.dataset",
               "task.type", "task.options", "plan.n_candidates", "train.threads", "name"]),
    "evaluate": (["evaluate", "--checkpoint", CKPT, "--no-progress", "--episodes", "1"],
                 ["--checkpoint", "--episodes", "--n-envs", "--seed", "--threads", "--json",
                  "--plot", "--value", "--critic", "--env", "--candidates", "--sampling-steps",
                  "plan.sampling_steps", "plan.warm_start_t", "plan.position_dims",
                  "task.episodes", "plan.critic"]),
    "sample": (["sample", "--checkpoint", CKPT, "--n", "2", "--steps", "2"],
               ["--checkpoint", "--n", "--steps", "--seed", "--plot"]),
    "train-value": (["train-value", "--checkpoint", CKPT, "--out", "{t}/folder/v.pt",
                     "--no-progress", "--steps", "2", "--batch-size", "4"],
                    ["--checkpoint", "--out", "--steps", "--batch-size", "--seed",
                     "--threads"]),
    "train-critic": (["train-critic", "--checkpoint", CKPT, "--out", "{t}/folder/c.pt",
                      "--no-progress", "--steps", "2", "--batch-size", "4"],
                     ["--checkpoint", "--out", "--steps", "--batch-size", "critic.expectile",
                      "critic.hidden", "critic.discount"]),
    "info": (["info", "--checkpoint", CKPT], ["--checkpoint"]),
}  # fmt: skip


def _argv(command: str, key: str, value: str, overwrite: bool, t: Path) -> list[str]:
    fixed, _ = COMMANDS[command]
    argv = [a.replace("{t}", str(t)) for a in fixed]
    if key.startswith("--"):
        if key in argv:  # replace the fixed value of that flag
            argv[argv.index(key) + 1] = value
        else:
            argv += [key, value]
    else:
        argv.append(f"{key}={value}")
    return argv + (["--overwrite"] if overwrite else [])


draws = st.sampled_from(sorted(COMMANDS)).flatmap(
    lambda c: st.tuples(
        st.just(c),
        st.sampled_from(COMMANDS[c][1]),
        st.integers(0, len(VALUES) - 1),
        st.booleans(),
    )
)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)),
    deadline=None,
    # The same draws in every run of the suite (a failure is a regression row); FUZZ_EXAMPLES=N
    # explores N fresh draws instead.
    derandomize=not os.environ.get("FUZZ_EXAMPLES"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(draw=draws)
def test_no_flag_value_gives_a_traceback_or_changes_the_run(place, draw):
    command, key, which, overwrite = draw
    value = VALUES[which](place)
    run_before = checksums(place / "run")
    user_file = (place / "file.txt").read_text()
    argv = _argv(command, key, value, overwrite and command != "train", place)
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(place / "folder")  # a relative value ("0", "nan") names a file in this folder
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: a usage error
                code = e.code
    finally:
        os.chdir(cwd)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("diffplan: warning")]
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue()[-2000:])
    if code != 0:
        assert code in (1, 2) and len(errors) == 1, (argv, lines)
    after = checksums(place / "run")
    if overwrite and key in OUTPUT_FLAGS and Path(value).parent == place / "run":
        # --overwrite may replace the named output file (not an input of the command)
        after.pop(Path(value).name, None), run_before.pop(Path(value).name, None)
    # never a file there changed or deleted (a success may add its own output)
    assert {k: after.get(k) for k in run_before} == run_before, argv
    if not overwrite:
        assert (place / "file.txt").read_text() == user_file, argv
    if checksums(place / "run") != checksums(place / "pristine"):  # an allowed overwrite
        shutil.rmtree(place / "run")
        shutil.copytree(place / "pristine", place / "run")
    for leftover in ("new", "folder"):  # a success may write there: start clean next time
        path = place / leftover
        if path.exists():
            shutil.rmtree(path)
        if leftover == "folder":
            path.mkdir()
    (place / "file.txt").write_text(user_file)
