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


def test_a_config_builds_on_its_base(tmp_path):
    """`base:` composes configs: the file's keys over its base's, section by section, and a
    missing base, a cycle and a misspelt key in a base are one line each."""
    (tmp_path / "base.yaml").write_text(
        "name: base\ntrain:\n  steps: 7\n  lr: 0.01\nmodel:\n  horizon: 16\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\ntrain:\n  steps: 9\n")
    config = load_config(tmp_path / "child.yaml", ["train.batch_size=8"])
    assert (config.name, config.train.steps, config.train.lr) == ("child", 9, 0.01)
    assert config.model.horizon == 16 and config.train.batch_size == 8
    (tmp_path / "orphan.yaml").write_text("base: nope.yaml\n")
    with pytest.raises(ConfigError, match="names nope.yaml, but .* does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "typo-base.yaml").write_text("train:\n  stpes: 3\n")
    (tmp_path / "uses-typo.yaml").write_text("base: typo-base.yaml\nname: x\n")
    with pytest.raises(ConfigError, match=r"'train.stpes' in .*typo-base.yaml.*'steps'"):
        load_config(tmp_path / "uses-typo.yaml")


def test_locomotion_configs_are_a_base_plus_a_few_lines():
    root = Path(__file__).resolve().parent.parent / "configs"
    for path in [*root.glob("b6-*.yaml"), *root.glob("*-v2.yaml")]:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines[0].startswith("base: base/") and len(lines) <= 20, path.name
