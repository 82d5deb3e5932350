"""Helpers shared by the data tier's benchmark scripts (bench-range-moves, bench-rebalance):
start a node, wait for a port, call the HTTP API, and a RESP client thread that records the
latency of each SET."""

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

def wait_port(port, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: nothing listens on port {port}")


def http(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def resp_cmd(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(a)}\r\n".encode() + a + b"\r\n")
    return b"".join(out)


class Client(threading.Thread):
    """One connection, one SET at a time; records (send time, latency s, ok)."""

    def __init__(self, port, seed, stop, keys):
        super().__init__(daemon=True)
        self.keys = keys
        self.port, self.rng, self.stop = port, random.Random(seed), stop
        self.samples = []

    def run(self):
        value = b"x" * 256
        sock = None
        while not self.stop.is_set():
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    f = sock.makefile("rb")
                except OSError:
                    time.sleep(0.05)
                    continue
            key = f"k:{self.rng.randrange(self.keys)}"
            t0 = time.time()
            try:
                sock.sendall(resp_cmd("SET", key, value))
                line = f.readline()
                ok = line.startswith(b"+OK")
            except OSError:
                ok, line = False, b""
                sock = None
            self.samples.append((t0, time.time() - t0, ok))
            if not ok:
                print(f"bench: error at {time.strftime('%X')}: {line!r}", file=sys.stderr)


def start_node(binary, work, base, name, i, initial=None, join=None, extra=()):
    """`cairn server` number `i` on ports base + 10 i (client), + 1 (peer), + 2 (Redis)."""
    client = base + 10 * i
    peer = f"http://127.0.0.1:{base + 10 * i + 1}"
    rport = base + 10 * i + 2
    args = [binary, "server", "--name", name, "--data-dir", os.path.join(work, name),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--listen-redis-urls", f"redis://127.0.0.1:{rport}", *extra]
    args += ["--initial-cluster", initial] if initial else ["--join", join]
    log = open(os.path.join(work, f"{name}.log"), "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), client, rport




def refuse_failpoints(client_port):
    """Exits if the node was built with the test-only `failpoints` feature (scripts/chaos builds
    that into target/release/cairn): its power-cut layer keeps writes in memory, so its figures
    are not cairn's."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{client_port}/debug/faults", timeout=5)
    except urllib.error.HTTPError:
        return
    sys.exit("bench: target/release/cairn is a failpoints build (scripts/chaos made it); "
             "run cargo build --release --bin cairn, or drop BENCH_NO_BUILD")
