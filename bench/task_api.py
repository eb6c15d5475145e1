"""Task endpoint throughput: miner listings per second through `serve --task miners`, three ways a client can ask.

    python bench/task_api.py [RUN] [--n 64] [--infer-n 8]

RUN (default runs/miners, the miner recipe's run from recipes/README.md) is served by one `python -m mlx_ft serve
RUN --task miners` child process on a free port, and this process, the client, times:

  batch   one POST /api/tasks/miner-name {"inputs": [64 listings]}: one batched generation on the server;
  single  64 POSTs {"input": listing}, one after the other, as a naive client loops;
  infer   `python -m mlx_ft infer RUN LISTING --task miners` once per listing, a fresh process each (the model load
          included: that is what a shell loop over listings pays); timed on --infer-n listings and scaled.
  cached  the batch's 64 listings again: the server's result cache answers without generating.

Each way gets its own listings (distinct lines of data/miners/listings.jsonl), so no way is served from the cache
of another; a warm-up request first takes the one-time compile out of the timing. Answers are greedy, so the three
ways must agree on every listing they share: the check runs on a few listings asked all three ways.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import mlx_ft  # noqa: E402,F401  (first, as in every benchmark: this process loads no model, its server does)

from tests.serving import call, free_port, start_server  # noqa: E402  (the tests' real-server helpers)

TASK = "miner-name"


def listings(n: int) -> list[str]:
    rows = [json.loads(line)["input"] for line in (REPO / "data/miners/listings.jsonl").open(encoding="utf-8")]
    return list(dict.fromkeys(rows))[:n]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def infer_once(run: str, text: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "infer", run, text, "--task", "miners", "--temp", "0", "--max-tokens", "40"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/miners")
    ap.add_argument("--n", type=int, default=64, help="listings per way (batch, single)")
    ap.add_argument("--infer-n", type=int, default=8, help="listings answered by separate infer processes")
    args = ap.parse_args()

    pool = listings(3 * args.n + args.infer_n + 1)
    warm, batch_in = pool[0], pool[1 : 1 + args.n]
    single_in = pool[1 + args.n : 1 + 2 * args.n]
    infer_in = pool[1 + 2 * args.n : 1 + 2 * args.n + args.infer_n]
    port = free_port()
    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-task-api-{port}.db"
    proc = start_server(Path(args.run), port, db, "--task", "miners")
    try:
        call(port, "POST", f"/api/tasks/{TASK}", {"input": warm})
        t_batch, batch = timed(lambda: call(port, "POST", f"/api/tasks/{TASK}", {"inputs": batch_in}))
        t_single, singles = timed(
            lambda: [call(port, "POST", f"/api/tasks/{TASK}", {"input": x})["output"] for x in single_in]
        )
        t_cached, cached = timed(lambda: call(port, "POST", f"/api/tasks/{TASK}", {"inputs": batch_in}))
        assert all(r["cached"] for r in cached["results"]) and cached["outputs"] == batch["outputs"]
        # The same listings asked the other ways give the same greedy answers.
        agree = call(port, "POST", f"/api/tasks/{TASK}", {"inputs": single_in[:4]})["outputs"] == singles[:4]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    t_infer, inferred = timed(lambda: [infer_once(args.run, x) for x in infer_in])
    parsed = sum(r["parsed"] for r in batch["results"])

    rate = {
        "batch": args.n / t_batch,
        "single": args.n / t_single,
        "infer": args.infer_n / t_infer,
        "cached": args.n / t_cached,
    }
    print(f"run {args.run}: {args.n} listings per way, greedy, max_tokens from the recipe")
    print(f"{'way':<8}{'listings':>9}{'seconds':>10}{'listings/s':>12}")
    for way, n, t in (
        ("batch", args.n, t_batch),
        ("single", args.n, t_single),
        ("infer", args.infer_n, t_infer),
        ("cached", args.n, t_cached),
    ):
        print(f"{way:<8}{n:>9}{t:>10.2f}{rate[way]:>12.2f}")
    print(
        f"batch vs single requests: {rate['batch'] / rate['single']:.1f}x; batch vs infer per listing: "
        f"{rate['batch'] / rate['infer']:.1f}x; cached batch vs generated batch: {rate['cached'] / rate['batch']:.0f}x"
    )
    print(
        f"batch answers matching the recipe's pattern: {parsed}/{args.n}; batched and single answers agree: {agree}; "
        f"sample: {batch_in[0]!r} -> {batch['outputs'][0]!r} (infer: {infer_in[0]!r} -> {inferred[0]!r})"
    )


if __name__ == "__main__":
    main()
