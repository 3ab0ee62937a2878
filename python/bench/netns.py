"""Three Ray nodes as separate hosts: each in its own network namespace,
joined by veth pairs to a bridge in a fourth, on a private subnet that exists
only inside this run. Runs a generation through 3 stages from the head's
namespace and counts the bytes each host's interface carried, against the
same interval with the cluster idle. Needs root; makes and removes every
namespace itself, and stops each Ray node by its own process id.

    sudo python3 python/bench/netns.py MODEL [-n 32] [--prompt-tokens 1,2,3]
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

SUBNET = "10.231.77"
HOSTS = [f"sl-host{i}" for i in range(3)]
HUB = "sl-hub"


def sh(*args, check=True, ns=None, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def make_hosts():
    sh("ip", "netns", "add", HUB)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=HUB)
    sh("ip", "link", "set", "br0", "up", ns=HUB)
    for i, host in enumerate(HOSTS):
        sh("ip", "netns", "add", host)
        sh("ip", "link", "add", f"sl-v{i}", "type", "veth", "peer", "name", f"sl-p{i}")
        sh("ip", "link", "set", f"sl-v{i}", "netns", host)
        sh("ip", "link", "set", f"sl-p{i}", "netns", HUB)
        sh("ip", "link", "set", f"sl-p{i}", "master", "br0", ns=HUB)
        sh("ip", "link", "set", f"sl-p{i}", "up", ns=HUB)
        sh("ip", "link", "set", "lo", "up", ns=host)
        sh("ip", "link", "set", f"sl-v{i}", "name", "eth0", ns=host)
        sh("ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0", ns=host)
        sh("ip", "link", "set", "eth0", "up", ns=host)


def remove_hosts():
    for ns in HOSTS + [HUB]:
        sh("ip", "netns", "del", ns, check=False)


def counters():
    """Bytes each host's eth0 received and sent so far."""
    out = []
    for host in HOSTS:
        rx = int(sh("cat", "/sys/class/net/eth0/statistics/rx_bytes", ns=host).stdout)
        tx = int(sh("cat", "/sys/class/net/eth0/statistics/tx_bytes", ns=host).stdout)
        out.append((rx, tx))
    return out


def start_node(i, env):
    ip = f"{SUBNET}.{i + 1}"
    args = ["ip", "netns", "exec", HOSTS[i], "ray", "start", "--block", "--node-ip-address", ip,
            "--num-cpus", "1", "--object-store-memory", "100000000", "--disable-usage-stats",
            "--resources", json.dumps({f"shardload_stage_{i}": 1})]
    if i == 0:
        args += ["--head", "--port", "6379", "--include-dashboard=false", "--temp-dir", "/tmp/sl-netns-ray"]
    else:
        args += ["--address", f"{SUBNET}.1:6379"]
    log = open(f"/tmp/sl-netns-node{i}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--prompt-tokens", default=None, help="ids for a model without a tokenizer")
    parser.add_argument("-p", "--prompt", default="The capital of France is")
    args = parser.parse_args()
    # Every node and the driver share one token, as separate machines would.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_prestart_worker_first_driver": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    remove_hosts()
    make_hosts()
    nodes = []
    try:
        for i in range(3):
            nodes.append(start_node(i, env))
            time.sleep(8 if i == 0 else 4)
        time.sleep(6)
        driver = [sys.executable, "-c", DRIVER, f"{SUBNET}.1:6379", args.model, str(args.n),
                  args.prompt_tokens or "", args.prompt]
        # Idle: the cluster's own traffic over the same kind of interval.
        before = counters()
        time.sleep(10)
        idle = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(counters(), before)]
        out = sh(*driver, ns=HOSTS[0], env=env, check=False)
        if out.returncode != 0:
            sys.exit(f"the driver failed:\n{out.stderr[-3000:]}")
        report = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{args.model}: {report['decoded']} decoded tokens in {report['decode_s']:.2f} s, "
              f"{report['setup_s']:.1f} s to start the stages; hops {report['hops']} payload bytes/token")
        print(f"idle cluster, 10 s: " + ", ".join(f"{h} rx {r} tx {t}" for h, (r, t) in zip(HOSTS, idle)))
        during = report["counters"]
        seconds = report["decode_s"]
        for host, (b, a), (ir, it) in zip(HOSTS, zip(during[0], during[1]), idle):
            rx, tx = a[0] - b[0], a[1] - b[1]
            # Take away the idle rate over the decode interval, then per token.
            rx_tok = (rx - ir * seconds / 10) / report["decoded"]
            tx_tok = (tx - it * seconds / 10) / report["decoded"]
            print(f"{host}: decode rx {rx} tx {tx} bytes; per token beyond idle rx {rx_tok:.0f} tx {tx_tok:.0f}")
        print(f"ids {report['ids']}")
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, 15)
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, 9)
        remove_hosts()


# The driver, run inside the head's namespace: the pipeline, with each
# host's counters read around the decode steps alone.
DRIVER = r"""
import json, subprocess, sys, time
import ray
from shardload.ray import Pipeline
address, model, n, ids_text, prompt = sys.argv[1:6]
def counters():
    out = []
    for host in ["sl-host0", "sl-host1", "sl-host2"]:
        vals = []
        for k in ("rx_bytes", "tx_bytes"):
            vals.append(int(subprocess.run(["ip", "netns", "exec", host, "cat", f"/sys/class/net/eth0/statistics/{k}"],
                                           capture_output=True, text=True, check=True).stdout))
        out.append(vals)
    return out
ray.init(address=address, logging_level="warning")
clock = time.perf_counter()
p = Pipeline(model, stages=3, ctx=512)
setup = time.perf_counter() - clock
ids = [int(t) for t in ids_text.split(",")] if ids_text else ray.get(p.first.encode.remote(prompt))
marks = []
def mark(token):
    if not marks:
        marks.append((time.perf_counter(), counters()))
out = p.generate(ids, int(n), on_token=mark)
decode = time.perf_counter() - marks[0][0]
before, after = marks[0][1], counters()
stats = p.stats()
print(json.dumps({"setup_s": setup, "decode_s": decode, "decoded": len(out) - 1, "ids": out,
                  "hops": [h["payload_bytes_per_token"] for h in stats["hops"]],
                  "counters": [before, after]}))
"""

if __name__ == "__main__":
    sys.exit(main())
