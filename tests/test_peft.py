"""PEFT LoRA directories: loaded against llama.cpp's own converter (committed outputs, tests/fixtures),
PEFT's scale formula (an independent numpy reference, tests/peft_reference.py), llama-cpp-python running
what `logo-cpp convert` writes, and every refusal with its message."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

import logo_cpp
from logo_cpp import synthetic
from logo_cpp.convert import convert

import peft_reference as ref
from conftest import SPECS, THREADS
from reference import ReferenceModel

FIXTURES = Path(__file__).parent / "fixtures" / "peft"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
PROMPT = "Hello world, the cat sat on the mat and the dog"


def spec(arch):
    return synthetic.ModelSpec(**SPECS[arch])


def model(model_dir, arch):
    return logo_cpp.Model(model_dir / f"{arch}-f32.gguf", n_ctx=128, n_threads=THREADS)


def close(ours, theirs, base, tolerance=2e-3, of_effect=1 / 20):
    """Agreement far inside the adapter's own effect: at most `tolerance` of the logits' scale and
    `of_effect` of the largest change the adapter makes."""
    scale = np.abs(theirs).max()
    effect, error = np.abs(theirs - base).max(), np.abs(ours - theirs).max()
    assert effect > 0.1 * scale, "the adapter hardly changes the output"
    assert error <= tolerance * scale and error < effect * of_effect, (error, effect)


# -- llama.cpp's own converter ------------------------------------------------------------------------

def test_fixtures_are_what_the_manifest_says():
    # The committed GGUFs were made by llama.cpp's converter from exactly these directories, for these bases.
    def sha(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert MANIFEST["specs"] == {arch: SPECS[arch] for arch in MANIFEST["specs"]}, \
        "tests/conftest.py SPECS changed: rerun tests/fixtures/make_peft_fixtures.py"
    for name, case in MANIFEST["cases"].items():
        assert {f: sha(FIXTURES / name / f) for f in case["sha256"]} == case["sha256"], name
        assert sha(FIXTURES / f"{name}.llama-cpp.gguf") == case["gguf_sha256"], name


@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_directory_loads_as_llama_cpps_converter_makes_it(model_dir, llama_cpp_oracle, case):
    arch = MANIFEST["cases"][case]["base"]
    m = model(model_dir, arch)
    converted = FIXTURES / f"{case}.llama-cpp.gguf"
    # The directory, its safetensors file, and llama.cpp's conversion of it.
    pool = logo_cpp.AdapterPool(m, [FIXTURES / case, FIXTURES / case / "adapter_model.safetensors", converted],
                                names=["dir", "file", "llama.cpp"])
    ids = m.tokenize(PROMPT)
    ours = m.logits(ids, adapters={"dir": 1.0})
    np.testing.assert_array_equal(ours, m.logits(ids, adapters={"file": 1.0}))
    # Same tensors, same scales: logo-cpp computes the same logits either way, bit for bit.
    np.testing.assert_array_equal(ours, m.logits(ids, adapters={"llama.cpp": 1.0}))
    # And llama.cpp itself, running its own conversion, agrees.
    oracle = llama_cpp_oracle(model_dir / f"{arch}-f32.gguf")
    oracle.set_adapters({f"{case}.llama-cpp": 1.0}, FIXTURES)
    theirs = oracle.logits(ids)
    oracle.set_adapters({}, FIXTURES)
    close(ours, theirs, m.logits(ids))
    assert pool.info("dir")["path"].endswith("adapter_model.safetensors")


@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_convert_writes_what_llama_cpps_converter_writes(model_dir, tmp_path, case):
    arch = MANIFEST["cases"][case]["base"]
    result = convert(FIXTURES / case, tmp_path / "ours.gguf", model_dir / f"{arch}-f32.gguf")
    ours, theirs = GGUFReader(result.path), GGUFReader(FIXTURES / f"{case}.llama-cpp.gguf")
    tensors = {t.name: (t.tensor_type, np.array(t.data)) for t in theirs.tensors}
    assert sorted(t.name for t in ours.tensors) == sorted(tensors)
    for t in ours.tensors:
        assert t.tensor_type == tensors[t.name][0]
        np.testing.assert_array_equal(np.array(t.data), tensors[t.name][1], err_msg=t.name)
    for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert result.folded == []


# -- PEFT's scale formula -----------------------------------------------------------------------------

SCALE_CASES = {
    # The first matching key wins, in the config's order; a key matches the end of the module name.
    "patterns": dict(targets=ref.ALL_TARGETS, r=8, lora_alpha=16,
                     rank_pattern={"model.layers.1.self_attn.q_proj": 2, "q_proj": 4, r"mlp\.(up|down)_proj": 6},
                     alpha_pattern={"layers.0.self_attn.v_proj": 3, "v_proj": 40, "gate_proj": 5}),
    "rslora": dict(targets=("q_proj", "k_proj", "o_proj", "down_proj"), r=8, lora_alpha=12, use_rslora=True,
                   rank_pattern={"k_proj": 2}, dtype="bf16"),
    "rslora_patterns": dict(targets=("q_proj", "v_proj", "up_proj"), r=4, lora_alpha=6, use_rslora=True,
                            rank_pattern={"up_proj": 16}, alpha_pattern={"^model.layers.0.self_attn.q_proj": 2},
                            prefix=False, dtype="f16"),
}


def _ids(m):
    return m.tokenize(PROMPT)[:8]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("case", sorted(SCALE_CASES))
def test_scales_and_logits_match_a_numpy_reference_of_peft(model_dir, tmp_path, arch, case):
    directory = ref.write_peft(tmp_path / case, spec(arch), seed=31, **SCALE_CASES[case])
    m = model(model_dir, arch)
    pool = logo_cpp.AdapterPool(m, directory)
    config, _ = ref.read_peft(directory)
    n_matrices = 0
    for mat in pool.info(case)["matrices"]:
        hf = next(name for name, (_, gguf) in ref.HF_MODULES.items() if gguf == mat["module"])
        rank, alpha, scale = ref.rank_alpha_scale(config, ref.module_key(mat["layer"], hf))
        assert mat["rank"] == rank and mat["scale"] == pytest.approx(scale, rel=1e-6), (mat, rank, alpha)
        n_matrices += 1
    assert n_matrices == spec(arch).n_layer * len(SCALE_CASES[case]["targets"])
    # Logits: W + scale * B A in every adapted map, Q/K rows in llama.cpp's order for llama.
    reference = ReferenceModel(str(model_dir / f"{arch}-f32.gguf"))
    ids = _ids(m)
    deltas = ref.reference_deltas(directory, arch, reference.n_head, reference.n_head_kv)
    # float64 reference vs our F32 weights and F16 KV cache: ~1e-3 relative (as tests/test_router.py).
    close(m.logits(ids, adapters={case: 1.0}), ref.reference_logits(reference, ids, deltas),
          ref.reference_logits(reference, ids, {}), tolerance=5e-3)


def test_llama_rows_are_permuted_and_qwen_rows_are_not(model_dir, tmp_path):
    # Without llama.cpp's Q/K permutation the reference disagrees: the test above can see it.
    directory = ref.write_peft(tmp_path / "qk", spec("llama"), targets=("q_proj", "k_proj"), r=4, seed=5)
    reference = ReferenceModel(str(model_dir / "llama-f32.gguf"))
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m, directory)  # noqa: F841 (the model finds adapters in its live pools)
    ids = _ids(m)
    deltas = ref.reference_deltas(directory, "qwen2", reference.n_head, reference.n_head_kv)  # unpermuted
    ours, unpermuted = m.logits(ids, adapters={"qk": 1.0}), ref.reference_logits(reference, ids, deltas)
    assert np.abs(ours - unpermuted).max() > 0.05 * np.abs(unpermuted).max()


# -- convert: per-module scales llama.cpp cannot express with one alpha --------------------------------

# f32 writes PEFT's values. f16, bf16 and q8_0 round the adapter, and llama.cpp then also rounds the
# activations to that type for the adapter's matmuls; these random adapters are strong (every module, scales
# up to 5: they move the logits by more than the logits' own scale), so those run at weight 0.25, where the
# rounding is 5e-4 (f16), 2e-3 (bf16) and 5e-3 (q8_0) of the logits' scale.
@pytest.mark.parametrize("case,outtype,weight,tolerance", [
    ("patterns", "f32", 1.0, 2e-3), ("rslora", "f32", 1.0, 2e-3), ("rslora_patterns", "f32", 1.0, 2e-3),
    ("patterns", "f16", 0.25, 2e-3), ("patterns", "bf16", 0.25, 5e-3), ("patterns", "q8_0", 0.25, 1e-2),
])
def test_converted_file_in_llama_cpp_matches_the_directory_in_logo_cpp(model_dir, tmp_path, llama_cpp_oracle,
                                                                          case, outtype, weight, tolerance):
    directory = ref.write_peft(tmp_path / case, spec("llama"), seed=41, **SCALE_CASES[case])
    out = tmp_path / f"{case}-{outtype}.gguf"
    result = convert(directory, out, model_dir / "llama-f32.gguf", outtype=outtype)
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m, [directory, out])
    # One alpha cannot give every module its PEFT scale here: some lora_b carry their own factor.
    scales = {mat["scale"] for mat in pool.info(case)["matrices"]}
    assert len(scales) > 1 and len(result.folded) > 0
    assert {mat["scale"] for mat in pool.info(out.stem)["matrices"]} != scales
    ids = m.tokenize(PROMPT)
    ours = m.logits(ids, adapters={case: weight})
    oracle = llama_cpp_oracle(model_dir / "llama-f32.gguf")
    oracle.set_adapters({out.stem: weight}, tmp_path)
    theirs = oracle.logits(ids)
    oracle.set_adapters({}, tmp_path)
    base = m.logits(ids)
    close(ours, theirs, base, tolerance)
    # The written file itself: logo-cpp and llama.cpp agree on it as on any GGUF adapter.
    close(m.logits(ids, adapters={out.stem: weight}), theirs, base, tolerance)


def test_generation_with_per_module_scales_matches_llama_cpp(model_dir, tmp_path, llama_cpp_oracle):
    # 24 tokens from one instance: the mixture is folded into the F32 weights (per-module scales included).
    directory = ref.write_peft(tmp_path / "patterns", spec("llama"), seed=43, **SCALE_CASES["patterns"])
    convert(directory, tmp_path / "converted.gguf", model_dir / "llama-f32.gguf")
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m, directory)  # noqa: F841
    ids = m.tokenize(PROMPT)
    ours = m.generate(ids, max_tokens=24, temperature=0.0, ignore_eos=True, adapters={"patterns": 0.5})
    oracle = llama_cpp_oracle(model_dir / "llama-f32.gguf")
    oracle.set_adapters({"converted": 0.5}, tmp_path)
    theirs = oracle.greedy(ids, 24)
    oracle.set_adapters({}, tmp_path)
    assert ours.tokens == theirs
    assert ours.tokens != m.generate(ids, max_tokens=24, temperature=0.0, ignore_eos=True).tokens


def test_file_alpha_keeps_the_common_scale_and_folds_the_rest(model_dir, tmp_path):
    directory = ref.write_peft(tmp_path / "a", spec("qwen2"), targets=("q_proj", "v_proj"), r=4, lora_alpha=8,
                               alpha_pattern={"model.layers.1.self_attn.v_proj": 2}, seed=3)
    result = convert(directory, tmp_path / "a.gguf", model_dir / "qwen2-f32.gguf")
    assert result.alpha == 8.0 and result.folded == ["blk.1.attn_v.weight"]
    reader = GGUFReader(result.path)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    _, peft_tensors = ref.read_peft(directory)
    b = peft_tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    np.testing.assert_allclose(tensors["blk.1.attn_v.weight.lora_b"], b * (2 / 4) / (8 / 4), rtol=1e-6)


# -- directories of adapters, all or nothing ----------------------------------------------------------

def test_a_directory_of_peft_directories_and_gguf_files(model_dir, adapter_dir, broken_dir, tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for name, seed in (("b-peft", 1), ("d-peft", 2)):
        ref.write_peft(root / name, spec("llama"), seed=seed)
    shutil.copy(adapter_dir / "math.gguf", root / "c-math.gguf")
    (root / "notes").mkdir()  # a directory without adapter_config.json is not an adapter
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m, root)
    assert pool.names == ["b-peft", "c-math", "d-peft"]
    # Mixed lists keep their order; a later failure takes earlier adapters out again.
    bad = ref.write_peft(tmp_path / "bad", spec("llama"), config={"use_dora": True})
    with pytest.raises(logo_cpp.FormatError, match="use_dora"):
        pool.add([adapter_dir / "sql.gguf", root / "b-peft", bad], names=["sql", "again", "bad"])
    with pytest.raises(logo_cpp.FormatError, match="NaN or Inf"):
        pool.add([root / "b-peft", broken_dir / "adapter_nan.gguf"], names=["x", "y"])
    with pytest.raises(ValueError, match="duplicate adapter name 'b-peft'"):
        pool.add([adapter_dir / "sql.gguf", root / "b-peft"])
    assert pool.names == ["b-peft", "c-math", "d-peft"]
    assert pool.add([adapter_dir / "sql.gguf", root / "b-peft", adapter_dir / "poem.gguf"],
                    names=["sql", "b2", "poem"]) == ["sql", "b2", "poem"]
    assert pool.names == ["b-peft", "c-math", "d-peft", "sql", "b2", "poem"]


# -- the shipped pool ---------------------------------------------------------------------------------

POOL = Path(__file__).resolve().parent.parent / "models" / "pool"


def _shipped_peft():
    """(task, PEFT directory, GGUF adapter) of every shipped adapter that is also committed as its PEFT dir."""
    manifest = json.loads((POOL / "manifest.json").read_text())
    return manifest, [(t["name"], POOL / t["peft"], POOL / t["adapter"]) for t in manifest["tasks"] if t.get("peft")]


def test_shipped_pool_adapters_load_the_same_from_their_peft_directories(llama_cpp_oracle, tmp_path):
    from logo_cpp.default_model import base_model_path

    from conftest import REPACK

    manifest, shipped = _shipped_peft()
    assert shipped, "models/pool/manifest.json lists no adapter with a committed PEFT directory"
    base = base_model_path()
    assert base.name == manifest["base"]["file"]
    m = logo_cpp.Model(base, n_ctx=256, n_threads=THREADS, repack=REPACK)
    prompts = {}
    for line in (POOL / "eval.jsonl").read_text().splitlines():
        item = json.loads(line)
        prompts.setdefault(item["task"], item["prompt"])
    oracle = llama_cpp_oracle(base)
    for task, directory, gguf in shipped:
        pool = logo_cpp.AdapterPool(m, [directory, gguf], names=["peft", "gguf"])
        ids = m.tokenize(prompts[task])
        from_peft, from_gguf = m.logits(ids, adapters={"peft": 1.0}), m.logits(ids, adapters={"gguf": 1.0})
        # The directory holds F32 tensors, the shipped GGUF F16. Over a quantized base one pool adapter keeps its own
        # type (README, "How a mixture is applied"), so the directory runs in F32 exactly as llama.cpp runs its F32
        # conversion (scale alpha/r = 2, a power of two), and the shipped F16 file differs by F16's rounding.
        as_f32 = convert(directory, tmp_path / f"{task}-f32.gguf", base, outtype="f32", task_name=task).path
        oracle.set_adapters({as_f32.stem: 1.0}, as_f32.parent)
        np.testing.assert_array_equal(from_peft, oracle.logits(ids), err_msg=task)
        # F16's rounding of the weights, amplified by the Q8_1 rounding of this Q4_1 base's activations: measured 0.90
        # on sentiment (2.2% of the logits' scale, 4.3% of the adapter's effect).
        close(from_gguf, from_peft, m.logits(ids), tolerance=5e-2, of_effect=1 / 10)
        # The shipped F16 file runs in F16 in both runtimes: llama.cpp's logits exactly.
        oracle.set_adapters({gguf.stem: 1.0}, gguf.parent)
        theirs = oracle.logits(ids)
        oracle.set_adapters({}, gguf.parent)
        np.testing.assert_array_equal(from_gguf, theirs, err_msg=task)
        # And `logo-cpp convert` writes the shipped file's tensors from the directory.
        written = convert(directory, tmp_path / f"{task}.gguf", base, outtype="f16", task_name=task).path
        ours = {t.name: (t.tensor_type, np.array(t.data)) for t in GGUFReader(written).tensors}
        shipped_tensors = GGUFReader(gguf).tensors
        assert sorted(ours) == sorted(t.name for t in shipped_tensors), task
        for t in shipped_tensors:
            assert ours[t.name][0] == t.tensor_type and np.array_equal(ours[t.name][1], np.array(t.data)), (task, t.name)
        del pool


# -- refusals -----------------------------------------------------------------------------------------

def _lm_head(s):
    return {"base_model.model.lm_head.lora_A.weight": np.ones((4, s.n_embd)),
            "base_model.model.lm_head.lora_B.weight": np.ones((s.n_vocab(), 4))}


def _embedding(s):
    return {"base_model.model.model.embed_tokens.lora_embedding_A": np.ones((4, s.n_vocab())),
            "base_model.model.model.embed_tokens.lora_embedding_B": np.ones((s.n_embd, 4))}


REFUSALS = [
    ("dora", dict(config={"use_dora": True}), r"adapter_config.json': use_dora is set \(true\): DoRA"),
    ("modules_to_save", dict(config={"modules_to_save": ["lm_head"]}), "modules_to_save is set"),
    ("saved_module", dict(extra_tensors={"base_model.model.model.norm.modules_to_save.default.weight": np.ones(128)}),
     "'base_model.model.model.norm.modules_to_save.default.weight' is a trained copy"),
    ("embedding_target", dict(config={"target_modules": ["q_proj", "embed_tokens"]}),
     "target_modules has 'embed_tokens'.* not the token embedding or the output head"),
    ("embedding_tensor", dict(extra_tensors=_embedding(spec("llama"))), "adapts the token embedding"),
    ("lm_head_tensor", dict(extra_tensors=_lm_head(spec("llama"))), r"adapts the output head \(lm_head\)"),
    ("unknown_target", dict(config={"target_modules": ["q_proj", "fc1"]}), "target_modules has 'fc1', which is not"),
    ("unknown_tensor", dict(extra_tensors={"base_model.model.model.layers.0.mlp.fc1.lora_A.weight": np.ones((8, 128)),
                                           "base_model.model.model.layers.0.mlp.fc1.lora_B.weight": np.ones((256, 8))}),
     "adapts 'mlp.fc1', which is not one of the linear maps"),
    ("bias_all", dict(config={"bias": "all"}), "bias is 'all': the adapter trained biases"),
    ("lora_bias", dict(config={"lora_bias": True}), "lora_bias is set"),
    ("ia3", dict(config={"peft_type": "IA3"}), "peft_type is 'IA3'"),
    ("pissa", dict(config={"init_lora_weights": "pissa_niter_4"}), "changes the base weights"),
    ("alora", dict(config={"alora_invocation_tokens": [5, 6]}), "activated LoRA"),
    ("rank_mismatch", dict(patch={"r": 4}), "has rank 8 but adapter_config.json gives .* r = 4"),
    ("bad_alpha", dict(patch={"lora_alpha": "sixteen"}), "lora_alpha is 'sixteen', expected a finite number"),
    # finite in JSON, not as the pool's float32 scale: named, not "a non-finite scale (-inf)" from the core
    ("huge_alpha", dict(patch={"lora_alpha": -1e40}), r"lora_alpha = -1e\+40 with r = 8 gives .* beyond float32"),
    ("huge_alpha_pattern", dict(patch={"alpha_pattern": {"v_proj": 1e40}}),
     r"alpha_pattern\['v_proj'\] = 1e\+40 with r = 8 gives .*v_proj' the scale .* beyond float32"),
    ("bad_pattern", dict(patch={"rank_pattern": {"q_proj(": 4}}), r"rank_pattern key 'q_proj\(' is not a regular"),
]


@pytest.mark.parametrize("kind,kw,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_file_and_setting(model_dir, adapter_dir, tmp_path, kind, kw, message):
    kw = dict(kw)
    patch = kw.pop("patch", {})  # config values written after the tensors (which follow the first config)
    bad = ref.write_peft(tmp_path / kind, spec("llama"), **kw)
    if patch:
        config, _ = ref.read_peft(bad)
        (bad / "adapter_config.json").write_text(json.dumps({**config, **patch}))
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m, [adapter_dir / "math.gguf"])
    with pytest.raises(logo_cpp.FormatError, match=message) as info:
        pool.add([adapter_dir / "sql.gguf", bad])
    assert str(bad) in str(info.value)
    assert pool.names == ["math"]
    with pytest.raises(logo_cpp.FormatError, match=message):
        convert(bad, tmp_path / "out.gguf", model_dir / "llama-f32.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_an_adapter_for_another_model_size_is_refused(model_dir, tmp_path):
    bigger = synthetic.ModelSpec(**{**SPECS["llama"], "n_ff": 320})
    bad = ref.write_peft(tmp_path / "big", bigger, targets=("q_proj", "up_proj"))
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m)
    message = (r"adapter '.*big/adapter_model.safetensors': 'blk.0.ffn_up.weight' "
               r"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight has shape \[128, 8\] and "
               r".*up_proj.lora_B.weight \[8, 320\]; for the base weight \[128, 256\]")
    with pytest.raises(logo_cpp.FormatError, match=message):
        pool.add(bad)
    with pytest.raises(logo_cpp.FormatError, match=message):
        convert(bad, tmp_path / "out.gguf", model_dir / "llama-f32.gguf")
    # An adapter for another architecture's layout: qwen3's head size gives attn_q another shape.
    other = ref.write_peft(tmp_path / "q3", spec("qwen3"), targets=("q_proj",))
    with pytest.raises(logo_cpp.FormatError, match="blk.0.attn_q.weight"):
        pool.add(other)
    assert len(pool) == 0 and not (tmp_path / "out.gguf").exists()


def test_broken_directories(model_dir, tmp_path):
    m = model(model_dir, "llama")
    pool = logo_cpp.AdapterPool(m)
    good = ref.write_peft(tmp_path / "good", spec("llama"))
    # No config; a torch pickle only; a truncated safetensors; invalid JSON; a lone lora_A; an integer tensor.
    cases = []
    d = tmp_path / "noconfig"
    d.mkdir()
    shutil.copy(good / "adapter_model.safetensors", d)
    cases.append((d / "adapter_model.safetensors", FileNotFoundError, "has no adapter_config.json"))
    d = tmp_path / "pickle"
    d.mkdir()
    shutil.copy(good / "adapter_config.json", d)
    (d / "adapter_model.bin").write_bytes(b"\x80\x02")
    cases.append((d, logo_cpp.FormatError, "has only adapter_model.bin"))
    # Cut: the library says only "incomplete metadata, file not fully covered"; the message names the tensor
    # cut and the bytes it needs. Cut by one byte, that is the tensor whose data ends the file (the oracle:
    # the library's own bytes for each tensor of the whole file).
    import safetensors

    data = (good / "adapter_model.safetensors").read_bytes()
    last = [name for name, t in safetensors.deserialize(data) if data.endswith(bytes(t["data"]))]
    assert len(last) == 1
    d = shutil.copytree(good, tmp_path / "truncated")
    (d / "adapter_model.safetensors").write_bytes(data[:-1])
    cases.append((d, logo_cpp.FormatError, re.escape(f"is truncated: tensor '{last[0]}' needs bytes up to "
                                                      f"{len(data)} but the file has {len(data) - 1}")))
    d = shutil.copytree(good, tmp_path / "half")
    (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append((d, logo_cpp.FormatError, r"is truncated: tensor '.*' needs bytes up to \d+ but the file has "
                                           f"{len(data) // 2}"))
    d = shutil.copytree(good, tmp_path / "header")
    (d / "adapter_model.safetensors").write_bytes(data[:20])
    cases.append((d, logo_cpp.FormatError, r"is truncated: its header needs bytes up to \d+ but the file has 20"))
    d = shutil.copytree(good, tmp_path / "empty-file")
    (d / "adapter_model.safetensors").write_bytes(b"")
    cases.append((d, logo_cpp.FormatError, "adapter_model.safetensors' is empty, expected a safetensors file"))
    d = shutil.copytree(good, tmp_path / "foreign")
    (d / "adapter_model.safetensors").write_text("not tensors at all, just some text in a file\n" * 4)
    cases.append((d, logo_cpp.FormatError, "is not a readable safetensors file"))
    d = shutil.copytree(good, tmp_path / "json")
    (d / "adapter_config.json").write_text("{r: 8,")
    cases.append((d, logo_cpp.FormatError, "adapter_config.json' is not valid JSON"))
    _, tensors = ref.read_peft(good)
    lone = {k: v for k, v in tensors.items() if k != "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"}
    d = shutil.copytree(good, tmp_path / "lone")
    ref.save_safetensors(d / "adapter_model.safetensors", lone)
    cases.append((d, logo_cpp.FormatError, "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' has no "
                                           "matching lora_B"))
    import safetensors.numpy

    d = shutil.copytree(good, tmp_path / "ints")
    safetensors.numpy.save_file({k: v.astype(np.int32) for k, v in tensors.items()}, d / "adapter_model.safetensors")
    cases.append((d, logo_cpp.FormatError, "has type I32; LoRA tensors must be F32, F16, BF16 or F64"))
    d = shutil.copytree(good, tmp_path / "nan")
    tensors_nan = dict(tensors)
    tensors_nan["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"] = np.full((64, 8), np.nan)
    ref.save_safetensors(d / "adapter_model.safetensors", tensors_nan)
    cases.append((d, logo_cpp.FormatError, "'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight' contains "
                                           "NaN or Inf"))
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            pool.add(path)
    with pytest.raises(FileNotFoundError, match="no .gguf adapter files and no PEFT adapter directories"):
        pool.add(_empty(tmp_path))
    assert len(pool) == 0


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# -- the command line ---------------------------------------------------------------------------------

def cli(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "logo_cpp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_convert_inspect_and_run(model_dir, tmp_path):
    base = model_dir / "llama-f32.gguf"
    directory = ref.write_peft(tmp_path / "my-adapter", spec("llama"), seed=9, **SCALE_CASES["rslora"])
    out = cli("convert", directory, "--base", base, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "my-adapter.gguf").exists()
    assert "wrote my-adapter.gguf: llama LoRA, 12 matrices, f32, alpha" in out.stdout
    assert "3 matrices carry their own PEFT scale in lora_b" in out.stdout  # the rank-2 k_proj of 3 layers
    (tmp_path / "my-adapter.gguf").unlink()
    out = cli("convert", directory / "adapter_model.safetensors", "--base", base, cwd=tmp_path)
    assert out.returncode == 0 and "wrote my-adapter.gguf" in out.stdout, out.stderr  # the directory's name
    out = cli("convert", directory, "-o", tmp_path / "q.gguf", "--base", base, "--outtype", "q8_0", "--task-name",
              "sums", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    reader = GGUFReader(tmp_path / "q.gguf")
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F16"}  # rank-8/2 lora_b rows stay F16
    assert reader.fields["adapter.lora.task_name"].contents() == "sums"

    out = cli("inspect", directory, "--base", base, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["kind"] == "PEFT LoRA adapter" and info["supported"] and info["fits"] and info["use_rslora"]
    assert info["modules"]["attn_k (k_proj)"] == f"3 layers, rank 2, scale {12 / 2 ** 0.5:.6g}, bf16"
    assert info["rank_pattern"] == {"k_proj": 2}
    out = cli("inspect", directory / "adapter_model.safetensors", "--base", model_dir / "qwen3-f32.gguf", cwd=tmp_path)
    assert out.returncode == 1 and "fits: False" in out.stdout and "does not have" not in out.stderr

    dora = ref.write_peft(tmp_path / "dora", spec("llama"), config={"use_dora": True})
    out = cli("inspect", dora, cwd=tmp_path)
    assert out.returncode == 1 and "supported: False" in out.stdout and "DoRA" in out.stdout

    shutil.move(tmp_path / "my-adapter.gguf", tmp_path / "converted.gguf")
    out = cli("run", "-m", base, "-a", directory, tmp_path / "converted.gguf", "-p", "Hello", "-n", "4", "--k", "2",
              "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert {s["name"] for s in json.loads(out.stdout)["routing"]["selected"]} == {"my-adapter", "converted"}


@pytest.mark.parametrize("args,message", [
    (["convert", "missing-dir", "--base", "{base}"], "no such file or directory: 'missing-dir'"),
    (["convert", "{dora}", "--base", "{base}"], "use_dora is set"),
    (["convert", "{good}", "--base", "{qwen2}"], "blk.0.attn_q.weight"),
    (["convert", "{good}", "--base", "missing.gguf"], "no such file: 'missing.gguf'"),
    (["run", "-m", "{base}", "-a", "{dora}", "-p", "hi"], "use_dora is set"),
    (["convert", "{good}", "--base", "{v99}"], "is GGUF version 99; logo-cpp reads GGUF versions 2 and 3"),
    # the output is checked before any work: never one of the inputs, never a directory, in a folder that exists
    (["convert", "{good}", "-o", "{good}/adapter_model.safetensors", "--base", "{base}"], "is the input file"),
    (["convert", "{good}", "-o", "{good}/adapter_config.json", "--base", "{base}"], "is the input file"),
    (["convert", "{good}", "-o", "{base}", "--base", "{base}"], "is the input file"),
    (["convert", "{good}", "-o", "{good}", "--base", "{base}"], "is a directory; give a file name"),
    (["convert", "{good}", "-o", "no/such/dir/x.gguf", "--base", "{base}"], "output folder 'no/such/dir' does not exist"),
    (["convert", "{base}", "--base", "{base}"], "is a GGUF file: a PEFT adapter is a directory holding adapter_config.json"),
    (["convert", "{good}", "-o", "{existing}", "--base", "{base}"], "already exists; give --force"),
])
def test_cli_mistakes_are_one_line(model_dir, tmp_path, args, message):
    paths = {"base": model_dir / "llama-f32.gguf", "qwen2": model_dir / "qwen2-f32.gguf",
             "v99": synthetic.write_broken(tmp_path / "v99.gguf", "version_99", spec("qwen3")),
             "dora": ref.write_peft(tmp_path / "dora", spec("llama"), config={"use_dora": True}),
             "good": ref.write_peft(tmp_path / "good", spec("qwen3"), targets=("q_proj",)),
             "existing": tmp_path / "existing.gguf"}
    paths["existing"].write_bytes(b"kept")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    out = cli(*[a.format(**paths) for a in args], cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(lines) == 1 and lines[0].startswith("logo-cpp: error:") and message in lines[0], out.stderr
    # nothing written, nothing overwritten, no temporary file left behind
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_rank_pattern_error_names_the_same_first_tensor_in_every_command(model_dir, tmp_path, capsys):
    # Every layer's v_proj has rank 8 where rank_pattern says 4. The safetensors library lists tensors in a hash
    # map's order, which changes from call to call: inspect and convert named different layers for one file.
    from logo_cpp import cli, peft
    from logo_cpp.inspect import describe_peft

    bad = ref.write_peft(tmp_path / "bad", spec("llama"), targets=("q_proj", "v_proj"), r=8)
    config, _ = ref.read_peft(bad)
    (bad / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"v_proj": 4}}))
    first = "'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight' has rank 8"
    base = model_dir / "llama-f32.gguf"
    messages = []
    for _ in range(6):
        with pytest.raises(logo_cpp.FormatError) as info:
            peft.read_adapter(bad)
        messages.append(str(info.value))
        with pytest.raises(logo_cpp.FormatError) as info:
            logo_cpp.AdapterPool(model(model_dir, "llama"), [bad])
        messages.append(str(info.value))
        with pytest.raises(logo_cpp.FormatError) as info:
            convert(bad, tmp_path / "out.gguf", base)
        messages.append(str(info.value))
        messages.append(describe_peft(str(bad), base=str(base))["reason"])
    assert all(first in m for m in messages), {m for m in messages if first not in m}
    assert cli.main(["inspect", str(bad)]) == 1
    assert f"reason: PEFT adapter '{bad / 'adapter_model.safetensors'}': {first}" in capsys.readouterr().out
    assert cli.main(["convert", str(bad), "--base", str(base), "-o", str(tmp_path / "out.gguf")]) == 2
    assert first in capsys.readouterr().err and not (tmp_path / "out.gguf").exists()


def test_convert_refuses_to_replace_an_existing_output_unless_forced(model_dir, tmp_path, capsys):
    from logo_cpp import cli

    good = ref.write_peft(tmp_path / "good", spec("llama"), targets=("q_proj",))
    base, out = model_dir / "llama-f32.gguf", tmp_path / "good.gguf"
    out.write_bytes(b"someone's file")
    with pytest.raises(FileExistsError, match=f"output '{re.escape(str(out))}' already exists; give --force"):
        convert(good, out, base)
    assert cli.main(["convert", str(good), "--base", str(base), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"logo-cpp: error: output '{out}' already exists; give --force (force=True) to replace it, or "
                   f"another --out"], err
    assert out.read_bytes() == b"someone's file" and not list(tmp_path.glob("*.tmp"))
    assert cli.main(["convert", str(good), "--base", str(base), "-o", str(out), "--force"]) == 0
    assert logo_cpp.AdapterPool(model(model_dir, "llama"), [out]).names == ["good"]
    assert convert(good, out, base, force=True).path == out


def test_an_alpha_of_zero_is_converted_as_peft_reads_it_with_a_warning(model_dir, tmp_path, capsys):
    # PEFT accepts lora_alpha 0 (LoraConfig and LoraLayer.update_layer check only r > 0) and its modules then
    # change nothing: logo-cpp loads and converts it the same, and says so naming the setting and the file.
    from logo_cpp import cli, peft

    base = model_dir / "llama-f32.gguf"
    zero = ref.write_peft(tmp_path / "zero", spec("llama"), targets=("q_proj", "v_proj"), lora_alpha=0)
    config_path = zero / "adapter_config.json"
    with pytest.warns(peft.AdapterWarning, match=f"'{re.escape(str(config_path))}': lora_alpha is 0, so the scale "
                                                 f"alpha / r of {2 * spec('llama').n_layer} of its"):
        adapter = peft.read_adapter(zero)
    assert all(m.scale == 0 for m in adapter.matrices)
    assert cli.main(["convert", str(zero), "--base", str(base), "-o", str(tmp_path / "zero-converted.gguf")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"logo-cpp: warning: PEFT adapter config '{config_path}': lora_alpha "
                                               f"is 0"), err
    m = model(model_dir, "llama")
    tokens = m.tokenize(PROMPT)
    plain = m.logits(tokens)
    with pytest.warns(peft.AdapterWarning):
        pool = logo_cpp.AdapterPool(m, [zero, tmp_path / "zero-converted.gguf"])
    for name in pool.names:  # the converted file writes alpha 1 with zeroed effect, as PEFT computes it
        np.testing.assert_array_equal(m.logits(tokens, adapters={name: 1.0}), plain)

    # alpha_pattern: the setting named is the pattern's; modules with a non-zero alpha are not counted
    part = ref.write_peft(tmp_path / "part", spec("llama"), targets=("q_proj", "v_proj"), alpha_pattern={"v_proj": 0})
    with pytest.warns(peft.AdapterWarning, match=r"alpha_pattern\['v_proj'\] is 0, so the scale alpha / r of "
                                                 rf"{spec('llama').n_layer} of its {2 * spec('llama').n_layer}"):
        peft.read_adapter(part)
