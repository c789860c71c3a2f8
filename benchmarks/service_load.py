"""Load on the real service: 50 concurrent clients submitting small image jobs to `facefuse serve`.

Starts the server (uvicorn, two job workers) in a subprocess; each client submits, polls and downloads
its jobs. Prints p50/p95 latency (submit -> result downloaded), jobs/s, errors and lost jobs, and as
a baseline the same jobs through Pipeline in-process (one thread, models loaded, measured before and
after the service in the same run), as a ratio. The server runs its workers as processes (the default)
unless --worker-threads.

    .venv/bin/python benchmarks/service_load.py [--clients 50] [--jobs-per-client 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from facefuse.service.launch import ServerProcess

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SOURCE = "images/biden.jpg"
TARGETS = ["images/obama-240p.jpg", "images/obama-480p.jpg", "images/obama_small.jpg"]
POLL_S = 0.25  # how often a client polls its job


async def client_run(url: str, n: int, files_for, latencies: list[float], errors: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for i in range(n):
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/jobs", files=files_for(i))
                if r.status_code != 202:
                    errors.append(f"submit {r.status_code}: {r.text[:120]}")
                    continue
                job_id = r.json()["id"]
                while True:
                    job = (await client.get(f"/v1/jobs/{job_id}")).json()
                    if job["status"] not in ("queued", "running"):
                        break
                    await asyncio.sleep(POLL_S)
                if job["status"] != "done":
                    errors.append(f"job {job['status']}: {job.get('error')}")
                    continue
                result = await client.get(job["result_url"])
                if result.status_code != 200 or not result.content:
                    errors.append(f"download {result.status_code}")
                    continue
                latencies.append(time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")


def baseline(jobs: int) -> float:
    """Jobs/s for the same work in-process: read, source, swap, labelled write (models already loaded)."""
    from facefuse.media import write_image
    from facefuse.media.labels import SigningIdentity
    from facefuse.pipeline import Pipeline

    pipe = Pipeline()
    with tempfile.TemporaryDirectory() as tmp, SigningIdentity.load_or_create().signer() as signer:
        t0 = time.perf_counter()
        for i in range(jobs):
            target = MEDIA / TARGETS[i % len(TARGETS)]
            source = pipe.source(MEDIA / SOURCE)
            result = pipe.run(source, pipe.load(target))
            write_image(
                result.image,
                Path(tmp) / "out.jpg",
                source_type=pipe.swapper.digital_source_type,
                signer=signer,
            )
        return jobs / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs-per-client", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-threads", action="store_true", help="serve with worker threads")
    args = parser.parse_args()
    blobs = {name: (MEDIA / name).read_bytes() for name in [SOURCE, *TARGETS]}

    def files_for(i: int) -> list:
        target = TARGETS[i % len(TARGETS)]
        return [("source", ("s.jpg", blobs[SOURCE])), ("target", ("t.jpg", blobs[target]))]

    total = args.clients * args.jobs_per_client
    # The baseline runs before and after the service (this host is shared: its speed drifts), and the
    # ratio uses their mean.
    base_before = baseline(min(total, 30))
    with tempfile.TemporaryDirectory() as data:
        server = ServerProcess(
            Path(data), "--workers", str(args.workers), "--rate-limit", "0", "--max-active-jobs", "0",
            "--log-level", "warning", *(["--worker-threads"] if args.worker_threads else []),
        )  # fmt: skip
        with server:
            latencies: list[float] = []
            errors: list[str] = []

            async def run_all() -> None:
                await asyncio.gather(
                    *(
                        client_run(server.url, args.jobs_per_client, files_for, latencies, errors)
                        for _ in range(args.clients)
                    )
                )

            t0 = time.perf_counter()
            asyncio.run(run_all())
            wall = time.perf_counter() - t0
            listed = httpx.get(f"{server.url}/v1/jobs", params={"limit": 100}, timeout=30).json()["jobs"]
        from facefuse.service.jobs import SQLiteJobStore

        store = SQLiteJobStore(Path(data) / "jobs.sqlite3")
        stored = store.list("local", limit=100_000)
        done_in_store = sum(1 for j in stored if j.status.value == "done")
    lost = total - len(latencies) - len(errors)
    served = len(latencies) / wall
    mode = "threads" if args.worker_threads else "processes"
    print(f"service: {args.clients} clients x {args.jobs_per_client} jobs, {args.workers} worker {mode}")
    print(
        f"  jobs ok {len(latencies)}/{total}, errors {len(errors)}, lost {lost}, "
        f"done in the store {done_in_store}"
    )
    for e in errors[:5]:
        print(f"  error: {e}")
    if latencies:
        q = statistics.quantiles(latencies, n=20)
        print(
            f"  latency p50 {statistics.median(latencies):.2f} s, p95 {q[18]:.2f} s "
            "(submit -> result downloaded)"
        )
    print(f"  throughput {served:.2f} jobs/s over {wall:.1f} s (listed {len(listed)} of the newest)")
    base_after = baseline(min(total, 30))
    base = (base_before + base_after) / 2
    print(
        f"baseline: Pipeline in-process, one thread: {base:.2f} jobs/s "
        f"(before {base_before:.2f}, after {base_after:.2f})"
    )
    print(f"ratio service / in-process: {served / base:.2f}")


if __name__ == "__main__":
    main()
