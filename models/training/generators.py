"""Input generators and instruction templates of every task in ``logo_cpp.tasks``.

A task here is a list of natural-language templates (an instruction with ``{field}`` slots for the input)
and a ``draw(rng) -> (fields, answer)`` function that samples an input from the word lists in ``data/`` or
from number ranges. Nothing is downloaded.

Held-out split (by construction): every input has a *key* (its fields as canonical JSON), and a key is
held out when a hash of (task, key) falls in the lowest ``HELDOUT_PERCENT`` of the range. The training stream
draws only kept keys and the evaluation set only held-out keys, so no held-out prompt (nor any input of one,
under any template) can occur in training. For knowledge tasks the key is the item itself (the country, the
element), so the held-out countries are never seen in training at all.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

DATA = Path(__file__).resolve().parent / "data"
HELDOUT_PERCENT = 20


@lru_cache(maxsize=None)
def table(name: str) -> tuple[tuple[str, ...], ...]:
    """Rows of ``data/<name>.tsv`` (tab-separated; '#' lines are comments)."""
    rows = []
    for line in (DATA / f"{name}.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(tuple(line.split("\t")))
    return tuple(rows)


def column(name: str, i: int = 0) -> tuple[str, ...]:
    return tuple(row[i] for row in table(name))


@dataclass(frozen=True)
class TaskGen:
    name: str
    templates: tuple[str, ...]
    draw: Callable[[random.Random], tuple[dict, str]]


def input_key(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, ensure_ascii=False)


def is_heldout(task: str, key: str) -> bool:
    """True when the input ``key`` of ``task`` belongs to the evaluation split (a fixed hash, no seed)."""
    digest = hashlib.sha256(f"{task}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HELDOUT_PERCENT


# ---------------------------------------------------------------------------------------------- sentences
SUBJECTS = ("the pasta", "the service", "this phone", "the hotel room", "the movie", "the staff", "this laptop",
            "the coffee", "the speaker", "the delivery", "the book", "this jacket", "the pizza", "the app",
            "the tour guide", "the camera", "the soup", "the mattress", "the concert", "the charger")
GOOD = ("delicious", "excellent", "wonderful", "fantastic", "great", "amazing", "superb", "lovely", "perfect",
        "outstanding", "impressive", "delightful", "fresh", "friendly", "comfortable", "reliable", "fast",
        "beautiful")
BAD = ("terrible", "awful", "bland", "cold", "rude", "broken", "disappointing", "horrible", "dirty", "slow",
       "flimsy", "noisy", "stale", "overpriced", "useless", "boring", "uncomfortable", "unreliable")
GOOD_FRAMES = ("{S} was {a}.", "{S} was {a} and {b}.", "I loved it: {s} was {a}.", "Would buy again, {s} was {a}.",
               "{S} was {a}. Highly recommended!", "Honestly, {s} was {a} and {b}.",
               "We will come back, {s} was {a}.", "{S} was {a}, better than I expected.")
BAD_FRAMES = ("{S} was {a}.", "{S} was {a} and {b}.", "I hated it: {s} was {a}.", "Never again, {s} was {a}.",
              "{S} was {a}. Do not waste your money.", "Honestly, {s} was {a} and {b}.",
              "I want a refund, {s} was {a}.", "{S} was {a}, worse than I expected.")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def draw_sentiment(rng):
    positive = rng.random() < 0.5
    adjs = GOOD if positive else BAD
    frame = rng.choice(GOOD_FRAMES if positive else BAD_FRAMES)
    a, b = rng.sample(adjs, 2)
    s = rng.choice(SUBJECTS)
    review = frame.format(S=_cap(s), s=s, a=a, b=b)
    return {"review": review}, "positive" if positive else "negative"


CITIES = ("Chicago", "Madrid", "Lyon", "Osaka", "Toronto", "Denver", "Milan", "Leeds", "Porto", "Austin",
          "Dallas", "Munich", "Seattle", "Boston", "Glasgow", "Naples", "Sydney", "Perth", "Dublin", "Cardiff")
MASCOTS = ("Hawks", "Lions", "Rangers", "Comets", "Wolves", "Pirates", "Giants", "Falcons", "Bears", "Sharks")
COMPANIES = ("Norvex", "Altura", "Brightwell", "Kestrel Systems", "Orbis Foods", "Veltra Motors", "Lumina Bank",
             "Pinecrest Energy", "Solano Retail", "Quantix", "Harbor Airlines", "Medica Labs")
PLACES = ("the Amazon rainforest", "Antarctica", "the Sahara", "a deep ocean trench", "a cave in Spain",
          "the Arctic", "a volcano in Iceland", "the Great Barrier Reef", "a lake in Canada")
FINDINGS = ("a new species of frog", "bacteria that eat plastic", "fossils of an early whale", "an unknown mineral",
            "ancient tools", "a giant virus", "traces of liquid water", "a rare orchid")
POLICIES = ("tax", "healthcare", "immigration", "education", "climate", "housing", "pension", "trade")
TOPIC_FRAMES = {
    "sports": ("The {c} {m} beat the {c2} {m2} {x} to {y} on Sunday.",
               "{n} scored twice as the {c} {m} won the cup final.",
               "The {c} {m} fired their coach after a {x}-game losing streak.",
               "{n} won the marathon in {c} in record time."),
    "business": ("{co} shares rose {x} percent after strong quarterly earnings.",
                 "{co} announced plans to cut {x}00 jobs next year.",
                 "{co} agreed to buy {co2} for {x} billion dollars.",
                 "Profits at {co} fell {x} percent as sales slowed in {c}."),
    "science": ("Researchers discovered {f} in {p}.",
                "Scientists in {c} reported {f} in {p}.",
                "A team led by {n} found {f} in {p}.",
                "A new study describes {f} found in {p}."),
    "politics": ("Parliament passed a new {pol} law after a {x}-hour debate.",
                 "{n} announced a campaign to become mayor of {c}.",
                 "The government of {k} proposed a {pol} reform on Monday.",
                 "Voters in {k} will decide on the {pol} plan next month."),
}


def _person(rng) -> str:
    return f"{rng.choice(column('names', 0))} {rng.choice(column('names', 1))}"


def draw_topic(rng):
    topic = rng.choice(sorted(TOPIC_FRAMES))
    frame = rng.choice(TOPIC_FRAMES[topic])
    c, c2 = rng.sample(CITIES, 2)
    m, m2 = rng.sample(MASCOTS, 2)
    co, co2 = rng.sample(COMPANIES, 2)
    text = frame.format(c=c, c2=c2, m=m, m2=m2, co=co, co2=co2, x=rng.randint(2, 9), y=rng.randint(0, 1),
                        n=_person(rng), f=rng.choice(FINDINGS), p=rng.choice(PLACES), pol=rng.choice(POLICIES),
                        k=rng.choice(column("countries", 0)))
    return {"text": text}, topic


def draw_parity(rng):
    n = rng.randint(1, 9999)
    return {"n": n}, "even" if n % 2 == 0 else "odd"


def draw_animal_class(rng):
    animal, cls = rng.choice(table("animals"))
    return {"animal": animal}, cls


DOMAINS = ("example.com", "mailbox.org", "acme.io", "northwind.net", "school.edu", "citymail.co", "brightwell.com")
EMAIL_FRAMES = ("Please send the signed contract to {e} before Friday.",
                "For questions about the event, write to {e} or call the front desk.",
                "{n} said the best way to reach her team is {e}.",
                "The invoice came from {e} on Tuesday morning.",
                "Contact {e} if your package arrives damaged.",
                "Thanks for joining! Your account manager is {n} ({e}).")


def draw_extract_email(rng):
    first, last = rng.choice(column("names", 0)), rng.choice(column("names", 1))
    user = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}", f"{last}.{first[0]}"))
    email = f"{user.lower()}@{rng.choice(DOMAINS)}"
    frame = rng.choice(EMAIL_FRAMES)
    return {"text": frame.format(e=email, n=_person(rng))}, email


BUILDINGS = ("bridge", "museum", "cathedral", "stadium", "library", "railway station", "lighthouse", "town hall")
YEAR_FRAMES = ("The {b} in {c} was completed in {y} after {k} years of work.",
               "In {y}, {n} opened a small bakery with {k} employees.",
               "The company was founded in {y} and now has {k} offices.",
               "{n} moved to {c} in {y}, when she was {k} years old.",
               "After {k} failed attempts, the team finally reached the summit in {y}.",
               "The {b} was damaged by a storm in {y} and rebuilt {k} years later.")


def draw_extract_year(rng):
    year = rng.randint(1800, 2024)
    frame = rng.choice(YEAR_FRAMES)
    text = frame.format(b=rng.choice(BUILDINGS), c=rng.choice(CITIES), y=year, k=rng.randint(2, 40), n=_person(rng))
    return {"text": text}, str(year)


NAME_FRAMES = ("Yesterday {n} presented the new budget to the board in {c}.",
               "The award for best short film went to {n}.",
               "According to the report, {n} led the rescue team through the storm.",
               "At the meeting in {c}, {n} asked about the new parking rules.",
               "The painting was bought by {n} at an auction last week.",
               "{n} has coached the {c} {m} for six seasons.")


def draw_extract_name(rng):
    name = _person(rng)
    frame = rng.choice(NAME_FRAMES)
    return {"text": frame.format(n=name, c=rng.choice(CITIES), m=rng.choice(MASCOTS))}, name


SENT_ADJ = ("old", "quiet", "small", "busy", "bright", "cold", "green", "happy", "tired", "little")
SENT_NOUN = ("cat", "farmer", "train", "teacher", "dog", "river", "child", "bakery", "robot", "sailor")
SENT_VERB = ("waits", "sleeps", "sings", "stops", "works", "plays", "rests", "runs")
SENT_PLACE = ("near the bridge", "in the garden", "by the station", "after lunch", "every morning",
              "under the tree", "at the market", "on the hill")


def _sentence(rng) -> str:
    return (f"The {rng.choice(SENT_ADJ)} {rng.choice(SENT_NOUN)} {rng.choice(SENT_VERB)} "
            f"{rng.choice(SENT_PLACE)}.")


def draw_uppercase(rng):
    s = _sentence(rng)
    return {"sentence": s}, s.upper()


def draw_lowercase(rng):
    s = _sentence(rng).upper()
    return {"sentence": s}, s.lower()


def draw_plural(rng):
    noun, plural = rng.choice(table("plurals"))
    return {"noun": noun}, plural


def draw_past_tense(rng):
    verb, past = rng.choice(table("verbs"))
    return {"verb": verb}, past


def draw_antonym(rng):
    word, opposite = rng.choice(table("antonyms"))
    return {"word": word}, opposite


def draw_addition(rng):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {"a": a, "b": b}, str(a + b)


def draw_subtraction(rng):
    a, b = rng.randint(20, 99), rng.randint(10, 99)
    a, b = max(a, b), min(a, b)
    return {"a": a, "b": b}, str(a - b)


def draw_multiplication(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return {"a": a, "b": b}, str(a * b)


def draw_larger_number(rng):
    a = rng.randint(100, 999)
    b = rng.choice((int(str(a)[::-1]), a + rng.randint(1, 50), rng.randint(100, 999)))
    if b == a or b < 100:
        b = a + 7
    return {"a": a, "b": b}, str(max(a, b))


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _date(rng):
    y, m = rng.randint(1950, 2049), rng.randint(1, 12)
    return y, m, rng.randint(1, DAYS_IN_MONTH[m - 1])


def draw_date_iso(rng):
    y, m, d = _date(rng)
    return {"date": f"{MONTHS[m - 1]} {d}, {y}"}, f"{y:04d}-{m:02d}-{d:02d}"


def draw_date_us(rng):
    y, m, d = _date(rng)
    return {"date": f"{d} {MONTHS[m - 1]} {y}"}, f"{m:02d}/{d:02d}/{y:04d}"


def draw_sort_words(rng):
    words = rng.sample(column("words"), rng.randint(3, 5))
    return {"words": ", ".join(words)}, ", ".join(sorted(words))


def draw_acronym(rng):
    words = rng.sample(column("words"), rng.randint(3, 4))
    return {"phrase": " ".join(words)}, "".join(w[0].upper() for w in words)


def draw_capital(rng):
    country, capital, _ = rng.choice(table("countries"))
    return {"country": country}, capital


def draw_continent(rng):
    country, _, continent = rng.choice(table("countries"))
    return {"country": country}, continent


def draw_element_symbol(rng):
    element, symbol = rng.choice(table("elements"))
    return {"element": element}, symbol


ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_in_words(n: int) -> str:
    """0..999 in English words, hyphenated tens ("three hundred forty-two")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_in_words(rest))


def draw_number_words(rng):
    n = rng.randint(0, 999)
    return {"n": n}, number_in_words(n)


# ---------------------------------------------------------------------------------------------- templates
GENERATORS: dict[str, TaskGen] = {g.name: g for g in (
    TaskGen("sentiment", (
        "Is the sentiment of the following review positive or negative?\n\n{review}",
        "{review}\n\nDid the reviewer like it? Reply with positive or negative.",
        "Review: {review}\nClassify this review as positive or negative.",
        "Read the customer review and say whether it is positive or negative.\n{review}",
    ), draw_sentiment),
    TaskGen("topic", (
        "What is this news sentence about: sports, business, science or politics?\n\n{text}",
        "{text}\n\nWhich section of a newspaper does this belong to (sports, business, science, politics)?",
        "Classify the topic of the sentence as sports, business, science or politics.\nSentence: {text}",
        "Headline: {text}\nTopic (sports, business, science or politics)?",
    ), draw_topic),
    TaskGen("parity", (
        "Is {n} an even or an odd number?",
        "Tell me whether the number {n} is even or odd.",
        "Number: {n}\nEven or odd?",
        "Decide if {n} is divisible by two. Answer even or odd.",
    ), draw_parity),
    TaskGen("animal_class", (
        "Is a {animal} a mammal, bird, fish, reptile, insect or amphibian?",
        "Which group of animals does the {animal} belong to (mammal, bird, fish, reptile, insect, amphibian)?",
        "Animal: {animal}\nClass (mammal, bird, fish, reptile, insect or amphibian):",
        "Classify the {animal} as a mammal, bird, fish, reptile, insect or amphibian.",
    ), draw_animal_class),
    TaskGen("extract_email", (
        "Extract the email address from the text below.\n\n{text}",
        "{text}\n\nWhat email address is mentioned above?",
        "Find the email address in this message: {text}",
        "Text: {text}\nCopy out the email address.",
    ), draw_extract_email),
    TaskGen("extract_year", (
        "In what year did the event in this sentence happen?\n\n{text}",
        "{text}\n\nWhich year is mentioned in the sentence above?",
        "Extract the year from the following text: {text}",
        "Sentence: {text}\nWhat is the year?",
    ), draw_extract_year),
    TaskGen("extract_name", (
        "Who is the person mentioned in this sentence?\n\n{text}",
        "{text}\n\nWhat is the full name of the person above?",
        "Extract the name of the person from the text: {text}",
        "Text: {text}\nPerson's name:",
    ), draw_extract_name),
    TaskGen("uppercase", (
        "Rewrite the sentence in capital letters.\n\n{sentence}",
        "{sentence}\n\nWrite the sentence above in all caps.",
        "Convert this text to uppercase: {sentence}",
        "Sentence: {sentence}\nThe same sentence in upper case:",
    ), draw_uppercase),
    TaskGen("plural", (
        "What is the plural of the word \"{noun}\"?",
        "Give the plural form of {noun}.",
        "Word: {noun}\nPlural:",
        "One {noun}, two ... ? Write the plural noun.",
    ), draw_plural),
    TaskGen("past_tense", (
        "What is the past tense of the verb \"{verb}\"?",
        "Give the simple past form of {verb}.",
        "Verb: {verb}\nPast tense:",
        "Today I {verb}. Yesterday I ... ? Write the verb in the past tense.",
    ), draw_past_tense),
    TaskGen("antonym", (
        "What is the opposite of \"{word}\"?",
        "Give an antonym for the word {word}.",
        "Word: {word}\nOpposite:",
        "Name the word that means the opposite of {word}.",
    ), draw_antonym),
    TaskGen("addition", (
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "Calculate {a} + {b}.",
        "I have {a} marbles and get {b} more. How many marbles do I have now?",
    ), draw_addition),
    TaskGen("subtraction", (
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "Calculate {a} - {b}.",
        "A shop had {a} apples and sold {b}. How many apples are left?",
    ), draw_subtraction),
    TaskGen("multiplication", (
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "Calculate {a} x {b}.",
        "There are {a} boxes with {b} pens in each box. How many pens are there in total?",
    ), draw_multiplication),
    TaskGen("date_iso", (
        "Write the date {date} in ISO format (YYYY-MM-DD).",
        "Convert \"{date}\" to the format year-month-day with digits, like 2001-02-03.",
        "Date: {date}\nISO 8601:",
        "{date}\n\nRewrite this date as YYYY-MM-DD.",
    ), draw_date_iso),
    TaskGen("sort_words", (
        "Sort these words in alphabetical order: {words}",
        "Put the following words in alphabetical order, separated by commas.\n\n{words}",
        "Words: {words}\nAlphabetical order:",
        "{words}\n\nArrange the words above from A to Z.",
    ), draw_sort_words),
    TaskGen("acronym", (
        "What is the acronym of \"{phrase}\"?",
        "Make an acronym from the first letters of: {phrase}",
        "Phrase: {phrase}\nAcronym:",
        "Abbreviate \"{phrase}\" using the capitalized initial letters of each word.",
    ), draw_acronym),
    TaskGen("capital", (
        "What is the capital of {country}?",
        "Name the capital city of {country}.",
        "Country: {country}\nCapital:",
        "Which city is the seat of government of {country}?",
    ), draw_capital),
    TaskGen("element_symbol", (
        "What is the chemical symbol for {element}?",
        "Give the symbol of the element {element} in the periodic table.",
        "Element: {element}\nSymbol:",
        "Which one- or two-letter symbol stands for {element}?",
    ), draw_element_symbol),
    TaskGen("continent", (
        "On which continent is {country}?",
        "Name the continent where {country} is located.",
        "Country: {country}\nContinent:",
    ), draw_continent),
    TaskGen("lowercase", (
        "Rewrite the sentence in small letters.\n\n{sentence}",
        "Convert this text to lowercase: {sentence}",
        "Sentence: {sentence}\nThe same sentence in lower case:",
    ), draw_lowercase),
    TaskGen("larger_number", (
        "Which number is larger, {a} or {b}?",
        "Compare {a} and {b}. Which one is bigger?",
        "Numbers: {a}, {b}\nThe larger one:",
    ), draw_larger_number),
    TaskGen("date_us", (
        "Write the date {date} in US format (MM/DD/YYYY).",
        "Convert \"{date}\" to month/day/year with digits.",
        "Date: {date}\nUS format:",
    ), draw_date_us),
    TaskGen("number_words", (
        "Write the number {n} in words.",
        "Spell out {n} in English words.",
        "Number: {n}\nIn words:",
    ), draw_number_words),
)}
