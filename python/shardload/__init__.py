"""shardload from Python: run a GGUF model, or a range of its layers, in the
WebAssembly guest that every shardload host runs.

    import shardload
    print(shardload.generate("models/SmolLM2-135M-Instruct.Q4_1.gguf",
                             "The capital of France is", n_predict=16))

The pieces under `generate` are the ones a host of your own uses:

    model = shardload.Model(path)              # opened and checked, nothing mapped
    tokenizer = model.tokenizer()
    stage = shardload.Stage(model)             # or layers=(a, b): maps only those layers' tensors
    seq = stage.create_sequence()
    logits = stage.run([(seq, 0, tokenizer.encode("Hello"))])   # f32 bytes
    token = shardload.Sampler(temperature=0).sample(logits)

A stage of layers (a, b) with a > 0 takes the residual stream of the stage
before it (`run(batch, residual=...)`), and one that does not end at the last
layer returns its residual stream instead of logits: `shardload.ray` chains
stages on several machines this way.
"""

from ._native import Error, Model, ModelError, PlanError, Sampler, Stage, Tokenizer

__all__ = [
    "Error",
    "Model",
    "ModelError",
    "PlanError",
    "Sampler",
    "Stage",
    "Tokenizer",
    "generate",
]


def generate(
    model,
    prompt,
    n_predict=128,
    *,
    temperature=0.0,
    top_k=40,
    top_p=0.95,
    min_p=0.05,
    seed=0xC0FFEE,
    ctx=4096,
    threads=1,
):
    """Continues `prompt` (text, or a list of token ids) with up to
    `n_predict` tokens and returns the new text; greedy unless a
    `temperature` is given. `model` is a path or a `Model`."""
    if not isinstance(model, Model):
        model = Model(model)
    tokenizer = model.tokenizer()
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    stage = Stage(model, ctx=ctx, threads=threads)
    sequence = stage.create_sequence()
    sampler = Sampler(temperature, top_k, top_p, min_p, seed)
    generated = []
    logits = stage.run([(sequence, 0, ids)])
    position = len(ids)
    while len(generated) < n_predict:
        token = sampler.sample(logits)
        generated.append(token)
        if tokenizer.is_eog(token) or len(generated) == n_predict or position + 1 > ctx:
            break
        logits = stage.run([(sequence, position, [token])])
        position += 1
    if generated and tokenizer.is_eog(generated[-1]):
        generated.pop()
    return tokenizer.decode(generated)
