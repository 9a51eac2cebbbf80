"""The command line: real runs in a subprocess, user mistakes as one line and a non-zero exit."""

import json
import subprocess
import sys

import pytest


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def files(model_dir, adapter_dir):
    return model_dir / "llama-f32.gguf", adapter_dir


def test_run_streams_the_answer_and_shows_the_routing(files, tmp_path):
    model, adapters = files
    out = cli("run", "--model", model, "--adapters", adapters, "--prompt", "Hello world", "-n", "8", "--k", "2",
              "--threads", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "routing (logo): 2 of 7 adapters" in out.stderr
    assert "not scored (no attn_v LoRA): poem" in out.stderr  # the default router probes attn_v


def test_run_json(files, tmp_path):
    model, adapters = files
    out = cli("run", "-m", model, "-a", adapters / "math.gguf", adapters / "sql.gguf", "-p", "Hello", "-n", "6", "--k", "2",
              "--json", "--signal", "entropy", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["finish_reason"] in ("length", "eos") and len(data["routing"]["selected"]) == 2
    assert abs(sum(s["weight"] for s in data["routing"]["selected"]) - 1) < 1e-4


def test_route_all_scores_every_adapter(files, tmp_path):
    model, adapters = files
    out = cli("route", "-m", model, "-a", adapters, "-p", "the cat", "--all", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["signals"]) == {"math", "sql", "poem", "code", "chat", "legal", "mixed"}
    assert data["signals"]["poem"] is None  # no attn_v LoRA: the default probe site
    assert data["calibration"] == "zscore_sq" and set(data["raw_signals"]) == set(data["signals"])
    assert data["layers"] == [0, 1, 2] and data["position"] == "mean"


def test_route_all_shows_raw_and_calibrated_signals(files, tmp_path):
    import logo_cpp

    model, adapters = files
    out = cli("route", "-m", model, "-a", adapters, "-p", "the cat", "--all", "--k", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "calibration zscore_sq" in out.stdout and "calibrated" in out.stdout and "raw" in out.stdout
    m = logo_cpp.Model(model, n_ctx=64, n_threads=1)
    pool = logo_cpp.AdapterPool(m, adapters)
    r = logo_cpp.LoGo(m, pool, k=2).route("the cat")
    table = out.stdout.split("signals (", 1)[1].splitlines()
    row = next(line.split() for line in table if line.split()[:1] == [r.names[0]])
    assert float(row[1]) == pytest.approx(float(r.signals[r.indices[0]]), rel=1e-3)
    assert float(row[2]) == pytest.approx(float(r.raw_signals[r.indices[0]]), rel=1e-3)
    out = cli("route", "-m", model, "-a", adapters, "-p", "the cat", "--all", "--calibration", "none", cwd=tmp_path)
    assert "calibration none" in out.stdout and "calibrated" not in out.stdout
    out = cli("route", "-m", model, "-a", adapters, "-p", "the cat", "--router", "arrow", "--k", "1", "--json",
              cwd=tmp_path)
    data = json.loads(out.stdout)
    assert data["method"] == "arrow" and data["signal"] == "arrow" and data["layers"] == [0, 1, 2]
    out = cli("route", "-m", model, "-a", adapters, "-p", "hi", "--calibration", "z", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "invalid choice: 'z' (choose from 'none', 'zscore', 'zscore_sq', 'spectral', 'frobenius')" in out.stderr


def test_inspect_model_and_adapter_fit(files, model_dir, tmp_path):
    model, adapters = files
    out = cli("inspect", model, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["architecture"] == "llama"
    out = cli("inspect", adapters / "mixed.gguf", "--base", model, "--json", cwd=tmp_path)
    data = json.loads(out.stdout)
    assert out.returncode == 0 and data["fits"] and "rank 2" in data["modules"]["attn_v"]
    out = cli("inspect", adapters / "math.gguf", "--base", model_dir / "qwen2-f32.gguf", cwd=tmp_path)
    assert out.returncode == 1 and "is for architecture 'llama'" in out.stdout


def _first_cut_tensor(full, size):
    """(name, end) of the first tensor of the GGUF file `full` whose data ends past `size` bytes, read with the
    gguf package: what a copy of `full` cut to `size` bytes must be reported as."""
    from gguf import GGUFReader

    reader = GGUFReader(full)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            return t.name, end
    raise AssertionError("nothing is cut")


@pytest.mark.parametrize("kind,message", [
    ("empty", "'{path}' is empty, expected a GGUF file"),
    ("not_gguf", "'{path}' is not a GGUF file (no GGUF magic at its start)"),
    ("truncated", "'{path}' is truncated: tensor '{tensor}' needs bytes up to {end} but the file has {size}"),
    ("adapter_truncated", "'{path}' is truncated: tensor '{tensor}' needs bytes up to {end} but the file has {size}"),
    ("truncated_header", "'{path}' is not a readable GGUF file (truncated or corrupt header; the file has {size} bytes)"),
    ("version_99", "'{path}' is GGUF version 99; logo-cpp reads GGUF versions 2 and 3 (little-endian)"),
    ("version_1", "'{path}' is GGUF version 1 (GGUFv1"),
    ("big_endian", "'{path}' is GGUF version 50331648 (version 3 written big-endian?)"),
    ("adapter_version_99", "'{path}' is GGUF version 99; logo-cpp reads GGUF versions 2 and 3 (little-endian)"),
])
def test_inspect_says_what_is_wrong_with_a_bad_file(model_dir, tmp_path, kind, message):
    # Before: the gguf package's numpy messages ("cannot reshape array of size ...") for truncated files.
    from logo_cpp import synthetic
    from conftest import SPECS, _spec

    spec = _spec(**SPECS["llama"])
    path = synthetic.write_broken(tmp_path / f"{kind}.gguf", kind, spec)
    fields = {"path": path.name, "size": path.stat().st_size}
    if kind.endswith("truncated"):
        full = tmp_path / "full.gguf"
        if kind == "truncated":
            synthetic.write_model(full, spec)
        else:
            synthetic.write_adapter(full, spec, seed=99)
        assert full.read_bytes()[: fields["size"]] == path.read_bytes()  # the broken file is a cut copy
        fields["tensor"], fields["end"] = _first_cut_tensor(full, fields["size"])
    out = cli("inspect", path.name, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # One line: ggml's own log line about a corrupt header is part of the message, not a line before it.
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("logo-cpp: error:") and message.format(**fields) in out.stderr, out.stderr


@pytest.mark.parametrize("args,message", [
    (["run", "-m", "missing.gguf", "-a", "x.gguf", "-p", "hi"], "no such file: 'missing.gguf'"),
    (["inspect", "."], "is a directory"),
    (["route", "-m", "{model}", "-p", "hi"], "--model needs --adapters"),
    (["route", "-a", "{adapters}", "-p", "hi"], "--adapters needs --model"),
    (["route", "-m", "{model}", "-a", "{adapters}", "-p", "hi", "--layer", "1", "1"], "names block 1 more than once"),
    (["route", "-m", "{model}", "-a", "{adapters}", "-p", "hi", "--layer", "9"], "layer 9 is out of range"),
    (["run", "-m", "{model}", "-a", "{broken}", "-p", "hi"], "contains NaN or Inf"),
    (["bench", "--types", "q3"], "--types: unknown weight type 'q3'"),
    (["serve", "--model", "{model}", "--port", "99999"], "--port must be an integer in [0, 65535], got 99999"),
    (["serve", "--model", "{model}", "--ctx-size", "10000000000"], "--ctx-size must be an integer in [1, 2147483647]"),
    (["serve", "--model", "{model}", "--host", "999.1.1.1"], "--host '999.1.1.1' is not an address or a name"),
    (["eval", "--per-task", "1", "--out", "/proc/nope/eval"], "--out '/proc/nope/eval': cannot create the directory"),  # refused before the run, not after
    (["eval", "--per-task", "1", "--tasks", ","], "--tasks names no task"),
    (["eval", "--per-task", "1", "--out", "{model}"], "is a file; the evaluation writes a directory"),
    (["chat", "-m", "{model}", "-a", "{adapters}", "--no-adapters"], "--no-adapters and --adapters contradict"),
    (["bench", "logo", "--type", "f8"], "--type: unknown weight type 'f8'"),
])
def test_user_mistakes_are_one_line(files, broken_dir, tmp_path, args, message):
    model, adapters = files
    args = [a.format(model=model, adapters=adapters, broken=broken_dir / "adapter_nan.gguf") for a in args]
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("logo-cpp: error:") and message in lines[0], out.stderr


@pytest.mark.parametrize("args,flag", [
    (["route", "-p", "hi", "--k", "0"], "--k"),
    (["route", "-p", "hi", "--k", "99999999999999999999"], "--k"),
    (["route", "-p", "hi", "--ctx", "99999999999"], "--ctx"),
    (["run", "-p", "hi", "--threads", "0"], "--threads/-t"),
    # ggml's thread limit: more used to start that many threads per graph evaluation (30000 stalled the machine)
    (["route", "-p", "hi", "--threads", "30000"], "--threads/-t"),
    (["serve", "--threads", "0"], "--threads/-t"),
    (["serve", "--threads", "513"], "--threads/-t"),
    (["eval", "--threads", "513"], "--threads/-t"),
    (["chat", "--threads", "513"], "--threads/-t"),
    (["bench", "--threads", "999"], "--threads"),
    (["bench", "serve", "--clients", "0"], "--clients"),
    (["bench", "core", "--reps", "0"], "--reps"),
    (["bench", "core", "--prompt", "513"], "--prompt"),   # llama.cpp's runner would abort (n_tokens > n_batch)
    (["bench", "quant", "--prompt", "100000"], "--prompt"),
    (["chat", "--ctx", "0"], "--ctx"),
    (["demo", "--threads", "0"], "--threads/-t"),
    (["demo", "--seed", "-1"], "--seed"),   # as route's --seed
    (["run", "-p", "hi", "--max-tokens", "-1"], "--max-tokens/-n"),
    (["run", "-p", "hi", "--temperature", "nan"], "--temperature"),
    (["run", "-p", "hi", "--temperature", "-1"], "--temperature"),
    (["route", "-p", "hi", "--router", "random", "--seed", "-1"], "--seed"),
])
def test_counts_out_of_range_name_the_flag(tmp_path, args, flag):
    # Refused by the argument parser before anything loads: the flag as the user typed it, not a Python name.
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"argument {flag}: expected" in out.stderr.splitlines()[-1], out.stderr


def test_help_everywhere(tmp_path):
    for sub in ([], ["run"], ["route"], ["inspect"], ["demo"], ["chat"], ["eval"]):
        out = cli(*sub, "--help", cwd=tmp_path)
        assert out.returncode == 0 and "usage: logo-cpp" in out.stdout
    # bench hands --help to the benchmark's own parser, so its options are listed
    for sub, option in ((["bench"], "--pool-sizes"), (["bench", "core"], "--types"), (["bench", "logo"], "--n-adapters")):
        out = cli(*sub, "--help", cwd=tmp_path)
        assert out.returncode == 0 and f"usage: logo-cpp {' '.join(sub)}" in out.stdout and option in out.stdout, out.stdout


@pytest.mark.parametrize("command", ["route", "run"])
@pytest.mark.parametrize("router", ["top1", "uniform"])
def test_a_k_the_router_would_ignore_is_an_error(files, tmp_path, command, router):
    model, adapters = files
    out = cli(command, "-m", model, "-a", adapters, "-p", "hi", "--router", router, "--k", "4", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith(f"logo-cpp: error: --k 4 does not apply to --router {router}"), out.stderr
    assert cli("route", "-m", model, "-a", adapters, "-p", "hi", "--router", router, cwd=tmp_path).returncode == 0


def test_a_kv_cache_larger_than_memory_is_an_error_not_a_traceback(files, tmp_path):
    model, adapters = files
    out = cli("run", "-m", model, "-a", adapters, "-p", "hi", "--ctx", "1000000000", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.splitlines()[-1]
    assert last.startswith("logo-cpp: error:") and "KV cache" in last and "n_ctx=1000000000" in last, out.stderr


# -- Ctrl-C: one line, never a traceback -------------------------------------------------------------------------

INTERRUPT_DURING = """
import importlib.abc, sys
class Interrupt(importlib.abc.MetaPathFinder):
    # A Ctrl-C that lands while {module} is being imported.
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
sys.argv = ["logo-cpp", "--help"]
from _logo_cpp_cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("module", ["logo_cpp._core", "logo_cpp.model", "logo_cpp.chat"])
def test_ctrl_c_while_logo_cpp_imports_is_one_line(tmp_path, module):
    """The console entry point (_logo_cpp_cli:main) imports logo_cpp inside main(): a Ctrl-C while the package
    loads (its native runtime, numpy) or while the CLI imports a command's module is one line and exit status
    130, as a Ctrl-C while a command runs; with logo_cpp.cli:main as the entry point it was Python's traceback."""
    out = subprocess.run([sys.executable, "-c", INTERRUPT_DURING.format(module=module)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert (out.returncode, out.stderr, out.stdout) == (130, "logo-cpp: interrupted\n", ""), out.stderr


def test_the_console_script_is_the_interruptible_entry_point():
    from importlib.metadata import entry_points

    import _logo_cpp_cli
    from logo_cpp import cli as cli_module

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "logo-cpp"]
    assert script.value == "_logo_cpp_cli:main"
    assert (_logo_cpp_cli.INTERRUPTED, _logo_cpp_cli.EXIT_INTERRUPTED) == (cli_module.INTERRUPTED,
                                                                           cli_module.EXIT_INTERRUPTED)


# -- --cache-dir / --no-cache: every command that builds a calibrated router --------------------------------------

ROUTING_COMMANDS = [["route", "-p", "x"], ["run", "-p", "x"], ["chat"], ["serve"], ["eval"], ["demo"]]


@pytest.mark.parametrize("command", ROUTING_COMMANDS, ids=lambda c: c[0])
def test_every_routing_command_takes_the_cache_flags(command, tmp_path):
    from logo_cpp import cli as cli_module

    parser = cli_module.build_parser()
    assert parser.parse_args([*command, "--no-cache"]).no_cache
    assert parser.parse_args([*command, "--cache-dir", str(tmp_path)]).cache_dir == tmp_path
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args([*command, "--no-cache", "--cache-dir", str(tmp_path)])


def test_bench_takes_the_cache_flags_where_it_routes(tmp_path):
    for what in ("all", "logo", "serve"):
        out = cli("bench", what, "--help", cwd=tmp_path)
        assert out.returncode == 0 and "--no-cache" in out.stdout and "--cache-dir" in out.stdout, out.stderr
    out = cli("bench", "core", "--no-cache", cwd=tmp_path)  # the base model alone: no router, no flag
    assert out.returncode == 2 and "unrecognized arguments: --no-cache" in out.stderr, out.stderr


def test_cache_environment_applies_the_flags_while_a_command_runs(tmp_path, monkeypatch):
    import argparse

    from logo_cpp import calibration_cache
    from logo_cpp.cli import cache_environment

    monkeypatch.setenv("LOGO_CPP_NO_CACHE", "1")
    monkeypatch.delenv("LOGO_CPP_CACHE_DIR", raising=False)
    with cache_environment(argparse.Namespace(no_cache=False, cache_dir=tmp_path)):
        assert calibration_cache.cache_dir() == tmp_path  # the flag wins over the variable
    assert calibration_cache.cache_dir() is None and "LOGO_CPP_CACHE_DIR" not in __import__("os").environ
    monkeypatch.setenv("LOGO_CPP_NO_CACHE", "0")
    with cache_environment(argparse.Namespace(no_cache=True, cache_dir=None)):
        assert calibration_cache.cache_dir() is None
    with cache_environment(argparse.Namespace()):  # a command without the flags leaves the environment alone
        assert calibration_cache.cache_dir() is not None


def test_chat_writes_its_calibration_statistics_where_cache_dir_says(files, tmp_path):
    """The tests' environment turns the disk cache off (LOGO_CPP_NO_CACHE=1): --cache-dir turns it on there, and
    --no-cache keeps a LOGO_CPP_CACHE_DIR unused."""
    import os

    model, adapters = files
    chat = [sys.executable, "-m", "logo_cpp.cli", "chat", "-m", str(model), "-a", str(adapters), "--threads", "1",
            "--max-tokens", "2"]
    on = subprocess.run([*chat, "--cache-dir", str(tmp_path / "on")], input="Hello\n/quit\n", capture_output=True,
                        text=True, timeout=300, cwd=tmp_path)
    assert on.returncode == 0, on.stderr
    assert list((tmp_path / "on" / "calibration").glob("*.json")), os.listdir(tmp_path / "on")
    env = {**os.environ, "LOGO_CPP_NO_CACHE": "0", "LOGO_CPP_CACHE_DIR": str(tmp_path / "env")}
    off = subprocess.run([*chat, "--no-cache"], input="Hello\n/quit\n", capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "env").exists()
