"""The runtime against llama.cpp on the same files: logits, greedy generations, tokenization, batching."""

import numpy as np
import pytest

import logo_cpp

from conftest import REPACK, THREADS

PROMPTS = [
    "Hello world, the cat sat on the mat.",
    "the quick brown fox jumps over the lazy dog " * 3,
    "Numbers 12345 and symbols #@! mixed with words",
]

# Tolerances on logits, justified by the types. Both runtimes execute the same ggml kernels on the same
# weights (F16 KV cache, flash attention), so differences come only from accumulation order within
# kernels of different batch shapes: ~1e-5 relative for F32/F16/BF16 weights. Quantized weights multiply
# quantized activations (Q8 blocks) in both, so rounding of the activations adds ~1e-3 relative.
TOLERANCE = {"f32": 2e-3, "f16": 2e-3, "bf16": 2e-3, "q8_0": 2e-2, "q4_k": 2e-2, "q4_0": 2e-2}

FILES = [
    ("llama-f32.gguf", "f32"),
    ("qwen2-f32.gguf", "f32"),
    ("qwen3-f32.gguf", "f32"),
    ("llama-f16.gguf", "f16"),
    ("qwen3-bf16.gguf", "bf16"),
    ("llama-q8_0.gguf", "q8_0"),
    ("qwen2-q8_0.gguf", "q8_0"),
    ("llama256-q4_k.gguf", "q4_k"),
    ("llama256-q4_0.gguf", "q4_0"),
]


@pytest.fixture(scope="module")
def models(model_dir):
    cache = {}

    def get(name, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = logo_cpp.Model(model_dir / name, n_ctx=512, n_threads=THREADS, repack=REPACK, **kw)
        return cache[key]

    return get


@pytest.mark.parametrize("name,kind", FILES)
def test_logits_match_llama_cpp(models, model_dir, llama_cpp_oracle, name, kind):
    model = models(name)
    oracle = llama_cpp_oracle(model_dir / name)
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        ours = model.logits(ids)
        theirs = oracle.logits(ids)
        assert ours.shape == (len(ids), model.n_vocab) == theirs.shape
        scale = np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= TOLERANCE[kind] * scale, name


@pytest.mark.parametrize("name,kind", FILES)
def test_greedy_generation_matches_llama_cpp(models, model_dir, llama_cpp_oracle, name, kind):
    model = models(name)
    oracle = llama_cpp_oracle(model_dir / name)
    for prompt in PROMPTS[:2]:
        ids = model.tokenize(prompt)
        ours = model.generate(ids, max_tokens=32, temperature=0.0, ignore_eos=True)
        assert ours.tokens == oracle.greedy(ids, 32)
        assert ours.finish_reason == "length"


def test_weights_without_mmap_give_the_same_logits(models):
    ids = models("llama-q8_0.gguf").tokenize(PROMPTS[0])
    a = models("llama-q8_0.gguf").logits(ids)
    b = models("llama-q8_0.gguf", use_mmap=False).logits(ids)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["llama-f32.gguf", "qwen2-f32.gguf", "qwen3-f32.gguf", "llama-q8_0.gguf"])
def test_incremental_decoding_equals_full_recompute(models, name):
    model = models(name)
    ids = model.tokenize(PROMPTS[1])
    full = model.logits(ids)
    session = logo_cpp._core.Session(model._core, n_ctx=512, n_seq=1, n_batch=7)  # forces 7-token chunks
    steps = [session.evaluate(0, 1, ids[:9], all_logits=True)]
    for t in ids[9:]:
        steps.append(session.evaluate(0, 1, [t], all_logits=True))
    incremental = np.concatenate(steps)
    # Same math, different batch shapes: only accumulation order and the F16 cache rounding differ.
    np.testing.assert_allclose(incremental, full, atol=2e-3 * np.abs(full).max())
    assert np.array_equal(incremental.argmax(-1), full.argmax(-1))


@pytest.mark.parametrize("name", ["llama-f32.gguf", "qwen3-f32.gguf", "llama-q8_0.gguf"])
def test_batch_of_sequences_equals_each_alone(models, name):
    model = models(name)
    prompts = [model.tokenize(p) for p in PROMPTS]
    continuation = [[5 + i, 17 + i, 40 + i] for i in range(3)]
    # Logits at the prompt's last token and at the first two continuation tokens.
    alone = [model.logits(p + c)[-4:-1] for p, c in zip(prompts, continuation)]
    session = logo_cpp._core.Session(model._core, n_ctx=512, n_seq=3)
    first = [session.evaluate(i, 1, p)[0] for i, p in enumerate(prompts)]
    joint = [np.stack(first)]
    for step in range(2):
        joint.append(session.evaluate(0, 3, [continuation[i][step] for i in range(3)]))
    joint = np.stack(joint, axis=1)  # (sequence, step, vocab)
    for i in range(3):
        np.testing.assert_allclose(joint[i], alone[i], atol=2e-3 * np.abs(alone[i]).max())


def test_generate_batch_equals_each_alone(models):
    model = models("llama-f32.gguf")
    outs = model.generate_batch(PROMPTS, max_tokens=16, temperature=0.0, ignore_eos=True)
    for prompt, out in zip(PROMPTS, outs):
        assert out.tokens == model.generate(prompt, max_tokens=16, temperature=0.0, ignore_eos=True).tokens


def test_tokenization_matches_llama_cpp(models, model_dir, llama_cpp_oracle):
    for name in ("llama-f32.gguf", "qwen2-f32.gguf"):
        model = models(name)
        llm = llama_cpp_oracle(model_dir / name).llm
        texts = PROMPTS + ["", " leading space", "ünïcödé ✓ 中文", "<|im_start|>user\nhi<|im_end|>", "\n\n\t"]
        for text in texts:
            for add_special in (True, False):
                for special in (True, False):
                    ours = model.tokenize(text, add_special=add_special, parse_special=special)
                    theirs = llm.tokenize(text.encode(), add_bos=add_special, special=special)
                    assert ours == theirs, (text, add_special, special)
            ids = model.tokenize(text, add_special=False)
            assert model.detokenize(ids) == _llama_detokenize(llm, ids)


def _llama_detokenize(llm, ids):
    """llama.cpp's own llama_detokenize (Llama.detokenize joins pieces and keeps SentencePiece's leading space)."""
    import ctypes

    import llama_cpp

    buf = ctypes.create_string_buffer(4096)
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), False, False)
    return buf.raw[:n].decode("utf-8", errors="replace")


def test_special_tokens_parse_to_one_id(models):
    model = models("llama-f32.gguf")
    ids = model.tokenize("<|im_start|>user", add_special=False, parse_special=True)
    assert len(model.tokenize("<|im_start|>", add_special=False, parse_special=True)) == 1
    assert ids[0] == model.tokenize("<|im_start|>", add_special=False, parse_special=True)[0]
    assert model.tokenize("Hi")[0] == model.bos


def test_sampling_is_seeded_and_streaming_matches(models):
    model = models("llama-f32.gguf")
    kw = dict(max_tokens=24, temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, ignore_eos=True)
    a = model.generate(PROMPTS[0], seed=7, **kw)
    b = model.generate(PROMPTS[0], seed=7, **kw)
    c = model.generate(PROMPTS[0], seed=8, **kw)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    stream = model.generate(PROMPTS[0], seed=7, stream=True, **kw)
    assert stream.completion is None  # not before it has run
    assert "".join(stream) == a.text
    assert stream.completion.tokens == a.tokens and stream.completion.finish_reason == "length"
    assert a.timings.n_generated == 24 and a.timings.decode_tokens_per_second > 0


def test_a_stream_yields_text_after_an_undecodable_byte_at_once(models, monkeypatch):
    # 0xFF can never be UTF-8: it becomes U+FFFD when it arrives (as in Completion.text), and the text after it
    # streams on; a character split across pieces still waits for its last byte.
    model = models("llama-f32.gguf")
    done = model.generate(PROMPTS[0], max_tokens=2, temperature=0.0)

    def run(prompts, kwargs, on_text=None):
        for piece in (b"a\xff", b"b\xe2\x82", b"\xac", b"c\xe2"):
            on_text(0, piece)
        return [done]

    monkeypatch.setattr(model, "_run", run)
    assert list(model.generate(PROMPTS[0], max_tokens=2, stream=True)) == ["a\ufffd", "b", "\u20ac", "c", "\ufffd"]


def test_a_stream_closed_early_holds_what_was_generated(models):
    model = models("llama-f32.gguf")
    full = model.generate(PROMPTS[0], max_tokens=30, temperature=0.0, ignore_eos=True)
    stream = model.generate(PROMPTS[0], max_tokens=30, temperature=0.0, ignore_eos=True, stream=True)
    first = next(stream)
    stream.close()
    stream.close()  # idempotent
    done = stream.completion
    assert done is not None and 1 <= len(done.tokens) < 30
    assert done.tokens == full.tokens[:len(done.tokens)] and full.text.startswith(first)


def test_stop_strings_end_generation_before_them(models):
    model = models("llama-f32.gguf")
    full = model.generate(PROMPTS[0], max_tokens=40, temperature=0.0, ignore_eos=True)
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = model.generate(PROMPTS[0], max_tokens=40, temperature=0.0, ignore_eos=True, stop=[stop, "zzzz"])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    streamed = "".join(model.generate(PROMPTS[0], max_tokens=40, temperature=0.0, ignore_eos=True, stop=stop, stream=True))
    assert streamed == cut.text


def test_chat_uses_the_models_template(models):
    model = models("qwen2-f32.gguf")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = model.apply_chat_template(messages)
    assert "<|im_start|>user\nHi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    out = model.chat(messages, max_tokens=8, temperature=0.0)
    assert out.tokens == model.generate(prompt, max_tokens=8, temperature=0.0).tokens


def test_chat_roles_are_openais(models):
    """system, developer (as system), user, assistant, tool reach the template; any other role is a ValueError
    naming the message and the accepted roles, never text the template renders as it likes."""
    model = models("qwen2-f32.gguf")
    tool = model.apply_chat_template([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "call"},
                                      {"role": "tool", "content": "4"}])
    assert "<|im_start|>tool\n4<|im_end|>" in tool
    as_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    as_developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert model.apply_chat_template(as_developer) == model.apply_chat_template(as_system)
    assert model.apply_chat_template([{"role": b"user", "content": "Hi"}]) == model.apply_chat_template(as_system[1:])
    for role, fragment in [("wizard", "'wizard' is not a chat role; use system, developer, user, assistant or tool"),
                           ("function", "send it as 'tool'"), ("USER", "'USER' is not a chat role"),
                           (3, "a value of type int is not a chat role"), (b"\xff", "is not a chat role")]:
        messages = [{"role": "user", "content": "Hi"}, {"role": role, "content": "x"}]
        with pytest.raises(ValueError, match=r"messages\[1\]\['role'\]") as err:
            model.chat(messages, max_tokens=1)
        assert fragment in str(err.value)
        with pytest.raises(ValueError, match="not a chat role|deprecated"):
            model.apply_chat_template(messages)


def test_model_description(models):
    model = models("qwen3-f32.gguf")
    assert model.arch == "qwen3" and model.n_layer == 2 and model.n_embd == 128
    assert model.device == "CPU" and model.n_threads == THREADS
    assert "qwen3" in repr(model)
    assert logo_cpp.available_devices()[0] == "CPU"
