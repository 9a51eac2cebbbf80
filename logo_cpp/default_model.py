"""Where the shipped default model lives: inside the installed package, or models/default in a checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def default_model_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "default_model", here.parent / "models" / "default"):
        if (candidate / "manifest.json").exists():
            return candidate
    raise FileNotFoundError("the default model is not installed (expected logo_cpp/default_model/manifest.json); "
                            "reinstall logo-cpp, or pass --model-dir")


def load_manifest(model_dir: Optional[Path] = None) -> tuple[Path, dict]:
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    path = model_dir / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no manifest.json in '{model_dir}'")
    return model_dir, json.loads(path.read_text())


def read_eval_set(model_dir: Path, manifest: dict) -> list[dict]:
    path = model_dir / manifest.get("eval", {}).get("file", "eval.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"no held-out evaluation set at '{path}'")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
