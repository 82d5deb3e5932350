"""python-etcd3gw (Debian's python3-etcd3gw), used unchanged against cairn's JSON gateway.

Run by tests/gateway.rs as `/usr/bin/python3 tests/scripts/etcd3gw_check.py HOST PORT PREFIX`
(every key under PREFIX):
every step asserts what the client returns and the script prints "ok" last. A failure raises
with the step it was at.
"""
import sys
import threading
import time

from etcd3gw.client import Etcd3Client

host, port, p = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = Etcd3Client(host=host, port=port, api_path="/v3/", timeout=10)

status = c.status()
assert status["version"] and int(status["raftIndex"]) > 0, status
assert len(c.members()) == 3, c.members()

# KV: put, get, create (a transaction), replace (compare-and-swap), prefix reads, delete.
assert c.put(p + "/a", "1")
assert c.get(p + "/a") == [b"1"], c.get(p + "/a")
assert c.create(p + "/b", "2")
assert not c.create(p + "/b", "again"), "create of an existing key must fail"
assert c.replace(p + "/b", "2", "3")
assert not c.replace(p + "/b", "2", "4"), "replace with a stale value must fail"
prefix = c.get_prefix(p + "/")
assert [(m["key"], v) for v, m in prefix] == [((p + "/a").encode(), b"1"), ((p + "/b").encode(), b"3")], prefix
meta = c.get(p + "/b", metadata=True)
assert meta[0][0] == b"3" and meta[0][1]["version"] == "2", meta
assert c.delete(p + "/a")
assert not c.delete(p + "/a"), "deleting a missing key reports nothing deleted"
assert c.get(p + "/a") == []

# Leases: grant, attach, keep alive, time to live with keys, revoke deletes the keys.
lease = c.lease(ttl=30)
assert c.put(p + "/leased", "x", lease=lease)
assert lease.refresh() == 30, "keep-alive answers the granted TTL"
ttl = lease.ttl()
assert 0 < ttl <= 30, ttl
assert lease.keys() == [(p + "/leased").encode()], lease.keys()
assert lease.revoke()
assert c.get(p + "/leased") == [], "revoking a lease deletes its keys"

# Watch: events arrive on the stream while it is open.
events = []
got = threading.Event()


def on_event(e):
    events.append(e)
    if len(events) >= 2:
        got.set()


it, cancel = c.watch(p + "/w")
reader = threading.Thread(target=lambda: [on_event(e) for e in it], daemon=True)
reader.start()
time.sleep(0.5)
c.put(p + "/w", "v1")
c.delete(p + "/w")
assert got.wait(10), "watch events did not arrive: %r" % events
cancel()
assert events[0]["kv"]["value"] == b"v1", events
assert events[1].get("type") == "DELETE", events

# watch_once: the next change of a key.
threading.Timer(0.5, lambda: c.put(p + "/once", "o")).start()
e = c.watch_once(p + "/once", timeout=10)
assert e["kv"]["value"] == b"o", e

# Locks (a lease and a transaction under the hood).
lock = c.lock(p + "-lock", ttl=30)
assert lock.acquire()
other = c.lock(p + "-lock", ttl=30)
assert not other.acquire(), "a held lock cannot be acquired twice"
assert lock.release()
assert other.acquire()
assert other.release()

print("ok")
