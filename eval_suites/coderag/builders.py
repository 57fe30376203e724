"""CodeRAG-Bench tasks from the offline copies in shared/data/coderag, and BEIR writers.

Four tasks, each a list of `Problem`s (retrieval query + gold doc ids + an executable check):

- humaneval / mbpp: the corpus is the set of canonical solutions (prompt + solution, the
  record's `docs[0].text`), one document per problem, gold = the problem's own solution.
- ds1000 / odex: the corpus is devdocs library pages; gold doc titles map to page ids by the
  rule in shared/data/README.md (`title_to_page_key` / `page_key`).

BEIR format (`write_beir`): corpus.jsonl ({"_id", "title", "text"}), queries.jsonl
({"_id", "text"}) and qrels/test.tsv (query-id, corpus-id, score with a header line).
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from index.atomic import atomic_write
from runtime.errors import InvalidInputError, NotFoundError

TASKS = ("humaneval", "mbpp", "ds1000", "odex")
DOC_TASKS = ("ds1000", "odex")
_FILES = {"humaneval": "humaneval_solutions.jsonl", "mbpp": "mbpp_solutions.jsonl",
          "ds1000": "ds1000_docs.jsonl", "odex": "odex_docs.jsonl"}
DEVDOCS = "devdocs.jsonl.gz"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Args:
        task: task name; id: problem id (unique within the task).
        query: the retrieval query (HumanEval: prompt, MBPP: text, DS-1000: prompt, ODEX: intent).
        gold: gold corpus ids (solution ids or devdocs page ids; empty when unmapped/none).
        gold_titles: the gold doc titles as given (DS-1000/ODEX), mapped or not.
        gold_texts: the gold docs' texts as given in the record (the oracle condition's docs).
        prompt: the problem as shown to the generator.
        canonical: the canonical solution, in the same form a generation is scored in.
        meta: task-specific fields the scorer needs (entry_point, tests, code_context...).
    """

    task: str
    id: str
    query: str
    gold: tuple[str, ...]
    gold_titles: tuple[str, ...]
    gold_texts: tuple[str, ...]
    prompt: str
    canonical: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _literal(value: Any) -> Any:
    """Fields may be JSON or Python-literal strings inside the JSON (README note)."""
    if not isinstance(value, str):
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(value)
        except (ValueError, SyntaxError, TypeError):
            continue
    return value


def _records(data: Path, task: str) -> Iterator[dict[str, Any]]:
    path = Path(data) / "coderag" / _FILES[task]
    if not path.exists():
        raise NotFoundError(f"{path} not found: pass --data pointing at the shared data folder")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def title_to_page_key(title: str) -> str:
    """README rule, title side: `python.library.time#time.strptime` -> `python.library.time`."""
    key = title.split("#", 1)[0].strip().lower()
    if key.startswith("sklearn."):
        key = "scikit_learn." + key[len("sklearn."):]
    return key


def page_key(page_id: str) -> str:
    """README rule, page side: `pandas~1/reference/api/x.txt` -> `pandas.reference.api.x`."""
    library, _, rest = page_id.partition("/")
    library = library.split("~", 1)[0]
    if rest.endswith(".txt"):
        rest = rest[:-4]
    return f"{library}/{rest}".replace("/", ".").lower()


def load_problems(data: Path, task: str, page_keys: dict[str, str] | None = None) -> list[Problem]:
    """All problems of `task`; `page_keys` (key -> page id) maps DS-1000/ODEX gold titles."""
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    loader = {"humaneval": _humaneval, "mbpp": _mbpp, "ds1000": _ds1000, "odex": _odex}[task]
    problems, seen = [], {}
    for record in _records(data, task):
        problem = loader(record, page_keys or {})
        seen[problem.id] = seen.get(problem.id, 0) + 1
        if seen[problem.id] > 1:  # ODEX repeats a task_id for different intents
            problem = dataclasses.replace(problem, id=f"{problem.id}-{seen[problem.id]}")
        problems.append(problem)
    return problems


def _gold(docs: Any, page_keys: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    docs = _literal(docs) or []
    titles = tuple(str(d.get("title", "")) for d in docs)
    texts = tuple(str(d.get("text", "")) for d in docs)
    pages = []
    for title in titles:
        page = page_keys.get(title_to_page_key(title))
        if page and page not in pages:
            pages.append(page)
    return tuple(pages), titles, texts


def _humaneval(record: dict, _: dict) -> Problem:
    docs = _literal(record["docs"])
    test = record["test"] + f"\n\ncheck({record['entry_point']})\n"
    return Problem("humaneval", record["task_id"], record["prompt"], (record["task_id"],),
                   tuple(d.get("title", "") for d in docs), tuple(d["text"] for d in docs),
                   record["prompt"], record["prompt"] + record["canonical_solution"],
                   {"entry_point": record["entry_point"], "test": test})


def _mbpp(record: dict, _: dict) -> Problem:
    docs = _literal(record["docs"])
    tests = _literal(record["test_list"])
    test = (record.get("test_setup_code") or "") + "\n" + "\n".join(tests) + "\n"
    prompt = (f"You are an expert Python programmer, and here is your task: {record['text']} "
              "Your code should pass these tests:\n\n" + "\n".join(tests) + "\n")
    return Problem("mbpp", str(record["task_id"]), record["text"], (str(record["task_id"]),),
                   tuple(d.get("title", "") for d in docs), tuple(d["text"] for d in docs),
                   prompt, record["code"].replace("\r\n", "\n"), {"test": test, "tests": tests})


def _ds1000(record: dict, page_keys: dict) -> Problem:
    meta = _literal(record["metadata"])
    pages, titles, texts = _gold(record["docs"], page_keys)
    return Problem("ds1000", str(meta["problem_id"]), record["prompt"], pages, titles, texts,
                   record["prompt"], record["reference_code"],
                   {"library": meta["library"], "code_context": record["code_context"]})


def _odex(record: dict, page_keys: dict) -> Problem:
    pages, titles, texts = _gold(record["docs"], page_keys)
    tests = _literal(record["test"])
    test = record["test_start"] + "".join(tests) + f"\n\ncheck({record['entry_point']})\n"
    canonical = record["prompt"] + record["canonical_solution"] + record["suffix"]
    return Problem("odex", str(record["task_id"]), record["intent"], pages, titles, texts,
                   record["prompt"], canonical,
                   {"entry_point": record["entry_point"], "test": test, "suffix": record["suffix"],
                    "intent": record["intent"], "library": _literal(record["library"])})


def solution_corpus(problems: list[Problem]) -> dict[str, dict[str, str]]:
    """HumanEval/MBPP corpus: each problem's canonical solution doc (prompt + solution)."""
    return {p.id: {"title": p.gold_titles[0] if p.gold_titles else "", "text": p.gold_texts[0]}
            for p in problems if p.gold_texts}


def iter_devdocs(data: Path) -> Iterator[dict[str, str]]:
    """Every devdocs page record {"id", "library", "text"}."""
    path = Path(data) / "coderag" / DEVDOCS
    if not path.exists():
        raise NotFoundError(f"{path} not found: pass --data pointing at the shared data folder")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def devdocs_page_keys(data: Path) -> dict[str, str]:
    """README mapping key -> page id over every devdocs page (ids only, text dropped)."""
    return {page_key(r["id"]): r["id"] for r in iter_devdocs(data)}


def mapping_stats(problems: Iterable[Problem], page_keys: dict[str, str]) -> dict[str, int]:
    """How many gold doc titles map to a devdocs page, counted per distinct (problem, title)."""
    total = mapped = 0
    for problem in problems:
        for title in dict.fromkeys(problem.gold_titles):
            total += 1
            mapped += title_to_page_key(title) in page_keys
    return {"gold_titles": total, "mapped": mapped, "unmapped": total - mapped}


def select_pages(data: Path, gold: set[str], libraries: set[str] | None, distractors: int,
                 seed: int = 0) -> dict[str, dict[str, str]]:
    """A devdocs sub-corpus: every gold page plus `distractors` seeded random other pages of
    `libraries` (library names without `~version`; None = all libraries; -1 = all pages)."""
    pool, chosen = [], {}
    for record in iter_devdocs(data):
        library = record["library"].split("~", 1)[0]
        entry = {"title": record["id"], "text": record["text"], "library": record["library"]}
        if record["id"] in gold:
            chosen[record["id"]] = entry
        elif libraries is None or library in libraries:
            pool.append((record["id"], entry))
    if distractors < 0 or distractors >= len(pool):
        picked = pool
    else:
        picked = random.Random(seed).sample(pool, distractors)
    chosen.update(picked)
    return dict(sorted(chosen.items()))


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.writelines(lines)

    atomic_write(path, write)


def write_beir(out_dir: Path, corpus: dict[str, dict[str, str]], queries: dict[str, str],
               qrels: dict[str, dict[str, int]]) -> Path:
    """Write a BEIR dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv) atomically.

    Returns:
        `out_dir`.
    """
    out_dir = Path(out_dir)
    _atomic_write(out_dir / "corpus.jsonl", (
        json.dumps({"_id": doc_id, "title": doc.get("title", ""), "text": doc["text"]}) + "\n"
        for doc_id, doc in corpus.items()))
    _atomic_write(out_dir / "queries.jsonl",
                  (json.dumps({"_id": qid, "text": text}) + "\n" for qid, text in queries.items()))
    rows = ["query-id\tcorpus-id\tscore\n"]
    rows += [f"{qid}\t{doc_id}\t{score}\n" for qid, docs in qrels.items() for doc_id, score in docs.items()]
    _atomic_write(out_dir / "qrels" / "test.tsv", rows)
    return out_dir


def read_beir(directory: Path) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Read a BEIR dataset back: (corpus, queries, qrels)."""
    directory = Path(directory)
    corpus, queries, qrels = {}, {}, {}
    with open(directory / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            corpus[row["_id"]] = {"title": row.get("title", ""), "text": row["text"]}
    with open(directory / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    with open(directory / "qrels" / "test.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            qid, doc_id, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[doc_id] = int(score)
    return corpus, queries, qrels


def beir_for_task(problems: list[Problem], corpus: dict[str, dict[str, str]]
                  ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries and qrels of the problems that have at least one gold doc in `corpus`."""
    queries, qrels = {}, {}
    for problem in problems:
        gold = {doc: 1 for doc in problem.gold if doc in corpus}
        if gold:
            queries[problem.id] = problem.query
            qrels[problem.id] = gold
    return queries, qrels
