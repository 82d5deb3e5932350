"""redis-py against a cairn cluster: plain Redis on one node, and RedisCluster from one startup
node (it reads CLUSTER SLOTS and sends each key to its slot's node). Every write is read back
through another client. Usage: redis_cluster_check.py HOST:PORT [HOST:PORT ...]"""
import sys

import redis
from redis.cluster import ClusterNode, RedisCluster

addrs = [a.rsplit(":", 1) for a in sys.argv[1:]]
plain = redis.Redis(host=addrs[0][0], port=int(addrs[0][1]))
assert plain.set("py:plain", "1") is True
assert plain.incr("py:counter", 5) == 5
assert plain.mget(["py:plain", "py:counter", "py:missing"]) == [b"1", b"5", None]

rc = RedisCluster(startup_nodes=[ClusterNode(addrs[-1][0], int(addrs[-1][1]))])
nodes = {(n.host, n.port) for n in rc.get_nodes()}
every = {(h, int(p)) for h, p in addrs}
# Three nodes hold every range; with more, RedisCluster sees the nodes that hold slots.
if len(addrs) == 3:
    assert nodes == every, f"RedisCluster sees nodes {nodes}"
else:
    assert 3 <= len(nodes) and nodes <= every, f"RedisCluster sees nodes {nodes}"
for i in range(300):
    rc.set(f"py:{i}", f"v{i}", ex=600)
other = redis.Redis(host=addrs[1][0], port=int(addrs[1][1]))
for i in range(300):
    assert other.get(f"py:{i}") == f"v{i}".encode(), f"py:{i}"
    assert 0 < other.ttl(f"py:{i}") <= 600, "the key lost its expiry"
assert rc.mget_nonatomic([f"py:{i}" for i in range(10)]) == [f"v{i}".encode() for i in range(10)]
assert rc.delete("py:1") == 1
assert rc.get("py:1") is None
print("ok", len(nodes), "nodes")
