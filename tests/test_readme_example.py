"""The README's first Python example runs as written on the shipped model and pool, and prints what its comments
say (a newcomer pasted the API overview, whose files and adapter names are placeholders, and it failed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from logo_cpp import default_model

pytestmark = pytest.mark.skipif(not default_model.has_base_model(),
                                reason="the default model is not installed: pip install \".[default]\"")

README = Path(__file__).resolve().parent.parent / "README.md"


def shipped_example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("On the shipped model and pool")
    return text[start:].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_on_the_shipped_default_prints_what_it_says(tmp_path):
    code = shipped_example()
    # What the comments of its first two print lines promise.
    promised = [re.search(r"#\s*(.*)$", line).group(1).strip() for line in code.splitlines()
                if line.startswith("print(") and "#" in line][:2]
    assert promised == ["['capital']  Lima", "42"], promised
    script = tmp_path / "example.py"
    script.write_text(code.replace("default_model.base_model_path())",
                                   "default_model.base_model_path(), n_threads=1)", 1), encoding="utf-8")
    # From tmp_path: a checkout's root would shadow the installed package.
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].split() == promised[0].split(), lines
    assert lines[1].strip() == promised[1], lines
    assert "capital" in lines[2] and "addition" in lines[2], lines
