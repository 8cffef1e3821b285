"""Many annotators against one or more backend replicas sharing their feedback states in Redis.

Starts a ``redis-server``, a stand-in Label Studio file server with one synthetic ~1-megapixel image per
annotator, and for each replica count R a set of R backend processes (gunicorn, one worker owning the model, as
deployed; or ``python -m backend``), all with ``REDIS_URL`` pointing at the one Redis. Then for each annotator
count K, K threads each click ``--sessions`` sessions of ``--clicks`` clicks (positive inside the object, negative
outside, each request carrying all clicks so far, as Label Studio sends them) on their own image, as fast as the
answers come. Requests go round-robin over the replicas, so consecutive clicks of a session usually land on
different replicas and each resumes from the state the other stored in Redis.

Prints one JSON line: per configuration (replicas, annotators) the throughput (clicks/s), median and p95 latency
per click, the error count (must be 0) and the mean network passes per click (1.0 when every click found the
previous click's state); and per annotator count the throughput ratio of the most replicas to one replica.
Exits with 1 when any request failed.

On one machine the replicas share its cores: ``--torch-threads`` defaults to cores // R per replica, so the
comparison is one process using every core against R processes splitting them.

Overload case (``--overload 32x60``): one gunicorn replica without Redis, 32 clients clicking 10-click sessions
back to back for 60 s. Prints the accepted clicks' median and p95 latency, the answer time of shed requests (503
with ``Retry-After``), the count of any other 5xx (must be 0) and the replica's resident memory before and after.

Usage: python -m benchmarks.load [--checkpoint PATH] [--annotators 1,4,16] [--replicas 1,2] [--clicks 10]
       [--sessions 1] [--size 1155x866] [--server gunicorn|flask] [--torch-threads N] [--overload CxS]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import requests
from PIL import Image

from benchmarks.stand_in import TOKEN, predict_payload, serve_files, session_clicks

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "model" / "weights" / "lite0_fcfi.pth"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_image(seed: int, w: int, h: int) -> tuple[bytes, np.ndarray]:
    """A textured JPEG with one ellipse object at a seed-dependent place, and the object's mask."""
    rng = np.random.default_rng(seed)
    rgb = rng.normal(70, 20, (h, w, 3)).clip(0, 255).astype(np.uint8)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ay, ax = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    yy, xx = np.mgrid[:h, :w]
    obj = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
    rgb[obj] = rng.integers(120, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), obj


class Procs:
    """Child processes, each logging to a file, all stopped by :meth:`stop_all`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                self.stop(proc)


def start_redis(procs: Procs, binary: str) -> str:
    port = free_port()
    # A cache: no persistence, bounded memory with LRU eviction (what docker-compose's scale profile runs).
    procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(procs.workdir)])
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    for _ in range(200):
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start; see " + str(procs.workdir / "redis.log"))


def start_replicas(procs: Procs, n: int, env: dict[str, str], server: str, http_threads: int,
                   timeout: float = 600.0) -> tuple[list[str], list[subprocess.Popen]]:
    urls, started = [], []
    for i in range(n):
        port = free_port()
        if server == "gunicorn":
            cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads",
                   str(http_threads), "--timeout", "0", "backend.wsgi:app"]
        else:
            cmd = [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)]
        name = f"replica{n}-{i}"
        started.append(procs.start(name, cmd, {**env, "MODEL_DIR": str(procs.workdir / name)}))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    for url, proc in zip(urls, started, strict=True):
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"replica {url} exited with {proc.returncode}; logs in {procs.workdir}")
            try:
                health = requests.get(url + "/health", timeout=2).json()
                if health.get("model_error"):
                    raise SystemExit(f"replica {url}: {health['model_error']}")
                if health.get("model_ready"):
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"replica {url} not ready after {timeout:g} s; logs in {procs.workdir}")
            time.sleep(0.2)
    return urls, started


@dataclass
class Run:
    """What the annotators of one configuration saw."""

    latencies_ms: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_config(urls: list[str], annotators: int, sessions: int, images: list[tuple[str, np.ndarray]],
               clicks: int, w: int, h: int, task_base: int) -> tuple[Run, float]:
    """K annotator threads, requests round-robin over ``urls``; returns the record and the wall time."""
    run = Run()
    counter = itertools.count()
    counter_lock = threading.Lock()
    start = threading.Barrier(annotators + 1)

    def annotator(k: int) -> None:
        http = requests.Session()
        path, obj = images[k]
        start.wait()
        for s in range(sessions):
            task_id = task_base + 1000 * k + s
            seq = session_clicks(obj, clicks, seed=task_id)
            for n in range(1, clicks + 1):
                with counter_lock:
                    url = urls[next(counter) % len(urls)]
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/predict", json=predict_payload(task_id, path, w, h, seq[:n]), timeout=600)
                    ms = (time.perf_counter() - t0) * 1000
                    ok = r.status_code == 200 and len(r.json()["results"][0]["result"]) == 1
                    error = None if ok else f"{url}: HTTP {r.status_code} {r.text[:200]}"
                except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
                    ms, error = (time.perf_counter() - t0) * 1000, f"{url}: {type(exc).__name__}: {exc}"
                with run.lock:
                    if error is None:
                        run.latencies_ms.append(ms)
                        run.passes.append(int(r.headers.get("X-Network-Passes", "0")))
                    else:
                        run.errors.append(error)

    threads = [threading.Thread(target=annotator, args=(k,), daemon=True) for k in range(annotators)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return run, time.perf_counter() - t0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn: master + worker), MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
        except (OSError, ValueError):
            continue
    return round(total / 1024, 1)


def run_overload(url: str, clients: int, seconds: float, images: list[tuple[str, np.ndarray]], clicks: int,
                 w: int, h: int) -> dict:
    """``clients`` threads click sessions back to back for ``seconds``; every answer is classified."""
    records: list[tuple[int, float, bool]] = []  # status, seconds, has Retry-After
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        http = requests.Session()
        path, obj = images[k % len(images)]
        s = 0
        while time.monotonic() < stop_at:
            task_id = 900_000 + 1000 * k + s
            seq = session_clicks(obj, clicks, seed=task_id)
            n = 1
            while n <= clicks and time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/predict", json=predict_payload(task_id, path, w, h, seq[:n]), timeout=600)
                    status, retry = r.status_code, "Retry-After" in r.headers
                except requests.RequestException:
                    status, retry = 599, False
                took = time.perf_counter() - t0
                with lock:
                    records.append((status, took, retry))
                if status == 200:
                    n += 1
                else:
                    time.sleep(0.2)  # a client that was told to retry waits a little, as Label Studio's user would
            s += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [t for s, t, _ in records if s == 200]
    shed = [t for s, t, r in records if s == 503 and r]
    other = [s for s, _, r in records if s >= 500 and not (s == 503 and r)]

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000, 1) if values else None

    return {"clients": clients, "seconds": seconds, "requests": len(records), "accepted": len(ok),
            "accepted_ms": {"median": pct(ok, 50), "p95": pct(ok, 95)}, "shed": len(shed),
            "shed_ms": {"median": pct(shed, 50), "p95": pct(shed, 95), "max": pct(shed, 100)},
            "other_5xx": len(other), "other_statuses": sorted(set(other)),
            "timed_out_share": round(sum(t >= 59 for t in ok) / max(1, len(records)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--annotators", default="1,4,16", help="comma-separated annotator counts")
    ap.add_argument("--replicas", default="1,2", help="comma-separated replica counts")
    ap.add_argument("--clicks", type=int, default=10, help="clicks per session")
    ap.add_argument("--sessions", type=int, default=1, help="sessions per annotator")
    ap.add_argument("--size", default="1155x866", help="image WxH (default about 1 megapixel)")
    ap.add_argument("--server", choices=["gunicorn", "flask"], default="gunicorn")
    ap.add_argument("--http-threads", type=int, default=32, help="gunicorn threads per replica (as the README serves)")
    ap.add_argument("--torch-threads", type=int, default=0, help="per replica; 0: cores // replicas")
    ap.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER") or shutil.which("redis-server"))
    ap.add_argument("--overload", default=None, metavar="CxS", help="only the overload case: C clients for S seconds")
    args = ap.parse_args()
    if args.overload:
        overload_main(args)
        return

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise SystemExit(f"no checkpoint at {checkpoint}: the default weights are not shipped yet; "
                         "pass --checkpoint PATH (a file written by model.save_checkpoint)")
    if not args.redis_server:
        raise SystemExit("no redis-server binary: apt-get install redis-server, or pass --redis-server PATH")
    annotator_counts = [int(x) for x in args.annotators.split(",")]
    replica_counts = [int(x) for x in args.replicas.split(",")]
    w, h = (int(x) for x in args.size.lower().split("x"))
    cores = os.cpu_count() or 1

    files, images = {}, []
    for k in range(max(annotator_counts) + 1):  # one image per annotator, and one to warm the replicas up
        data, obj = make_image(k, w, h)
        path = f"/data/upload/1/load-{k}.jpg"
        files[path] = data
        images.append((path, obj))
    warmup, images = images[-1], images[:-1]
    file_server = serve_files(files)

    workdir = Path(tempfile.mkdtemp(prefix="fcfi-load-"))
    procs = Procs(workdir)
    results, scaling = [], {}
    try:
        redis_url = start_redis(procs, args.redis_server)
        flush = redis.Redis.from_url(redis_url)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
        base_env.update(CHECKPOINT=str(checkpoint.resolve()), REDIS_URL=redis_url,
                        LABEL_STUDIO_URL=f"http://127.0.0.1:{file_server.server_port}", LABEL_STUDIO_API_KEY=TOKEN,
                        IMAGE_CACHE_ITEMS=str(max(16, max(annotator_counts) + 1)),
                        QUEUE_SIZE=str(max(32, 2 * max(annotator_counts))), LOG_LEVEL="WARNING",
                        PYTHONUNBUFFERED="1")
        for ci, n_replicas in enumerate(replica_counts):
            threads = args.torch_threads or max(1, cores // n_replicas)
            env = {**base_env, "TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            urls, started = start_replicas(procs, n_replicas, env, args.server, args.http_threads)
            for url in urls:  # first pass of each process (allocations, lazy init) outside the measurement
                r = requests.post(url + "/predict", json=predict_payload(1, warmup[0], w, h,
                                                                 session_clicks(warmup[1], 1, 0)), timeout=600)
                r.raise_for_status()
            for ai, n_annotators in enumerate(annotator_counts):
                flush.flushall()
                run, wall = run_config(urls, n_annotators, args.sessions, images, args.clicks, w, h,
                                       task_base=100_000 * (1 + ci * len(annotator_counts) + ai))
                lat = run.latencies_ms
                results.append({
                    "replicas": n_replicas, "annotators": n_annotators, "torch_threads": threads,
                    "clicks": len(lat) + len(run.errors), "wall_s": round(wall, 2),
                    "throughput_cps": round(len(lat) / wall, 3) if wall > 0 else 0.0,
                    "latency_ms": {"median": round(statistics.median(lat), 1) if lat else None,
                                   "p95": round(float(np.percentile(lat, 95)), 1) if lat else None},
                    "errors": len(run.errors), "error_samples": run.errors[:3],
                    "passes_per_click": round(statistics.mean(run.passes), 3) if run.passes else None,
                })
            for proc in started:
                procs.stop(proc)
        by = {(r["replicas"], r["annotators"]): r["throughput_cps"] for r in results}
        most = max(replica_counts)
        if 1 in replica_counts and most > 1:
            for k in annotator_counts:
                if by.get((1, k)):
                    scaling[str(k)] = round(by[(most, k)] / by[(1, k)], 3)
    finally:
        procs.stop_all()
        file_server.shutdown()
    errors = sum(r["errors"] for r in results)
    print(json.dumps({
        "image": [h, w], "clicks_per_session": args.clicks, "sessions_per_annotator": args.sessions,
        "server": args.server, "cpu_count": cores, "checkpoint": checkpoint.name, "configs": results,
        f"scaling_1_to_{max(replica_counts)}_replicas": scaling, "errors": errors,
    }))
    if errors:
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


def overload_main(args: argparse.Namespace) -> None:
    clients, seconds = (int(x) for x in args.overload.lower().split("x"))
    w, h = (int(x) for x in args.size.lower().split("x"))
    files, images = {}, []
    for k in range(min(clients, 8) + 1):
        data, obj = make_image(k, w, h)
        files[f"/data/upload/1/over-{k}.jpg"] = data
        images.append((f"/data/upload/1/over-{k}.jpg", obj))
    file_server = serve_files(files)
    workdir = Path(tempfile.mkdtemp(prefix="fcfi-overload-"))
    procs = Procs(workdir)
    try:
        threads = args.torch_threads or (os.cpu_count() or 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LABEL_STUDIO_"))}
        env.update(CHECKPOINT=str(Path(args.checkpoint).resolve()), LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
                   LABEL_STUDIO_URL=f"http://127.0.0.1:{file_server.server_port}", LABEL_STUDIO_API_KEY=TOKEN,
                   TORCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        (url,), (proc,) = start_replicas(procs, 1, env, args.server, args.http_threads)
        warm = images[-1]
        requests.post(url + "/predict", json=predict_payload(1, warm[0], w, h, session_clicks(warm[1], 1, 0)),
                      timeout=600).raise_for_status()
        rss_before = tree_rss_mb(proc.pid)
        result = run_overload(url, clients, seconds, images[:-1], args.clicks, w, h)
        result.update(rss_mb_before=rss_before, rss_mb_after=tree_rss_mb(proc.pid), torch_threads=threads,
                      image=[h, w], server=args.server, checkpoint=Path(args.checkpoint).name)
    finally:
        procs.stop_all()
        file_server.shutdown()
    print(json.dumps({"overload": result}))
    shutil.rmtree(workdir, ignore_errors=True)
    if result["other_5xx"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
