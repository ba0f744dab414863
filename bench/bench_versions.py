"""Two source trees of jobmetrics side by side, in one interleaved run.

Each measurement runs in a fresh process, once per tree per round, the trees taking turns,
and the best of the rounds is reported, so both meet the same machine load.

Run: .venv/bin/python bench/bench_versions.py --before /path/to/old/checkout [--rounds 5]
[--match scrape]
(``git worktree add --detach ../before <commit>`` makes such a checkout; the current tree
is this file's.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))

PRELUDE = """
import os, sys, tempfile, time, timeit, multiprocessing
sys.path.insert(0, %(bench)r)
from timing import per_call
from prometheus_client import CollectorRegistry, generate_latest
from jobmetrics import JobMetrics
def trivial():
    return 1
"""

CASES: Dict[str, str] = {
    "@m.task in-process, summary (µs/call over bare)": """
m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)
f = m.task("t")(trivial)
print((per_call(f) - per_call(trivial)) * 1e6)
""",
    "@m.task in-process, histogram (µs/call over bare)": """
m = JobMetrics(registry=CollectorRegistry(), process_collectors=False,
               task_duration="histogram")
f = m.task("t")(trivial)
print((per_call(f) - per_call(trivial)) * 1e6)
""",
    "QuantileSummary.observe (µs/call)": """
from jobmetrics import QuantileSummary
q = QuantileSummary("q", "d", registry=CollectorRegistry())
print(per_call(lambda: q.observe(0.37)) * 1e6)
""",
    "@m.task multi-process, summary (µs/call over bare)": """
d = tempfile.mkdtemp()
m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d)
f = m.task("t")(trivial)
print((per_call(f) - per_call(trivial)) * 1e6)
""",
    "hand-written prometheus_client, Histogram (µs/call over bare)": """
from prometheus_client import Counter, Gauge, Histogram
r = CollectorRegistry()
total = Counter("t_task", "d", ["type", "status"], registry=r)
running = Gauge("t_running", "d", ["type"], registry=r)
ptime = Histogram("t_ptime", "d", ["type", "status"], registry=r)
pc = time.perf_counter
def hand():
    running.labels("t").inc()
    start = pc()
    try:
        result = trivial()
    finally:
        running.labels("t").dec()
    total.labels("t", "success").inc()
    ptime.labels("t", "success").observe(pc() - start)
    return result
print((per_call(hand) - per_call(trivial)) * 1e6)
""",
    "WSGIMiddleware (µs/request over bare app)": """
from jobmetrics import WSGIMiddleware
m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)
def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
mw = WSGIMiddleware(app, metrics=m, operation=lambda e: "/x")
env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}
def sr(status, headers, exc_info=None):
    return None
def call(a):
    def run():
        body = a(env, sr)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return run
print((per_call(call(mw), 100_000) - per_call(call(app), 100_000)) * 1e6)
""",
    "ASGIMiddleware (µs/request over bare app)": """
import asyncio
from jobmetrics import ASGIMiddleware
m = JobMetrics(registry=CollectorRegistry(), process_collectors=False)
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
mw = ASGIMiddleware(app, metrics=m, operation=lambda s: "/x")
scope = {"type": "http", "method": "GET", "path": "/x", "root_path": ""}
async def receive():
    return {"type": "http.request"}
async def send(message):
    pass
async def measure(a, n=50_000):
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            await a(dict(scope), receive, send)
        best = min(best, time.perf_counter() - t0)
    return best / n
async def main():
    return await measure(mw) - await measure(app)
print(asyncio.run(main()) * 1e6)
""",
}

SCRAPE = """
CTX = multiprocessing.get_context("fork")
def worker(d, ready, stop):
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d, task_duration=%(kind)r)
    for i in range(100):
        with m.track_task("type%%d" %% (i %% 5)):
            pass
    ready.release()
    stop.wait(120)
d = tempfile.mkdtemp()
ready, stop = CTX.Semaphore(0), CTX.Event()
procs = [CTX.Process(target=worker, args=(d, ready, stop)) for _ in range(%(n)d - 1)]
for p in procs:
    p.start()
for _ in procs:
    ready.acquire()
m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=d, task_duration=%(kind)r)
for i in range(100):
    with m.track_task("type%%d" %% (i %% 5)):
        pass
generate_latest(m.registry)
best = min(timeit.repeat(lambda: generate_latest(m.registry), number=1, repeat=7))
stop.set()
for p in procs:
    p.join()
print(best * 1e3)
"""


def _run(tree: str, code: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run([sys.executable, "-c", PRELUDE % {"bench": HERE} + code],
                         env=env, capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--before", required=True, help="checkout of the older tree")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--match", default="", help="only the measurements naming this")
    args = p.parse_args()
    after = os.path.dirname(HERE)
    cases = dict(CASES)
    for kind, counts in (("summary", (1, 16, 64)), ("histogram", (1, 16, 64, 128))):
        for n in counts:
            cases[f"multi-process scrape, {kind}, {n} live processes, 5 types each (ms)"] = (
                SCRAPE % {"n": n, "kind": kind})
    cases = {name: code for name, code in cases.items() if args.match in name}
    best: Dict[str, List[float]] = {name: [float("inf"), float("inf")] for name in cases}
    for _ in range(args.rounds):
        for name, code in cases.items():
            for i, tree in enumerate((args.before, after)):
                best[name][i] = min(best[name][i], _run(tree, code))
    print("| measurement | before | after | after / before |")
    print("|---|---|---|---|")
    for name, (b, a) in best.items():
        print(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
