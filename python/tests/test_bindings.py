"""The Python package on its own: a model opened, tokenized, run whole or as
two layer ranges, sampled; strangers' input refused with typed exceptions."""

import array

import pytest

import shardload
from conftest import MODELS, N_PREDICT, PROMPT


def test_generate_is_the_text_of_shardload_generates_greedy_ids(reference):
    model = shardload.Model(MODELS["smollm2"])
    prompt, ids, _ = reference("smollm2")
    assert model.tokenizer().encode(PROMPT) == prompt
    text = shardload.generate(model, PROMPT, n_predict=N_PREDICT)
    assert text == model.tokenizer().decode(ids)


def test_two_layer_ranges_chained_give_the_whole_models_logits_bit_for_bit(reference):
    model = shardload.Model(MODELS["gemma3"])
    prompt, ids, rows = reference("gemma3")
    layers = model.hyperparameters["layers"]
    front, back = shardload.Stage(model, layers=(0, 7)), shardload.Stage(model, layers=(7, layers))
    assert (front.is_first, front.is_last, back.is_first, back.is_last) == (True, False, False, True)
    a, b = front.create_sequence(), back.create_sequence()
    residual = front.run([(a, 0, prompt)])
    assert len(residual) == len(prompt) * model.hyperparameters["embd"] * 4
    logits = back.run([(b, 0, prompt)], residual)
    assert logits == rows[0]
    assert shardload.Sampler(temperature=0).sample(logits) == ids[0]


def test_a_stage_maps_only_its_layers_tensors():
    model = shardload.Model(MODELS["smollm2"])
    whole = shardload.Stage(model).mapped_bytes
    middle = shardload.Stage(model, layers=(10, 20)).mapped_bytes
    # SmolLM2 stores its blocks in lexicographic order, so layers 10..20 are
    # not one run of the file: a stage that mapped everything between its
    # first and last tensor would map most of the model.
    assert middle < whole / 2


def test_a_sampler_resumed_from_its_state_draws_what_the_long_lived_one_draws():
    logits = array.array("f", [0.1 * (i % 17) for i in range(500)]).tobytes()
    one = shardload.Sampler(temperature=1.0, seed=7)
    long_lived = [one.sample(logits) for _ in range(20)]
    state, resumed = shardload.Sampler(temperature=1.0, seed=7).state, []
    for _ in range(20):
        s = shardload.Sampler(temperature=1.0, seed=7, state=state)
        resumed.append(s.sample(logits))
        state = s.state
    assert resumed == long_lived
    assert len(set(long_lived)) > 1


def test_a_missing_model_is_file_not_found_and_a_corrupt_one_a_model_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        shardload.Model(tmp_path / "absent.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(shardload.ModelError, match="tensor_count at byte 8"):
        shardload.Model(bad)


def test_bad_batches_are_refused_before_anything_runs():
    model = shardload.Model(MODELS["smollm2"])
    stage = shardload.Stage(model, layers=(0, 4))
    seq = stage.create_sequence()
    with pytest.raises(ValueError, match="sequence 5 does not exist"):
        stage.run([(5, 0, [1])])
    with pytest.raises(ValueError, match="holds 0 tokens"):
        stage.run([(seq, 3, [1])])
    with pytest.raises(shardload.Error, match="token id 999999 is out of range"):
        stage.run([(seq, 0, [999999])])
    with pytest.raises(shardload.Error, match="starts from token ids, not a residual"):
        stage.run([(seq, 0, [1])], b"\0" * 4)
    with pytest.raises(ValueError, match="not a range of the model's 30 layers"):
        shardload.Stage(model, layers=(4, 31))
    assert stage.tokens(seq) == []


def test_a_stage_plan_from_another_model_is_a_plan_error():
    smol, gemma = shardload.Model(MODELS["smollm2"]), shardload.Model(MODELS["gemma3"])
    plan = smol.plan_stages(2)
    with pytest.raises(shardload.PlanError, match="stage plan is for a model of 30 layers|does not match"):
        shardload.Stage(gemma, stage_plan=plan, stage=1)
    with pytest.raises(shardload.Error, match="there is no stage 2"):
        shardload.Stage(smol, stage_plan=plan, stage=2)


def test_a_plan_of_a_layer_range_holds_exactly_the_tensors_those_layers_read():
    import json

    model = shardload.Model(MODELS["gemma3"])
    last = model.hyperparameters["layers"] - 1
    names = lambda plan: {t["name"] for t in json.loads(plan)["tensors"]}  # noqa: E731
    middle = names(model.plan(layers=(3, 5)))
    assert middle and all(n.startswith(("blk.3.", "blk.4.")) for n in middle)
    # Gemma ties its output head to the embedding: the last stage reads it too.
    assert {"token_embd.weight", "output_norm.weight"} <= names(model.plan(layers=(last, last + 1)))
    assert "token_embd.weight" in names(model.plan(layers=(0, 1)))
    assert len(json.loads(model.plan(shards=3))["shards"]) == 3
    with pytest.raises(ValueError, match='boundary is "tensor" or "layer"'):
        model.plan(boundary="row")
