"""What constrained decoding (structured outputs: `response_format` json_object / json_schema, `regex`, `choice`)
would cost the decode core, per candidate grammar library: llguidance, xgrammar and outlines-core, on two
tokenizers: SmolLM2-135M-Instruct (49k vocab, the built-in model) and the Qwen2 BPE (151k vocab, the qwen2-tiny test
fixture). Measured on this machine's CPU, against one decode step of SmolLM2-135M (the cost it would add to).

Per library and tokenizer: the one-off tokenizer object (per model, cacheable); per grammar the request's setup
(grammar -> ready matcher: first call, then the median of a few, library caches off where they can be); the time to
the first mask; then walking a valid answer token by token (mask into an int32 bitmask + advance, the per-token cost a
logits processor pays: mean and p99 microseconds). Lightly checked: every token of the valid answer must be allowed
when it comes, EOS at the end, and `x` forbidden as the first token. Each library and tokenizer runs in its own
child process (this script with --worker), so a grammar compile past --compile-limit is killed and reported as
`>N s` rather than stalling the run. Then, per vocab size, what applying such a bitmask to (1, vocab) float32 MLX
logits costs (the libraries all write the same 32-bit little-endian bitmask, so this is library-independent), and
one decode step of SmolLM2-135M with a KV cache, for scale.

The four grammars: any JSON object (OpenAI's json_object), a JSON schema from a pydantic extraction model (str, int,
float, bool, a Literal of 4, list[str], a nested object, an optional field), the miners normaliser's answer regex,
and a choice among 6 labels as a regex alternation. A missing library is reported "not installed", not a failure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional

import mlx_ft  # noqa: F401  (binds MLX to OpenBLAS on Linux before mlx.core loads)
from mlx_ft.models import sources

LIBS = ("llguidance", "xgrammar", "outlines_core")
DISTS = {"llguidance": "llguidance", "xgrammar": "xgrammar", "outlines_core": "outlines-core"}
MINERS_REGEX = r"[A-Z][A-Za-z]+( [A-Za-z0-9+]+)+ - [0-9]+\.[0-9]th/t \$[0-9]+\.[0-9]"
LABELS = ("billing", "shipping", "returns", "technical", "account", "other")
GRAMMARS = ("json_object", "json_schema", "regex", "choice")


# ----------------------------------------------------------------------------------------------- grammars + answers
def extraction_schema() -> tuple[dict[str, Any], str]:
    """A pydantic model like a real extraction job's, its JSON schema and one valid instance (json.dumps spacing)."""
    from pydantic import BaseModel

    class Address(BaseModel):
        city: str
        postcode: str

    class Ticket(BaseModel):
        customer: str
        order_id: int
        amount: float
        refunded: bool
        category: Literal["billing", "shipping", "returns", "technical"]
        items: list[str]
        address: Address
        note: Optional[str] = None  # noqa: UP045 -- the Optional[...] form is what the request's schema gets

    t = Ticket(
        customer="Maria Lopez",
        order_id=48213,
        amount=129.5,
        refunded=False,
        category="returns",
        items=["blue kettle", "filter pack"],
        address=Address(city="Leeds", postcode="LS1 4AP"),
        note="Asked for a call back.",
    )
    return Ticket.model_json_schema(), json.dumps(t.model_dump())


def grammars() -> dict[str, dict[str, Any]]:
    """name -> {kind: json|regex, schema or regex, answer}: what each library compiles and the answer it walks."""
    schema, instance = extraction_schema()
    any_object = {
        "name": "Ada",
        "age": 36,
        "tags": ["x", "y"],
        "nested": {"a": 1.5, "b": None},
        "ok": True,
    }
    miners = "Antminer S19 XP - 140.0th/t $3.2"
    assert re.fullmatch(MINERS_REGEX, miners)
    return {
        "json_object": {"kind": "json", "schema": {"type": "object"}, "answer": json.dumps(any_object)},
        "json_schema": {"kind": "json", "schema": schema, "answer": instance},
        "regex": {"kind": "regex", "regex": MINERS_REGEX, "answer": miners},
        "choice": {"kind": "regex", "regex": "(" + "|".join(LABELS) + ")", "answer": "technical"},
    }


# ------------------------------------------------------------------------------------------------ library adapters
def _bytes_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character each byte is spelt as in tokenizer.json, inverted."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


class Adapter:
    """One library bound to one tokenizer: setup (per model), compile (per request), mask + advance (per token)."""

    def __init__(self, hf_tok: Any, vocab: int) -> None:
        import numpy as np

        self.np = np
        self.hf_tok = hf_tok
        self.vocab = vocab  # the model's logits width (>= the tokenizer's)
        self.words = (vocab + 31) // 32

    def new_mask(self) -> Any:
        return self.np.zeros((1, self.words), dtype=self.np.int32)

    def allowed(self, mask: Any, token: int) -> bool:
        return bool((int(mask[0, token // 32]) >> (token % 32)) & 1)


class LLGuidance(Adapter):
    def setup(self) -> None:
        import llguidance.hf
        from llguidance import LLMatcher
        from llguidance.numpy import fill_next_token_bitmask

        self.LLMatcher, self.fill = LLMatcher, fill_next_token_bitmask
        self.tok = llguidance.hf.from_tokenizer(self.hf_tok, n_vocab=self.vocab)

    def compile(self, g: dict[str, Any]) -> Any:
        if g["kind"] == "json":
            grammar = self.LLMatcher.grammar_from_json_schema(g["schema"])
        else:
            grammar = self.LLMatcher.grammar_from_regex(g["regex"])
        m = self.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return grammar  # the matcher is the compiled form; a walk builds its own from this (cheap: lazy lexer)

    def matcher(self, compiled: Any) -> Any:
        return self.LLMatcher(self.tok, compiled)

    def fill_mask(self, m: Any, mask: Any) -> None:
        self.fill(m, mask, 0)

    def advance(self, m: Any, token: int) -> None:
        if not m.consume_token(token):
            raise RuntimeError(f"token {token} refused: {m.get_error()}")


class XGrammar(Adapter):
    def setup(self) -> None:
        import torch
        import xgrammar as xgr

        self.xgr, self.torch = xgr, torch
        info = xgr.TokenizerInfo.from_huggingface(self.hf_tok, vocab_size=self.vocab)
        threads = os.cpu_count() or 1
        self.compiler = xgr.GrammarCompiler(info, max_threads=threads, cache_enabled=False)
        self.tmask = xgr.allocate_token_bitmask(1, self.vocab)  # torch int32 on CPU, what its matcher writes into

    def compile(self, g: dict[str, Any]) -> Any:
        if g["kind"] == "json":
            # strict_mode off: `{"type": "object"}` keeps any properties (strict would close it to `{}`)
            return self.compiler.compile_json_schema(json.dumps(g["schema"]), strict_mode=False)
        return self.compiler.compile_regex(g["regex"])

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def new_mask(self) -> Any:
        return self.tmask.numpy()  # shares memory with the torch tensor

    def fill_mask(self, m: Any, mask: Any) -> None:
        m.fill_next_token_bitmask(self.tmask, 0)

    def advance(self, m: Any, token: int) -> None:
        if not m.accept_token(token):
            raise RuntimeError(f"token {token} refused")


class OutlinesCore(Adapter):
    def setup(self) -> None:
        import outlines_core

        self.oc = outlines_core
        spec = json.loads(self.hf_tok.backend_tokenizer.to_str())
        if (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise RuntimeError("only byte-level BPE tokenizers are mapped here")
        dec = _bytes_decoder()
        special = set(self.hf_tok.all_special_ids) | {a["id"] for a in spec.get("added_tokens", []) if a["special"]}
        tokens: dict[bytes, list[int]] = {}
        for text, i in self.hf_tok.get_vocab().items():
            if i in special:
                continue
            tokens.setdefault(bytes(dec[c] for c in text), []).append(i)
        self.vocabulary = outlines_core.Vocabulary(self.hf_tok.eos_token_id, tokens)

    def compile(self, g: dict[str, Any]) -> Any:
        if g["kind"] == "json":
            regex = self.oc.json_schema.build_regex_from_schema(json.dumps(g["schema"]))
        else:
            regex = g["regex"]
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill_mask(self, m: Any, mask: Any) -> None:
        m.write_mask_into(mask.ctypes.data, mask.size, 4)

    def advance(self, m: Any, token: int) -> None:
        m.advance(token, return_tokens=False)


ADAPTERS = {"llguidance": LLGuidance, "xgrammar": XGrammar, "outlines_core": OutlinesCore}


# -------------------------------------------------------------------------------------------------------- the worker
def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def model_vocab(path: Path, hf_tok: Any) -> int:
    """The logits width: config.json's vocab_size (padded for Qwen2), at least the tokenizer's length."""
    try:
        v = int(json.loads((path / "config.json").read_text())["vocab_size"])
    except (OSError, KeyError, ValueError):
        v = 0
    return max(v, len(hf_tok))


def worker(lib: str, tok_path: str, names: list[str], repeats: int, walks: int) -> None:
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(tok_path)
    adapter = ADAPTERS[lib](hf_tok, model_vocab(Path(tok_path), hf_tok))
    t0 = time.perf_counter()
    adapter.setup()
    emit(event="setup", s=time.perf_counter() - t0, vocab=adapter.vocab)
    x_token = hf_tok.convert_tokens_to_ids("x")
    eos = hf_tok.eos_token_id
    every = grammars()
    for name in names:
        g = every[name]
        emit(event="start", name=name)
        t0 = time.perf_counter()
        try:
            compiled = adapter.compile(g)
            m = adapter.matcher(compiled)
        except Exception as e:  # noqa: BLE001 -- a library refusing a grammar is a result to print
            emit(event="failed", name=name, error=f"{type(e).__name__}: {e}".splitlines()[0][:160])
            continue
        first = time.perf_counter() - t0
        emit(event="compiled", name=name, s=first)
        times = [first]
        if first < 10:  # a slow compile is measured once: the run has a budget
            for _ in range(repeats - 1):
                t0 = time.perf_counter()
                adapter.matcher(adapter.compile(g))
                times.append(time.perf_counter() - t0)

        answer = hf_tok.encode(g["answer"], add_special_tokens=False)
        steps: list[float] = []
        masks: list[float] = []
        first_mask = 0.0
        problems: list[str] = []
        for walk in range(walks):
            m = adapter.matcher(compiled) if walk else m  # the first walk uses the first compile's matcher
            mask = adapter.new_mask()
            for i, token in enumerate(answer):
                t0 = time.perf_counter()
                adapter.fill_mask(m, mask)
                t1 = time.perf_counter()
                ok = adapter.allowed(mask, token)
                if i == 0 and adapter.allowed(mask, x_token) and walk == 0:
                    problems.append("`x` allowed first")
                if not ok:
                    problems.append(f"answer token {i} ({hf_tok.decode([token])!r}) masked out")
                    break
                t2 = time.perf_counter()
                adapter.advance(m, token)
                t3 = time.perf_counter()
                if walk == 0 and i == 0:
                    first_mask = t1 - t0
                steps.append((t1 - t0) + (t3 - t2))
                masks.append(t1 - t0)
            else:
                adapter.fill_mask(m, mask)
                if not adapter.allowed(mask, eos) and walk == 0:
                    problems.append("EOS masked out at the end")
            if problems:
                break
        us = sorted(s * 1e6 for s in steps)
        emit(
            event="done",
            name=name,
            compile_first=first,
            compile_median=statistics.median(times),
            n_compiles=len(times),
            first_mask_us=first_mask * 1e6,
            step_mean_us=statistics.fmean(us) if us else float("nan"),
            step_p99_us=us[min(len(us) - 1, int(0.99 * len(us)))] if us else float("nan"),
            mask_mean_us=statistics.fmean(masks) * 1e6 if masks else float("nan"),
            n_tokens=len(answer),
            check="ok" if not problems else "; ".join(problems),
        )


# -------------------------------------------------------------------------------------------------------- the parent
def run_lib(lib: str, tok_path: str, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The worker's records for `lib` on `tok_path`; a compile past the limit kills it and restarts on the rest."""
    out: dict[str, Any] = {"setup": None, "grammars": {}}
    todo = list(names)
    while todo:
        cmd = [sys.executable, __file__, "--worker", lib, tok_path, ",".join(todo)]
        cmd += ["--repeats", str(args.repeats), "--walks", str(args.walks)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        current, deadline = None, time.monotonic() + 300  # tokenizer load + setup
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            if not ready:  # past the deadline
                proc.kill()
                proc.wait()
                if current is None:
                    out["error"] = "setup past 300 s"
                    return out
                out["grammars"][current] = {"timeout": args.compile_limit}
                todo.remove(current)
                break
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
                if current is not None and current in todo:
                    out["grammars"][current] = {"error": (err[-1] if err else f"exit {proc.returncode}")[:160]}
                    todo.remove(current)
                elif out["setup"] is None:
                    out["error"] = (err[-1] if err else f"exit {proc.returncode}")[:200]
                    return out
                break
            rec = json.loads(line)
            ev = rec.pop("event")
            if ev == "setup":
                if out["setup"] is None:
                    out["setup"] = rec["s"]
                out["vocab"] = rec["vocab"]
                deadline = time.monotonic() + 300
            elif ev == "start":
                current = rec["name"]
                deadline = time.monotonic() + args.compile_limit
            elif ev == "compiled":
                deadline = time.monotonic() + 120  # repeats (only when fast) + walks
            elif ev in ("done", "failed"):
                out["grammars"][rec.pop("name")] = rec
                todo.remove(current)
                current = None
                deadline = time.monotonic() + 60
    return out


def time_apply(vocab: int, n: int) -> dict[str, float | str]:
    """Mean microseconds to put a (1, words) int32 bitmask onto (1, vocab) float32 MLX logits, evaluated."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    words = (vocab + 31) // 32
    mask_np = rng.integers(-(2**31), 2**31 - 1, size=(1, words), dtype=np.int32)
    logits = mx.random.normal((1, vocab)).astype(mx.float32)
    mx.eval(logits)
    neg = mx.array(-float("inf"), dtype=mx.float32)
    shifts = mx.arange(32, dtype=mx.uint32)
    lut_np = np.array([[0.0 if (b >> k) & 1 else -np.inf for k in range(8)] for b in range(256)], dtype=np.float32)
    lut = mx.array(lut_np)

    def shift_where() -> mx.array:
        m = mx.array(mask_np).view(mx.uint32)
        bits = ((m[:, :, None] >> shifts) & 1).reshape(1, -1)[:, :vocab]
        return mx.where(bits.astype(mx.bool_), logits, neg)

    def unpackbits_where() -> mx.array:
        bits = np.unpackbits(mask_np.view(np.uint8), axis=-1, bitorder="little")[:, :vocab].astype(np.bool_)
        return mx.where(mx.array(bits), logits, neg)

    @mx.compile
    def _lut(m: mx.array, x: mx.array) -> mx.array:
        return x + lut[m.view(mx.uint8)].reshape(1, -1)[:, :vocab]

    def lut_add() -> mx.array:  # xgrammar's MLX kernel: a 256x8 table of 0/-inf indexed by the mask's bytes
        return _lut(mx.array(mask_np), logits)

    def llg_metal() -> mx.array:
        from llguidance.mlx import apply_token_bitmask

        return apply_token_bitmask(logits, mask_np)

    ref = np.where(np.unpackbits(mask_np.view(np.uint8), bitorder="little")[:vocab].astype(bool), 0, 1)
    out: dict[str, float | str] = {}
    for label, fn in (
        ("shift+where", shift_where),
        ("np.unpackbits+where", unpackbits_where),
        ("lut+add (xgrammar mlx)", lut_add),
        ("llguidance.mlx (Metal)", llg_metal),
    ):
        try:
            r = fn()
            mx.eval(r)
            got = np.isneginf(np.array(r)[0]).astype(int)
            if not np.array_equal(got, ref):
                out[label] = "WRONG mask"
                continue
            for _ in range(10):
                mx.eval(fn())
            t0 = time.perf_counter()
            for _ in range(n):
                mx.eval(fn())
            out[label] = (time.perf_counter() - t0) / n * 1e6
        except Exception as e:  # noqa: BLE001 -- e.g. a Metal kernel on a CPU-only MLX: reported, not fatal
            out[label] = f"fails: {type(e).__name__}: {e}".splitlines()[0][:70]
    return out


def time_decode(model_path: str, steps: int) -> tuple[float, float] | str:
    """Median and mean milliseconds of one decode step (one token, KV cache, logits evaluated) after a 64-token
    prompt."""
    try:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load

        model, _ = load(model_path)
        cache = make_prompt_cache(model)
        prompt = mx.array([[(i * 37) % 1000 + 100 for i in range(64)]])
        mx.eval(model(prompt, cache=cache))
        token = mx.array([[42]])
        times = []
        for _ in range(steps + 3):
            t0 = time.perf_counter()
            logits = model(token, cache=cache)
            token = mx.argmax(logits[:, -1, :], axis=-1, keepdims=True)
            mx.eval(token)
            times.append(time.perf_counter() - t0)
        times = times[3:]
        return statistics.median(times) * 1e3, statistics.fmean(times) * 1e3
    except Exception as e:  # noqa: BLE001
        return f"fails: {type(e).__name__}: {e}".splitlines()[0][:100]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def installed(lib: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(lib) is not None


def fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm", default="smollm2-135m-instruct", help="model name or folder (mlx_ft resolves it)")
    ap.add_argument("--qwen", default=str(sources.cache_home() / "fixtures" / "qwen2-tiny"))
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--grammars", default=",".join(GRAMMARS))
    ap.add_argument("--repeats", type=int, default=3, help="compiles per grammar (the first, then the median)")
    ap.add_argument("--walks", type=int, default=3, help="walks of the valid answer per grammar")
    ap.add_argument("--compile-limit", type=float, default=120.0, help="seconds before a compile is reported >N")
    ap.add_argument("--apply-runs", type=int, default=200)
    ap.add_argument("--decode-steps", type=int, default=30)
    ap.add_argument("--worker", nargs=3, metavar=("LIB", "TOKENIZER", "GRAMMARS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        lib, tok, names = args.worker
        worker(lib, tok, names.split(","), args.repeats, args.walks)
        return

    import mlx.core as mx

    smollm = sources.resolve(args.smollm)
    tokenizers = {"SmolLM2-135M (49k)": smollm, "Qwen2 BPE (151k)": args.qwen}
    libs = args.libs.split(",")
    names = args.grammars.split(",")
    print(
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {platform.python_version()}, "
        f"mlx {version('mlx')} ({mx.default_device()}), mlx_lm {version('mlx-lm')}, "
        f"transformers {version('transformers')}, torch {version('torch')}"
    )
    print("libraries: " + ", ".join(f"{lib} {version(DISTS[lib])}" for lib in LIBS))
    print(f"tokenizers: {', '.join(f'{k} = {v}' for k, v in tokenizers.items())}")
    print(f"compile limit {args.compile_limit:.0f} s, {args.repeats} compiles, {args.walks} walks of the answer\n")

    t_start = time.perf_counter()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for tname, path in tokenizers.items():
        for lib in libs:
            if not installed(lib):
                results[lib, tname] = {"error": "not installed"}
                continue
            results[lib, tname] = run_lib(lib, str(path), names, args)

    print("tokenizer object (one-off per model, cacheable), seconds")
    print(f"{'library':15}" + "".join(f"{t:>22}" for t in tokenizers))
    for lib in libs:
        cells = []
        for t in tokenizers:
            r = results[lib, t]
            cells.append(fmt(r["setup"], ".2f") if r.get("setup") is not None else r.get("error", "?")[:21])
        print(f"{lib:15}" + "".join(f"{c:>22}" for c in cells))

    print(
        "\nper request and per token: compile = grammar -> ready matcher (first call / median), first mask, "
        "then mask + advance per token of a valid answer"
    )
    head = (
        f"{'tokenizer':20}{'library':15}{'grammar':13}{'compile 1st':>12}{'median':>10}{'1st mask':>10}"
        f"{'tok':>5}{'step mean':>11}{'p99':>9}{'mask mean':>11}  check"
    )
    print(head)
    print(f"{'':20}{'':15}{'':13}{'ms':>12}{'ms':>10}{'us':>10}{'':>5}{'us':>11}{'us':>9}{'us':>11}")
    for tname in tokenizers:
        for lib in libs:
            r = results[lib, tname]
            if "error" in r and not r["grammars"]:
                print(f"{tname:20}{lib:15}{r['error']}")
                continue
            for g in names:
                x = r["grammars"].get(g, {"error": "not run"})
                if "timeout" in x:
                    print(f"{tname:20}{lib:15}{g:13}{'>' + format(x['timeout'], '.0f') + ' s':>12}")
                elif "compile_first" not in x:
                    print(f"{tname:20}{lib:15}{g:13}  {x.get('error', '?')}")
                else:
                    print(
                        f"{tname:20}{lib:15}{g:13}{x['compile_first'] * 1e3:12.1f}{x['compile_median'] * 1e3:10.1f}"
                        f"{x['first_mask_us']:10.0f}{x['n_tokens']:5d}{x['step_mean_us']:11.1f}"
                        f"{x['step_p99_us']:9.0f}{x['mask_mean_us']:11.1f}  {x['check']}"
                    )

    print(f"\n(grammar runs took {time.perf_counter() - t_start:.0f} s)")
    decode = time_decode(smollm, args.decode_steps)
    if isinstance(decode, tuple):
        step_us = decode[0] * 1e3
        print(
            f"\nSmolLM2-135M decode step (1 token, KV cache, 64-token prompt): median {decode[0]:.2f} ms, "
            f"mean {decode[1]:.2f} ms"
        )
    else:
        step_us = None
        print(f"\nSmolLM2-135M decode step: {decode}")

    print(f"\napplying a bitmask to (1, vocab) float32 MLX logits, evaluated, mean of {args.apply_runs}")
    vocabs = sorted({r["vocab"] for r in results.values() if "vocab" in r}) or [49152, 151936]
    applied = {v: time_apply(v, args.apply_runs) for v in vocabs}
    methods = list(next(iter(applied.values())))
    print(f"{'method':26}" + "".join(f"{'vocab ' + str(v) + ' us':>18}" for v in vocabs))
    for meth in methods:
        cells = [applied[v][meth] for v in vocabs]
        if all(isinstance(c, str) for c in cells):
            print(f"{meth:26}  {cells[0]}")
        else:
            print(f"{meth:26}" + "".join(f"{fmt(c, '.1f'):>18}" for c in cells))

    if step_us:
        print(f"\nas % of one SmolLM2-135M decode step ({step_us / 1e3:.2f} ms): step mean + best apply")
        print(f"{'tokenizer':20}{'library':15}" + "".join(f"{g:>13}" for g in names))
        for tname in tokenizers:
            for lib in libs:
                r = results[lib, tname]
                if "vocab" not in r:
                    continue
                best = min(c for c in applied[r["vocab"]].values() if isinstance(c, float))
                cells = []
                for g in names:
                    x = r["grammars"].get(g, {})
                    cells.append(f"{(x['step_mean_us'] + best) / step_us * 100:.1f}%" if "step_mean_us" in x else "-")
                print(f"{tname:20}{lib:15}" + "".join(f"{c:>13}" for c in cells))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
