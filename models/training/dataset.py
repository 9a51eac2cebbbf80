"""Training examples and the held-out evaluation set, drawn from ``generators`` with the split it defines.

    python -m models.training.dataset --check          # sizes of the splits and the disjointness check
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from typing import Iterator

from logo_cpp import tasks as task_meta

from .generators import GENERATORS, input_key, is_heldout

EVAL_SEED = 1234
EVAL_PER_TASK = 36  # 9 per template for the 4-template in-pool tasks, 12 per template out of pool


@dataclass(frozen=True)
class Example:
    task: str
    template: int  # index into GENERATORS[task].templates
    text: str      # the instruction with its input: the user message, and the raw prompt before RAW_SUFFIX
    answer: str
    fields: dict   # the input: the template's slot values
    key: str       # the input's identity (fields as canonical JSON), which decides its split


def _make(task: str, rng: random.Random, template: int | None) -> Example:
    gen = GENERATORS[task]
    fields, answer = gen.draw(rng)
    if template is None:
        template = rng.randrange(len(gen.templates))
    return Example(task, template, gen.templates[template].format(**fields), answer, fields, input_key(fields))


def train_examples(task: str, seed: int) -> Iterator[Example]:
    """An endless stream of training examples of ``task``; none has a held-out input (asserted)."""
    if not task_meta.get_task(task).in_pool:
        raise ValueError(f"task {task!r} is out of pool: it has no training data")
    rng = random.Random(f"train:{task}:{seed}")
    while True:
        ex = _make(task, rng, None)
        if not is_heldout(task, ex.key):
            yield ex


def eval_examples(task: str, n: int = EVAL_PER_TASK, seed: int = EVAL_SEED) -> list[Example]:
    """``n`` distinct held-out examples of ``task``, templates in turn (balanced).

    Raises RuntimeError when the held-out part of the task's input space cannot give ``n`` distinct prompts.
    """
    gen = GENERATORS[task]
    rng = random.Random(f"eval:{task}:{seed}")
    out: list[Example] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        if len(out) == n:
            return out
        ex = _make(task, rng, len(out) % len(gen.templates))
        if is_heldout(task, ex.key) and ex.text not in seen:
            seen.add(ex.text)
            out.append(ex)
    raise RuntimeError(f"task {task!r}: only {len(out)} distinct held-out prompts, {n} wanted")


def eval_record(ex: Example) -> dict:
    """One line of eval.jsonl (see models/pool/README.md)."""
    meta = task_meta.get_task(ex.task)
    return {
        "task": ex.task,
        "prompt": task_meta.raw_prompt(ex.text),
        "answer": ex.answer,
        "in_pool": meta.in_pool,
        "category": meta.category,
        "template": ex.template,
        "input": ex.fields,
        "messages": task_meta.chat_messages(ex.text),
    }


def eval_set(n_per_task: int = EVAL_PER_TASK, seed: int = EVAL_SEED) -> list[dict]:
    """The whole held-out set: every task of ``logo_cpp.tasks.TASKS``, in that order."""
    return [eval_record(ex) for t in task_meta.TASKS for ex in eval_examples(t.name, n_per_task, seed)]


def check_disjoint(task: str, seed: int, n_train: int, heldout_texts: set[str]) -> int:
    """Draws ``n_train`` training examples and raises AssertionError if any is a held-out prompt or uses a
    held-out input; returns the number of distinct training prompts seen."""
    texts = set()
    stream = train_examples(task, seed)
    for _ in range(n_train):
        ex = next(stream)
        assert not is_heldout(task, ex.key), f"{task}: training drew held-out input {ex.key}"
        assert ex.text not in heldout_texts, f"{task}: training prompt is held out: {ex.text!r}"
        texts.add(ex.text)
    return len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="run the disjointness check on 5000 examples per task")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    items = eval_set()
    for t in task_meta.TASKS:
        mine = [it for it in items if it["task"] == t.name]
        line = f"{t.name:15s} {'in ' if t.in_pool else 'out'} eval {len(mine)}"
        if args.check and t.in_pool:
            distinct = check_disjoint(t.name, args.seed, 5000, {it["prompt"][: -len(task_meta.RAW_SUFFIX)] for it in mine})
            line += f"  train distinct prompts in 5000 draws: {distinct}"
        print(line + f"  e.g. {mine[0]['prompt']!r} -> {mine[0]['answer']!r}")


if __name__ == "__main__":
    main()
