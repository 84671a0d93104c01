"""Task families of the toy world and a seeded generator of instruction records.

Some families are deterministic (one right answer), others admit several right answers drawn with a skewed,
learnable distribution (category members follow a Zipf law over a fixed ranking, joined sentences prefer one word
order): each training record shows one of them, so a teacher trained on many records learns the whole distribution,
which is what KD can transfer and SFT on a few records cannot. Every record keeps all its correct answers in
`references`.

`pretraining_corpus` writes generic text in the same language (facts, category members, synonyms, numbers, plain
sentences) without the instruction format: the models' pretraining data.

Each family draws *items* (the inputs that define a question). An item's key is hashed into one of three pools,
so the test split's items (and the dev split's) never occur in any training split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Pool = Literal["train", "dev", "test"]
Record = dict[str, Any]

# Share of the item space held out for dev and test (by a seeded hash of the item key).
DEV_SHARE = 0.06
TEST_SHARE = 0.12

WORDS = (
    "apple", "river", "café", "señor", "über", "naïve", "jalapeño", "crème", "piñata", "garçon",
    "stone", "music", "tiger", "cloud", "paper", "smile", "mañana", "fiancé", "résumé", "zebra",
    "lemon", "night", "ocean", "forest", "candle", "window", "rocket", "garden", "pencil", "façade",
)  # fmt: skip
PEOPLE = (
    "Zoë", "Ana", "Ben", "Chloé", "Dmitri", "Elif", "Farah", "Günter", "Hana", "Iñigo", "Jonas", "Kaito",
    "Lena", "Mateo", "Noor", "Omar", "Priya", "Quinn", "Renée", "Søren", "Tariq", "Uma", "Vera", "Wei",
)  # fmt: skip
CITIES = (
    "Málaga",
    "Oslo",
    "Zürich",
    "Kraków",
    "Lyon",
    "Porto",
    "Tokyo",
    "Lima",
    "Dakar",
    "Quito",
    "Bergen",
    "Göteborg",
)
PETS = ("cat", "dog", "parrot", "hamster", "rabbit", "turtle", "goldfish", "ferret", "iguana")
SIGNS = ("🌵", "🎸", "🚲", "🍎", "⭐", "🌙", "🔥", "🐙")
CATEGORIES = {
    "fruit": ("apple", "pear", "kiwi", "mango", "banana", "cherry", "plum", "lemon", "papaya"),
    "animal": ("tiger", "zebra", "otter", "panda", "koala", "lynx", "bison", "llama", "camel"),
    "colour": ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"),
    "instrument": ("piano", "violin", "guitar", "flute", "drum", "cello", "harp", "trumpet"),
    "drink": ("tea", "coffee", "juice", "milk", "water", "cocoa", "lemonade", "café"),
    "country": ("España", "México", "Perú", "Japan", "Kenya", "Norway", "Brazil", "Canada"),
}
SYNONYMS = (
    ("big", "large", "huge"),
    ("small", "tiny", "little"),
    ("fast", "quick", "rapid"),
    ("happy", "glad", "cheerful"),
    ("cold", "chilly", "icy"),
    ("smart", "clever", "bright"),
    ("angry", "mad", "furious"),
    ("quiet", "silent", "calm"),
)
NOUNS = (
    "the dog", "the house", "the river", "the café", "the piñata", "my friend",
    "the señor", "the robot", "the garden", "the tiger", "our teacher", "the city",
)  # fmt: skip
SENTENCES = ("{Noun} is {adj}.", "I think {noun} is {adj}.", "Yesterday {noun} was {adj}!")


def _fact_table() -> dict[str, dict[str, str]]:
    # Fixed for every seed: the facts are the world's knowledge, the seed only varies the sampling.
    rng = random.Random(20240601)
    return {
        person: {"city": rng.choice(CITIES), "pet": rng.choice(PETS), "sign": rng.choice(SIGNS)}
        for person in PEOPLE
    }


FACTS = _fact_table()


@dataclass(frozen=True)
class Item:
    """One question: its key decides the pool; `references` are all its correct answers."""

    task: str
    key: str
    prompt: str
    references: tuple[str, ...]
    weights: tuple[float, ...] | None = (
        None  # how often training records show each reference (None: uniformly)
    )


# Small numbers (digits are single tokens): small models learn these tasks instead of memorising a few answers.
ADD_MAX = 10  # operands of `add` are single digits
DIGITS = range(10)  # `sort` and `pick` work on distinct digits
ZIPF_EXPONENT = 1.2


def zipf_weights(n: int, exponent: float = ZIPF_EXPONENT) -> tuple[float, ...]:
    """Weights of ranks 1..n under a Zipf law (not normalised)."""
    return tuple(1.0 / (rank**exponent) for rank in range(1, n + 1))


def _add(rng: random.Random) -> Item:
    a, b = rng.randrange(ADD_MAX), rng.randrange(ADD_MAX)
    return Item("add", f"{a}+{b}", f"What is {a} + {b}?", (str(a + b),))


def _sort(rng: random.Random) -> Item:
    nums = rng.sample(DIGITS, rng.randint(3, 5))
    answer = "\t".join(map(str, sorted(nums)))
    return Item(
        "sort",
        ",".join(map(str, nums)),
        "Sort from smallest to largest:\t" + "\t".join(map(str, nums)),
        (answer,),
    )


def _reverse(rng: random.Random) -> Item:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return Item(
        "reverse", ",".join(words), "Reverse the word order: " + " ".join(words), (" ".join(reversed(words)),)
    )


def _upper(rng: random.Random) -> Item:
    words = rng.sample(WORDS, rng.randint(2, 3))
    return Item(
        "upper", ",".join(words), "Write in capital letters: " + " ".join(words), (" ".join(words).upper(),)
    )


def _squeeze(rng: random.Random) -> Item:
    words = rng.sample(WORDS, rng.randint(3, 4))
    gaps = [" " * rng.randint(1, 4) for _ in words[1:]]
    messy = words[0] + "".join(g + w for g, w in zip(gaps, words[1:], strict=True))
    return Item("squeeze", messy, "Remove the extra spaces: " + messy, (" ".join(words),))


_FACT_QUESTIONS = {
    "city": ("Where do {a} and {b} live?", "{p} lives in {v}."),
    "pet": ("Which pets do {a} and {b} have?", "{p} has a {v}."),
    "sign": ("Which signs do {a} and {b} wear?", "{p}: {v}"),
}


def _facts(rng: random.Random) -> Item:
    attribute = rng.choice(sorted(_FACT_QUESTIONS))
    a, b = rng.sample(PEOPLE, 2)
    question, line = _FACT_QUESTIONS[attribute]
    answer = "\n".join(line.format(p=p, v=FACTS[p][attribute]) for p in (a, b))
    return Item("facts", f"{attribute}:{a},{b}", question.format(a=a, b=b), (answer,))


def _category(rng: random.Random) -> Item:
    # Members are ranked by their place in CATEGORIES; answers follow a Zipf law over the ranks of those allowed.
    name = rng.choice(sorted(CATEGORIES))
    x, y = rng.sample(CATEGORIES[name], 2)
    ranked = CATEGORIES[name]
    weights = zipf_weights(len(ranked))
    allowed = [(m, w) for m, w in zip(ranked, weights, strict=True) if m not in (x, y)]
    return Item(
        "category",
        f"{name}:{x},{y}",
        f"Name {'an' if name[0] in 'aeiou' else 'a'} {name} other than {x} and {y}.",
        tuple(m for m, _ in allowed),
        tuple(w for _, w in allowed),
    )


def _synonym(rng: random.Random) -> Item:
    template, noun, group = rng.choice(SENTENCES), rng.choice(NOUNS), rng.choice(SYNONYMS)
    adj = rng.choice(group)

    def say(word: str) -> str:
        return template.format(Noun=noun[0].upper() + noun[1:], noun=noun, adj=word)

    kept = [(w, weight) for w, weight in zip(group, zipf_weights(len(group)), strict=True) if w != adj]
    return Item(
        "synonym",
        f"{template}|{noun}|{adj}",
        "Say it with another word: " + say(adj),
        tuple(say(w) for w, _ in kept),
        tuple(weight for _, weight in kept),
    )


JOIN_ADJECTIVES = tuple(w for group in SYNONYMS for w in group)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _join(rng: random.Random) -> Item:
    """Two sentences into one: three valid word orders, the first one most common."""
    a, b = rng.sample(NOUNS, 2)
    adj = rng.choice(JOIN_ADJECTIVES)
    refs = (f"{_cap(a)} and {b} are {adj}.", f"{_cap(b)} and {a} are {adj}.", f"Both {a} and {b} are {adj}.")
    prompt = f"Join the sentences: {_cap(a)} is {adj}. {_cap(b)} is {adj}."
    return Item("join", f"{a}|{b}|{adj}", prompt, refs, (0.6, 0.25, 0.15))


def _pick(rng: random.Random) -> Item:
    threshold = rng.choice((3, 4, 5, 6))
    above = rng.sample(range(threshold + 1, 10), rng.randint(1, min(3, 9 - threshold)))
    below = rng.sample(range(threshold + 1), rng.randint(2, 3))
    nums = above + below
    rng.shuffle(nums)
    refs = tuple(" ".join(map(str, p)) for p in itertools.permutations(above))
    prompt = f"List, in any order, the numbers above {threshold} in: " + " ".join(map(str, nums))
    return Item("pick", f"{threshold}:" + ",".join(map(str, nums)), prompt, refs)


TASKS: dict[str, Callable[[random.Random], Item]] = {
    "add": _add,
    "sort": _sort,
    "reverse": _reverse,
    "upper": _upper,
    "squeeze": _squeeze,
    "facts": _facts,
    "category": _category,
    "synonym": _synonym,
    "pick": _pick,
    "join": _join,
}


def item_pool(task: str, key: str, seed: int) -> Pool:
    """The pool an item belongs to: a stable hash of (seed, task, key), independent of Python's hash seed."""
    digest = hashlib.sha256(f"{seed}\x00{task}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < TEST_SHARE:
        return "test"
    if u < TEST_SHARE + DEV_SHARE:
        return "dev"
    return "train"


def generate(
    n: int, pool: Pool, *, seed: int, stream: int, tasks: Iterable[str] | None = None
) -> list[Record]:
    """`n` records whose items all lie in `pool`; tasks cycle so every family gets an equal share.

    `stream` separates independent draws with the same seed (e.g. the teacher's and the student's train data).
    """
    names = list(tasks or TASKS)
    rng = random.Random(f"toy:{seed}:{pool}:{stream}")
    records: list[Record] = []
    for i in range(n):
        task = names[i % len(names)]
        while True:  # rejection sampling: pools are large enough that this ends after a few draws
            item = TASKS[task](rng)
            if item_pool(task, item.key, seed) == pool:
                break
        # One of the correct answers shown per record; all of them kept for evaluation.
        response = rng.choices(item.references, weights=item.weights)[0]
        records.append(
            {
                "prompt": item.prompt,
                "response": response,
                "references": list(item.references),
                "task": task,
                "item": item.key,
            }
        )
    rng.shuffle(records)
    return records


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _sentence(rng: random.Random) -> str:
    """One sentence of generic text about the toy world (no instruction, no answer format)."""
    kind = rng.randrange(9)
    if kind == 0:
        p = rng.choice(PEOPLE)
        f = FACTS[p]
        return rng.choice((f"{p} lives in {f['city']}.", f"{p} has a {f['pet']}.", f"{p} wears {f['sign']}."))
    if kind == 1:
        name = rng.choice(sorted(CATEGORIES))
        members = rng.sample(CATEGORIES[name], 3)
        return rng.choice(
            (
                f"{_cap(members[0])} is {_article(name)} {name}.",
                f"Some of each {name}: {members[0]}, {members[1]} and {members[2]}.",
            )
        )
    if kind == 2:
        group = rng.choice(SYNONYMS)
        x, y = rng.sample(group, 2)
        return rng.choice((f"{_cap(x)} means {y}.", f"Something {x} is {y}."))
    if kind == 3:
        noun, adj = rng.choice(NOUNS), rng.choice(JOIN_ADJECTIVES)
        return rng.choice(SENTENCES).format(Noun=_cap(noun), noun=noun, adj=adj)
    if kind == 4:
        # The addition table is general knowledge, like the facts: the corpus states every sum; the instruction
        # question "What is a + b?" of a held-out item still occurs in no instruction split.
        a, b = rng.randrange(ADD_MAX), rng.randrange(ADD_MAX)
        return rng.choice((f"{a} plus {b} is {a + b}.", f"{a} + {b} = {a + b}."))
    if kind == 5:
        start = rng.randrange(10)
        count = " ".join(str(n) for n in range(start, start + rng.randint(3, 6)))
        x, y = sorted(rng.sample(DIGITS, 2))
        return rng.choice((f"Counting: {count}.", f"{y} is more than {x}.", f"{x} is less than {y}."))
    if kind == 6:
        words = rng.sample(WORDS, rng.randint(2, 3))
        return rng.choice(
            (
                f"{_cap(' and '.join(words))}.",
                f"{' '.join(words).upper()} is {' '.join(words)} in capitals.",
            )
        )
    if kind == 7:
        a, b = rng.sample(NOUNS, 2)
        adj = rng.choice(JOIN_ADJECTIVES)
        return f"{_cap(a)} and {b} are {adj}."
    return f"In {rng.choice(CITIES)} the {rng.choice(WORDS)} is {rng.choice(JOIN_ADJECTIVES)}."


def pretraining_corpus(n: int, *, seed: int, stream: int) -> list[str]:
    """`n` short documents of generic text (3 to 6 sentences each), seeded; `stream` separates held-out text."""
    rng = random.Random(f"toy-corpus:{seed}:{stream}")
    docs = []
    for _ in range(n):
        sentences = [_sentence(rng) for _ in range(rng.randint(3, 6))]
        docs.append((" " if rng.random() < 0.7 else "\n").join(sentences))
    return docs


def balanced_sample(records: list[Record], n: int) -> list[Record]:
    """About `n` records, the first ones of each task in equal numbers."""
    per_task = max(1, n // len(TASKS))
    picked: dict[str, list[Record]] = {}
    for r in records:
        if len(picked.setdefault(r["task"], [])) < per_task:
            picked[r["task"]].append(r)
    return [r for group in picked.values() for r in group]


def exact_match(prediction: str, references: Iterable[str]) -> bool:
    return prediction.strip() in {r.strip() for r in references}


def write_jsonl(records: Iterable[Record], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Record]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
