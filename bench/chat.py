#!/usr/bin/env python3
"""Chat latency: the engine against a naive baseline that mirrors GPT2-chitchat's algorithm.

Shape (issue 4): `small` preset with random weights, an MMI model of the same preset, a history of 3
utterances (59 tokens with [CLS] and the [SEP]s), replies of exactly 25 tokens (min_len = max_len, so
that timing does not depend on the weights). Measured: one reply with 5 candidates ranked by MMI,
and one reply with 1 candidate and no MMI, fp32 and int8; the naive baseline (the model re-run over
the whole sequence at every step, MMI candidates scored one at a time, as GPT2-chitchat's
interact_mmi.py does) for 5 candidates with MMI; and, for reference, `transformers`' `generate` with
its key/value cache for 1 candidate. Ends with one JSON line, which also holds what the machine
gave during the run (bench/machine.py: this shared VM's speed varies by up to 2x).

With `--reference REV` (a git revision, e.g. the commit before a refactoring), the same two replies
are also timed on that revision's code, checked out beside (git worktree), in alternating rounds of
child processes (A B A B): the JSON line gains `ref_ratio_mmi5` and `ref_ratio_single`, the median
over rounds of this code's p50 over the reference's (below 1: this code is faster).

    .venv/bin/python bench/chat.py [--runs 30] [--threads N] [--reference REV [--rounds 5]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chitchat.engine.engine import Engine  # noqa: E402
from chitchat.model.gpt2 import build_model  # noqa: E402
from chitchat.engine.settings import ReplySettings  # noqa: E402
from chitchat.tokens.tokenizer import CLS, DEFAULT_VOCAB, SEP, UNK, load_tokenizer  # noqa: E402
from machine import busy_cores, machine_note  # noqa: E402

HISTORY = [
    "今天下班以后我们去楼下新开的火锅店吧",  # 18 characters
    "好啊不过听说那家店排队的人特别多要等很久",  # 20
    "那我们早点过去先拿个号再去旁边逛逛",  # 17: with [CLS] and 3 [SEP], 59 tokens
]
REPLY_LEN = 25
ROOT = Path(__file__).resolve().parent.parent

# Times the engine's two replies on the code at sys.argv[1] (either settings API: before and after
# ReplySettings), preset small, random weights, one JSON line of p50s.
ENGINE_ONLY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[3]))
from chitchat.engine.engine import Engine
from chitchat.model.gpt2 import build_model
from chitchat.tokens.tokenizer import DEFAULT_VOCAB, load_tokenizer
runs, n = int(sys.argv[2]), %d
history = %r
tok = load_tokenizer(DEFAULT_VOCAB)
engine = Engine(build_model(tok, "small", seed=0).eval(), tok, build_model(tok, "small", seed=1).eval(),
                threads=int(sys.argv[3]))
try:
    from chitchat.engine.settings import ReplySettings
    mmi5 = lambda i: engine.reply(history, ReplySettings(candidates=5, min_len=n, max_len=n, top_k=8, seed=i))
    single = lambda i: engine.reply(history, ReplySettings(candidates=1, min_len=n, max_len=n, top_k=8, seed=i,
                                                           ranking="likelihood"))
except ImportError:
    from chitchat.model.sampling import SamplingConfig
    mmi5 = lambda i: engine.reply(history, SamplingConfig(candidates=5, min_len=n, max_len=n, top_k=8), seed=i)
    single = lambda i: engine.reply(history, SamplingConfig(candidates=1, min_len=n, max_len=n, top_k=8), seed=i,
                                    mmi=False)
out = {}
for name, fn in (("mmi5", mmi5), ("single", single)):
    for i in range(3):
        fn(i)
    t = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(i)
        t.append(time.perf_counter() - t0)
    out[name] = sorted(t)[len(t) // 2] * 1000
print(json.dumps(out))
""" % (REPLY_LEN, HISTORY)


def reference_ratios(rev: str, rounds: int, runs: int, threads: int) -> dict:
    """This code's p50 over revision `rev`'s, per reply kind: the median over `rounds` alternating
    rounds of child processes (this code, then the reference)."""
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), rev], check=True,
                       capture_output=True)
        try:
            ratios: dict[str, list[float]] = {"mmi5": [], "single": []}
            for k in range(rounds):
                got = {}
                for name, root in (("this", ROOT), ("ref", ref)):
                    out = subprocess.run([sys.executable, "-c", ENGINE_ONLY, str(root), str(runs), str(threads)],
                                         check=True, capture_output=True, text=True).stdout
                    got[name] = json.loads(out.strip().splitlines()[-1])
                for kind in ratios:
                    ratios[kind].append(got["this"][kind] / got["ref"][kind])
                print(f"round {k + 1}: this/ref mmi5 {ratios['mmi5'][-1]:.3f}, single {ratios['single'][-1]:.3f} "
                      f"({got['this']['mmi5']:.1f} / {got['ref']['mmi5']:.1f} ms)", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], capture_output=True)
    return {f"ref_ratio_{kind}": round(statistics.median(r), 3) for kind, r in ratios.items()} | {"reference": rev}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def timed(fn, runs: int, warmup: int = 3) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(warmup + i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def naive_reply(model, mmi_model, tokenizer, history: list[str], candidates: int, max_len: int, top_k: int, seed: int) -> str:
    """GPT2-chitchat's interact_mmi.py loop: no cache (the whole sequence is re-read at every step),
    its per-row repetition penalty and temperature (at their defaults, 1.0), top-k sampling, then each
    candidate scored alone by the MMI model's loss over the whole sequence."""
    cls_id, sep_id, unk_id = (tokenizer.convert_tokens_to_ids(t) for t in (CLS, SEP, UNK))
    gen = torch.Generator().manual_seed(seed)
    history_ids = [tokenizer.encode(u, add_special_tokens=False) for u in history]
    input_ids = [cls_id]
    for u in history_ids:
        input_ids.extend(u)
        input_ids.append(sep_id)
    with torch.no_grad():
        curr = torch.tensor([input_ids] * candidates, dtype=torch.long)
        generated = []
        for _ in range(max_len):
            logits = model(input_ids=curr).logits[:, -1, :]
            for index in range(candidates):  # its repetition penalty (1.0 by default), row by row
                for token_id in set(int(step[index]) for step in generated):
                    logits[index][token_id] /= 1.0
            logits = logits / 1.0  # temperature
            logits[:, unk_id] = -float("inf")
            logits[:, sep_id] = -float("inf")  # exactly max_len tokens, as the engine's min_len = max_len
            top = torch.topk(logits, top_k)[0][..., -1, None]
            logits[logits < top] = -float("inf")
            next_token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=gen)
            generated.append(next_token)
            curr = torch.cat((curr, next_token), dim=-1)
        replies = torch.cat(generated, dim=1).tolist()
        best, best_loss = None, float("inf")
        for reply in replies:
            mmi_ids = [cls_id, *reply, sep_id]
            for u in reversed(history_ids):
                mmi_ids.extend(u)
                mmi_ids.append(sep_id)
            t = torch.tensor(mmi_ids, dtype=torch.long)[None]
            loss = mmi_model(input_ids=t, labels=t).loss.item()
            if loss < best_loss:
                best, best_loss = reply, loss
    return tokenizer.decode(best)


def hf_generate(model, tokenizer, history: list[str], max_len: int, top_k: int, seed: int) -> None:
    cls_id, sep_id = (tokenizer.convert_tokens_to_ids(t) for t in (CLS, SEP))
    ids = [cls_id]
    for u in history:
        ids.extend(tokenizer.encode(u, add_special_tokens=False))
        ids.append(sep_id)
    torch.manual_seed(seed)
    with torch.inference_mode():
        model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       do_sample=True, top_k=top_k, top_p=1.0, min_new_tokens=max_len, max_new_tokens=max_len,
                       eos_token_id=sep_id, pad_token_id=tokenizer.pad_token_id)


def retrieval_times(engine: Engine, mmi5: ReplySettings, args) -> dict:
    """The same turn with 10 retrieved candidates besides the 5 sampled (ranked by MMI, then by the
    selector), in alternation with the plain turn: p50s and their ratios to it, and where the time
    goes (the index lookup and the selector's features measured on their own)."""
    from chitchat.engine.retrieved import RetrievalSource
    from chitchat.engine.scoring import Group
    from chitchat.engine.selector import Selector, feature_rows
    from chitchat.retrieval.index import ResponseIndex

    engine.sources = [RetrievalSource(ResponseIndex.load(args.index))]
    engine.selector = Selector.load(args.selector) if args.selector else None
    kinds = {"plain": mmi5, "retrieved_mmi": replace(mmi5, retrieved=10)}
    if engine.selector is not None:
        kinds["retrieved_selector"] = replace(mmi5, retrieved=10, ranking="selector")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.runs + 2):  # the kinds take turns; the first two rounds warm up
        for k, s in kinds.items():
            t0 = time.perf_counter()
            engine.reply(HISTORY, replace(s, seed=i))
            if i >= 2:
                times[k].append((time.perf_counter() - t0) * 1000)
    lookup = timed(lambda i: engine.sources[0].gather(engine, [HISTORY], 10, REPLY_LEN), args.runs)
    reply = engine.reply(HISTORY, replace(kinds["retrieved_mmi"], seed=0))
    group = [Group(engine.prompt(HISTORY, mmi5), reply.candidates)]
    features = timed(lambda i: feature_rows(engine, group), args.runs) if engine.selector is not None else None
    p50 = {k: percentile(t, 50) for k, t in times.items()}
    out = {f"p50_ms_{k}": round(v, 1) for k, v in p50.items()}
    out.update({f"ratio_{k}": round(v / p50["plain"], 2) for k, v in p50.items() if k != "plain"})
    out["p50_ms_index_lookup"] = round(percentile(lookup, 50), 2)
    if features is not None:
        out["p50_ms_selector_features"] = round(percentile(features, 50), 2)
    print("retrieval: " + ", ".join(f"{k} {v}" for k, v in out.items()), file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30, help="timed replies per measurement (default 30)")
    p.add_argument("--naive-runs", type=int, default=5, help="timed replies of the naive baseline (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads for the engine and the baselines (default: one per core, as the "
                        "targets are set for this machine's cores)")
    p.add_argument("--preset", default="small")
    p.add_argument("--model", help="a trained model directory instead of the preset's random weights "
                   "(e.g. models/default/dialogue)")
    p.add_argument("--mmi-model", help="its MMI model (default: --model's sibling mmi/ if there, else --model)")
    p.add_argument("--reference", metavar="REV", help="also time this git revision's engine (same-run ratio)")
    p.add_argument("--index", metavar="DIR", help="also time replies with 10 candidates retrieved from this index")
    p.add_argument("--selector", metavar="FILE", help="and ranked by this selector (with --index)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds against --reference (default 5)")
    args = p.parse_args()
    busy = busy_cores()
    if busy is not None and busy > 0.3:  # with 2 threads each op waits for both: another process skews it a lot
        print(f"warning: other processes kept {busy:.1f} cores busy just before the bench: "
              "the figures will not be reliable", file=sys.stderr)
    note, machine_keys = machine_note()
    print(note, file=sys.stderr)
    torch.set_num_threads(args.threads)  # the naive baseline and transformers' generate run with the same
    if args.model:
        from chitchat.model.gpt2 import load_model

        sibling = Path(args.model).parent / "mmi"
        model, tokenizer = load_model(args.model)
        mmi_model, _ = load_model(args.mmi_model or (sibling if sibling.is_dir() else args.model))
        model.eval(), mmi_model.eval()
        args.preset = args.model
    else:
        tokenizer = load_tokenizer(DEFAULT_VOCAB)
        model = build_model(tokenizer, args.preset, seed=0).eval()
        mmi_model = build_model(tokenizer, args.preset, seed=1).eval()
    mmi5 = ReplySettings(candidates=5, min_len=REPLY_LEN, max_len=REPLY_LEN, top_k=8)
    single = ReplySettings(candidates=1, min_len=REPLY_LEN, max_len=REPLY_LEN, top_k=8, ranking="likelihood")
    engine = Engine(model, tokenizer, mmi_model, threads=args.threads)
    context_tokens = len(engine.context_ids([engine.encode(u) for u in HISTORY]))
    check = engine.reply(HISTORY, mmi5)
    assert check.ranking == "mmi" and all(len(c.ids) == REPLY_LEN for c in check.candidates)
    print(f"preset {args.preset}, threads {torch.get_num_threads()}, history {len(HISTORY)} utterances "
          f"({context_tokens} tokens), replies {REPLY_LEN} tokens", file=sys.stderr)

    results = {}
    for suffix, eng in (("", engine), ("_int8", Engine(model, tokenizer, mmi_model, int8=True, threads=args.threads))):
        t = timed(lambda i: eng.reply(HISTORY, replace(mmi5, seed=i)), args.runs)
        results[f"mmi5{suffix}"] = t
        t = timed(lambda i: eng.reply(HISTORY, replace(single, seed=i)), args.runs)
        results[f"single{suffix}"] = t
        print(f"engine{suffix or ' fp32'}: 5 candidates + MMI p50 {percentile(results['mmi5' + suffix], 50):.1f} ms "
              f"p95 {percentile(results['mmi5' + suffix], 95):.1f} ms; 1 candidate p50 {percentile(t, 50):.1f} ms "
              f"p95 {percentile(t, 95):.1f} ms", file=sys.stderr)
    hf = timed(lambda i: hf_generate(model, tokenizer, HISTORY, REPLY_LEN, 8, i), max(3, args.naive_runs), warmup=1)
    print(f"transformers generate (KV cache), 1 candidate: p50 {percentile(hf, 50):.1f} ms", file=sys.stderr)
    naive = timed(lambda i: naive_reply(model, mmi_model, tokenizer, HISTORY, 5, REPLY_LEN, 8, i), args.naive_runs, warmup=1)
    naive_p50 = percentile(naive, 50)
    print(f"naive (GPT2-chitchat) 5 candidates + MMI: p50 {naive_p50:.1f} ms", file=sys.stderr)
    line = {
        "bench": "chat",
        "p50_ms_mmi5": round(percentile(results["mmi5"], 50), 1),
        "p95_ms_mmi5": round(percentile(results["mmi5"], 95), 1),
        "p50_ms_single": round(percentile(results["single"], 50), 1),
        "p95_ms_single": round(percentile(results["single"], 95), 1),
        "naive_p50_ms_mmi5": round(naive_p50, 1),
        "speedup_vs_naive_mmi5": round(naive_p50 / percentile(results["mmi5"], 50), 1),
        "p50_ms_mmi5_int8": round(percentile(results["mmi5_int8"], 50), 1),
        "p50_ms_single_int8": round(percentile(results["single_int8"], 50), 1),
        **machine_keys,
    }
    if args.index:
        line.update(retrieval_times(engine, mmi5, args))
    if args.reference:
        line.update(reference_ratios(args.reference, args.rounds, args.runs, args.threads))
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
