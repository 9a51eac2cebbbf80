"""Synthetic tasks, the base-model corpus and the fixed held-out evaluation split.

Every task has its own prompt format and a deterministic answer.  All randomness comes from
`random.Random(seed)` instances, so every function here is deterministic given its seed.

Public API (imported by the training scripts and by `logo-cpp eval`):
    TASKS                      ordered list of Task objects
    TASK_NAMES                 their names
    heldout_eval(n_per_task)   the fixed held-out mixed-task evaluation set (EVAL_SEED)
    train_examples(task, n, seed)  training examples, guaranteed disjoint from the held-out prompts
    base_corpus(n_docs, seed)  generic text for pretraining the base model (no task prompts/answers)
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

EVAL_SEED = 20260101
EVAL_PER_TASK = 60  # >= 50 prompts per task

CONS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def pseudo_word(rng: random.Random, min_len: int = 3, max_len: int = 7) -> str:
    """A pronounceable pseudo-word (consonant/vowel syllables), length in [min_len, max_len]."""
    while True:
        n_syl = rng.randint(1, 3)
        w = ""
        for _ in range(n_syl):
            if rng.random() < 0.85:
                w += rng.choice(CONS)
            w += rng.choice(VOWELS)
            if rng.random() < 0.3:
                w += rng.choice(CONS)
        if min_len <= len(w) <= max_len and any(c in CONS for c in w):
            return w


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0..999 in English words, e.g. 342 -> 'three hundred forty two'."""
    assert 0 <= n <= 999
    parts = []
    h, r = divmod(n, 100)
    if h:
        parts += [_ONES[h], "hundred"]
    if r or not parts:
        if r < 20:
            parts.append(_ONES[r])
        else:
            t, o = divmod(r, 10)
            parts.append(_TENS[t])
            if o:
                parts.append(_ONES[o])
    return " ".join(parts)


def caesar1(w: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in w)


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    template: str          # human-readable prompt format, {x} = input
    make: Callable[[random.Random], tuple[str, str, str]]  # rng -> (prompt, answer, raw input)
    code: str = ""        # opaque op tag used for this skill in the base corpus


def _reverse(rng):
    w = pseudo_word(rng, 3, 7)
    return f"Reverse the word: {w}\nReversed: ", w[::-1], w


def _upper(rng):
    w = pseudo_word(rng, 3, 8)
    return f"upper('{w}') -> ", w.upper(), w


def _add(rng):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} + {b}?\nAnswer: ", str(a + b), f"{a} {b}"


def _sort(rng):
    w = pseudo_word(rng, 3, 6)
    return f"Sort the letters of {w} alphabetically => ", "".join(sorted(w)), w


def _repeat(rng):
    w = pseudo_word(rng, 2, 5)
    n = rng.randint(2, 4)
    return f"Say {w} {n} times: ", " ".join([w] * n), f"{w} {n}"


def _caesar(rng):
    w = pseudo_word(rng, 3, 7)
    return f"ROT1[{w}] = ", caesar1(w), w


def _spell(rng):
    n = rng.randint(0, 999)
    return f"Spell the number {n}: ", number_words(n), str(n)


def _novowel(rng):
    w = pseudo_word(rng, 4, 8)
    return f"Remove vowels from '{w}': ", "".join(c for c in w if c not in VOWELS), w


def _date(rng):
    y, m, d = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    return f"Date {y}-{m:02d}-{d:02d} in US format: ", f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}"


def _digit_words(rng):
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 5)))
    return f"Digits {digits} as words: ", " ".join(_ONES[int(c)] for c in digits), digits


def _double(rng):
    w = pseudo_word(rng, 3, 6)
    return f"Double each letter of <{w}>: ", "".join(c + c for c in w), w


def _acronym(rng):
    ws = [pseudo_word(rng, 3, 6) for _ in range(3)]
    return f'Acronym for "{" ".join(ws)}": ', "".join(w[0].upper() for w in ws), " ".join(ws)


TASKS: list[Task] = [
    Task("reverse", "reverse a word", "Reverse the word: {word}\\nReversed: ", _reverse),
    Task("uppercase", "uppercase a word", "upper('{word}') -> ", _upper),
    Task("add", "add two numbers 0-99", "What is {a} + {b}?\\nAnswer: ", _add),
    Task("sort_letters", "sort the letters of a word", "Sort the letters of {word} alphabetically => ", _sort),
    Task("double_letters", "write every letter twice", "Double each letter of <{word}>: ", _double),
    Task("repeat", "repeat a word n times", "Say {word} {n} times: ", _repeat),
    Task("caesar", "shift each letter by one (rot1)", "ROT1[{word}] = ", _caesar),
    Task("spell_number", "number 0-999 to English words", "Spell the number {n}: ", _spell),
    Task("remove_vowels", "delete the vowels of a word", "Remove vowels from '{word}': ", _novowel),
    Task("date_us", "ISO date to US format", "Date {yyyy}-{mm}-{dd} in US format: ", _date),
    Task("digit_words", "read each digit out (lookup in the digit->word table)", "Digits {digits} as words: ", _digit_words),
    Task("acronym", "initials of three words, uppercased", 'Acronym for "{w1} {w2} {w3}": ', _acronym),
]
# Opaque op tags: the base corpus contains each skill as "<tag> <raw input> | <answer>" lines,
# never in the task's own prompt format, so the base model has the skills but cannot follow the
# task prompts; each LoRA learns to map its prompt format onto the skill.
TASKS = [replace(t, code="#" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i]) for i, t in enumerate(TASKS)]
# relative frequency of each skill in the base corpus (harder skills get more data)
SKILL_WEIGHTS = {"reverse": 1.0, "uppercase": 0.6, "add": 3.0, "sort_letters": 1.5, "double_letters": 0.8,
                 "repeat": 0.6, "caesar": 1.0, "spell_number": 1.5, "remove_vowels": 0.8, "date_us": 1.2,
                 "digit_words": 1.0, "acronym": 0.6}
# LoRA steps multiplier per task (harder tasks get more adapter training)
LORA_STEP_MULT = {"add": 2.0, "date_us": 1.5, "spell_number": 1.5}
TASK_NAMES = [t.name for t in TASKS]
TASK_BY_NAME = {t.name: t for t in TASKS}


def _task_seed(base_seed: int, name: str) -> int:
    # stable per-task seed (no Python hash randomization)
    return base_seed * 1000 + sum((i + 1) * ord(c) for i, c in enumerate(name))


def heldout_eval(n_per_task: int = EVAL_PER_TASK, seed: int = EVAL_SEED) -> list[dict]:
    """The fixed held-out evaluation set: n_per_task distinct prompts per task, interleaved.

    Items: {"task", "prompt", "answer"}.  Training examples never use these prompts."""
    per_task = []
    for t in TASKS:
        rng = random.Random(_task_seed(seed, t.name))
        seen, items = set(), []
        while len(items) < n_per_task:
            p, a, _ = t.make(rng)
            if p not in seen:
                seen.add(p)
                items.append({"task": t.name, "prompt": p, "answer": a})
        per_task.append(items)
    # interleave into a mixed-task list (deterministic)
    mixed = [it for group in zip(*per_task) for it in group]
    return mixed


_HELDOUT_CACHE: dict[int, set] = {}


def heldout_prompts(n_per_task: int = EVAL_PER_TASK) -> set:
    if n_per_task not in _HELDOUT_CACHE:
        _HELDOUT_CACHE[n_per_task] = {it["prompt"] for it in heldout_eval(n_per_task)}
    return _HELDOUT_CACHE[n_per_task]


def train_examples(task: str | Task, n: int, seed: int = 1) -> list[tuple[str, str]]:
    """n (prompt, answer) training pairs for `task`, never equal to a held-out eval prompt.

    Uses a held-out margin (the first 200 eval prompts per task are excluded), so evaluating
    with any n_per_task <= 200 stays unseen."""
    t = TASK_BY_NAME[task] if isinstance(task, str) else task
    banned = heldout_prompts(200)
    rng = random.Random(_task_seed(seed + 7, t.name))
    out = []
    while len(out) < n:
        p, a, _ = t.make(rng)
        if p not in banned:
            out.append((p, a))
    return out


# ---------------------------------------------------------------------------------------------
# generic pretraining corpus (no task prompts, no task answers)
# ---------------------------------------------------------------------------------------------
_FUNC = ["the", "a", "of", "and", "in", "is", "was", "to", "with", "on", "for", "it", "we",
         "they", "my", "your", "this", "that", "from", "at", "by", "not", "very", "some", "all"]
_VERBS = ["saw", "made", "took", "gave", "found", "likes", "has", "wants", "keeps", "sold", "read",
          "wrote", "met", "called", "said", "asked", "told", "brought"]


def _sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(3, 9)):
        r = rng.random()
        if r < 0.35:
            words.append(rng.choice(_FUNC))
        elif r < 0.5:
            words.append(rng.choice(_VERBS))
        elif r < 0.6:
            words.append(str(rng.randint(0, 999)))
        else:
            words.append(pseudo_word(rng, 2, 8))
    s = " ".join(words)
    if rng.random() < 0.7:
        s = s[0].upper() + s[1:]
    return s + rng.choice([".", ".", ".", "!", "?", ","])


def _line(rng: random.Random) -> str:
    k = rng.randrange(14)
    w = lambda a=2, b=8: pseudo_word(rng, a, b)
    if k <= 3:
        return " ".join(_sentence(rng) for _ in range(rng.randint(1, 3)))
    if k == 4:
        items = [w() for _ in range(rng.randint(2, 6))]
        return ", ".join(items[:-1]) + " and " + items[-1] + "."
    if k == 5:
        return f"{rng.randint(0, 999)} {w()}s, {rng.randint(0, 99)} {w()}s and {number_words(rng.randint(0, 999))} {w()}s."
    if k == 6:
        y, m, d = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 31)
        if rng.random() < 0.5:
            return f"{w().capitalize()} was born on {y}-{m:02d}-{d:02d} in {w().capitalize()}."
        return f"The {w()} is due {m:02d}/{d:02d}/{y}, said {w().capitalize()}."
    if k == 7:
        return " ".join(w().upper() for _ in range(rng.randint(1, 4))) + rng.choice(["!", "!!", ".", ""])
    if k == 8:
        return "; ".join(f"{w(2, 4)}={rng.randint(0, 99)}" for _ in range(rng.randint(2, 5)))
    if k == 9:
        wrap = rng.choice(["'{}'", '"{}"', "[{}]", "({})", "<{}>", "{{{}}}"])
        return f"{rng.choice(_FUNC).capitalize()} {wrap.format(w())} {rng.choice(_VERBS)} {w()}: {w()}."
    if k == 10:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice(["+", "-", "*", "=", "<", ">"])
        return f"{w().capitalize()} wrote {a} {op} {b} and {rng.choice(_VERBS)} {w()}."
    if k == 11:
        x = w()
        return f"{x} {x}, {rng.choice(_FUNC)} {x}." if rng.random() < 0.5 else f"{x.capitalize()} {w()} {x}?"
    if k == 12:
        return " ".join(rng.choice(MONTHS) + f" {rng.randint(1, 31)}" for _ in range(rng.randint(1, 3))) + "."
    return "- " + " ".join(w(1, 5) for _ in range(rng.randint(2, 6)))


def skill_example(rng: random.Random, task: Task | None = None) -> tuple[str, str]:
    """One skill demonstration in the neutral base-corpus format: ("<tag> <raw input> | ", "<answer>").

    Inputs whose task prompt is in the held-out eval margin are rejected, so no held-out
    (input, answer) pair ever appears in any training data."""
    if task is None:
        task = rng.choices(TASKS, weights=[SKILL_WEIGHTS.get(t.name, 1.0) for t in TASKS])[0]
    banned = heldout_prompts(200)
    while True:
        p, a, raw = task.make(rng)
        if p not in banned:
            if task.name == "add":
                # vary the operand layout so the base learns to find the numbers by content, not by
                # a fixed offset from the separator (otherwise the adapter cannot re-target it)
                x, y = raw.split()
                raw = x + rng.choice([" ", "  ", " + ", " and ", ", ", " plus "]) + y + rng.choice(["", "", " ?", " =", " ."])
            return f"{task.code} {raw} | ", a


def base_corpus_segments(n_docs: int, seed: int = 0, skill_frac: float = 0.6) -> list[list[tuple[str, bool]]]:
    """n_docs documents for base-model pretraining, each a list of (text, train_on) segments.

    A document is either generic text (all trained on) or, with probability skill_frac, a few skill
    lines in the neutral tagged format where only the answers (and line ends) carry loss."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        if rng.random() < skill_frac:
            segs = []
            n = rng.randint(3, 8)
            for j in range(n):
                q, a = skill_example(rng)
                segs.append((q, False))
                segs.append((a + ("\n" if j < n - 1 else ""), True))
            docs.append(segs)
        else:
            docs.append([("\n".join(_line(rng) for _ in range(rng.randint(2, 6))), True)])
    return docs


def base_corpus(n_docs: int, seed: int = 0, skill_frac: float = 0.6) -> list[str]:
    """The pretraining documents as plain strings."""
    return ["".join(t for t, _ in d) for d in base_corpus_segments(n_docs, seed, skill_frac)]


if __name__ == "__main__":
    rng = random.Random(0)
    for t in TASKS:
        p, a, _ = t.make(rng)
        print(f"{t.name:14s} {p!r} -> {a!r}")
    for d in base_corpus(4, 0):
        print(d)
        print("----")
    ev = heldout_eval()
    print(len(ev), "held-out items")
