#!/usr/bin/env python3
"""The official `openai` Python package against a running `shardload serve`,
for crates/cli/tests/serve_command.rs. Prints one JSON object of what it saw.

    serve_client.py BASE_URL basics
    serve_client.py BASE_URL concurrent N     # N greedy prompts alone, then all at once
    serve_client.py BASE_URL hang-up          # a stream abandoned after two chunks
    serve_client.py BASE_URL bad-requests     # each a clear error, and the server goes on
    serve_client.py BASE_URL flood N          # N requests at once
    serve_client.py BASE_URL auth KEY         # no key, a wrong key, the key
"""

import json
import sys
import threading

import httpx
import openai

PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Who wrote Hamlet?",
    "Give me a synonym for happy.",
    "What is the boiling point of water in Celsius?",
    "Translate 'good morning' into Spanish.",
]


def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)


def chat(c, prompt, **kw):
    return c.chat.completions.create(
        model="any", messages=[{"role": "user", "content": prompt}], temperature=0, **kw)


def basics(c):
    out = {"models": [m.id for m in c.models.list().data]}
    plain = chat(c, PROMPTS[0], max_tokens=24)
    out["plain"] = {
        "content": plain.choices[0].message.content,
        "role": plain.choices[0].message.role,
        "finish_reason": plain.choices[0].finish_reason,
        "usage": plain.usage.model_dump(),
        "object": plain.object,
    }
    chunks = list(chat(c, PROMPTS[0], max_tokens=24, stream=True,
                       stream_options={"include_usage": True}))
    out["streamed"] = {
        "content": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
        "finish_reason": [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1],
        "chunks": len(chunks),
        "usage": chunks[-1].usage.model_dump() if chunks[-1].usage else None,
    }
    text = c.completions.create(model="any", prompt="The capital of France is",
                                max_tokens=8, temperature=0)
    out["completion"] = {"text": text.choices[0].text, "finish_reason": text.choices[0].finish_reason,
                         "usage": text.usage.model_dump()}
    stopped = chat(c, "Count from 1 to 10, separated by commas.", max_tokens=48, stop=["5"])
    out["stopped"] = {"content": stopped.choices[0].message.content,
                      "finish_reason": stopped.choices[0].finish_reason}
    lp = chat(c, PROMPTS[0], max_tokens=8, logprobs=True, top_logprobs=3)
    content = lp.choices[0].logprobs.content
    out["logprobs"] = {
        "text": lp.choices[0].message.content,
        "tokens": "".join(t.token for t in content),
        "count": len(content),
        "greedy_is_top": all(t.top_logprobs[0].token == t.token and
                             abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6 for t in content),
        "tops": [len(t.top_logprobs) for t in content],
        "all_negative": all(t.logprob <= 0 for t in content),
    }
    legacy = c.completions.create(model="any", prompt="The capital of France is", max_tokens=4,
                                  temperature=0, logprobs=2)
    out["completion_logprobs"] = {
        "tokens": legacy.choices[0].logprobs.tokens,
        "text": legacy.choices[0].text,
        "top": [len(t) for t in legacy.choices[0].logprobs.top_logprobs],
    }
    try:
        chat(c, PROMPTS[0], n=2)
        out["error"] = None
    except openai.BadRequestError as e:
        out["error"] = {"status": e.status_code, "message": e.body.get("message") if isinstance(e.body, dict) else str(e.body)}
    return out


def concurrent(c, n):
    """Each of n prompts alone, then all at once: greedy, and sampled with a seed."""
    prompts = PROMPTS[:n]
    # Seeded: the whole distribution, llama.cpp's extra fields through extra_body.
    ways = {"greedy": {"temperature": 0},
            "seeded": {"temperature": 0.9, "top_p": 1.0, "extra_body": {"top_k": 0, "min_p": 0.0}}}

    def ask(i, way):
        kw = dict(ways[way], seed=1000 + i) if way == "seeded" else ways[way]
        r = c.chat.completions.create(model="any", messages=[{"role": "user", "content": prompts[i]}],
                                      max_tokens=32, **kw)
        return r.choices[0].message.content

    out = {}
    for way in ways:
        alone = [ask(i, way) for i in range(n)]
        together = [None] * n
        start = threading.Barrier(n)

        def run(i):
            start.wait()
            together[i] = ask(i, way)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[way] = {"alone": alone, "together": together}
    return out


def hang_up(c):
    stream = chat(c, "Tell me a long story about a dragon.", max_tokens=400, stream=True)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 2:
            break
    stream.close()
    # The slot is free at once: a next request is answered.
    after = chat(c, PROMPTS[4], max_tokens=8)
    metrics = httpx.get(str(c.base_url).rstrip("/").removesuffix("/v1") + "/metrics").text
    generated = next(int(line.split()[1]) for line in metrics.splitlines()
                     if line.startswith("shardload_tokens_generated_total "))
    return {"chunks_seen": seen, "after": after.choices[0].message.content,
            "tokens_generated": generated}


def post(base_url, path, body, **kw):
    """(status, JSON or text, headers) of a raw POST: httpx, which openai is built on."""
    r = httpx.post(base_url.rstrip("/") + path, content=body, timeout=300,
                   headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw)
    try:
        payload = r.json()
    except ValueError:
        payload = r.text
    return r.status_code, payload, dict(r.headers)


def chat_body(**fields):
    return json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **fields})


def bad_requests(base_url):
    cases = {
        "malformed json": ("/chat/completions", b'{"messages": [', 400),
        "wrong type": ("/chat/completions", chat_body(temperature="hot"), 400),
        "unknown fields ignored": ("/chat/completions", chat_body(frobnicate=3), 200),
        "empty messages": ("/chat/completions", json.dumps({"messages": []}), 400),
        "prompt past the context": ("/completions", json.dumps({"prompt": "word " * 3000}), 400),
        "max_tokens 10^9": ("/chat/completions", chat_body(max_tokens=10**9, temperature=0), 200),
        "token id out of range": ("/completions", json.dumps({"prompt": [1, 2, 10**9]}), 400),
        "a 100 MB body": ("/chat/completions", b"[" + b" " * (100 << 20) + b"]", 413),
        "no such route": ("/v1/frobnicate", b"{}", 404),
    }
    out = {}
    for name, (path, body, want) in cases.items():
        status, payload, _ = post(base_url, path, body)
        error = payload.get("error") if isinstance(payload, dict) else None
        out[name] = {"want": want, "status": status,
                     "message": error.get("message") if error else None,
                     "code": error.get("code") if error else None}
    # The server goes on serving.
    status, payload, _ = post(base_url, "/chat/completions", chat_body(temperature=0))
    out["after"] = {"status": status}
    return out


def flood(base_url, n):
    results = [None] * n
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        status, _, headers = post(base_url, "/chat/completions", chat_body(temperature=0))
        results[i] = (status, headers.get("retry-after"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sum(1 for s, _ in results if s == 200)
    busy = [r for s, r in results if s == 503]
    status, _, _ = post(base_url, "/chat/completions", chat_body(temperature=0))
    return {"ok": ok, "busy": len(busy), "busy_with_retry_after": sum(1 for r in busy if r),
            "other": n - ok - len(busy), "after": status}


def auth(base_url, key):
    base = base_url.rstrip("/").removesuffix("/v1")
    out = {}
    for name, headers in {"none": {}, "wrong": {"Authorization": "Bearer nope"},
                          "right": {"Authorization": f"Bearer {key}"}}.items():
        status, _, _ = post(base_url, "/chat/completions", chat_body(temperature=0), headers=headers)
        out[name] = status
    out["health without a key"] = httpx.get(base + "/health").status_code
    return out


def main():
    base_url, command = sys.argv[1], sys.argv[2]
    c = client(base_url)
    if command == "basics":
        result = basics(c)
    elif command == "concurrent":
        result = concurrent(c, int(sys.argv[3]))
    elif command == "hang-up":
        result = hang_up(c)
    elif command == "bad-requests":
        result = bad_requests(base_url)
    elif command == "flood":
        result = flood(base_url, int(sys.argv[3]))
    elif command == "auth":
        result = auth(base_url, sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
