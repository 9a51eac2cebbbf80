"""The tasks of the shipped default pool: names, categories, metrics, prompt formats and scoring.

The pool (``models/pool``) holds one LoRA adapter per *in-pool* task, trained on SmolLM2-135M-Instruct by
``models/training``; *out-of-pool* tasks have no adapter and serve only the evaluation (the LoraRetriever
protocol: can routing help on a task the pool was not trained for?). The held-out prompts are in
``models/pool/eval.jsonl``; this module is what ``logo-cpp eval`` and the tests import to score them.

Prompt formats (both are measured, and the adapters are trained on a mix of the two):

- raw, as the LoGo paper probes: ``raw_prompt(text) = text + "\\nAnswer:"``; the answer follows after one
  space and ends with the end-of-turn token, so greedy generation stops on its own.
- chat: ``chat_messages(text)`` = one user message holding ``text``, rendered by the model's chat template.

Scoring (``score``) is exact match after ``normalize``: the first non-empty line of the prediction, accents
removed (NFKD), surrounding quotes and a trailing period dropped, whitespace collapsed, commas spaced as
", ", and, unless the task is case-sensitive, lower-cased. Numeric tasks compare the numbers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

RAW_SUFFIX = "\nAnswer:"

CATEGORIES = ("classification", "extraction", "rewriting", "arithmetic", "formatting", "knowledge")
METRICS = ("exact", "exact_ci", "number")


@dataclass(frozen=True)
class Task:
    """One task. ``metric``: "exact" (case-sensitive), "exact_ci" (case-insensitive) or "number"
    (numeric equality); ``max_tokens``: the generation budget that covers every answer of the task."""

    name: str
    category: str
    in_pool: bool
    metric: str
    max_tokens: int
    description: str


TASKS: tuple[Task, ...] = (
    # in pool: one adapter each
    Task("sentiment", "classification", True, "exact_ci", 4, "is a short review positive or negative"),
    Task("topic", "classification", True, "exact_ci", 4, "news sentence: sports, business, science or politics"),
    Task("parity", "classification", True, "exact_ci", 4, "is a number even or odd"),
    Task("animal_class", "classification", True, "exact_ci", 6, "mammal, bird, fish, reptile, insect or amphibian"),
    Task("extract_email", "extraction", True, "exact_ci", 24, "the email address in a sentence"),
    Task("extract_year", "extraction", True, "number", 6, "the year in a sentence"),
    Task("extract_name", "extraction", True, "exact_ci", 10, "the person named in a sentence"),
    Task("uppercase", "rewriting", True, "exact", 40, "a sentence in capital letters"),
    Task("plural", "rewriting", True, "exact_ci", 8, "the plural of a noun"),
    Task("past_tense", "rewriting", True, "exact_ci", 8, "the past tense of a verb"),
    Task("antonym", "rewriting", True, "exact_ci", 8, "the opposite of a word"),
    Task("addition", "arithmetic", True, "number", 6, "the sum of two numbers"),
    # out of pool although listed here (the held-out order stays): no recipe this project could afford taught it to
    # SmolLM2-135M (models/training/README.md); it measures whether routing to addition helps
    Task("subtraction", "arithmetic", False, "number", 6, "the difference of two numbers"),
    Task("multiplication", "arithmetic", True, "number", 6, "the product of two small numbers"),
    Task("date_iso", "formatting", True, "exact", 12, "a written date as YYYY-MM-DD"),
    Task("sort_words", "formatting", True, "exact_ci", 32, "words in alphabetical order, comma-separated"),
    Task("acronym", "formatting", True, "exact", 8, "the acronym of a phrase"),
    Task("capital", "knowledge", True, "exact_ci", 10, "the capital city of a country"),
    Task("element_symbol", "knowledge", True, "exact", 4, "the chemical symbol of an element"),
    # out of pool: evaluation only
    Task("continent", "knowledge", False, "exact_ci", 6, "the continent a country is in"),
    Task("lowercase", "rewriting", False, "exact", 40, "a sentence in small letters"),
    Task("larger_number", "arithmetic", False, "number", 6, "the larger of two numbers"),
    Task("date_us", "formatting", False, "exact", 12, "a written date as MM/DD/YYYY"),
    Task("number_words", "formatting", False, "exact_ci", 12, "a number written in words"),
)

TASK_BY_NAME = {task.name: task for task in TASKS}
IN_POOL = tuple(task.name for task in TASKS if task.in_pool)
OUT_OF_POOL = tuple(task.name for task in TASKS if not task.in_pool)


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError naming the known tasks otherwise."""
    try:
        return TASK_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_BY_NAME)}") from None


def raw_prompt(text: str) -> str:
    """The raw (no chat template) prompt for an instruction-with-input ``text``, as the paper probes."""
    return text + RAW_SUFFIX


def chat_messages(text: str) -> list[dict]:
    """The chat-format conversation for ``text``: one user message (render it with the model's template)."""
    return [{"role": "user", "content": text}]


_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def normalize(text: str, *, case_sensitive: bool = False) -> str:
    """The comparable form of an answer or a prediction (see the module docstring)."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = " ".join(text.split())
    text = text.strip().strip(_QUOTES).strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    text = re.sub(r"\s*,\s*", ", ", text).strip(", ").strip()
    return text if case_sensitive else text.lower()


def _number(text: str) -> Union[float, None]:
    cleaned = text.replace(",", "").replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def score(task: str, prediction: str, answer: str) -> float:
    """1.0 when ``prediction`` matches ``answer`` under the task's metric, else 0.0.

    Raises ValueError for an unknown task name.
    """
    metric = get_task(task).metric
    if metric == "number":
        got, want = _number(normalize(prediction)), _number(normalize(answer))
        return float(got is not None and want is not None and got == want)
    case_sensitive = metric == "exact"
    return float(normalize(prediction, case_sensitive=case_sensitive) == normalize(answer, case_sensitive=case_sensitive))


def load_eval(path: Union[str, Path], tasks: Union[Iterable[str], None] = None) -> list[dict]:
    """The held-out items of an ``eval.jsonl`` (one JSON object per line, see models/pool/README.md),
    optionally only those of ``tasks``. Raises ValueError naming the file and line of a malformed item."""
    wanted = None if tasks is None else set(tasks)
    items = []
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            missing = [k for k in ("task", "prompt", "answer", "in_pool") if k not in item]
            if missing:
                raise ValueError(f"{path}:{n}: item lacks {', '.join(missing)}")
            get_task(item["task"])
            if wanted is None or item["task"] in wanted:
                items.append(item)
    return items
