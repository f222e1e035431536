"""Fast Minari loading: the bulk HDF5 reader agrees with Minari's API, the on-disk cache is
used only when valid (stale, corrupt, other options: reread and rewritten), and can be off."""

import json
import os

import numpy as np
import pytest

from diffplan.data import minari_source
from diffplan.data.minari_source import load_minari
from diffplan.errors import DatasetError


def _create(root, dataset_id, obs_space, buffers):
    import minari
    from gymnasium import spaces

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        with pytest.warns(UserWarning):  # Minari nags about author/permalink metadata
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env="CartPole-v1",  # only its spec is stored; spaces are given here
                observation_space=obs_space,
                action_space=spaces.Box(-1, 1, (2,), np.float32),
                ref_min_score=0.0,
                ref_max_score=10.0,
            )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    root = tmp_path_factory.mktemp("minari-cache")
    rng = np.random.default_rng(0)
    box = lambda n, dtype=np.float64: spaces.Box(-np.inf, np.inf, (n,), dtype)  # noqa: E731

    def buffer(t, obs, seed):
        r = np.random.default_rng(seed)
        return EpisodeBuffer(
            observations=obs,
            actions=r.uniform(-1, 1, (t, 2)).astype(np.float32),
            rewards=r.normal(size=t),
            terminations=np.r_[np.zeros(t - 1, bool), seed % 2 == 0],
            truncations=np.r_[np.zeros(t - 1, bool), seed % 2 == 1],
            infos={"success": np.arange(t + 1) % 3 == 0, "goal": r.normal(size=(t + 1, 2))},
        )

    lengths = (7, 3, 12, 1)
    dict_space = spaces.Dict(
        {"observation": box(4), "achieved_goal": box(2), "desired_goal": box(2), "extra": box(1)}
    )
    dict_buffers = []
    for i, t in enumerate(lengths):
        pos = rng.normal(size=(t + 1, 4))
        obs = {
            "observation": pos,
            "achieved_goal": pos[:, :2],
            "desired_goal": rng.normal(size=(t + 1, 2)),
            "extra": rng.normal(size=(t + 1, 1)),
        }
        dict_buffers.append(buffer(t, obs, i))
    _create(root, "test/dict-v0", dict_space, dict_buffers)
    box_buffers = [buffer(t, rng.normal(size=(t + 1, 3)), i) for i, t in enumerate(lengths)]
    _create(root, "test/box-v0", box(3), box_buffers)
    int_buffers = [buffer(t, np.ones((t + 1, 3), np.int64), i) for i, t in enumerate(lengths)]
    _create(root, "test/int-v0", box(3, np.int64), int_buffers)
    return root


def _assert_same(a, b):
    for name in ("observations", "actions", "rewards", "terminations", "truncations", "lengths"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.goals is None) == (b.goals is None)
    if a.goals is not None:
        assert a.goals.dtype == b.goals.dtype
        np.testing.assert_array_equal(a.goals, b.goals)
    assert list(a.infos) == list(b.infos)
    for k in a.infos:
        assert a.infos[k].dtype == b.infos[k].dtype
        np.testing.assert_array_equal(a.infos[k], b.infos[k])
    assert a.metadata == b.metadata


@pytest.mark.parametrize(
    "dataset, options",
    [
        ("test/dict-v0", {"info_keys": ["success", "goal"]}),
        ("test/dict-v0", {"goal_info_key": "goal"}),
        ("test/box-v0", {"goal_info_key": "goal", "info_keys": ["success"]}),
        ("test/box-v0", {}),
    ],
)
def test_bulk_hdf5_reader_matches_minari_api(root, dataset, options):
    import minari

    from diffplan.data.minari_hdf5 import read_hdf5

    path = minari_source.resolve_minari_path(dataset, root)
    storage = minari.MinariDataset(path).storage
    assert read_hdf5(storage, options.get("info_keys", ()), options.get("goal_info_key"))
    fast = load_minari(dataset, root, cache=False, progress=True, **options)
    slow = load_minari(dataset, root, cache=False, reader="minari", progress=True, **options)
    _assert_same(fast, slow)
    assert fast.n_steps == 23 and len(fast) == 4


def test_unsupported_layout_takes_the_minari_path_with_its_error(root):
    import minari

    from diffplan.data.minari_hdf5 import read_hdf5

    storage = minari.MinariDataset(minari_source.resolve_minari_path("test/int-v0", root)).storage
    assert read_hdf5(storage) is None
    messages = []
    for reader in ("auto", "minari"):
        with pytest.raises(DatasetError, match="expected floating point") as info:
            load_minari("test/int-v0", root, cache=False, reader=reader)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    with pytest.raises(DatasetError, match="infos/nope"):
        load_minari("test/box-v0", root, cache=False, info_keys=["nope"])
    with pytest.raises(ValueError, match="reader"):
        load_minari("test/box-v0", root, reader="fast")


@pytest.fixture
def counted(monkeypatch):
    """Counts the loads that read the dataset itself (cache misses)."""
    calls = []
    original = minari_source._read_minari

    def read(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(minari_source, "_read_minari", read)
    return calls


def _entries(folder):
    return sorted(p for p in folder.rglob("manifest.json"))


def test_cache_hit_stale_corrupt_and_options(root, tmp_path, counted):
    cache = tmp_path / "cache"
    reference = load_minari("test/dict-v0", root, cache=False, info_keys=["success"])
    first = load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache)
    second = load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache)
    assert len(counted) == 2  # the reference and the first load; the second was a hit
    _assert_same(first, reference)
    _assert_same(second, reference)
    assert second.observations.flags.writeable  # copy-on-write map: writable, file untouched
    (entry,) = [m.parent for m in _entries(cache)]

    # other options: their own entry; the first one stays valid
    load_minari("test/dict-v0", root, info_keys=["goal", "success"], cache_dir=cache)
    assert len(counted) == 3 and len(_entries(cache)) == 2
    load_minari("test/dict-v0", root, info_keys=["success", "success"], cache_dir=cache)
    assert len(counted) == 3

    # a flipped byte in an array: ignored, reread, rewritten
    manifest = json.loads((entry / "manifest.json").read_text())
    array_file = entry / manifest["arrays"]["observations"]["file"]
    data = bytearray(array_file.read_bytes())
    data[-1] ^= 0xFF
    array_file.write_bytes(bytes(data))
    _assert_same(load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache), first)
    assert len(counted) == 4
    load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache)
    assert len(counted) == 4  # rewritten and valid again

    # garbage manifest, missing file: misses, never errors
    (entry / "manifest.json").write_text("{not json")
    load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache)
    manifest = json.loads((entry / "manifest.json").read_text())
    (entry / manifest["arrays"]["rewards"]["file"]).unlink()
    _assert_same(load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache), first)
    assert len(counted) == 6

    # the dataset changed (here: only its mtime): stale
    meta = minari_source.resolve_minari_path("test/dict-v0", root) / "metadata.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_minari("test/dict-v0", root, info_keys=["success"], cache_dir=cache)
    assert len(counted) == 7
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_cache_location_and_opt_out(root, tmp_path, monkeypatch, counted):
    import minari

    monkeypatch.delenv("DIFFPLAN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DIFFPLAN_MINARI_CACHE", "0")
    beside = root / "test" / "box-v0" / ".diffplan-cache"
    load_minari("test/box-v0", root)
    assert not beside.exists() and not (tmp_path / "xdg").exists()
    monkeypatch.delenv("DIFFPLAN_MINARI_CACHE")
    load_minari("test/box-v0", root, cache=False)
    assert not beside.exists()

    # default: next to the dataset, hidden from Minari
    a = load_minari("test/box-v0", root)
    b = load_minari("test/box-v0", root)
    assert len(counted) == 3 and len(_entries(beside)) == 1
    _assert_same(a, b)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert "test/box-v0" in minari.list_local_datasets()
    minari.MinariDataset(beside.parent / "data")  # Minari still opens it

    # not writable there (here: a file in the way): the user cache folder
    in_the_way = root / "test" / "dict-v0" / ".diffplan-cache"
    in_the_way.write_text("in the way")
    load_minari("test/dict-v0", root, goal_info_key="goal")
    load_minari("test/dict-v0", root, goal_info_key="goal")
    assert len(counted) == 4 and len(_entries(tmp_path / "xdg" / "diffplan")) == 1

    # nowhere writable: a warning, and the data all the same
    monkeypatch.setenv("DIFFPLAN_CACHE_DIR", str(in_the_way / "sub"))
    with pytest.warns(UserWarning, match="could not write the dataset cache"):
        c = load_minari("test/dict-v0", root, goal_info_key="goal")
    assert c.n_steps == 23
    in_the_way.unlink()
