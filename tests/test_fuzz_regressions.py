"""Every input the fuzzers (fuzz/, tools/fuzz.sh) found crashing, replayed through the Python API the way its
target ran it: each must now load and run, or be refused with a Python exception. The files live in
tests/fuzz_regressions/<target>/; docs/fuzz/README.md says how each was fixed."""

import sys
from pathlib import Path

import pytest

import logo_cpp

from conftest import THREADS

ROOT = Path(__file__).parent / "fuzz_regressions"
sys.path.insert(0, str(Path(__file__).parent.parent / "fuzz"))
import seeds  # noqa: E402  (the fuzz targets' fixed files, made the same way here)

REFUSALS = (ValueError, OSError)  # FormatError and ContextOverflowError are ValueErrors


def inputs(target):
    return sorted(p for p in (ROOT / target).glob("*") if p.is_file()) if (ROOT / target).is_dir() else []


def replay_model(path):
    try:
        model = logo_cpp.Model(path, n_ctx=8, n_threads=THREADS)
    except REFUSALS:
        return
    ids = [t if 0 <= t < model.n_vocab else 0 for t in (model.tokenize("the cat") + [0, 0, 0])[:3]]
    model.logits(ids)
    model.generate(ids, max_tokens=2, temperature=0.0)
    model.generate_batch([ids, ids[::-1]], max_tokens=2, temperature=0.0)


@pytest.fixture(scope="module")
def adapter_bases(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-adapter")
    env = seeds.adapter_seeds(work, work)
    out = []
    for base, resident in zip(env["LOGO_FUZZ_BASES"].split(":"), env["LOGO_FUZZ_RESIDENT"].split(":")):
        model = logo_cpp.Model(base, n_ctx=16, n_threads=THREADS)
        out.append((model, resident))
    return out


def replay_adapter(adapter_bases, path):
    model, resident = adapter_bases[path.stat().st_size % len(adapter_bases)]
    pool = logo_cpp.AdapterPool(model, [resident], names=["resident"])
    try:
        pool.add(path, name="input")
    except REFUSALS:
        assert pool.names == ["resident"]
        return
    model.logits([1, 5, 9], adapters={"resident": 0.5, "input": 0.5})
    logo_cpp.Fixed(model, pool, {"input": 1.0}).generate_batch([[1, 5, 9], [1, 7]], max_tokens=2, temperature=0.0)
    for probe in ("base", "all"):
        try:
            logo_cpp.LoGo(model, pool, k=2, probe=probe).route([1, 5, 9])
        except ValueError as exc:
            assert "none can be scored" in str(exc)


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-tokenize")
    env = seeds.tokenize_seeds(work, work)
    return [logo_cpp.Model(p, n_ctx=8, n_threads=THREADS) for p in env["LOGO_FUZZ_VOCABS"].split(":")]


def replay_tokenize(vocabs, path):
    data = path.read_bytes()
    if not data:
        return
    control, text = data[0], data[1:]
    model = vocabs[(control >> 4) % len(vocabs)]
    try:
        ids = model.tokenize(text, add_special=bool(control & 1), parse_special=bool(control & 2))
        model.detokenize(ids, remove_special=bool(control & 4), unparse_special=bool(control & 8))
        for t in ids:
            model._core.token_piece(t)
    except ValueError:
        pass
    try:
        model.apply_chat_template([{"role": "user", "content": text}, {"role": "assistant", "content": text}],
                                  add_generation_prompt=bool(control & 4))
    except ValueError:
        pass


# One test per target over all its files (a file's name is in the failure's traceback).
def test_model_inputs():
    for path in inputs("fuzz_model"):
        replay_model(path)


def test_adapter_inputs(adapter_bases):
    for path in inputs("fuzz_adapter"):
        replay_adapter(adapter_bases, path)


def test_tokenize_inputs(vocabs):
    for path in inputs("fuzz_tokenize"):
        replay_tokenize(vocabs, path)
