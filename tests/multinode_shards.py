"""Run by test_index_multinode.py in its own process (a Ray cluster of its own, not the session's):
a fake 3-node cluster (``ray.cluster_utils.Cluster``), each node declaring 600 MB of memory; 3 shard
actors asking 250 MB each (shard_memory_factor scales the tiny shards up); then a node is removed
while a stream of queries runs. Prints one JSON line with what it saw."""
from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster

from artextract.index import IndexReader, build_index
from artextract.index.ray_search import RayIndexReader, shard_ram_bytes
from test_index import make_table

NODE_MEMORY, SHARD_MEMORY = 600 * 2**20, 250 * 2**20


def actor_nodes() -> dict[str, str]:
    """name -> node id of our live shard actors (Ray's GCS actor table)."""
    from ray._private.state import actors

    return {a["Name"]: a["Address"]["NodeID"] for a in actors().values()
            if a.get("Name", "").startswith("artextract-search-") and a["State"] == "ALIVE"}


def main(work: str) -> None:
    idx = f"{work}/idx"
    build_index(make_table(3000), idx, shards=3, factory="IVF16,PQ8x4fs,RFlat", refine_store="memory",
                nprobe=8, k_factor=8)
    local = IndexReader(idx)
    factor = SHARD_MEMORY / max(shard_ram_bytes(e, "memory") for e in local.manifest["shards"])
    q = np.random.default_rng(5).normal(size=(8, 32)).astype(np.float32)
    want = local.search_ids(q, 10)

    node_args = {"num_cpus": 1, "memory": NODE_MEMORY, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    workers = [cluster.add_node(**node_args) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    out: dict = {}
    try:
        reader = RayIndexReader(idx, memory_factor=factor, restart_wait_s=90)
        placed = actor_nodes()
        got = reader.search_ids(q, 10)
        out.update(memory=[r["memory"] for r in reader.resources], nodes_before=sorted(placed.values()),
                   node_ids=sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
                   exact_before=bool(np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])))
        # a stream of queries; a worker node holding a shard goes away in the middle of it
        results, errors, stop = [], [], threading.Event()

        def stream() -> None:
            while not stop.is_set():
                try:
                    results.append(reader.search_ids(q, 10))
                except Exception as exc:  # noqa: BLE001 - counted, the test asserts none
                    errors.append(repr(exc))
        t = threading.Thread(target=stream)
        t.start()
        time.sleep(2.0)
        victim = workers[0]
        dead_node = victim.node_id
        cluster.remove_node(victim, allow_graceful=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            placed = actor_nodes()
            if len(placed) == 3 and dead_node not in placed.values() and len(results) > 5:
                break
            time.sleep(0.5)
        n_before = len(results)
        time.sleep(2.0)  # queries keep flowing after the restart
        stop.set()
        t.join(timeout=120)
        after = reader.search_ids(q, 10)
        out.update(dead_node=dead_node, nodes_after=sorted(actor_nodes().values()), stats=reader.stats,
                   errors=errors[:3], n_errors=len(errors), answered=len(results), answered_after_restart=len(results) - n_before,
                   exact_all=all(np.array_equal(r[1], want[1]) for r in results),
                   exact_after=bool(np.array_equal(after[1], want[1]) and np.array_equal(after[0], want[0])))
        reader.close()
    finally:
        print("RESULT " + json.dumps(out), flush=True)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
