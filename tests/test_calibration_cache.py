"""The calibration disk cache (logo_cpp.calibration_cache): a warm cache gives the routing a cold computation
gives, bit for bit; bad, foreign or stale files and unwritable directories are never fatal and never used;
different models and adapters get different entries; concurrent writers merge. The oracle is always the
same router computing its statistics with no disk cache (cache_dir=False)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import logo_cpp
from logo_cpp import calibration_cache, synthetic

from conftest import SPECS, THREADS

NAMES = ["math", "sql", "poem", "code", "chat", "legal", "mixed"]
PROMPTS = ["Hello world, the cat sat on the mat.", "Numbers 12345 and symbols"]
# Every statistical variant the routers have: the default, zscore at both positions, entropy, Arrow.
VARIANTS = [
    dict(calibration="zscore_sq"),
    dict(calibration="zscore", position="last", layer=[1, 2]),
    dict(calibration="zscore", signal="entropy", layer=-1, module="attn_q"),
]


def _load(model_dir, adapter_dir, model_file="llama-f32.gguf", names=NAMES):
    model = logo_cpp.Model(model_dir / model_file, n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / f"{n}.gguf" for n in names])
    return model, pool


def _routings(model, pool, cache_dir):
    out = []
    for kw in VARIANTS:
        router = logo_cpp.LoGo(model, pool, k=3, cache_dir=cache_dir, **kw)
        out += [router.route(p) for p in PROMPTS]
    arrow = logo_cpp.Arrow(model, pool, k=2, calibration="zscore", cache_dir=cache_dir)
    return out + [arrow.route(p) for p in PROMPTS]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.names == y.names
        np.testing.assert_array_equal(x.weights, y.weights)
        np.testing.assert_array_equal(x.signals, y.signals)
        np.testing.assert_array_equal(x.raw_signals, y.raw_signals)


def _files(directory: Path):
    return sorted((directory / "calibration").glob("*.json"))


@pytest.fixture(scope="module")
def cold(model_dir, adapter_dir):
    """The oracle: every variant routed with statistics computed in this process, no disk cache."""
    model, pool = _load(model_dir, adapter_dir)
    return _routings(model, pool, cache_dir=False), model._core.calibration_cache_entries


def test_cold_then_warm_is_bit_for_bit_the_uncached_routing(model_dir, adapter_dir, tmp_path, cold):
    oracle, n_stats = cold
    model, pool = _load(model_dir, adapter_dir)
    _assert_same(_routings(model, pool, tmp_path), oracle)  # cold cache: computes and saves
    (path,) = _files(tmp_path)
    assert len(json.loads(path.read_text())["entries"]) == n_stats

    model, pool = _load(model_dir, adapter_dir)  # a new process's view: a fresh model, statistics on disk
    warm = _routings(model, pool, tmp_path)
    _assert_same(warm, oracle)
    # Nothing was computed: the model holds exactly what the file gave it.
    assert model._core.calibration_cache_entries == n_stats
    assert _files(tmp_path) == [path]


def _corruptions(path: Path):
    """(name, function rewriting the statistics file at path) for every way a file can be bad."""
    def edit(fn):
        def apply():
            doc = json.loads(path.read_text())
            fn(doc)
            path.write_text(json.dumps(doc))
        return apply

    def resealed(fn):  # a consistent checksum over bad content: the values themselves must be checked
        def change(doc):
            fn(doc)
            doc["checksum"] = calibration_cache._checksum(doc["key"], doc["entries"])
        return edit(change)

    def set_value(i, v):
        def change(doc):
            doc["entries"][0][i] = v
        return change

    data = path.read_bytes()
    return [
        ("empty", lambda: path.write_bytes(b"")),
        ("truncated", lambda: path.write_bytes(data[: len(data) // 2])),
        ("garbage", lambda: path.write_bytes(os.urandom(300))),
        ("not utf-8", lambda: path.write_bytes(b"\xff\xfe" + data)),
        ("a list", lambda: path.write_text("[1, 2, 3]")),
        ("deep nesting", lambda: path.write_text("[" * 100000 + "]" * 100000)),
        ("another format", edit(lambda d: d.update(format=calibration_cache.FORMAT + 1))),
        ("a changed value", edit(lambda d: d["entries"][0].__setitem__(4, d["entries"][0][4] * 1.5))),
        ("no checksum", edit(lambda d: d.pop("checksum"))),
        ("stale statistics version", resealed(lambda d: d["key"].update(core=d["key"]["core"].replace("stats=", "stats=0")))),
        ("another model", resealed(lambda d: d["key"].update(model_sha256="0" * 64))),
        ("NaN mean", resealed(set_value(4, float("nan")))),
        ("negative std", resealed(set_value(5, -1.0))),
        ("integer mean", resealed(set_value(4, 3))),
        ("unknown signal", resealed(set_value(1, "loudness"))),
        ("bad matrix hash", resealed(set_value(0, "xyz"))),
        ("entry too short", resealed(lambda d: d["entries"][0].pop())),
        ("entries not a list", resealed(lambda d: d.update(entries={"a": 1}))),
    ]


def test_bad_files_are_ignored_and_rewritten(model_dir, adapter_dir, tmp_path, cold):
    oracle, n_stats = cold
    model, pool = _load(model_dir, adapter_dir)
    _routings(model, pool, tmp_path)
    (path,) = _files(tmp_path)
    good = path.read_bytes()
    for name, corrupt in _corruptions(path):
        path.write_bytes(good)
        corrupt()
        model, pool = _load(model_dir, adapter_dir)
        _assert_same(_routings(model, pool, tmp_path), oracle)
        # Computed again (not read), and the file is whole again.
        assert model._core.calibration_cache_entries == n_stats, name
        assert calibration_cache.read_entries(path, json.loads(good)["key"]) is not None, name


def test_a_file_that_is_a_directory_or_too_large(model_dir, adapter_dir, tmp_path, cold, monkeypatch):
    oracle, _ = cold
    model, pool = _load(model_dir, adapter_dir)
    _routings(model, pool, tmp_path)
    (path,) = _files(tmp_path)
    monkeypatch.setattr(calibration_cache, "MAX_FILE_BYTES", 100)
    model, pool = _load(model_dir, adapter_dir)
    _assert_same(_routings(model, pool, tmp_path), oracle)
    monkeypatch.undo()
    path.unlink()
    path.mkdir()  # the file's name taken by a directory: nothing can be read or written there
    model, pool = _load(model_dir, adapter_dir)
    _assert_same(_routings(model, pool, tmp_path), oracle)


def test_an_unwritable_cache_dir_warns_and_routes(model_dir, adapter_dir, tmp_path, cold, caplog, monkeypatch):
    oracle, _ = cold
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model, pool = _load(model_dir, adapter_dir)
    with caplog.at_level(logging.WARNING, logger="logo_cpp"):
        _assert_same(_routings(model, pool, blocker / "cache"), oracle)
    assert "cannot write" in caplog.text and str(blocker / "cache") in caplog.text
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1  # once, not per route

    # A directory the OS refuses to write (root ignores chmod, so the refusal is made where files are created).
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(calibration_cache.tempfile, "mkstemp", refuse)
    model, pool = _load(model_dir, adapter_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="logo_cpp"):
        _assert_same(_routings(model, pool, tmp_path / "refused"), oracle)
    assert "Permission denied" in caplog.text
    assert not _files(tmp_path / "refused")


def test_a_read_only_cache_is_still_read(model_dir, adapter_dir, tmp_path, cold, monkeypatch):
    oracle, n_stats = cold
    model, pool = _load(model_dir, adapter_dir)
    _routings(model, pool, tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(calibration_cache.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(calibration_cache.os, "utime", refuse)
    model, pool = _load(model_dir, adapter_dir)
    _assert_same(_routings(model, pool, tmp_path), oracle)
    assert model._core.calibration_cache_entries == n_stats


def test_models_and_adapters_get_their_own_entries(model_dir, adapter_dir, tmp_path):
    # Two models: two files. A model file copied elsewhere has the same content: the same file.
    computed = {}
    for f in ("llama-f32.gguf", "llama-f16.gguf"):
        model, pool = _load(model_dir, adapter_dir, f, names=["math", "sql"])
        logo_cpp.LoGo(model, pool, k=1, cache_dir=tmp_path).route(PROMPTS[0])
        computed[f] = model._core.calibration_cache_entries
    assert len(_files(tmp_path)) == 2
    copy = tmp_path / "copy" / "llama-f32.gguf"
    copy.parent.mkdir()
    copy.write_bytes((model_dir / "llama-f32.gguf").read_bytes())
    model = logo_cpp.Model(copy, n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / "math.gguf", adapter_dir / "sql.gguf"])
    router = logo_cpp.LoGo(model, pool, k=1, cache_dir=tmp_path)
    assert router._disk.load() == computed["llama-f32.gguf"]  # read before any route: the copy is the same model
    router.route(PROMPTS[0])
    assert model._core.calibration_cache_entries == computed["llama-f32.gguf"]
    assert len(_files(tmp_path)) == 2

    # An adapter with one value changed is another adapter: its statistics are computed and added.
    spec = synthetic.ModelSpec(**SPECS["llama"])
    changed = synthetic.write_adapter(tmp_path / "math2.gguf", spec, targets=("attn_q", "attn_v"), rank=8, alpha=16.0,
                                      dtype="f32", seed=10)
    import gguf

    reader = gguf.GGUFReader(changed, "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.2.attn_v.weight.lora_b")
    tensor.data.flat[0] += 0.25
    reader.data.flush()
    del reader, tensor
    model, pool = _load(model_dir, adapter_dir, names=["math"])
    pool.add(changed, name="math2")
    oracle_model, oracle_pool = _load(model_dir, adapter_dir, names=["math"])
    oracle_pool.add(changed, name="math2")
    r = logo_cpp.LoGo(model, pool, k=1, cache_dir=tmp_path).route(PROMPTS[0])
    o = logo_cpp.LoGo(oracle_model, oracle_pool, k=1, cache_dir=False).route(PROMPTS[0])
    np.testing.assert_array_equal(r.signals, o.signals)
    assert r.signals[0] != r.signals[1]


def test_concurrent_writers_merge(model_dir, adapter_dir, tmp_path, cold):
    """Three processes, each with other adapters, route at once: the file ends up with all their statistics."""
    oracle, _ = cold
    script = (
        "import sys, logo_cpp\n"
        "m = logo_cpp.Model(sys.argv[1], n_ctx=256, n_threads=1)\n"
        "p = logo_cpp.AdapterPool(m, sys.argv[3:])\n"
        "logo_cpp.LoGo(m, p, k=1, cache_dir=sys.argv[2]).route('Hello world, the cat sat on the mat.')\n"
    )
    groups = [["math", "sql"], ["poem", "code", "chat"], ["legal", "mixed"]]
    env = {k: v for k, v in os.environ.items() if k != "LOGO_CPP_NO_CACHE"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(model_dir / "llama-f32.gguf"), str(tmp_path),
                               *[str(adapter_dir / f"{n}.gguf") for n in g]], env=env, cwd=tmp_path) for g in groups]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    model, pool = _load(model_dir, adapter_dir)
    router = logo_cpp.LoGo(model, pool, k=3, cache_dir=tmp_path)
    before = None
    router._disk.load()
    before = model._core.calibration_cache_entries
    _assert_same([router.route(p) for p in PROMPTS], oracle[: len(PROMPTS)])
    assert model._core.calibration_cache_entries == before  # every adapter's statistics came from the file


def test_opting_out_and_choosing_the_directory(model_dir, adapter_dir, tmp_path, monkeypatch):
    model, pool = _load(model_dir, adapter_dir, names=["math"])
    monkeypatch.setenv("LOGO_CPP_NO_CACHE", "1")
    monkeypatch.setenv("LOGO_CPP_CACHE_DIR", str(tmp_path / "env"))
    logo_cpp.LoGo(model, pool, k=1).route(PROMPTS[0])
    assert not (tmp_path / "env").exists()
    logo_cpp.LoGo(model, pool, k=1, cache_dir=tmp_path / "arg").route(PROMPTS[0])  # the argument wins
    assert len(_files(tmp_path / "arg")) == 1

    monkeypatch.setenv("LOGO_CPP_NO_CACHE", "0")
    model, pool = _load(model_dir, adapter_dir, names=["math"])
    logo_cpp.LoGo(model, pool, k=1).route(PROMPTS[0])
    assert len(_files(tmp_path / "env")) == 1
    model, pool = _load(model_dir, adapter_dir, names=["math"])
    logo_cpp.LoGo(model, pool, k=1, cache_dir=False).route(PROMPTS[0])
    logo_cpp.LoGo(model, pool, k=1, calibration="none", cache_dir=tmp_path / "none").route(PROMPTS[0])
    assert not (tmp_path / "none").exists()  # no statistics, no cache

    monkeypatch.delenv("LOGO_CPP_CACHE_DIR")
    if sys.platform.startswith("linux"):  # platformdirs follows XDG on Linux only
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert calibration_cache.cache_dir() == tmp_path / "xdg" / "logo-cpp"
    monkeypatch.setenv("LOGO_CPP_NO_CACHE", "yes")
    assert calibration_cache.cache_dir() is None
    with pytest.raises(TypeError, match="cache_dir must be a path"):
        logo_cpp.LoGo(model, pool, cache_dir=3)
    with pytest.raises(ValueError, match="empty path"):
        logo_cpp.LoGo(model, pool, cache_dir="")


def test_a_model_file_changed_after_loading_is_not_cached(model_dir, adapter_dir, tmp_path, caplog):
    path = tmp_path / "model.gguf"
    path.write_bytes((model_dir / "llama-f32.gguf").read_bytes())
    model = logo_cpp.Model(path, n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / "math.gguf"])
    # Replaced (a new inode, as a download or copy does; writing into the mapped file would pull the loaded
    # weights from under the model).
    synthetic.write_model(tmp_path / "other.gguf", synthetic.ModelSpec(**{**SPECS["llama"], "seed": 99}), dtype="f32")
    os.replace(tmp_path / "other.gguf", path)
    with caplog.at_level(logging.WARNING, logger="logo_cpp"):
        logo_cpp.LoGo(model, pool, k=1, cache_dir=tmp_path / "c").route(PROMPTS[0])
    assert "changed on disk" in caplog.text
    assert not _files(tmp_path / "c")


def test_the_number_of_files_is_bounded(model_dir, adapter_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration_cache, "MAX_FILES", 2)
    for f in ("llama-f32.gguf", "llama-f16.gguf", "llama-q8_0.gguf"):
        model, pool = _load(model_dir, adapter_dir, f, names=["math"])
        logo_cpp.LoGo(model, pool, k=1, cache_dir=tmp_path).route(PROMPTS[0])
    files = _files(tmp_path)
    assert len(files) == 2
    # The most recent one is kept.
    assert any(json.loads(p.read_text())["model"].endswith("llama-q8_0.gguf") for p in files)


def _cli(*args, env=None):
    # From the tests' folder: at the checkout's root its logo_cpp source tree would shadow the installed package.
    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=os.path.dirname(os.path.abspath(__file__)))


def test_cli_route_cold_and_warm_and_the_cache_command(model_dir, adapter_dir, tmp_path):
    common = ["route", "-m", str(model_dir / "llama-f32.gguf"), "-a", str(adapter_dir), "-p", PROMPTS[0], "--k", "3",
              "--threads", "1", "--json", "--cache-dir", str(tmp_path)]
    cold = _cli(*common)
    warm = _cli(*common)
    off = _cli(*common[:-2], "--no-cache")
    for r in (cold, warm, off):
        assert r.returncode == 0, r.stderr
    drop = lambda out: {k: v for k, v in json.loads(out).items() if k != "timings"}  # noqa: E731
    assert drop(cold.stdout) == drop(warm.stdout) == drop(off.stdout)

    shown = _cli("cache", "--cache-dir", str(tmp_path), "--json")
    info = json.loads(shown.stdout)
    assert info["files"] == 1 and info["entries"] > 0 and info["models"][0]["model"].endswith("llama-f32.gguf")
    cleared = _cli("cache", "--cache-dir", str(tmp_path), "--clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert not _files(tmp_path) and not (tmp_path / "digests.json").exists()
    off = _cli("cache", env={**os.environ, "LOGO_CPP_NO_CACHE": "1"})
    assert "off" in off.stdout


def test_the_cache_command_shows_absolute_model_paths_and_unreadable_files(model_dir, adapter_dir, tmp_path):
    # A model routed by a relative path (from its own folder) is listed by its absolute path from anywhere else;
    # a statistics file that is not whole is listed as unreadable with its path, not silently left out.
    cache = tmp_path / "cache"
    routed = subprocess.run([sys.executable, "-m", "logo_cpp.cli", "route", "-m", "llama-f32.gguf", "-a",
                             str(adapter_dir), "-p", PROMPTS[0], "--threads", "1", "--cache-dir", str(cache)],
                            capture_output=True, text=True, timeout=300, cwd=model_dir)
    assert routed.returncode == 0, routed.stderr
    corrupt = cache / "calibration" / ("0" * 16 + ".json")
    corrupt.write_text('{"format": 1, "entries": [')
    info = json.loads(_cli("cache", "--cache-dir", str(cache), "--json").stdout)
    assert [m["model"] for m in info["models"]] == [str((model_dir / "llama-f32.gguf").resolve())]
    assert info["files"] == 1 and info["unreadable"] == [str(corrupt)]
    shown = _cli("cache", "--cache-dir", str(cache))
    assert shown.returncode == 0, shown.stderr
    assert str((model_dir / "llama-f32.gguf").resolve()) in shown.stdout
    assert [line for line in shown.stdout.splitlines() if "unreadable" in line and str(corrupt) in line], shown.stdout


def test_shipped_default_one_shot_route_cold_and_warm(tmp_path):
    """The case the cache is for: `logo-cpp route` on the shipped model and pool, one process each. The warm
    process computes no statistic (its calibration time is below a hundredth of the cold one's) and prints the
    cold one's routing, every adapter's signal included; in process, a router reading that cache routes held-out
    prompts bit for bit as one computing its statistics itself."""
    from logo_cpp import default_model

    prompt = "Give the plural form of crisis.\nAnswer:"
    outs = []
    for _ in ("cold", "warm"):
        r = _cli("route", "-p", prompt, "--k", "3", "--all", "--json", "--threads", str(THREADS),
                 "--cache-dir", str(tmp_path))
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    cold, warm = outs
    assert warm["timings"]["calibration_seconds"] < cold["timings"]["calibration_seconds"] / 100
    drop = lambda d: {k: v for k, v in d.items() if k != "timings"}  # noqa: E731
    assert drop(cold) == drop(warm)

    model = logo_cpp.Model(default_model.base_model_path(), n_threads=THREADS)
    files = default_model.adapter_files()
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    warm_router = logo_cpp.LoGo(model, pool, k=3, cache_dir=tmp_path)
    prompts = [row["prompt"] for row in default_model.read_eval_set()[::97]]
    warm = [warm_router.route(p) for p in prompts]
    assert model._core.calibration_cache_entries == len(json.loads(_files(tmp_path)[0].read_text())["entries"])
    model = logo_cpp.Model(default_model.base_model_path(), n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, list(files.values()), names=list(files))
    cold_router = logo_cpp.LoGo(model, pool, k=3, cache_dir=False)
    _assert_same(warm, [cold_router.route(p) for p in prompts])
