"""close() and `with` blocks of Model and AdapterPool: memory is freed when close() returns (checked by the
model file's mapping), every use afterwards raises ClosedError, closing twice is harmless, and closing a pool
or a model under a generation on another thread, or under a running batch, lets it finish unchanged; an open
stream stops instead, and its next piece raises ClosedError."""

import inspect
import sys

import pytest

import logo_cpp
from logo_cpp import _core

from conftest import THREADS

GREEDY = dict(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture
def loaded(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=128, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    return model, pool


def model_calls(model, pool):
    """One call of every public method and property of Model, with valid arguments."""
    ids = [1, 5, 9]
    return {
        "path": lambda: model.path, "arch": lambda: model.arch, "n_vocab": lambda: model.n_vocab,
        "n_embd": lambda: model.n_embd, "n_layer": lambda: model.n_layer, "device": lambda: model.device,
        "n_threads": lambda: model.n_threads, "bos": lambda: model.bos, "eos": lambda: model.eos,
        "tokenize": lambda: model.tokenize("the cat"), "detokenize": lambda: model.detokenize(ids),
        "logits": lambda: model.logits(ids), "hidden_states": lambda: model.hidden_states(ids),
        "generate": lambda: model.generate("the cat", **GREEDY),
        "generate(stream)": lambda: list(model.generate("the cat", stream=True, **GREEDY)),
        "generate(adapters)": lambda: model.generate("the cat", adapters={"math": 1.0}, **GREEDY),
        "folded_weights": lambda: model.folded_weights({"math": 1.0}),
        "generate_batch": lambda: model.generate_batch(["the cat", "a dog"], **GREEDY),
        "chat": lambda: model.chat([{"role": "user", "content": "hi"}], chat_template="chatml", **GREEDY),
        "apply_chat_template": lambda: model.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                 chat_template="chatml"),
        "chat_tokens": lambda: model.chat_tokens([{"role": "user", "content": "hi"}], chat_template="chatml"),
    }


def pool_calls(model, pool, adapter_dir):
    return {
        "names": lambda: pool.names, "__len__": lambda: len(pool), "__contains__": lambda: "math" in pool,
        "__iter__": lambda: list(pool), "index": lambda: pool.index("math"), "info": lambda: pool.info("math"),
        "nbytes": lambda: pool.nbytes, "add": lambda: pool.add(adapter_dir / "math.gguf", name="again"),
        "remove": lambda: pool.remove("math"),
    }


def router_calls(router):
    return {"route": lambda: router.route("the cat"), "generate": lambda: router.generate("the cat", **GREEDY),
            "generate_batch": lambda: router.generate_batch(["the cat", "a dog"], **GREEDY)}


def public_names(cls) -> set:
    return {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")} - {"close", "closed"}


def test_every_call_covers_the_public_api(loaded, adapter_dir):
    # A method added later without a case here would escape the tests below.
    model, pool = loaded
    assert public_names(logo_cpp.Model) - {"n_ctx", "n_batch"} <= set(model_calls(model, pool))
    dunder = {"__len__", "__contains__", "__iter__"}
    assert public_names(logo_cpp.AdapterPool) | dunder <= set(pool_calls(model, pool, adapter_dir)) | {"model"}


def test_every_call_works_before_and_raises_closed_error_after(loaded, adapter_dir):
    model, pool = loaded
    router = logo_cpp.LoGo(model, pool, k=2)
    calls = {**model_calls(model, pool), **pool_calls(model, pool, adapter_dir), **router_calls(router)}
    for name, call in calls.items():
        if name != "remove":  # the one call that changes what the others see
            call()
    model.close()
    assert model.closed and pool.closed
    for name, call in calls.items():
        with pytest.raises(logo_cpp.ClosedError, match="is closed") as info:
            call()
        assert isinstance(info.value, ValueError), name
    # Closing again, in either order, does nothing; repr still describes them.
    model.close()
    pool.close()
    assert repr(model).endswith("closed)") and repr(pool) == "AdapterPool(closed)"
    with pytest.raises(logo_cpp.ClosedError, match="Model .* is closed"):
        logo_cpp.AdapterPool(model)


def test_a_closed_pool_leaves_the_model_working(loaded, adapter_dir):
    model, pool = loaded
    ids = model.tokenize("the cat sat")
    base = model.logits(ids)
    router = logo_cpp.LoGo(model, pool, k=2)
    pool.close()
    for call in router_calls(router).values():
        with pytest.raises(logo_cpp.ClosedError, match="AdapterPool is closed"):
            call()
    with pytest.raises(KeyError, match="no adapter named 'math' in any open AdapterPool"):
        model.generate(ids, adapters={"math": 1.0}, **GREEDY)
    assert (model.logits(ids) == base).all()
    # A new pool of the same adapters serves as the closed one did.
    again = logo_cpp.AdapterPool(model, adapter_dir)
    assert model.generate(ids, adapters={"math": 1.0}, **GREEDY).tokens
    assert not again.closed


def test_with_blocks_close_even_on_an_error(model_dir, adapter_dir):
    with pytest.raises(RuntimeError, match="inside"):
        with logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS) as model:
            with logo_cpp.AdapterPool(model, adapter_dir) as pool:
                assert len(pool) > 0
                raise RuntimeError("inside")
    assert model.closed and pool.closed


def test_a_failed_pool_load_is_closed_and_forgotten(loaded, broken_dir):
    model, _ = loaded
    before = len(model._pools)
    with pytest.raises(logo_cpp.FormatError):
        logo_cpp.AdapterPool(model, broken_dir / "adapter_nan.gguf")
    assert len(model._pools) == before


def mapped(path) -> bool:
    with open("/proc/self/maps") as maps:
        return str(path) in maps.read()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_close_frees_the_weights_at_once(model_dir, adapter_dir, tmp_path):
    # The weights are mapped from the file (use_mmap): the mapping ends when the last C++ owner of the model
    # (its sessions, and every pool, which holds the model) is freed. A private copy of the file keeps other
    # tests' models out of the picture.
    path = tmp_path / "own.gguf"
    path.write_bytes((model_dir / "llama-f32.gguf").read_bytes())
    model = logo_cpp.Model(path, n_ctx=64, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    router = logo_cpp.LoGo(model, pool, k=2)
    router.generate("the cat", **GREEDY)
    model.generate_batch(["the cat", "a dog"], **GREEDY)  # a batch session too
    assert mapped(path)
    model.close()
    assert not mapped(path)
    assert router.model is model and router.pool is pool  # references alone keep no C++ memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_stopped_server_engine_holds_no_memory(model_dir, adapter_dir, tmp_path):
    # An app that embeds the server, stops it and closes the model gets the weights back, though the engine
    # object itself lives on (the app holds it).
    from logo_cpp.server.engine import Engine

    path = tmp_path / "own.gguf"
    path.write_bytes((model_dir / "llama-f32.gguf").read_bytes())
    model = logo_cpp.Model(path, n_ctx=64, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    engine = Engine(model, pool, n_slots=2, n_ctx=64, max_queue=2)
    engine.close()
    model.close()
    assert not mapped(path)


def test_closing_under_a_generation_on_another_thread_lets_it_finish(loaded):
    import threading
    import time

    model, pool = loaded
    kwargs = dict(max_tokens=120, temperature=0.0, ignore_eos=True, adapters={"math": 0.5, "sql": 0.5})
    expected = model.generate("the cat", **kwargs).text
    for _ in range(20):  # until close() lands while the other thread's generate() holds the model
        got = []
        worker = threading.Thread(target=lambda: got.append(model.generate("the cat", **kwargs).text))
        worker.start()
        while worker.is_alive() and model._lock.acquire(blocking=False):
            model._lock.release()
            time.sleep(0.0005)
        if worker.is_alive():
            pool.close()   # waits for it
            model.close()  # so does this
            worker.join()
            break
        worker.join()
    else:
        pytest.fail("no generate() call was caught running in 20 tries")
    assert got == [expected]
    with pytest.raises(logo_cpp.ClosedError):
        model.generate("the cat", max_tokens=2)


def test_closing_the_model_under_an_open_stream_stops_it_and_its_next_piece_raises(model_dir, adapter_dir):
    # The README's promise: after close() every method raises ClosedError; an open stream is one more use. Its
    # generation stops at its next token (close() need not wait for all of max_tokens), its next next() raises
    # ClosedError, and its completion holds a prefix of what the uninterrupted generation makes.
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=1024, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    kwargs = dict(max_tokens=1000, temperature=0.0, ignore_eos=True, adapters={"math": 0.5, "sql": 0.5})
    expected = model.generate("the cat", **kwargs).tokens
    stream = model.generate("the cat", stream=True, **kwargs)
    next(stream)  # the worker thread is generating now, holding the model
    model.close()
    with pytest.raises(logo_cpp.ClosedError, match="is closed"):
        next(stream)
    done = stream.completion
    assert done is not None and done.finish_reason == "stop" and 1 <= len(done.tokens) < len(expected)
    assert done.tokens == expected[:len(done.tokens)]
    assert list(stream) == []  # ended
    assert pool.closed
    with pytest.raises(logo_cpp.ClosedError):
        model.generate("the cat", stream=True, max_tokens=2)


def test_closing_a_pool_under_a_running_batch(loaded, adapter_dir):
    # The server's path: a ContinuousBatch copies the mixtures it runs, so its requests finish unchanged.
    model, pool = loaded
    ids = model.tokenize("the cat sat")
    mixture = {"math": 0.5, "poem": 0.5}
    expected = model.generate(ids, adapters=mixture, **GREEDY).tokens
    for layout in ("stacked", "pooled"):
        batch = _core.ContinuousBatch(model._core, n_ctx=64, n_slots=2, pool=pool._core, layout=layout)
        batch.start(0, ids, pool=pool._core, selection=[(pool.index(n), w) for n, w in mixture.items()], **GREEDY)
        batch.step()
        pool.close()
        tokens = None
        while batch.n_active:
            for _, _, finished, completion, _ in batch.step():
                if finished:
                    tokens = completion["tokens"]
        assert tokens == expected, layout
        pool = logo_cpp.AdapterPool(model, adapter_dir)
