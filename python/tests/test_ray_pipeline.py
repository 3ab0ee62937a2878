"""Stages on a real Ray cluster of three nodes: the same greedy ids and
logits as `shardload generate` on one machine whatever the split, a stage
killed mid-generation changing nothing, and only the residual stream
crossing between stages."""

import re
import subprocess
import sys

import pytest

import shardload
from conftest import MODELS, N_PREDICT, PROMPT, shardload_binary

ray = pytest.importorskip("ray")
from shardload.ray import Pipeline, StageError  # noqa: E402


def pipeline(name, stages):
    return Pipeline(str(MODELS[name]), stages=stages, ctx=512)


def release(p):
    for actor in p.actors:
        ray.kill(actor, no_restart=True)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_greedy_ids_and_logits_through_n_stages_equal_shardload_generate_bit_for_bit(cluster, reference, name, stages):
    prompt, want_ids, want_rows = reference(name)
    p = pipeline(name, stages)
    try:
        # Each stage on the node that declares its resource.
        resources = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        for s in p.stats()["stages"]:
            assert f"shardload_stage_{s['index']}" in resources[s["node_id"]]
        assert ray.get(p.first.encode.remote(PROMPT)) == prompt
        ids, rows = p.generate(prompt, N_PREDICT, logits=True)
        assert ids == want_ids
        assert rows == want_rows
    finally:
        release(p)


@pytest.mark.parametrize("victim", [1, 2])
def test_a_stage_killed_mid_generation_is_restarted_and_the_generation_keeps_its_ids(cluster, reference, victim):
    prompt, want_ids, _ = reference("smollm2")
    p = pipeline("smollm2", 3)
    try:
        killed = []

        def kill_after_three(token):
            if len(killed) == 0 and token == want_ids[2]:
                killed.append(p.kill(victim))

        ids = p.generate(prompt, N_PREDICT, on_token=kill_after_three)
        assert killed, "the stage was never killed"
        new_pid = p.stats()["stages"][victim]["pid"]
        assert new_pid != killed[0][0], "Ray did not restart the stage"
        assert ids == want_ids
    finally:
        release(p)


def test_bytes_crossing_between_stages_are_embd_f32_per_token_per_hop(cluster, reference):
    prompt, _, _ = reference("smollm2")
    p = pipeline("smollm2", 3)
    try:
        p.generate(prompt, N_PREDICT)
        embd = shardload.Model(MODELS["smollm2"]).hyperparameters["embd"]
        hops = p.stats()["hops"]
        assert len(hops) == 2
        for hop in hops:
            # Every token crossed each hop once: the prompt, then each
            # generated token but the last.
            assert hop["tokens"] == len(prompt) + N_PREDICT - 1
            assert hop["payload_bytes_per_token"] == embd * 4
            # Framing (pickle's, per call) is small beside the payload.
            assert embd * 4 < hop["serialized_bytes_per_token"] < embd * 4 + 64
    finally:
        release(p)


def test_a_stage_that_cannot_map_its_shards_names_its_machine_and_file(cluster, tmp_path):
    plan = shardload.Model(MODELS["smollm2"]).plan_stages(2)
    missing = tmp_path / "SmolLM2-elsewhere.gguf"
    with pytest.raises(StageError) as refused:
        Pipeline(str(missing), stage_plan=plan)
    for stage in (0, 1):
        assert re.search(
            rf"stage {stage} on \S+ \([0-9.]+\) cannot map its shards: \S*/SmolLM2-elsewhere.gguf: no such model file",
            str(refused.value),
        ), refused.value
    with pytest.raises(StageError, match=r"stage \d on .* cannot map its shards: .*gemma-3-270m-q4_k_m.gguf"):
        Pipeline(str(MODELS["gemma3"]), stage_plan=plan)


def test_chat_through_two_stages_replies_as_shardload_chat_does_turn_after_turn(cluster):
    turns = "What is the capital of France?\nAnd of Italy?\n"
    model = str(MODELS["smollm2"])
    common = ["--temp", "0", "-n", "24"]
    want = subprocess.run(
        [str(shardload_binary()), "chat", model, "--threads", "1", *common],
        input=turns, capture_output=True, text=True, check=True,
    ).stdout
    got = subprocess.run(
        [sys.executable, "-m", "shardload.ray", "chat", model, "--stages", "2", "--address", cluster, *common],
        input=turns, capture_output=True, text=True, check=True,
    ).stdout
    assert want.count("\n") == 2
    assert got == want
