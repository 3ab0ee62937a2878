"""Pipeline stages on a local three-node Ray cluster against the same model
in one stage and in `shardload generate`: decode tok/s, each stage's peak
resident and private memory, bytes per hop and the time each stage call
costs beyond its compute. Rounds are interleaved; best of each is reported.

    python3 python/bench/stages.py MODEL [--stages 1,3] [--rounds 3] [-n 16]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")

import ray  # noqa: E402

from shardload.ray import Pipeline, local_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def one_node(model, prompt_ids, n):
    out = subprocess.run(
        [str(ROOT / "target" / "debug" / "shardload"), "generate", model, "--prompt-tokens",
         ",".join(map(str, prompt_ids)), "-n", str(n),
         "--temp", "0", "--threads", "1", "--json"],
        check=True, capture_output=True, text=True,
    )
    report = json.loads(out.stdout)
    return {"tok_s": report["tokens_per_s"]["generate"], "rss": report["memory"]["rss"],
            "private": report["memory"]["private"], "tokens": report["tokens"]}


def staged(model, stages, prompt_ids, n):
    p = Pipeline(model, stages=stages, ctx=512)
    try:
        ids = p.generate(prompt_ids, n)
        stats = p.stats()
        return {
            "tok_s": 1e3 / stats["decode_ms_per_token"],
            "overhead_ms_per_call": stats["overhead_ms_per_call"],
            "stages": [{"layers": s["layers"], "peak_rss": s["memory"]["peak_rss"], "private": s["memory"]["private"],
                        "mapped": s["mapped_bytes"]} for s in stats["stages"]],
            "hops": [h["payload_bytes_per_token"] for h in stats["hops"]],
            "tokens": ids,
        }
    finally:
        for actor in p.actors:
            ray.kill(actor, no_restart=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--stages", default="1,3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--prompt-tokens", default="1,2,3,4,5,6,7,8", help="prompt token ids (a synthetic model has no tokenizer)")
    args = parser.parse_args()
    with local_cluster(3) as address:
        ray.init(address=address, logging_level="warning")
        try:
            run(args)
        finally:
            ray.shutdown()


def run(args):
    """The interleaved rounds and the report."""
    prompt_ids = [int(t) for t in args.prompt_tokens.split(",")]
    counts = [int(s) for s in args.stages.split(",")]
    best = {}
    for _ in range(args.rounds):
        runs = [("generate", None)] + [(f"{c} stages", c) for c in counts]
        for name, c in runs:
            r = one_node(args.model, prompt_ids, args.n) if c is None else staged(args.model, c, prompt_ids, args.n)
            if name not in best or r["tok_s"] > best[name]["tok_s"]:
                best[name] = r
    print(f"CPU: {cpu_name()}; {args.model}; best of {args.rounds} interleaved rounds, {args.n} tokens, 1 thread per stage")
    base = best["generate"]["tok_s"]
    for name, r in best.items():
        line = f"{name:>10}: {r['tok_s']:6.2f} tok/s ({r['tok_s'] / base:.2f}x generate)"
        if "stages" in r:
            line += f", {r['overhead_ms_per_call']:.2f} ms per stage call beyond compute, hops {r['hops']} bytes/token"
            for i, s in enumerate(r["stages"]):
                line += (f"\n            stage {i} layers {s['layers'][0]}..{s['layers'][1]}: mapped {s['mapped'] / 2**30:.2f} GiB, "
                         f"peak RSS {s['peak_rss'] / 2**30:.2f} GiB, private {s['private'] / 2**20:.0f} MiB")
        else:
            line += f", RSS {r['rss'] / 2**30:.2f} GiB, private {r['private'] / 2**20:.0f} MiB"
        print(line)
    same = all(r["tokens"] == best["generate"]["tokens"] for r in best.values())
    print(f"greedy ids equal across all: {same}")


if __name__ == "__main__":
    sys.exit(main())
