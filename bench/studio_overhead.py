"""Training speed of a studio job against the same `train` from the terminal: what running as a job of `serve` costs
(the server process beside it with its model loaded, output to RUN/studio.log, the job's event stream polling
metrics.jsonl and the log twice a second, as the studio page does while it watches).

Both sides run the very command the new-run form resolves (`POST /api/studio/form` → `argv`): the terminal side as
`python -m mlx_ft train ARGV` (output to a file, as a terminal user redirecting it would), the studio side as
`POST /api/studio/jobs` on a real `mlx_ft serve` process, with an event stream open on the job until it ends. They
alternate (terminal, studio, terminal, studio, ... : --repeats pairs) on the same data, seed and batches.

tok/s: real tokens over wall time from the metrics.jsonl row of step 1 to that of the last step (every step reports),
so loading and the first step's compile stay outside; `ratio` = studio / terminal (1.00: no overhead). On a shared
machine a run's figure moves by several percent (more when the load average printed beside it is above the number
of cores); the medians and every run's figure are printed.

Usage: python bench/studio_overhead.py [--model smollm2-135m-instruct] [--data fish_care] [--steps 12]
       [--repeats 2] [--batch-size 2] [--max-seq-length 128] [--num-layers 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import mlx_ft  # noqa: E402,F401 -- binds MLX to OpenBLAS before anything imports mlx.core
from mlx_ft.training.loss_plot import read_metrics  # noqa: E402

from tests.serving import call, free_port, start_server  # noqa: E402  (the tests' real-server helpers)


def tokens_per_sec(run: Path) -> tuple[float, int]:
    """Real tokens per second from step 1's row to the last step's, and the number of timed steps."""
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    first, last = rows[0], rows[-1]
    return (last["tokens"] - first["tokens"]) / (last["time"] - first["time"]), last["step"] - first["step"]


def watch(port: int, job_id: str) -> threading.Thread:
    """Hold the job's event stream open until it ends, as the studio page does."""

    def read() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studio/jobs/{job_id}/events", timeout=3600) as r:
            for _ in r:
                pass

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default="fish_care", help="a data set the studio knows (shipped or in its data folder)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="studio_overhead."))
    port = free_port()
    extra = ("--runs", str(root / "runs"), "--exports-dir", str(root / "exports"))
    server = start_server(args.model, port, root / "chat.db", *extra)
    figures: dict[str, list[float]] = {"terminal": [], "studio": []}
    try:
        for i in range(args.repeats):
            for side in ("terminal", "studio"):
                name = f"{side}-{i}"
                values = {
                    "name": name,
                    "model": args.model,
                    "data": args.data,
                    "method": "lora",
                    "iters": args.steps + 1,
                    "batch_size": args.batch_size,
                    "max_seq_length": args.max_seq_length,
                    "num_layers": args.num_layers,
                    "steps_per_report": 1,
                    "steps_per_eval": 100000,
                    "save_every": 100000,
                    "val_batches": 1,
                }
                form = call(port, "POST", "/api/studio/form", {"values": values})
                run = root / "runs" / name
                if side == "terminal":
                    with open(root / f"{name}.log", "w") as log:
                        subprocess.run(
                            [sys.executable, "-m", "mlx_ft", "train", *form["argv"]],
                            cwd=REPO,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            check=True,
                        )
                else:
                    job = call(port, "POST", "/api/studio/jobs", {"kind": "train", "values": values})["job"]
                    assert job["command"] == form["command"], "the job runs the command the form shows"
                    watch(port, job["id"]).join()
                    job = call(port, "GET", f"/api/studio/jobs/{job['id']}")["job"]
                    if job["state"] != "done":
                        raise SystemExit(f"studio job {job['state']}: {job['error']}")
                tps, steps = tokens_per_sec(run)
                figures[side].append(tps)
                load = os.getloadavg()[0]  # another job on the machine shows here (2 cores: above ~2.5, it is busy)
                print(f"{name:12s} {tps:8.1f} tok/s over {steps} steps  (load average {load:.1f})", flush=True)
    finally:
        server.terminate()
        server.wait()
    # Medians: on a shared machine one run in a few lands far off (another job paused or started), on either side.
    term, studio = (statistics.median(figures[s]) for s in ("terminal", "studio"))
    print(
        f"\nmodel {args.model}, data {args.data}, LoRA on {args.num_layers} layers, batch {args.batch_size}, "
        f"max_seq_length {args.max_seq_length}, {args.steps} timed steps x {args.repeats} runs a side"
    )
    print(f"terminal {term:8.1f} tok/s (median)  runs {', '.join(f'{x:.1f}' for x in figures['terminal'])}")
    print(f"studio   {studio:8.1f} tok/s (median)  runs {', '.join(f'{x:.1f}' for x in figures['studio'])}")
    print(f"ratio    {studio / term:8.3f}  (studio / terminal)")
    print(f"(run folders in {root})")


if __name__ == "__main__":
    main()
