"""What shipping the adapter instead of the model saves and costs: file sizes and export times of
`export gguf --adapter-only` against the full q4_k_m export a user would otherwise ship, and llama.cpp's speed on the
base with the adapter applied against the base alone and the fused q4_k_m file (what a user pays at run time).

    python bench/adapter_gguf.py [RUN] [--tokens 64] [--repeats 5]

Without RUN, a short LoRA run of the default config (SmolLM2, fish_care, --fine-tune-type lora, 4 steps) is trained
into a temporary folder first. Needs llama-cpp-python. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlx_ft import chat_template, cli  # noqa: E402  (after the path, so this checkout's mlx_ft is measured)
from mlx_ft.models import loader  # noqa: E402

PROMPT = [{"role": "user", "content": "金鱼每天喂几次？水温保持在多少度？"}]


def _timed(argv: list[str]) -> float:
    t = time.perf_counter()
    if cli.main(argv) != 0:
        raise SystemExit(f"failed: mlx_ft {' '.join(argv)}")
    return time.perf_counter() - t


def _speeds(llama_cpp, files: dict[str, tuple[Path, Path | None]], ids: list[int], tokens: int, repeats: int):
    """Best (prompt tokens/s, generated tokens/s) per file over `repeats` rounds, greedy, `tokens` generated whatever
    they are. The files take turns within each round, so load from other processes falls on all of them alike."""
    llms = {
        name: llama_cpp.Llama(
            model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=512, n_threads=2, verbose=False
        )
        for name, (model, lora) in files.items()
    }
    best = {name: (0.0, 0.0) for name in files}
    for _ in range(repeats):
        for name, llm in llms.items():
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            t1 = time.perf_counter()
            for _ in range(tokens):
                llm.eval([llm.sample(temp=0.0)])
            t2 = time.perf_counter()
            best[name] = (max(best[name][0], len(ids) / (t1 - t0)), max(best[name][1], tokens / (t2 - t1)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a LoRA run folder (default: train a short one)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per measurement (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of measurements, best kept (default 5)")
    args = parser.parse_args()
    import llama_cpp

    work = Path(tempfile.mkdtemp(prefix="adapter_gguf_"))
    run = args.run
    if run is None:
        run = str(work / "run")
        os.chdir(REPO)
        train = ["train", "--fine-tune-type", "lora", "--iters", "4", "--val-batches", "1", "--adapter-path", run]
        _timed(train)

    full = work / "full" / "model-q4_k_m.gguf"
    t_full = _timed(["export", "gguf", run, "--type", "q4_k_m", "--out", str(full)])
    pair = work / "pair" / "lora-f16.gguf"
    t_pair = _timed(["export", "gguf", run, "--adapter-only", "--base-type", "q4_k_m", "--out", str(pair)])
    base = next(p for p in pair.parent.glob("*.gguf") if p != pair)
    alone = work / "alone" / "lora-f16.gguf"
    t_alone = _timed(["export", "gguf", run, "--adapter-only", "--base", str(base), "--out", str(alone)])
    q8 = work / "q8" / "lora-q8_0.gguf"
    _timed(["export", "gguf", run, "--adapter-only", "--type", "q8_0", "--base", str(base), "--out", str(q8)])

    mb = 1e6
    print(f"\nrun: {run}")
    print("| file | size | export time |")
    print("| --- | --- | --- |")
    print(f"| full q4_k_m model (export gguf) | {full.stat().st_size / mb:.1f} MB | {t_full:.1f} s |")
    print(f"| adapter f16 (--adapter-only --base FILE) | {alone.stat().st_size / mb:.2f} MB | {t_alone:.1f} s |")
    print(f"| adapter q8_0 | {q8.stat().st_size / mb:.2f} MB | |")
    print(f"| adapter f16 + q4_k_m base (--adapter-only) | {base.stat().st_size / mb:.1f} MB base | {t_pair:.1f} s |")
    print(
        f"adapter / full q4_k_m: {alone.stat().st_size / full.stat().st_size:.3f}x the size, "
        f"{t_alone / t_full:.2f}x the export time"
    )

    ids = chat_template.prompt_ids(loader.load(run, adapter=False).tokenizer, PROMPT)
    files = {
        "q4_k_m base alone": (base, None),
        "q4_k_m base + f16 adapter": (base, alone),
        "fused q4_k_m (full export)": (full, None),
    }
    print(f"\nllama.cpp ({len(ids)}-token prompt, {args.tokens} tokens generated, 2 threads, best of {args.repeats})")
    print("| model | prompt tok/s | generation tok/s |")
    print("| --- | --- | --- |")
    speeds = _speeds(llama_cpp, files, ids, args.tokens, args.repeats)
    for name, (prompt, gen) in speeds.items():
        print(f"| {name} | {prompt:.0f} | {gen:.1f} |")
    with_adapter, fused = speeds["q4_k_m base + f16 adapter"], speeds["fused q4_k_m (full export)"]
    print(
        f"base + adapter / fused: {with_adapter[0] / fused[0]:.2f}x prompt speed, "
        f"{with_adapter[1] / fused[1]:.2f}x generation speed"
    )


if __name__ == "__main__":
    main()
