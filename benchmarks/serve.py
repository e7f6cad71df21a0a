"""`sensorium serve` under load on loopback: throughput and latency with dynamic batching vs without, a full
queue answering 429 and recovering, and the server's memory across the run.

    python benchmarks/serve.py run [--requests 320] [--clients 16] [--rounds 2] [--kind text image]

Each round starts a fresh `sensorium serve` process (PE-Core-B16-224 at its real geometry with both towers,
random weights, fp32, CPU), warms it up, then 16 clients send embedding requests as fast as they are answered (one input each: a short
text, or a 320x240 PNG as a data URL) until `--requests` are done. Batching and no batching alternate within each
round. Memory: the server's RSS after the warm-up and at the end. Queue: a server with --queue-size 4 gets 32
clients at once; the 429s are counted, then one more request must succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"


def _weights() -> Path:
    """Random PE-Core-B16-224 weights with both towers, in the original .pt layout (key names as the tests'
    full-size checkpoints; timm's copy has no text tower), named after the model so that the file says it."""
    target = OUT / "b16-clip" / "PE-Core-B16-224.pt"
    if not target.exists():
        import torch

        sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
        from helpers import random_original_checkpoint
        from sensorium.models import pe

        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(random_original_checkpoint(pe.ARCHS["PE-Core-B16-224"]), target)
    return target


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    def __init__(self, weights: Path, *extra: str):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "sensorium.cli", "serve", "--model", str(weights), "--port",
                        str(self.port), "--device", "cpu", *extra]

    def __enter__(self):
        import httpx

        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-3000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _image_url() -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def _load(url: str, model: str, kind: str, requests: int, clients: int) -> dict:
    import httpx

    image = _image_url() if kind == "image" else None
    latencies, statuses = [], []
    counter = iter(range(requests))

    async def client(http):
        for i in counter:
            body = {"model": model, "input": [image if image else f"a photo of thing number {i}"]}
            started = time.perf_counter()
            response = await http.post(url + "/v1/embeddings", json=body)
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {"throughput": requests / wall, "p50_ms": ms[len(ms) // 2], "p99_ms": ms[int(len(ms) * 0.99) - 1],
            "ok": statuses.count(200), "other": len(statuses) - statuses.count(200), "wall_s": wall}


def _metrics(url: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(("sensorium_batches_total", "sensorium_batch_size_sum", "sensorium_rejected_total")):
            name, value = line.split()
            found[name] = float(value)
    return found


def one_side(weights: Path, batching: bool, kind: str, requests: int, clients: int) -> dict:
    extra = () if batching else ("--no-batching",)
    with ServerProcess(weights, "--queue-size", "1024", *extra) as server:
        asyncio.run(_load(server.url, str(weights), kind, 2 * clients, clients))  # warm-up: threads, allocator
        rss_before = _rss_mb(server.process.pid)
        before = _metrics(server.url)
        result = asyncio.run(_load(server.url, str(weights), kind, requests, clients))
        after = _metrics(server.url)
        result["rss_before_mb"], result["rss_after_mb"] = rss_before, _rss_mb(server.process.pid)
        batches = after["sensorium_batches_total"] - before["sensorium_batches_total"]
        result["mean_batch"] = (after["sensorium_batch_size_sum"] - before["sensorium_batch_size_sum"]) / max(batches, 1)
    return result


def queue_full(weights: Path) -> dict:
    import httpx

    with ServerProcess(weights, "--queue-size", "4") as server:
        burst = asyncio.run(_load(server.url, str(weights), "image", 64, 32))
        after = httpx.post(server.url + "/v1/embeddings", json={"model": str(weights), "input": "again"}, timeout=60)
        rejected = _metrics(server.url).get("sensorium_rejected_total", 0)
    return {"burst_ok": burst["ok"], "burst_refused": burst["other"], "rejected_metric": rejected,
            "after_status": after.status_code}


def batch_bound(weights: Path, kind: str, sizes=(1, 8, 16), repeats: int = 3) -> dict:
    """Seconds per input of the model alone at each batch size (the embed task in-process, no HTTP): the most
    batching can gain is the ratio of the batch-1 time to the batch-B time."""
    sys.path.insert(0, str(ROOT / "src"))
    import tempfile

    import sensorium as sn
    from sensorium.tasks.embed import iter_embed
    from sensorium.tasks.inputs import MediaItem

    model = sn.load(str(weights), device="cpu")
    folder = Path(tempfile.mkdtemp())
    image = folder / "x.png"
    image.write_bytes(base64.b64decode(_image_url().split(",", 1)[1]))
    per_input = {}
    for size in sizes:
        if kind == "text":
            call = lambda: list(iter_embed(model, [], [f"a photo of thing number {i}" for i in range(size)]))  # noqa: E731
        else:
            call = lambda: list(iter_embed(model, [MediaItem(str(image), "image")] * size, []))  # noqa: E731
        call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) / size)
        per_input[size] = statistics.median(times)
    return per_input


def run(requests: int, clients: int, rounds: int, kinds: list[str]) -> None:
    weights = _weights()
    print(f"machine: {machine()}")
    results: dict = {}
    for kind in kinds:
        sides = {"batching": [], "no batching": []}
        for r in range(rounds):
            order = ("batching", "no batching") if r % 2 == 0 else ("no batching", "batching")
            for side in order:
                got = one_side(weights, side == "batching", kind, requests, clients)
                sides[side].append(got)
                print(f"  {kind} round {r + 1} {side}: {got['throughput']:.1f} req/s, p50 {got['p50_ms']:.0f} ms, "
                      f"p99 {got['p99_ms']:.0f} ms, mean batch {got['mean_batch']:.1f}, RSS {got['rss_before_mb']:.0f}"
                      f" -> {got['rss_after_mb']:.0f} MB, non-200 {got['other']}", file=sys.stderr, flush=True)
        med = {side: {k: statistics.median(x[k] for x in v) for k in v[0]} for side, v in sides.items()}
        results[kind] = {"median": med, "runs": sides}
        bound = batch_bound(weights, kind)
        results[kind]["seconds_per_input_by_batch"] = bound
        print(f"  {kind} model alone, seconds per input by batch size: "
              + ", ".join(f"{k}: {v:.3f}" for k, v in bound.items())
              + f" (batching can gain at most {bound[1] / min(bound.values()):.2f}x)", file=sys.stderr, flush=True)
        b, n = med["batching"], med["no batching"]
        print(f"| {kind}, {clients} clients, {requests} requests | batching {b['throughput']:.1f} req/s, p50 "
              f"{b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms (mean batch {b['mean_batch']:.1f}) | no batching "
              f"{n['throughput']:.1f} req/s, p50 {n['p50_ms']:.0f} ms, p99 {n['p99_ms']:.0f} ms | "
              f"{b['throughput'] / n['throughput']:.2f}x (model bound {bound[1] / min(bound.values()):.2f}x) | "
              f"RSS {b['rss_before_mb']:.0f} -> {b['rss_after_mb']:.0f} MB |",
              flush=True)
    full = queue_full(weights)
    results["queue_full"] = full
    print(f"| queue of 4, 32 clients, 64 requests | {full['burst_ok']} answered, {full['burst_refused']} refused (429) "
          f"| then one more request: {full['after_status']} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--requests", type=int, default=320)
    r.add_argument("--clients", type=int, default=16)
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--kind", nargs="+", default=["text", "image"], choices=("text", "image"))
    b = sub.add_parser("bound", help="the model alone: seconds per input at batch sizes 1, 8, 16")
    b.add_argument("--kind", nargs="+", default=["text", "image"], choices=("text", "image"))
    args = parser.parse_args()
    if args.command == "bound":
        for kind in args.kind:
            print(kind, batch_bound(_weights(), kind))
        return
    run(args.requests, args.clients, args.rounds, args.kind)


if __name__ == "__main__":
    main()
