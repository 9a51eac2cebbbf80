"""Bad input raises a Python exception that names the file, tensor or argument; nothing aborts."""

import os
import re

import pytest
from gguf import GGUFValueType

import logo_cpp
from logo_cpp import synthetic

from conftest import THREADS


@pytest.fixture(scope="module")
def model(model_dir):
    return logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        logo_cpp.Model(tmp_path / "nope.gguf")


def test_directory(tmp_path):
    with pytest.raises(OSError, match="is a directory"):
        logo_cpp.Model(tmp_path)


@pytest.mark.parametrize("kind,message", [
    ("empty", "is empty"),
    ("not_gguf", "not a GGUF file"),
    ("truncated", "truncated: tensor '.*' needs bytes"),
    ("truncated_header", r"not a readable GGUF file \(truncated or corrupt header; the file has 200 bytes\)"),
    ("version_0", r"is GGUF version 0; logo-cpp reads GGUF versions 2 and 3 \(little-endian\)"),
    ("version_1", r"is GGUF version 1 \(GGUFv1, 32-bit counts: .*\); logo-cpp reads GGUF versions 2 and 3"),
    ("version_99", r"is GGUF version 99; logo-cpp reads GGUF versions 2 and 3 \(little-endian\)"),
    ("big_endian", r"is GGUF version 50331648 \(version 3 written big-endian\?\); logo-cpp reads GGUF versions 2"),
    ("unsupported_arch", "unsupported architecture '.*'; supported: llama, qwen2, qwen3"),
    ("missing_tensor", r"missing tensor 'blk\.0\.ffn_up\.weight' \(expected shape \[\d+, \d+\]\)"),
    ("wrong_shape", r"tensor 'blk\.0\.attn_q\.weight' has shape \[\d+, \d+\], expected \[\d+, \d+\]"),
    ("rope_freqs_nan", r"tensor 'rope_freqs\.weight' holds nan at index 1; rope frequency factors must be finite"),
])
def test_broken_files(broken_dir, kind, message):
    path = broken_dir / f"{kind}.gguf"
    with pytest.raises(logo_cpp.FormatError, match=message) as info:
        logo_cpp.Model(path)
    assert os.fspath(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_the_versions_named_as_supported_are_the_ones_that_load(model_dir, tmp_path):
    # The message's list is the gguf package's (an independent reader), and a version-2 file (the same bytes
    # as version 3 on a little-endian machine) loads and computes what the version-3 file computes.
    from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

    v2 = tmp_path / "v2.gguf"
    data = bytearray((model_dir / "llama-f32.gguf").read_bytes())
    assert data[4:8] == (3).to_bytes(4, "little")
    data[4:8] = (2).to_bytes(4, "little")
    v2.write_bytes(bytes(data))
    ours = logo_cpp.Model(v2, n_ctx=16, n_threads=THREADS)
    ids = ours.tokenize("the cat")
    same = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=16, n_threads=THREADS).logits(ids)
    assert (ours.logits(ids) == same).all()
    bad = tmp_path / "v4.gguf"
    data[4:8] = (4).to_bytes(4, "little")
    bad.write_bytes(bytes(data))
    with pytest.raises(logo_cpp.FormatError) as info:
        logo_cpp.Model(bad)
    assert f"versions {' and '.join(map(str, READER_SUPPORTED_VERSIONS))} (little-endian)" in str(info.value)


def test_adapter_file_is_not_a_model(adapter_dir):
    with pytest.raises(logo_cpp.FormatError, match="is a LoRA adapter, not a base model"):
        logo_cpp.Model(adapter_dir / "math.gguf")


def test_context_overflow(model):
    ids = model.tokenize("the cat " * 60)
    assert len(ids) > 64
    with pytest.raises(logo_cpp.ContextOverflowError, match="n_ctx is 64"):
        model.logits(ids)
    with pytest.raises(logo_cpp.ContextOverflowError):
        model.generate(ids, max_tokens=4)
    # The model is still usable afterwards.
    assert model.logits(ids[:10]).shape[0] == 10


def test_generation_stops_when_the_context_is_full(model):
    ids = model.tokenize("the cat " * 25)
    out = model.generate(ids, max_tokens=200, temperature=0.0, ignore_eos=True)
    assert out.finish_reason == "length"
    assert len(ids) + len(out.tokens) <= 64 + 1


def test_empty_prompt(model):
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate("")
    with pytest.raises(ValueError, match="empty prompt"):
        model.logits([])
    with pytest.raises(ValueError, match="prompts is empty"):
        model.generate_batch([])


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_token_id_out_of_range(model, bad):
    with pytest.raises(ValueError, match=f"token id {bad} is out of range"):
        model.logits([1, bad])
    with pytest.raises(ValueError, match="out of range"):
        model.detokenize([bad])
    with pytest.raises(ValueError, match="out of range"):
        model.generate([bad])


@pytest.mark.parametrize("kwargs,name", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=1.0), "min_p"),
    (dict(max_tokens=-3), "max_tokens"),
    (dict(seed=-1), "seed"),
    # beyond what the C++ options hold (int32 counts, uint64 seed): a ValueError, not a binding TypeError
    (dict(max_tokens=10**12), "max_tokens"),
    (dict(top_k=2**40), "top_k"),
    (dict(seed=2**70), "seed"),
    (dict(max_tokens=True), "max_tokens"),
    (dict(stop=[""]), "stop"),
])
def test_invalid_sampling_arguments(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        model.generate("Hello", **kwargs)


def test_invalid_sampling_arguments_reach_the_core_too(model):
    session = logo_cpp._core.Session(model._core, n_ctx=64)
    with pytest.raises(ValueError, match="top_p"):
        session.generate([[1, 2]], top_p=2.0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_ctx=0), "n_ctx"),
    (dict(n_ctx=99999999999), "n_ctx"),   # beyond the core's int32: a ValueError, not a binding TypeError
    (dict(n_threads=2**40), "n_threads"),
    (dict(n_batch=True), "n_batch"),
    (dict(n_threads=0), "n_threads"),
    (dict(n_threads=513), r"n_threads must be an integer in \[1, 512\]"),   # ggml's GGML_MAX_N_THREADS
    (dict(n_batch=0), "n_batch"),
    (dict(device="tpu7"), "device 'tpu7' is not available"),
])
def test_invalid_model_arguments(model_dir, kwargs, name):
    with pytest.raises(ValueError, match=name):
        logo_cpp.Model(model_dir / "llama-f32.gguf", **kwargs)


def test_core_refuses_more_threads_than_ggml_allows(model_dir):
    # The C++ check itself (the Python wrapper refuses first): ggml's OpenMP path would start them all.
    with pytest.raises(ValueError, match="n_threads must be at most 512"):
        logo_cpp._core.Model(str(model_dir / "llama-f32.gguf"), n_threads=513)


def test_gpu_is_offered_only_where_there_is_one(model_dir):
    if logo_cpp.available_devices() != ["CPU"]:  # a GPU build: 'gpu' names its GPU
        assert logo_cpp.Model(model_dir / "llama-f32.gguf", device="gpu").device != "CPU"
        return
    with pytest.raises(ValueError, match="device 'gpu' is not available; .*no GPU") as info:
        logo_cpp.Model(model_dir / "llama-f32.gguf", device="gpu")
    assert "'gpu')" not in str(info.value)


def test_bad_chat_messages(model):
    with pytest.raises(ValueError, match="messages"):
        model.chat([])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        model.chat([{"content": "no role"}])


NAN, INF = float("nan"), float("inf")
U64, I32, F64 = GGUFValueType.UINT64, GGUFValueType.INT32, GGUFValueType.FLOAT64


@pytest.mark.parametrize("key,value,expected", [
    ("llama.attention.layer_norm_rms_epsilon", NAN, "a finite number in \\(0, 0.5\\]"),
    ("llama.attention.layer_norm_rms_epsilon", 0.0, "a finite number in \\(0, 0.5\\]"),
    ("llama.attention.layer_norm_rms_epsilon", -1e-5, "a finite number in \\(0, 0.5\\]"),
    ("llama.attention.layer_norm_rms_epsilon", (F64, 1e-300), "a finite number in \\(0, 0.5\\]"),
    ("llama.rope.freq_base", INF, "a finite number > 0"),
    ("llama.rope.freq_base", -INF, "a finite number > 0"),
    ("llama.rope.freq_base", 0.0, "a finite number > 0"),
    ("llama.rope.freq_base", (F64, 1e300), "a finite number > 0"),
    ("llama.rope.scale_linear", NAN, "a finite number > 0"),
    ("llama.rope.scale_linear", 0.0, "a finite number > 0"),
    ("llama.context_length", 0, r"an integer in \[1, 2147483647\]"),
    ("llama.context_length", (U64, 2**63 + 5), r"an integer in \[1, 2147483647\]"),
    ("llama.block_count", 0, r"an integer in \[1, \d+\]"),
    ("llama.block_count", 4_000_000_000, r"an integer in \[1, \d+\]"),
    ("llama.embedding_length", (I32, -128), r"an integer in \[1, 1048576\]"),
    ("llama.feed_forward_length", 0, r"an integer in \[1, 4194304\]"),
    ("llama.attention.head_count", 0, r"an integer in \[1, 65536\]"),
    ("llama.attention.head_count", 2**20, r"an integer in \[1, 65536\]"),
    ("llama.attention.head_count_kv", 0, r"an integer in \[1, 4\]"),
    ("llama.attention.head_count_kv", 8, r"an integer in \[1, 4\]"),
    ("llama.attention.key_length", (U64, 2**40), r"an integer in \[1, 65536\]"),
])
def test_metadata_out_of_range_is_refused_naming_file_and_key(tmp_path, key, value, expected):
    spec = synthetic.ModelSpec("llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)
    path = synthetic.write_model(tmp_path / "m.gguf", spec, metadata={key: value})
    with pytest.raises(logo_cpp.FormatError, match=f"key '{re.escape(key)}' is .*; expected {expected}") as info:
        logo_cpp.Model(path)
    assert f"'{path}'" in str(info.value)


def test_rope_scaling_factor_and_head_count_relations(tmp_path):
    spec = synthetic.ModelSpec("llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)
    cases = [
        ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": NAN},
         r"key 'llama\.rope\.scaling\.factor' is nan; expected a finite number > 0"),
        ({"llama.attention.head_count_kv": 3}, r"'llama\.attention\.head_count' \(4\) must be a multiple of"),
        ({"llama.attention.head_count": 128}, r"key_length \(0\) and value_length \(0\) must be equal, even and positive"),
    ]
    for i, (metadata, message) in enumerate(cases):
        path = synthetic.write_model(tmp_path / f"m{i}.gguf", spec, metadata=metadata)
        with pytest.raises(logo_cpp.FormatError, match=message):
            logo_cpp.Model(path)


def test_kv_cache_larger_than_memory_is_refused(model_dir):
    with pytest.raises(ValueError, match=r"KV cache for n_ctx=2000000000 and 1 sequences needs \d+ MiB, more than"):
        logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=2_000_000_000)
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64)
    with pytest.raises(ValueError, match="sequences needs"):
        logo_cpp._core.Session(model._core, n_ctx=2**31 - 1, n_seq=2**31 - 1)


@pytest.mark.parametrize("edit,message", [
    ({7: 5}, r"entry 7 equal to entry 5 \(\"[^\"]+\"\)"),
    # libllama names an empty entry i "[EMPTY_i]" before it compares.
    ({9: "", 10: "[EMPTY_9]"}, r"entry 10 equal to entry 9 \(\"\[EMPTY_9\]\"\)"),
])
def test_equal_vocabulary_entries_are_refused_naming_the_key(tmp_path, edit, message):
    """libllama's vocabulary loader asserts that tokens are distinct (the process aborts); fuzz_model found
    it (docs/fuzz/README.md). The file is refused before libllama reads it."""
    spec = synthetic.ModelSpec("llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)
    tokens = list(spec.vocabulary()[0])
    for i, value in edit.items():
        tokens[i] = tokens[value] if isinstance(value, int) else value
    path = synthetic.write_model(tmp_path / "m.gguf", spec,
                                 metadata={"tokenizer.ggml.tokens": (GGUFValueType.ARRAY, tokens)})
    with pytest.raises(logo_cpp.FormatError, match=r"tokenizer\.ggml\.tokens has " + message) as info:
        logo_cpp.Model(path)
    assert f"'{path}'" in str(info.value)


def test_a_bos_token_the_tokenizer_adds_but_lacks_is_refused(tmp_path):
    """A byte-level BPE vocabulary of 11 tokens that asks for BOS: libllama's default BOS id (11) is outside
    it, and tokenizing with special tokens would hit its GGML_ASSERT(special_bos_id != LLAMA_TOKEN_NULL)."""
    spec = synthetic.ModelSpec("llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)
    tokens = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "\u010a"]  # \u010a: GPT2's byte for "\n"
    metadata = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": (GGUFValueType.ARRAY, tokens),
        "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, [1] * len(tokens)),
        "tokenizer.ggml.scores": None,
        "tokenizer.ggml.merges": (GGUFValueType.ARRAY, ["a b"]),
        "tokenizer.ggml.bos_token_id": None, "tokenizer.ggml.eos_token_id": None,
        "tokenizer.ggml.unknown_token_id": None,
        "tokenizer.ggml.add_bos_token": True,
    }
    path = synthetic.write_model(tmp_path / "m.gguf", spec, metadata=metadata)
    with pytest.raises(logo_cpp.FormatError, match=r"adds a BOS token to every prompt but has none: key "
                                                   r"'tokenizer\.ggml\.bos_token_id' is missing or outside the 11"):
        logo_cpp.Model(path)


def test_prompts_and_names_of_the_wrong_type(model):
    for prompt in (None, 123, 4.5):
        with pytest.raises(TypeError, match="prompt must be str, bytes or a sequence of token ids"):
            model.generate(prompt, max_tokens=1)
    with pytest.raises(TypeError, match="token ids must be ints, got str"):
        model.generate([1, "2"], max_tokens=1)
    with pytest.raises(TypeError, match="tokens must be a sequence"):
        model.logits(None)
    for stop in (5, {"a"}, 1.5):   # was "'int' object is not iterable", naming nothing
        with pytest.raises(TypeError, match="stop must be a string"):
            model.generate("hi", max_tokens=1, stop=stop)


def test_sampling_numbers_of_the_wrong_type_name_the_argument(model):
    for name in ("temperature", "top_p", "min_p"):
        for value in ("0", None, True):
            with pytest.raises(TypeError, match=f"{name} must be a number"):
                model.generate("Hello", max_tokens=1, **{name: value})


def test_generate_batch_refuses_a_single_string(model):
    # A str is a sequence of characters: it would run one prompt per character.
    for prompts in ("abc", b"abc"):
        with pytest.raises(TypeError, match="for one prompt .* use generate"):
            model.generate_batch(prompts, max_tokens=1)


def test_chat_content_is_text_or_text_parts(model):
    text = model.apply_chat_template([{"role": "user", "content": "Hello there"}])
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    assert model.apply_chat_template([{"role": "user", "content": parts}]) == text  # joined as the server does
    for content, where in ((None, r"messages\[0\]\['content'\] must be"),
                           (5, r"messages\[0\]\['content'\] must be"),
                           ([{"type": "image_url", "image_url": {"url": "x"}}], r"messages\[0\]\['content'\]\[0\]"),
                           (["Hello"], r"messages\[0\]\['content'\]\[0\] must be a text part")):
        with pytest.raises(TypeError, match=where):
            model.chat([{"role": "user", "content": content}], max_tokens=1)


def test_pool_arguments_of_the_wrong_type(model, adapter_dir):
    pool = logo_cpp.AdapterPool(model)
    for paths in (None, 5, b"x.gguf"):
        with pytest.raises(TypeError, match="paths must be a path"):
            pool.add(paths)
    with pytest.raises(TypeError, match="an adapter path must be str or os.PathLike, got int"):
        pool.add([adapter_dir / "math.gguf", 5])
    assert len(pool) == 0
    pool.add(adapter_dir / "math.gguf")
    with pytest.raises(TypeError, match="name must be str"):
        pool.remove(None)
    with pytest.raises(ValueError, match="no adapter named 'sql'"):
        pool.remove("sql")
    assert pool.names == ["math"]


@pytest.mark.parametrize("weight", ["1", True, None, [1.0]])
def test_a_mixture_weight_must_be_a_number(model, adapter_dir, weight):
    pool = logo_cpp.AdapterPool(model, adapter_dir / "math.gguf")
    with pytest.raises(ValueError, match="weight of adapter 'math' must be a number"):
        model.generate("Hello", max_tokens=1, adapters={"math": weight})
    assert pool.names == ["math"]


@pytest.mark.parametrize("weight", [1e5, -1000.5, 3e38, float("nan"), float("inf"), -float("inf")])
def test_a_mixture_weight_must_be_finite_and_bounded(model, adapter_dir, weight):
    """Huge finite weights overflow the pair's float16 product into NaN logits on quantized bases (measured in
    logo/types.h kMaxMixtureWeight): refused in Python and in the core, naming the adapter and the bound."""
    pool = logo_cpp.AdapterPool(model, adapter_dir / "math.gguf")
    bound = r"must be a finite number in \[-1000, 1000\]"
    with pytest.raises(ValueError, match="weight of adapter 'math' " + bound):
        model.generate("Hello", max_tokens=1, adapters={"math": weight})
    with pytest.raises(ValueError, match="weight of adapter 'math' " + bound):
        model.logits([1, 2, 3], adapters={"math": weight})
    # the core itself (its C++ API and ContinuousBatch take mixtures without the Python checks)
    with pytest.raises(ValueError, match=r"the weight of adapter 'math' is .*; a mixture weight must be a finite number "
                                         r"in \[-1000, 1000\]"):
        model._session.generate([[1, 2, 3]], pool=pool._core, selections=[[(0, weight)]], max_tokens=1)
    assert model.generate("Hello", max_tokens=1, adapters={"math": -1000.0}).finish_reason in ("length", "eos")
    assert logo_cpp._limits.MAX_MIXTURE_WEIGHT == logo_cpp._core.max_mixture_weight == 1000


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=10**20), r"k must be an integer in \[1, 2147483647\]"),
    (dict(k=True), "k must be"),
    (dict(layer="x"), "layer must be an int or a sequence of ints, got str"),
    (dict(layer=[1, "2"]), "layer must be an int or a sequence of ints, got str"),
    (dict(layer=[1, 1]), "names block 1 more than once"),
    (dict(layer=[0, -2]), "names block 0 more than once"),  # -2 is block 0 of a 2-block model
])
def test_router_arguments(model, adapter_dir, kwargs, message):
    pool = logo_cpp.AdapterPool(model, adapter_dir / "math.gguf")
    if model.n_layer != 2 and kwargs.get("layer") == [0, -2]:
        kwargs = dict(layer=[0, -model.n_layer])
    with pytest.raises(ValueError, match=message):
        logo_cpp.LoGo(model, pool, **kwargs)
    with pytest.raises(ValueError, match="k must be"):
        logo_cpp.RandomK(model, pool, k=10**20)


@pytest.mark.parametrize("kwargs,name", [
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=5.0), "top_p"),
    (dict(seed=-1), "seed"),
])
def test_chat_session_checks_its_sampling_settings_at_start(model, kwargs, name):
    # `logo-cpp chat --top-p 5` stops at once, not after the user's first message
    from logo_cpp.chat import ChatSession

    with pytest.raises(ValueError, match=name):
        ChatSession(model, max_tokens=8, **kwargs)


# Each loads a bad file in a fresh process and prints the exception; ggml's and libllama's own log lines
# about it must not reach stderr (the exception carries them), whatever logger is installed before.
_LOADERS = {
    "model": "logo_cpp.Model(BAD)",
    "pool": "logo_cpp.AdapterPool(logo_cpp.Model(GOOD), [BAD])",
    "check": "logo_cpp._core.check_gguf_file(BAD)",
}


def _load_in_child(code: str, bad, good, env_extra=None, import_llama_cpp=False):
    import subprocess
    import sys

    script = ("import llama_cpp\n" if import_llama_cpp else "") + (
        "import logo_cpp\n"
        f"BAD, GOOD = {str(bad)!r}, {str(good)!r}\n"
        "try:\n"
        f"    {code}\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n")
    env = {k: v for k, v in os.environ.items() if k != "LOGO_GGML_LOG"}
    env.update(env_extra or {})
    # From the tests' folder: at the checkout's root its logo_cpp source tree would shadow the installed package.
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("import_llama_cpp", [False, True], ids=["default-logger", "llama_cpp-logger"])
@pytest.mark.parametrize("loader", list(_LOADERS))
def test_a_corrupt_header_is_one_error_and_nothing_on_stderr(model_dir, broken_dir, loader, import_llama_cpp):
    bad = broken_dir / "truncated_header.gguf"
    out = _load_in_child(_LOADERS[loader], bad, model_dir / "llama-f32.gguf", import_llama_cpp=import_llama_cpp)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # ggml's reason is in the message, after ours.
    assert out.stdout.startswith("FormatError ") and f"'{bad}' is not a readable GGUF file (truncated or corrupt " \
        "header; the file has 200 bytes): ggml: gguf_init_from_reader: failed to read key-value pairs" in out.stdout


def test_ggml_log_lines_are_shown_with_logo_ggml_log(model_dir, broken_dir):
    bad = broken_dir / "truncated_header.gguf"
    out = _load_in_child(_LOADERS["model"], bad, model_dir, env_extra={"LOGO_GGML_LOG": "1"})
    assert out.stdout.startswith("FormatError ") and "failed to read key-value pairs" in out.stderr


def test_a_vocabulary_libllama_cannot_read_says_why(model_dir, tmp_path):
    # libllama's reasons reached stderr as log lines before our message, which said only that it failed.
    path = synthetic.write_model(tmp_path / "tokenizer.gguf", synthetic.ModelSpec(
        arch="llama", n_embd=64, n_layer=1, n_head=2, n_head_kv=1, n_ff=128, seed=5),
        metadata={"tokenizer.ggml.model": "nonsense"})
    out = _load_in_child(_LOADERS["model"], path, model_dir)
    assert out.stderr == ""
    assert out.stdout.startswith(f"FormatError '{path}': libllama could not read the tokenizer vocabulary "
                                 "(libllama: ") and "unknown tokenizer: 'nonsense'" in out.stdout
