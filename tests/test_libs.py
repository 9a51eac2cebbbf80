"""One process holds one libllama and one ggml, whichever of llama_cpp and logo_cpp is imported first."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
first, second = sys.argv[1], sys.argv[2]
__import__(first); __import__(second)
from logo_cpp._llama_cpp import avoid_amx; avoid_amx()
import numpy as np, logo_cpp, llama_cpp
path = sys.argv[3]
ours = logo_cpp.Model(path, n_ctx=128, n_threads=2)
ids = ours.tokenize("Hello world")
llm = llama_cpp.Llama(model_path=path, n_ctx=128, logits_all=True, verbose=False, n_threads=2, flash_attn=True)
llm.eval(ids)
theirs = np.array(llm.scores[:len(ids)])
assert np.abs(ours.logits(ids) - theirs).max() < 1e-3 * np.abs(theirs).max()
libs = set()
for line in open("/proc/self/maps"):
    name = line.split()[-1]
    if "libllama" in name or "libggml" in name:
        libs.add(name)
print(sorted(libs))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("order", [("llama_cpp", "logo_cpp"), ("logo_cpp", "llama_cpp")])
def test_one_copy_of_each_library(model_dir, order):
    out = subprocess.run([sys.executable, "-c", SCRIPT, *order, str(model_dir / "llama-f32.gguf")],
                         capture_output=True, text=True, timeout=300, cwd=model_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    libs = eval(out.stdout.strip().splitlines()[-1])
    names = [lib.rsplit("/", 1)[-1] for lib in libs]
    # One file per library: libllama once, libggml once, libggml-base once (and the CPU backend).
    assert sum(n.startswith("libllama.") for n in names) == 1, libs
    assert sum(n.startswith("libggml.") for n in names) == 1, libs
    assert sum(n.startswith("libggml-base.") for n in names) == 1, libs
