"""Configs: strict keys with helpful errors, overrides, types, and every shipped YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffplan.config import load_config
from diffplan.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_misspelt_key_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stpes: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "train.stpes" in message and str(path) in message and "'steps'" in message, message


def test_misspelt_section_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  steps: 5\n")
    with pytest.raises(ConfigError, match="'trian'.*did you mean 'train'"):
        load_config(path)


def test_nested_overrides(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  steps: 100\n")
    config = load_config(path, ["train.steps=5", "model.dim_mults=[1,2]", "train.lr=2e-4"])
    assert config.train.steps == 5
    assert config.model.dim_mults == [1, 2]
    assert config.train.lr == pytest.approx(2e-4)  # YAML 1.1 reads '2e-4' as a string


def test_misspelt_override_is_an_error(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match="train.setps.*'steps'"):
        load_config(path, ["train.setps=5"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.steps=abc", "integer"),
        ("model.return_conditioning=3", "true or false"),
        ("train.lr=fast", "number"),
        ("model.dim_mults=4", "list"),
    ],  # fmt: skip
)
def test_bad_types_are_errors(tmp_path, override, words):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=words) as info:
        load_config(path, [override])
    assert override.split("=")[0] in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_parse_and_fit_the_unet(path):
    config = load_config(path)
    assert config.name == path.stem, "a config's name should match its file name"
    levels = len(config.model.dim_mults)
    assert config.model.horizon % 2 ** (levels - 1) == 0, "horizon must suit the U-Net depth"
    if config.data.normalizer == "gaussian":
        assert config.diffusion.clip_denoised is None, "Gaussian-normalized data is unbounded"


def test_the_shipped_configs_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "pointmaze-umaze", "pointmaze-medium", "pointmaze-large"} <= names
    for env in ("hopper", "halfcheetah", "walker2d"):
        for ds in ("medium", "medium-replay", "medium-expert"):
            assert f"{env}-{ds}-v2" in names
