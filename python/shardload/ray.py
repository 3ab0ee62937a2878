"""A model split by layers over several machines: one Ray actor per
pipeline stage, each on the machine that holds its layers, mapping only its
own shards and keeping its own KV cache. Only the residual stream crosses
between stages (`embd` f32 values per token); the last stage samples and
returns only the token id.

    python -m shardload.ray generate MODEL --stages 3 -p "Once upon a time" -n 64
    python -m shardload.ray chat MODEL --stages 3 --address HEAD:6379

Stage i goes to a node that declares the custom resource `shardload_stage_i`
(`ray start ... --resources '{"shardload_stage_0": 1}'`), or anywhere when no
node does. A stage whose process dies is restarted by Ray; the driver then
replays the sequence's tokens into the pipeline, so the generation goes on
with the same tokens.
"""

import os

# No traffic leaves the machine, and no idle workers are started before use.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import ray  # noqa: E402
import ray.exceptions  # noqa: E402

import shardload  # noqa: E402

STAGE_RESOURCE = "shardload_stage_{}"
"""The custom resource a node declares to take stage i."""

MAX_MICRO_BATCH = 32
"""Tokens per prompt micro-batch at most: the guest's batch."""

RESTARTS = 4
"""Times Ray restarts a stage whose process died."""

ACTOR_FAILURES = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


class StageError(shardload.Error):
    """A stage that could not start (its model file missing or different on
    its machine); the message names the machine and the file."""


def _memory():
    """This process's resident and private (anonymous) memory, in bytes."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields.get("VmRSS", 0), "peak_rss": fields.get("VmHWM", 0), "private": fields.get("RssAnon", 0)}


@ray.remote(max_restarts=RESTARTS, max_task_retries=0, num_cpus=0)
class StageActor:
    """One pipeline stage: a `shardload.Stage` of its layers on this node."""

    def __init__(self, model_path, stage_plan, index, ctx, threads, sequences):
        self.index = index
        self.host = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        try:
            self.model = shardload.Model(model_path)
            self.stage = shardload.Stage(
                self.model, stage_plan=stage_plan, stage=index, ctx=ctx, threads=threads, sequences=sequences
            )
        except (OSError, shardload.Error) as e:
            raise StageError(f"stage {index} on {self.host} cannot map its shards: {e}") from None
        self.sequences = [self.stage.create_sequence() for _ in range(sequences)]
        # Tokenizing is the first stage's (a model without a tokenizer, such
        # as `shardload synth`'s, runs from token ids alone).
        self.tokenizer = None
        self.no_tokenizer = f"stage {index} is not the first: only the first stage tokenizes"
        if self.stage.is_first:
            try:
                self.tokenizer = self.model.tokenizer()
            except shardload.ModelError as e:
                self.no_tokenizer = str(e)
        self.counts = {"calls": 0, "tokens": 0, "payload_in": 0, "serialized_in": 0, "payload_out": 0, "compute_s": 0.0,
                       "decode_calls": 0, "decode_compute_s": 0.0}

    def info(self):
        """Where this stage runs and what it holds."""
        return {
            "index": self.index,
            "host": self.host,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "layers": self.stage.layers,
            "mapped_bytes": self.stage.mapped_bytes,
            "memory": _memory(),
            "counts": dict(self.counts),
        }

    def forward(self, batch, residual, want):
        """Runs `batch` ((sequence, position, ids) entries) from `residual`
        (None for the first stage). `want`: "residual" (hand on), "nothing"
        (a prompt micro-batch whose logits nobody needs), or
        ("token", sampler settings, sampler state, with logits?) on the last
        stage: the token id and the sampler's next state, and the logits if asked."""
        clock = time.perf_counter()
        out = self.stage.run(batch, residual)
        counts = self.counts
        spent = time.perf_counter() - clock
        tokens = sum(len(ids) for _, _, ids in batch)
        counts["compute_s"] += spent
        counts["calls"] += 1
        counts["tokens"] += tokens
        if tokens == 1:
            counts["decode_calls"] += 1
            counts["decode_compute_s"] += spent
        if residual is not None:
            counts["payload_in"] += len(residual)
            counts["serialized_in"] += len(pickle.dumps(residual, protocol=5))
        if want == "residual":
            counts["payload_out"] += len(out)
            return out
        if want == "nothing":
            return None
        _, settings, state, with_logits = want
        row = out[-self.stage.vocab * 4 :]
        sampler = shardload.Sampler(**settings, state=state)
        token = sampler.sample(row)
        return token, sampler.state, (row if with_logits else None)

    def _tokenizer(self):
        if self.tokenizer is None:
            raise shardload.ModelError(self.no_tokenizer)
        return self.tokenizer

    def encode(self, text):
        return self._tokenizer().encode(text)

    def chat_tokens(self, messages):
        return self._tokenizer().chat_tokens(messages)

    def decode(self, ids):
        return self._tokenizer().decode(ids)

    def end_of_generation_ids(self):
        if self.tokenizer is None:
            return []
        return [i for i in range(self.tokenizer.n_tokens) if self.tokenizer.is_eog(i)]


class Pipeline:
    """A model's stages as Ray actors, and generation through them.

    `stage_plan` is a stage plan's JSON (`shardload plan --stages N -o FILE`);
    without it the driver plans `stages` stages of `model_path` itself.
    `model_path` is where every stage's machine has the model file."""

    def __init__(self, model_path, stages=None, stage_plan=None, ctx=4096, threads=1, sequences=1):
        if stage_plan is None:
            if stages is None:
                raise ValueError("give stages= or stage_plan=")
            stage_plan = shardload.Model(model_path).plan_stages(stages)
        count = len(json.loads(stage_plan)["stages"])
        if stages is not None and stages != count:
            raise ValueError(f"the stage plan has {count} stages, not {stages}")
        resources = ray.cluster_resources()
        # Held for the pipeline's life: a restarted stage is constructed
        # from it again (an argument Ray stored for the constructor alone
        # could be gone by then).
        self._plan_ref = ray.put(stage_plan)
        self.actors = []
        for index in range(count):
            resource = STAGE_RESOURCE.format(index)
            placement = {"resources": {resource: 0.001}} if resource in resources else {}
            self.actors.append(
                StageActor.options(**placement).remote(model_path, self._plan_ref, index, ctx, threads, sequences)
            )
        self.infos = self._ready()
        self._eog = None
        # One-token steps and their wall time, for the per-call overhead.
        self.decode_steps = 0
        self.decode_wall_s = 0.0

    def _ready(self, attempts=1):
        """Every stage's info, once each has started; a stage that cannot
        start raises its own message."""
        for attempt in range(attempts):
            refs = [a.info.remote() for a in self.actors]
            infos, failures, unavailable = [], [], None
            for ref in refs:
                try:
                    infos.append(ray.get(ref))
                except ACTOR_FAILURES as e:
                    cause = _creation_error(e)
                    if cause is None:
                        unavailable = e
                    else:
                        failures.append(cause)
            if failures:
                raise StageError("; ".join(failures))
            if unavailable is None:
                return infos
            if attempt + 1 == attempts:
                raise unavailable
            time.sleep(0.5)

    @property
    def first(self):
        return self.actors[0]

    def end_of_generation_ids(self):
        if self._eog is None:
            self._eog = set(ray.get(self.first.end_of_generation_ids.remote()))
        return self._eog

    def _evaluate(self, sequence, position, ids, want):
        """`ids` from `position` on through every stage in micro-batches (so
        stage k works on one while stage k + 1 works on the one before);
        the last micro-batch's last stage gives `want`."""
        stages = len(self.actors)
        size = max(1, min(MAX_MICRO_BATCH, math.ceil(len(ids) / stages)))
        starts = range(0, len(ids), size)
        refs = []
        for start in starts:
            batch = [(sequence, position + start, ids[start : start + size])]
            final = start == starts[-1]
            ref = None
            for k, actor in enumerate(self.actors):
                last = k == stages - 1
                wants = (want if final else "nothing") if last else "residual"
                ref = actor.forward.remote(batch, ref, wants)
            refs.append(ref)
        return ray.get(refs)[-1]

    def step(self, sequence, history, pending, want):
        """Evaluates `pending` after `history` (ids the caches already hold)
        and returns the last stage's answer. A stage that died meanwhile is
        waited for (Ray restarts it) and the whole sequence is replayed from
        position 0, which gives the same answer: every stage's output for a
        token depends only on the tokens before it."""
        try:
            return self._evaluate(sequence, len(history), pending, want)
        except ACTOR_FAILURES:
            pass
        for _ in range(RESTARTS):
            try:
                self._ready(attempts=120)
                return self._evaluate(sequence, 0, list(history) + list(pending), want)
            except ACTOR_FAILURES:
                continue
        raise shardload.Error(f"the pipeline failed {RESTARTS} times replaying the sequence")

    def generate(self, prompt_ids, n_predict, sampler=None, sequence=0, history=(), on_token=None, logits=False):
        """Up to `n_predict` tokens after `prompt_ids` (which follow `history`,
        ids this sequence's caches already hold), greedy unless `sampler`
        gives settings (temperature, top_k, top_p, min_p, seed). Returns the
        ids (an end-of-generation id included, where one stopped it) and,
        with `logits`, each token's logits row (f32 bytes)."""
        settings = dict(sampler or {"temperature": 0.0})
        state = shardload.Sampler(**settings).state
        eog = self.end_of_generation_ids()
        history = list(history)
        pending = list(prompt_ids)
        ids, rows = [], []
        while len(ids) < n_predict:
            clock = time.perf_counter()
            token, state, row = self.step(sequence, history, pending, ("token", settings, state, logits))
            if len(pending) == 1:
                self.decode_steps += 1
                self.decode_wall_s += time.perf_counter() - clock
            history += pending
            ids.append(token)
            rows.append(row)
            if on_token is not None:
                on_token(token)
            if token in eog:
                break
            pending = [token]
        return (ids, rows) if logits else ids

    def stats(self):
        """Each stage's host, layers, memory and traffic, and each hop's bytes per token."""
        infos = ray.get([a.info.remote() for a in self.actors])
        hops = []
        for k in range(1, len(infos)):
            counts = infos[k]["counts"]
            tokens = max(counts["tokens"], 1)
            hops.append(
                {
                    "from": k - 1,
                    "to": k,
                    "tokens": counts["tokens"],
                    "payload_bytes_per_token": counts["payload_in"] / tokens,
                    "serialized_bytes_per_token": counts["serialized_in"] / tokens,
                }
            )
        # A one-token step's time beyond the stages' own compute, per call
        # (driver to stage, stage to stage through the driver, and back).
        compute = sum(i["counts"]["decode_compute_s"] for i in infos)
        steps = max(self.decode_steps, 1)
        overhead = (self.decode_wall_s - compute) / (steps * len(infos))
        return {"stages": infos, "hops": hops, "decode_steps": self.decode_steps,
                "decode_ms_per_token": 1e3 * self.decode_wall_s / steps, "overhead_ms_per_call": 1e3 * overhead}

    def kill(self, stage):
        """Kills stage `stage`'s process (as a crash would); Ray restarts it."""
        pid = ray.get(self.actors[stage].info.remote())["pid"]
        node = self.infos[stage]["host"]
        os.kill(pid, 9)
        return pid, node


@contextlib.contextmanager
def local_cluster(nodes=3):
    """Yields the address of a Ray cluster of `nodes` nodes on this
    machine, node i declaring `shardload_stage_i`, each with one CPU and a
    100 MB object store (the default reserves 30% of memory per node), no
    dashboard: stages on separate nodes without separate machines, as the
    tests and `python/bench/stages.py` run them. Every node is ended by its
    own processes when the block ends, however it ends."""
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 100_000_000}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**small, "include_dashboard": False, "resources": {STAGE_RESOURCE.format(0): 1}},
    )
    try:
        for i in range(1, nodes):
            cluster.add_node(**small, resources={STAGE_RESOURCE.format(i): 1})
        yield cluster.address
    finally:
        cluster.shutdown()


def _creation_error(error):
    """The message of a stage's own start-up failure, if that is what `error` is."""
    text = str(error)
    marker = "StageError: "
    if marker in text:
        return text[text.index(marker) + len(marker) :].strip().splitlines()[0]
    return None


def _connect(address):
    """Joins the cluster at `address`, or starts a small one on this machine."""
    if address:
        ray.init(address=address, logging_level="warning")
    else:
        ray.init(
            num_cpus=1,
            include_dashboard=False,
            object_store_memory=100_000_000,
            logging_level="warning",
        )


def _report(pipeline, ids, prompt_tokens, prompt_s, generate_s, as_json, text):
    stats = pipeline.stats()
    decoded = max(len(ids) - 1, 0)
    summary = {
        "tokens": ids,
        "text": text,
        "prompt_tokens": prompt_tokens,
        "tokens_per_s": {"prompt": prompt_tokens / max(prompt_s, 1e-9), "generate": decoded / max(generate_s, 1e-9)},
        "stages": [
            {k: s[k] for k in ("index", "host", "layers", "mapped_bytes", "memory")} for s in stats["stages"]
        ],
        "hops": stats["hops"],
        "decode_ms_per_token": stats["decode_ms_per_token"],
        "overhead_ms_per_call": stats["overhead_ms_per_call"],
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"prompt    {prompt_tokens} tokens in {prompt_s * 1e3:.1f} ms\n"
        f"generated {len(ids)} tokens in {generate_s * 1e3:.1f} ms "
        f"({summary['tokens_per_s']['generate']:.1f} tok/s)",
        file=sys.stderr,
    )
    for s in summary["stages"]:
        a, b = s["layers"]
        mem = s["memory"]
        print(
            f"stage {s['index']}  layers {a}..{b}  on {s['host']}  mapped {s['mapped_bytes'] / 2**20:.0f} MiB  "
            f"RSS {mem['rss'] / 2**20:.0f} MiB (peak {mem['peak_rss'] / 2**20:.0f}), private {mem['private'] / 2**20:.0f} MiB",
            file=sys.stderr,
        )
    print(
        f"decode    {summary['decode_ms_per_token']:.1f} ms per token, "
        f"{summary['overhead_ms_per_call']:.2f} ms of it per stage call beyond the stages' compute",
        file=sys.stderr,
    )
    for h in summary["hops"]:
        print(
            f"hop {h['from']}->{h['to']}  {h['payload_bytes_per_token']:.0f} bytes per token "
            f"({h['serialized_bytes_per_token']:.0f} serialized)",
            file=sys.stderr,
        )


def _settings(args):
    return {"temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p, "seed": args.seed}


def _generate(args, pipeline):
    first = pipeline.first
    prompt = ray.get(first.encode.remote(args.prompt))
    start = time.perf_counter()
    first_token = []

    def timed(token):
        first_token[:1] = first_token[:1] or [time.perf_counter()]

    if args.json:
        ids = pipeline.generate(prompt, args.n_predict, _settings(args), on_token=timed)
    else:
        ids = _stream(pipeline, prompt, args.n_predict, _settings(args), also=timed)
        print()
    done = time.perf_counter()
    first_at = first_token[0] if first_token else done
    text = ray.get(first.decode.remote([t for t in ids if t not in pipeline.end_of_generation_ids()]))
    _report(pipeline, ids, len(prompt), first_at - start, done - first_at, args.json, text)


def _stream(pipeline, prompt, n_predict, settings, history=(), also=None):
    """Generates and prints the text as it comes; returns the ids."""
    first = pipeline.first
    seen = []
    shown = [0]

    def show(token):
        if also is not None:
            also(token)
        if token in pipeline.end_of_generation_ids():
            return
        seen.append(token)
        text = ray.get(first.decode.remote(seen))
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[shown[0] :])
            sys.stdout.flush()
            shown[0] = len(text)

    return pipeline.generate(prompt, n_predict, settings, history=history, on_token=show)


def _chat(args, pipeline):
    settings = _settings(args)
    messages = []
    held = []
    print("chat: type a message, an empty line or end of input to stop", file=sys.stderr)
    while True:
        # The prompt marker on stderr, as `shardload chat` does: stdout is the replies.
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line.strip():
            break
        line = line.rstrip("\n")
        messages.append({"role": "user", "content": line})
        tokens = ray.get(pipeline.first.chat_tokens.remote(messages))
        common = 0
        while common < min(len(held), len(tokens)) and held[common] == tokens[common]:
            common += 1
        common = min(common, len(tokens) - 1)
        ids = _stream(pipeline, tokens[common:], args.n_predict, settings, history=tokens[:common])
        print()
        reply = [t for t in ids if t not in pipeline.end_of_generation_ids()]
        messages.append({"role": "assistant", "content": ray.get(pipeline.first.decode.remote(reply))})
        # The caches hold the prompt and every reply token but the last
        # (sampled, never fed back).
        held = tokens + ids[:-1]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shardload.ray",
        description="Run a model split by layers over the machines of a Ray cluster: one stage per machine, "
        "only the residual stream (embd floats per token) crossing between them.",
        epilog="Stage i runs on a node started with --resources '{\"shardload_stage_i\": 1}',\n"
        "or anywhere when no node declares it. Without --address, a one-node cluster starts here.\n\n"
        "examples:\n"
        "  python -m shardload.ray generate model.gguf --stages 3 -p 'Once upon a time' -n 64\n"
        "  shardload plan model.gguf --stages 3 -o stages.json\n"
        "  python -m shardload.ray chat model.gguf --plan stages.json --address HEAD:6379\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("generate", "continue a prompt"), ("chat", "talk with the model (its chat template)")):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("model", help="the GGUF model, at this path on every stage's machine")
        p.add_argument("--stages", type=int, help="pipeline stages, one per machine (planned here if no --plan)")
        p.add_argument("--plan", help="a stage plan from `shardload plan --stages N -o FILE`")
        p.add_argument("--address", help="the Ray cluster's head, HOST:PORT (default: start one here)")
        p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate at most (default 128)")
        p.add_argument("--ctx", type=int, default=4096, help="context size in tokens (default 4096)")
        p.add_argument("--threads", type=int, default=1, help="guest threads per stage (default 1)")
        p.add_argument("--temp", type=float, default=0.8, help="temperature, 0 is greedy (default 0.8)")
        p.add_argument("--top-k", type=int, default=40, help="sample among the K most likely (0: all; default 40)")
        p.add_argument("--top-p", type=float, default=0.95, help="among those reaching probability P (default 0.95)")
        p.add_argument("--min-p", type=float, default=0.05, help="drop tokens below P x the best (default 0.05)")
        p.add_argument("--seed", type=int, default=0xC0FFEE, help="the draw's seed: the same seed, the same text")
        if name == "generate":
            p.add_argument("-p", "--prompt", required=True, help="the prompt text")
            p.add_argument("--json", action="store_true", help="print one JSON object (ids, text, per-stage figures)")
    args = parser.parse_args(argv)
    if args.stages is None and args.plan is None:
        parser.error("give --stages N or --plan FILE")
    plan = None
    if args.plan:
        with open(args.plan) as f:
            plan = f.read()
    _connect(args.address)
    try:
        pipeline = Pipeline(args.model, args.stages, plan, ctx=args.ctx, threads=args.threads)
        if args.command == "generate":
            _generate(args, pipeline)
        else:
            _chat(args, pipeline)
    except (shardload.Error, OSError, ValueError) as e:
        print(f"shardload.ray: {e}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
