"""Switching the model a studio conversation answers with: swapping a run's adapter on the one loaded base
(`Engine`, what the page does) against loading that run afresh (`loader.load`, what restarting `serve RUN` does),
in one process.

Two short LoRA runs are trained on --model first (a few steps: the weights only need to exist). Then:
- fresh load: `loader.load(run)` (base read from disk, adapter attached, loaded and fused), median of --repeats;
- first switch: the first answer with a run on the shared base builds its variant (attach, load, fuse, record);
- switch: later switches (A → B → base → A …), which only swap module and array references.
Switch times are what the compare route reports as `switch_ms` (the engine's own timing of the switch, before the
first token). The answers through the engine are checked against the fresh loads' (greedy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import mlx_ft  # noqa: F401  (binds MLX to OpenBLAS on Linux before mlx.core loads)
from mlx_ft import config, data
from mlx_ft.inference.engine import BASE, Engine, ModelRef
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.training.run import train

QUESTION = [{"role": "user", "content": "金鱼浮在水面怎么办？"}]
GREEDY = Sampling(temp=0.0, top_p=1.0, max_tokens=4)


def make_runs(model: str, tmp: Path, layers: int) -> list[Path]:
    src = tmp / "facts.json"
    rows = [{"question": f"问题{i}？", "answer": f"答案{i}：换水。"} for i in range(8)]
    src.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    data.prepare([src], tmp / "data", valid=0.25, test=0.0)
    runs = []
    for name, rank in (("A", 8), ("B", 16)):
        values = dict(model=model, data=str(tmp / "data"), adapter_path=str(tmp / name), fine_tune_type="lora")
        values.update(num_layers=layers, batch_size=2, iters=2, learning_rate=1e-3, steps_per_eval=2, save_every=2)
        values.update(max_seq_length=64, lora_parameters={"rank": rank, "scale": 20.0, "dropout": 0.0})
        runs.append(train(config.build(values)))
    return runs


def answer(engine: Engine, ref: ModelRef | None) -> tuple[str, float]:
    timing: list[float] = []
    text = engine.answer(engine.prompt(QUESTION, GREEDY.max_tokens, ref), GREEDY, ref, timing)[0]
    return text, timing[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model (default: the built-in)")
    parser.add_argument("--layers", type=int, default=16, help="layers with LoRA adapters (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh loads to time (default 3)")
    parser.add_argument("--switches", type=int, default=30, help="cached switches to time (default 30)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as d:
        run_a, run_b = make_runs(args.model, Path(d), args.layers)
        fresh_ms, truth = [], {}
        for _ in range(args.repeats):
            for run in (run_a, run_b):
                start = time.perf_counter()
                loaded = loader.load(str(run))
                fresh_ms.append((time.perf_counter() - start) * 1000)
                truth[run] = answer(Engine(loaded), None)[0]
        truth[None] = answer(Engine(loader.load(args.model)), None)[0]

        engine = Engine(loader.load(args.model, adapter=False))
        refs = {run_a: ModelRef("run:A", run_a), run_b: ModelRef("run:B", run_b), None: BASE}
        first_ms = []
        for run in (run_a, run_b):
            text, ms = answer(engine, refs[run])
            first_ms.append(ms)
            assert text == truth[run], (text, truth[run])
        switch_ms = []
        order = [run_a, run_b, None]
        for k in range(args.switches):
            run = order[k % 3]
            text, ms = answer(engine, refs[run])
            switch_ms.append(ms)
            assert text == truth[run], (run, text, truth[run])

    fresh, first, switch = statistics.median(fresh_ms), statistics.median(first_ms), statistics.median(switch_ms)
    print(f"model {args.model}, LoRA on {args.layers} layers; answers through the switched engine equal fresh loads'")
    print(f"fresh load of a run (loader.load):   {fresh:9.1f} ms  (median of {len(fresh_ms)})")
    print(f"first switch to a run (build):       {first:9.1f} ms  ({fresh / first:.1f}x faster than a fresh load)")
    print(
        f"switch between runs/base (cached):   {switch:9.3f} ms  ({fresh / switch:.0f}x faster than a fresh load;"
        f" median of {len(switch_ms)})"
    )


if __name__ == "__main__":
    main()
