"""The `diffplan` command: train -> info -> sample on the tiny config, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffplan.cli import SUBCOMMANDS, main, parse_command_line

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command in a fresh process, as a user runs it (stderr is what they would see)."""
    env = {**os.environ, "DIFFPLAN_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "diffplan.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--config", TINY, "--out", str(out), "--no-progress",
                 "train.steps=12", "train.save_every=5"])  # fmt: skip
    yield code, out
    torch.set_num_threads(threads)


def test_train_writes_a_checkpoint(trained, capsys):
    code, out = trained
    assert code == 0
    assert (out / "last.pt").is_file() and (out / "config.yaml").is_file()
    assert len((out / "losses.csv").read_text().splitlines()) == 1 + 12


def test_info(trained, capsys):
    _, out = trained
    assert main(["info", "--checkpoint", str(out / "last.pt")]) == 0
    text = capsys.readouterr().out
    assert "step 12" in text and "horizon 16" in text and "params" in text, text


def test_sample_prints_statistics_and_plots(trained, capsys, tmp_path):
    _, out = trained
    png = tmp_path / "plans.png"
    args = ["sample", "--checkpoint", str(out / "last.pt"), "--n", "6", "--sampler", "ddim",
            "--steps", "5", "--plot", str(png)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "plans (6, 16, 4)" in text, text
    for name in ("obs[0]", "obs[1]", "act[0]", "act[1]"):
        assert name in text
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def _assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("diffplan: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_checkpoint_is_one_line(tmp_path):
    _assert_one_line_error(run_cli("info", "--checkpoint", str(tmp_path / "x.pt")), "not found")


def test_misspelt_override_is_one_line(tmp_path):
    result = run_cli("train", "--config", TINY, "--out", str(tmp_path), "train.stesp=3")
    _assert_one_line_error(result, "train.stesp", "'steps'")


def test_overrides_may_follow_flags():
    args = parse_command_line(
        ["train", "--config", TINY, "train.steps=3", "--out", "x", "--no-progress", "model.dim=8"]
    )
    assert args.overrides == ["train.steps=3", "model.dim=8"]
    assert args.out == "x" and args.no_progress


def test_usage_error_is_one_line():
    _assert_one_line_error(run_cli("sample"), "--checkpoint")


def test_subcommands_are_registered():
    names = {c.name for c in SUBCOMMANDS}
    documented = {"train", "sample", "info", "data", "refs", "evaluate", "train-value", "bench"}
    assert documented <= names, documented - names


def test_refs_json_has_documented_fields(tmp_path):
    out = tmp_path / "refs.json"
    assert main(["refs", "--env", "pointmaze-umaze", "--episodes", "2", "--json", str(out)]) == 0
    refs = json.loads(out.read_text())
    for key in ("ref_min", "ref_max", "episodes", "seed", "env", "dense", "command"):
        assert key in refs, key
    assert refs["ref_max"] > refs["ref_min"]  # the controller beats the random policy
    # An existing result is never overwritten silently.
    assert main(["refs", "--env", "pointmaze-umaze", "--episodes", "2", "--json", str(out)]) == 1
