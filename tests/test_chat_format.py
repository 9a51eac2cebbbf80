"""How chat and demo show a routing: the mixture by weight, every signal at one precision, the calibration named."""

import re

import pytest

import logo_cpp
from logo_cpp.chat import routing_detail, routing_line

from conftest import THREADS


@pytest.fixture(scope="module")
def routed(model_dir, adapter_dir):
    model = logo_cpp.Model(model_dir / "llama-f32.gguf", n_ctx=64, n_threads=THREADS)
    pool = logo_cpp.AdapterPool(model, adapter_dir)
    return pool, logo_cpp.LoGo(model, pool, k=3).route("the cat sat on the mat")


def test_routing_line_lists_the_mixture_by_weight(routed):
    _, routing = routed
    pairs = re.findall(r"(\w+) (\d\.\d\d)", routing_line(routing))
    weights = [float(w) for _, w in pairs]
    assert len(pairs) == 3 and weights == sorted(weights, reverse=True)
    assert {n for n, _ in pairs} == set(routing.names)


def test_routing_detail_names_the_calibration_and_aligns_signals(routed):
    pool, routing = routed
    text = routing_detail(routing, pool)
    header, columns, *rows = text.splitlines()
    assert f"calibration {routing.calibration}" in header and f"{routing.position} token(s)" in header
    assert columns.split() == ["adapter", "signal", "raw"]
    scored = [r for r in rows if not r.split()[1] == "-"]
    # one precision for every number: three decimals
    assert scored and all(re.fullmatch(r"-?\d+\.\d{3}", r.split()[1]) for r in scored)
    assert sum("weight" in r for r in rows) == 3
