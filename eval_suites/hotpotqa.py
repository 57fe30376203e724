"""HotpotQA (distractor setting) records and the pooled paragraph corpus used by the benches.

Each question comes with 10 paragraphs (2 supporting, 8 distractors); the benches pool the
paragraphs of all questions into one corpus, one document per distinct title, so retrieval
must find the supporting paragraphs among ~3,000.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PATH_PREFIX = "hotpotqa/"


@dataclass(frozen=True)
class HotpotQuestion:
    id: str
    question: str
    answer: str
    type: str
    supporting_titles: tuple[str, ...]
    paragraphs: dict[str, str]  # title -> text
    sentences: dict[str, tuple[str, ...]] = field(default_factory=dict)  # title -> its sentences


def load_questions(path: Path, limit: int | None = None) -> list[HotpotQuestion]:
    questions = []
    with open(path) as handle:
        for line in handle:
            record = json.loads(line)
            context = record["context"]
            paragraphs = {t: "".join(s).strip() for t, s in zip(context["title"], context["sentences"])}
            sentences = {t: tuple(x.strip() for x in s if x.strip())
                         for t, s in zip(context["title"], context["sentences"])}
            supporting = tuple(dict.fromkeys(record["supporting_facts"]["title"]))
            questions.append(HotpotQuestion(record["id"], record["question"], record["answer"],
                                            record["type"], supporting, paragraphs, sentences))
            if limit and len(questions) >= limit:
                break
    return questions


def pooled_corpus(questions: list[HotpotQuestion]) -> tuple[list[str], list[str]]:
    """(texts, paths): one "Title: paragraph" document per distinct title."""
    seen: dict[str, str] = {}
    for question in questions:
        for title, text in question.paragraphs.items():
            seen.setdefault(title, f"{title}: {text}")
    titles = sorted(seen)
    return [seen[t] for t in titles], [PATH_PREFIX + t for t in titles]


def title_of(path: str) -> str:
    return path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else path


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA answer normalisation: lowercase, no punctuation/articles/extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(predicted) & Counter(truth)
    overlap = sum(common.values())
    if not overlap:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(truth)
    return 2 * precision * recall / (precision + recall)
