"""A closed-world multi-hop corpus the package generates: fictional entities and chained facts.

Nothing in it can be recalled from pre-training (every answer is a made-up name), so closed-book
exact match is ~0, while every question is answerable by searching: a scripted oracle policy
(:class:`OraclePolicy`) that reads the retrieved passages reaches EM 1. Used by the tests and the
agentic CPU quickstart; task ``agent_closedworld``, built-in BM25 index ``closedworld``.

The world (seed 0 by default; the same seed gives byte-identical passages and questions):

* countries — "Zorvia is a country in the Kelmar region. Its capital city is Qelbat.";
* people — "Ilsa Vorne is a cartographer who was born in Zorvia.";
* organisations — "The Dunmere Guild is a weaving guild founded by Ilsa Vorne.".

Questions chain 1–3 facts: the capital of a country (1 hop); the capital of the country where a
person was born (2 hops); the capital of the country where an organisation's founder was born, or
the founder of an organisation (3 hops / 1 hop). Every question is answered by a city name or a
person's name. Splits: ``test`` is every fifth question, ``train`` the rest.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from deepretrieval.core import agent_protocol as P
from deepretrieval.core import settings
from deepretrieval.core.settings import index_dir
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.tasks.agentic import agent_rows

VERSION = 1
INDEX_NAME = "closedworld"
SPLITS = ("train", "test")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "dr",
           "kr", "br", "sk", "qu", "vr", "gl")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m", "sk", "x")
_PROFESSIONS = ("cartographer", "astronomer", "composer", "shipwright", "botanist", "glassblower",
                "chronicler", "mathematician", "sculptor", "physician", "weaver", "architect")
_ORG_KINDS = ("guild", "trading company", "observatory", "academy", "brewery", "shipyard",
              "library", "theatre troupe", "printing house", "bank")


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    hops: int
    chain: tuple[str, ...]  # the entities to look up, in order (for reading, not for the oracle)


@dataclass(frozen=True)
class World:
    seed: int
    countries: dict[str, dict[str, str]]   # name → {"capital", "region"}
    people: dict[str, dict[str, str]]      # name → {"country", "profession"}
    orgs: dict[str, dict[str, str]]        # name → {"founder", "kind"}

    def passages(self) -> list[dict[str, str]]:
        """BEIR-style docs (``_id``, ``title``, ``text``), one per entity."""
        docs = []
        for i, (name, c) in enumerate(self.countries.items()):
            docs.append({"_id": f"country-{i}", "title": name,
                         "text": f"{name} is a country in the {c['region']} region. "
                                 f"Its capital city is {c['capital']}."})
        for i, (name, p) in enumerate(self.people.items()):
            docs.append({"_id": f"person-{i}", "title": name,
                         "text": f"{name} is {_a(p['profession'])} who was born in {p['country']}."})
        for i, (name, o) in enumerate(self.orgs.items()):
            docs.append({"_id": f"org-{i}", "title": name,
                         "text": f"{name} is {_a(o['kind'])} founded by {o['founder']}."})
        return docs

    def questions(self) -> list[Question]:
        qs: list[Question] = []
        for name, c in self.countries.items():
            qs.append(Question("", f"What is the capital of {name}?", c["capital"], 1, (name,)))
        for name, p in self.people.items():
            country = p["country"]
            qs.append(Question("", f"What is the capital of the country where {name} was born?",
                               self.countries[country]["capital"], 2, (name, country)))
        for j, (name, o) in enumerate(self.orgs.items()):
            founder = o["founder"]
            if j % 2 == 0:
                country = self.people[founder]["country"]
                qs.append(Question("", f"What is the capital of the country where the founder of "
                                       f"{name} was born?", self.countries[country]["capital"], 3,
                                   (name, founder, country)))
            else:
                qs.append(Question("", f"Who founded {name}?", founder, 1, (name,)))
        rng = random.Random(f"closedworld-order-{self.seed}")
        rng.shuffle(qs)
        return [Question(f"cw{self.seed}-{i}", q.question, q.answer, q.hops, q.chain)
                for i, q in enumerate(qs)]

    def digest(self) -> str:
        blob = json.dumps([self.passages(), [q.__dict__ for q in self.questions()]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def _name_maker(rng: random.Random):
    used: set[str] = set()

    def word(syllables: int) -> str:
        while True:
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
            w = (w + rng.choice(_CODAS)).capitalize()
            if w.lower() not in used and len(w) >= 4:
                used.add(w.lower())
                return w
    return word


@lru_cache(maxsize=8)
def generate_world(seed: int = 0, n_countries: int = 40, n_people: int = 80, n_orgs: int = 80) -> World:
    """The world for ``seed`` (deterministic: a seeded ``random.Random``, no global state)."""
    rng = random.Random(f"closedworld-v{VERSION}-{seed}")
    word = _name_maker(rng)
    regions = [word(2) for _ in range(6)]
    countries = {}
    for _ in range(n_countries):
        countries[word(2) + rng.choice(("ia", "ar", "ovia", "eth", "and"))] = {
            "capital": word(2), "region": rng.choice(regions)}
    country_names = list(countries)
    people = {}
    for _ in range(n_people):
        people[f"{word(2)} {word(2)}"] = {"country": rng.choice(country_names),
                                          "profession": rng.choice(_PROFESSIONS)}
    person_names = list(people)
    orgs = {}
    for _ in range(n_orgs):
        kind = rng.choice(_ORG_KINDS)
        orgs[f"The {word(2)} {kind.title()}"] = {"founder": rng.choice(person_names), "kind": kind}
    return World(seed, countries, people, orgs)


def split_questions(split: str, seed: int = 0) -> list[Question]:
    if split not in SPLITS:
        raise ValueError(f"unknown closed-world split {split!r}; known: {list(SPLITS)}")
    qs = generate_world(seed).questions()
    return [q for i, q in enumerate(qs) if (i % 5 == 0) == (split == "test")]


def closed_world_rows(task, split: str, settings=None) -> list[dict[str, Any]]:
    """Agentic task rows of a split of the seed-0 world (searching the built-in ``closedworld``
    index)."""
    questions = split_questions(split)
    examples = [{"id": q.id, "question": q.question, "answers": [q.answer]} for q in questions]
    rows = agent_rows(task, examples, split, search_index=INDEX_NAME, settings=settings)
    for row, q in zip(rows, questions):
        row["extra_info"]["hops"] = q.hops
    return rows


_lock = threading.Lock()


def bm25_index(rebuild: bool = False):
    """The BM25 index of the seed-0 world, built under the index root on first use (~1 s)."""

    world = generate_world(0)
    name = INDEX_NAME
    path = index_dir() / f"{name}-v{VERSION}"
    with _lock:
        marker = path / "world.sha256"
        if rebuild or not (path / "meta.json").exists() or not marker.exists() \
                or marker.read_text().strip() != world.digest():
            index = BM25Index.build(world.passages(), name=name,
                                    show_progress=settings.progress_enabled())
            index.save(path)
            marker.write_text(world.digest() + "\n")
        return BM25Index.load(path)


# ---------------------------------------------------------------------------------------------
# scripted policies (generator interface of deepretrieval.generation.local)

_Q_CAPITAL = re.compile(r"^What is the capital of (?!the country)(.+)\?$")
_Q_PERSON = re.compile(r"^What is the capital of the country where (?!the founder of )(.+) was born\?$")
_Q_ORG_CHAIN = re.compile(r"^What is the capital of the country where the founder of (.+) was born\?$")
_Q_FOUNDER = re.compile(r"^Who founded (.+)\?$")


def _question_of(messages: Sequence[Mapping[str, str]]) -> str:
    for m in messages:
        if m["role"] == "user" and m["content"].startswith("Question: "):
            return m["content"][len("Question: "):].strip()
    return ""


def _plan(question: str) -> tuple[str, list[str]] | None:
    """(first entity, relations to follow) for a question of the world."""
    for pattern, steps in ((_Q_CAPITAL, ["capital"]), (_Q_PERSON, ["born", "capital"]),
                           (_Q_ORG_CHAIN, ["founder", "born", "capital"]), (_Q_FOUNDER, ["founder"])):
        m = pattern.match(question)
        if m:
            return m.group(1), steps
    return None


_FACTS = {
    "capital": lambda e: re.compile(re.escape(e) + r" is a country in the .+? region\. Its capital city is ([^.]+)\."),
    "born": lambda e: re.compile(re.escape(e) + r" is an? [a-z ]+ who was born in ([^.]+)\."),
    "founder": lambda e: re.compile(re.escape(e) + r" is an? [a-z ]+ founded by ([^.]+)\."),
}


def _protocol_of(prompt) -> P.AgentProtocol:
    """The registered protocol whose system prompt the prompt's is; a prompt with another system
    text (e.g. verl's own tool prompt): tool calls when it lists tools, else tags."""
    system = "\n".join(m["content"] for m in prompt.messages if m["role"] == "system")
    for name in P.protocol_names():
        rollout = P.agent_protocol(name)
        if system == rollout.system_prompt():
            return rollout
    return P.agent_protocol("tool" if "<tools>" in system else "tags")


class OraclePolicy:
    """A scripted agent that searches for each entity of the question's chain, reads the next
    entity off the retrieved passages and answers: EM 1 when retrieval returns the passages.
    Speaks every registered protocol (told by the prompt's system message, :func:`_protocol_of`)
    through the protocol's own writers. Answers ``unknown`` when a passage it needs was not
    retrieved."""

    uses_prefill = True
    name = "oracle"

    def generate(self, prompts, decoding, *, batch_size: int = 8, seed_offset: int = 0,
                 progress: bool = False) -> list[list[str]]:
        return [[self.turn(p)] * decoding.n for p in prompts]

    def turn(self, prompt) -> str:
        rollout = _protocol_of(prompt)
        if rollout.single_message:
            observed = P.injected_blocks(prompt.prefill)
        else:
            observed = [m["content"] for m in prompt.messages if m["role"] == "tool"]
        plan = _plan(_question_of(prompt.messages))
        if plan is None:
            return self._answer("unknown", rollout)
        entity, steps = plan
        # follow the chain as far as the observed passages allow
        for i, relation in enumerate(steps):
            m = _FACTS[relation](entity).search("\n".join(observed))
            if m is None:
                if len(observed) > i:  # searched for it and did not find it
                    return self._answer("unknown", rollout)
                return self._search(entity, rollout)
            entity = m.group(1).strip()
        return self._answer(entity, rollout)

    @staticmethod
    def _search(entity: str, rollout: P.AgentProtocol) -> str:
        think = f"<think>I need to look up {entity}.</think>\n" if rollout.single_message else ""
        return think + rollout.write_search([entity])

    @staticmethod
    def _answer(value: str, rollout: P.AgentProtocol) -> str:
        think = "<think>The passages give the answer.</think>\n" if rollout.single_message else ""
        return think + rollout.write_answer(value)


class ClosedBookGuess:
    """A scripted closed-book answerer: always answers from the question alone (the first
    capitalised word after "of"/"founded"), never searches. The closed-book floor."""

    uses_prefill = True
    name = "closed-book guess"

    def generate(self, prompts, decoding, *, batch_size: int = 8, seed_offset: int = 0,
                 progress: bool = False) -> list[list[str]]:
        out = []
        for p in prompts:
            words = re.findall(r"[A-Z][a-z]+", _question_of(p.messages))
            out.append([f"<answer>{words[-1] if words else 'unknown'}</answer>"] * decoding.n)
        return out
