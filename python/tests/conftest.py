"""What the tests share: the real models scripts/fetch-models fetches, the
`shardload` binary cargo built (the one-machine reference), and a Ray
cluster of three nodes on the loopback, sized for a 24 GiB machine."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = {
    "smollm2": ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": ROOT / "models" / "gemma-3-270m-q4_k_m.gguf",
}
PROMPT = "The capital of France is"
N_PREDICT = 8


def shardload_binary():
    return Path(os.environ.get("SHARDLOAD_BIN", ROOT / "target" / "debug" / "shardload"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """`shardload generate` on one machine, greedy: per model, its prompt
    ids, generated ids and each generated token's logits row (f32 bytes)."""
    cache = {}

    def run(name):
        if name not in cache:
            dump = tmp_path_factory.mktemp(name) / "logits.f32"
            out = subprocess.run(
                [str(shardload_binary()), "generate", str(MODELS[name]), "-p", PROMPT, "-n", str(N_PREDICT),
                 "--temp", "0", "--json", "--dump-logits", str(dump)],
                check=True, capture_output=True, text=True,
            )
            report = json.loads(out.stdout)
            raw = dump.read_bytes()
            rows = len(report["tokens"])
            width = len(raw) // rows
            cache[name] = (report["prompt_tokens"], report["tokens"], [raw[i * width:(i + 1) * width] for i in range(rows)])
        return cache[name]

    return run


@pytest.fixture(scope="session")
def cluster():
    """Three Ray nodes on this machine (`shardload.ray.local_cluster`), the
    test process connected to them as the driver; its address."""
    import ray

    from shardload.ray import local_cluster

    with local_cluster(3) as address:
        ray.init(address=address, logging_level="warning")
        try:
            yield address
        finally:
            ray.shutdown()
