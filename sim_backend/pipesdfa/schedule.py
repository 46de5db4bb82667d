"""Event-driven schedule of the training pipelines: every time step, sample and batch as an operation
on the resources it occupies, started when its inputs are ready and its resources are free.

Resources: each layer's arrays (forward reads, and its writes), PipeLayer's backward (W^T) arrays,
the feedback arrays (SDFA projection), each layer's digital lanes (deltas, the dW pass), the write
engine (row-serial and write-verify program one layer at a time; parallel writes need only the
layer's arrays), the DRAM channel (spilled history), PipeLayer's error unit. Operations wait in the
order they became ready (non-preemptive, first come first served; ties by layer, then sample).

Read-after-write between batches: with ``raw="wait"`` batch b+1 reads layer l only after batch b's
write of layer l has finished; with ``raw="stale"`` it may read the old weights, blocked only while
the layer's arrays are being written. PipeLayer always drains: batch b+1 starts after every write of
batch b (its update between batches).

The closed forms of ``pipeline.py`` are the same pipelines without resource conflicts other than the
ones they name; ``compare`` runs both on one workload.
"""
from __future__ import annotations

import heapq
from collections import defaultdict

from .pipeline import Stages


class Graph:
    def __init__(self):
        self.res: list[tuple] = []
        self.dur: list[float] = []
        self.deps: list[list[int]] = []
        self.kind: list[str] = []
        self.raw_deps: list[list[int]] = []
        self.entries: set[int] = set()      # the first operation of every batch
    def add(self, kind: str, res: tuple, dur: float, deps=(), raw_deps=()) -> int:
        self.res.append(res)
        self.dur.append(dur)
        self.deps.append([d for d in deps if d is not None])
        self.raw_deps.append([d for d in raw_deps if d is not None])
        self.kind.append(kind)
        return len(self.dur) - 1


def simulate(g: Graph) -> dict:
    """Start and end of every operation. Stalls: ``resource_wait_s`` sums, per kind of operation, the
    time ready operations waited for a busy resource; ``raw_wait_s`` sums how long the first
    operation of each batch waited for the previous batch's writes beyond its other inputs."""
    n = len(g.dur)
    succ = defaultdict(list)
    indeg = [0] * n
    for i in range(n):
        for d in g.deps[i] + g.raw_deps[i]:
            succ[d].append(i)
            indeg[i] += 1
    ready_data = [0.0] * n       # inputs ready (data dependencies)
    ready_raw = [0.0] * n        # read-after-write dependencies
    start, end = [0.0] * n, [0.0] * n
    free: dict = defaultdict(float)
    heap = [(0.0, i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    waits = defaultdict(float)
    raw_wait = 0.0
    while heap:
        ready, i = heapq.heappop(heap)
        s = max([ready] + [free[r] for r in g.res[i]])
        e = s + g.dur[i]
        for r in g.res[i]:
            free[r] = e
        start[i], end[i] = s, e
        if s > ready:
            waits[g.kind[i]] += s - ready
        if i in g.entries and ready_raw[i] > ready_data[i]:
            raw_wait += ready_raw[i] - ready_data[i]
        for j in succ[i]:
            if i in g.raw_deps[j]:
                ready_raw[j] = max(ready_raw[j], e)
            else:
                ready_data[j] = max(ready_data[j], e)
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, (max(ready_data[j], ready_raw[j]), j))
    return {"start": start, "end": end, "makespan": max(end, default=0.0),
            "resource_wait_s": dict(waits), "raw_wait_s": raw_wait}


def sdfa_graph(st: Stages, n_batches: int, raw: str = "wait") -> tuple[Graph, list[int]]:
    g = Graph()
    L, T, B = len(st.step), st.T, st.B
    last_write = [None] * L
    batch_ends = []
    prev_sample_last = [None] * L           # the previous sample's last step on each layer
    for b in range(n_batches):
        prev_dram = None
        deltas = [[] for _ in range(L)]
        for s in range(B):
            prev_t = [None] * L
            for t in range(T):
                cur = None                      # this step on the layer below
                for l in range(L):
                    deps = [prev_t[l] if t else prev_sample_last[l]]
                    if l:
                        deps.append(prev_t[l - 1])  # this step's output of the layer below
                    if t == 0 and l == 0:
                        deps.append(prev_dram)
                    raw_deps = [last_write[l]] if (raw == "wait" and t == 0 and s == 0) else []
                    cur = g.add("forward", (("arr", l),), st.step[l], deps, raw_deps)
                    prev_t[l] = cur
                    if t == 0 and l == 0:
                        first = cur
                        if s == 0:
                            g.entries.add(cur)
            prev_sample_last = list(prev_t)
            # the sample's spilled history streams to DRAM while it runs; the next sample enters
            # when the channel has caught up
            prev_dram = g.add("dram", (("dram",),), st.dram_s, [first, prev_dram]) if st.dram_s > 0 else None
            proj = g.add("projection", (("fb",),), st.proj, [prev_t[L - 1]])
            for l in range(L):
                if st.trainable[l]:
                    deltas[l].append(g.add("deltas", (("lanes", l),), st.delta[l], [proj]))
        ends = []
        for l in range(L):
            if not st.trainable[l]:
                continue
            dw = g.add("dw", (("lanes", l),), st.dw[l], deltas[l])
            res = (("arr", l), ("engine",)) if st.serial_writes else (("arr", l),)
            last_write[l] = g.add("write", res, st.write[l], [dw])
            ends.append(last_write[l])
        batch_ends.append(ends)
    return g, batch_ends


def pipelayer_graph(st: Stages, n_batches: int) -> tuple[Graph, list[int]]:
    g = Graph()
    L, B = len(st.step), st.B
    writes: list[int] = []
    batch_ends = []
    for b in range(n_batches):
        prev_sample = [None] * L
        prev_back = [None] * L
        prev_err = None
        backs = [[] for _ in range(L)]
        for s in range(B):
            cur = None
            for l in range(L):
                deps = [prev_sample[l]] + ([cur] if l else [])
                cur = g.add("forward", (("arr", l),), st.T * st.step[l], deps, writes if (s == 0 and l == 0) else [])
                if s == 0 and l == 0:
                    g.entries.add(cur)
                prev_sample[l] = cur
            err = g.add("error", (("err",),), st.error, [cur, prev_err])
            prev_err = err
            up = err
            for l in reversed(range(L)):
                if not st.trainable[l]:
                    continue
                res = (("arr", l),) if st.shared_arrays else (("back", l),)
                up = g.add("backward", res, st.back[l], [up, prev_back[l]])
                prev_back[l] = up
                backs[l].append(up)
        writes = []
        for l in reversed(range(L)):
            if not st.trainable[l]:
                continue
            dw = g.add("dw", (("lanes", l),), st.dw[l], backs[l])
            res = [("arr", l), ("back", l)] + ([("engine",)] if st.serial_writes else [])
            writes.append(g.add("write", tuple(res), st.write[l], [dw]))
        batch_ends.append(list(writes))
    return g, batch_ends


def run(st: Stages, n_batches: int, design: str, raw: str = "wait") -> dict:
    g, ends = sdfa_graph(st, n_batches, raw) if design == "sdfa" else pipelayer_graph(st, n_batches)
    r = simulate(g)
    batch_end = [max((r["end"][i] for i in e), default=0.0) for e in ends]
    return {"latency_s": r["makespan"] / n_batches, "makespan_s": r["makespan"], "batch_end_s": batch_end,
            "operations": len(g.dur), "stalls": {"resource_wait_s": r["resource_wait_s"],
                                                  "raw_wait_s": r["raw_wait_s"]}}
