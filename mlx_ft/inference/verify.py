"""`export gguf --verify`: the round trip before `ollama create`. Prompts from the run's test split are answered
greedily by MLX (the run, as `infer` answers) and by llama.cpp on the exported file(s) the way Ollama runs them: the
Modelfile's FROM (and ADAPTER), its TEMPLATE rendered with its SYSTEM, llama.cpp's own tokenizer on the result, and
generation ending at the model's end-of-generation tokens or a `PARAMETER stop`. Per prompt: whether the first K
answer tokens agree, and whether the prompt tokens did; then the share of prompts that agree. A template, tokenizer
or stop-token mismatch shows up here as a disagreement from the first token or a prompt that differs."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from mlx_ft import chat_template, data
from mlx_ft.chat_template import Message
from mlx_ft.data.formats import with_system
from mlx_ft.errors import UserError
from mlx_ft.export import go_template, modelfile
from mlx_ft.inference import evaluate, generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.resources import local_or_shipped

DEFAULT_PROMPTS = 8
DEFAULT_TOKENS = 16
INSTALL = "pip install llama-cpp-python (or pip install -e '.[llama]' in a checkout; it compiles llama.cpp, minutes)"


def llama_cpp() -> ModuleType:
    """llama-cpp-python, or a UserError that says how to install it."""
    try:
        import llama_cpp as module
    except ImportError:
        raise UserError(
            f"--verify runs the export in llama.cpp through llama-cpp-python, not installed: {INSTALL}"
        ) from None
    return module


@dataclass
class Check:
    """One prompt: the first answer tokens of each side (ids, up to the end of the answer), and whether the prompts
    were the same ids."""

    question: str  # the last user message
    mlx: list[int]
    cpp: list[int]
    same_prompt: bool

    @property
    def agree(self) -> bool:
        return self.mlx == self.cpp

    def first_difference(self) -> int:
        same = min(len(self.mlx), len(self.cpp))
        return next((i for i, (a, b) in enumerate(zip(self.mlx, self.cpp)) if a != b), same)


@dataclass
class Report:
    checks: list[Check]
    tokens: int

    @property
    def share(self) -> float:
        return sum(c.agree for c in self.checks) / len(self.checks) if self.checks else 0.0

    def lines(self, tokenizer: Any) -> list[str]:
        def text(ids: list[int]) -> str:
            return repr(tokenizer.decode(ids))

        out = []
        for i, c in enumerate(self.checks, 1):
            prompt = "" if c.same_prompt else " (llama.cpp's prompt tokens differ from MLX's: template or tokenizer)"
            question = c.question if len(c.question) <= 24 else c.question[:23] + "…"
            if c.agree:
                out.append(f"  {i:>3}  agree        {question!r}: {text(c.mlx)}{prompt}")
            else:
                at = c.first_difference()
                out.append(
                    f"  {i:>3}  differ at {at:<3} {question!r}: MLX {text(c.mlx)} | llama.cpp {text(c.cpp)}{prompt}"
                )
        agree = sum(c.agree for c in self.checks)
        n = len(self.checks)
        out.append(f"agreement: {agree}/{n} prompts ({self.share:.0%}) on the first {self.tokens} tokens")
        return out


def mlx_answer(model: Any, tokenizer: Any, prompt: list[int], k: int) -> list[int]:
    """The first `k` tokens of MLX's greedy answer, ending early at the end of turn (the token itself left out),
    generated as `infer` and `serve` generate it."""
    return generation.generate_many(model, tokenizer, [prompt], Sampling(temp=0.0, max_tokens=k))[0]


def cpp_answer(lib: ModuleType, llm: Any, prompt: list[int], k: int, stops: list[str]) -> list[int]:
    """llama.cpp's greedy answer, as Ollama stops it: at an end-of-generation token or a stop string."""
    vocab = lib.llama_model_get_vocab(llm.model)
    out: list[int] = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        if lib.llama_vocab_is_eog(vocab, token):
            break
        text = llm.detokenize([*out, token], special=True).decode("utf-8", errors="replace")
        if any(s in text for s in stops):
            break
        out.append(token)
        if len(out) >= k:
            break
    return out


def _ollama_prompt(mf: modelfile.Parsed, messages: list[Message]) -> str:
    """The text Ollama writes for `messages` with this Modelfile: its TEMPLATE, the conversation's own system prompt
    or else the Modelfile's SYSTEM."""
    if mf.template is None:
        raise UserError("the Modelfile has no TEMPLATE; Ollama would not write the chat format the model learned")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else (mf.system or "")
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return go_template.render(mf.template, system, rest)


def _file(folder: Path, name: str) -> str:
    path = Path(name) if Path(name).is_absolute() else folder / name
    if not path.is_file():
        raise UserError(f"{folder / 'Modelfile'}: names {name}, which is not there")
    return str(path)


def test_split(source: str) -> Path:
    """The test split `--verify` answers from, checked before anything is exported."""
    cfg = loader.run_config(source)
    if cfg is None:
        raise UserError(f"--verify answers prompts from a run's test split, and {source} is not a run folder")
    split = local_or_shipped(cfg.data) / "test.jsonl"
    if not split.is_file():
        raise UserError(f"{split}: no test split to verify with (prepare the data with --test 0.1)")
    return split


def verify(source: str, modelfile_path: Path, n: int = DEFAULT_PROMPTS, k: int = DEFAULT_TOKENS) -> Report:
    """Answer the first `n` prompts of `source`'s test split with MLX and with llama.cpp on the files
    `modelfile_path` names; compare the first `k` tokens of each answer."""
    lib = llama_cpp()
    mf = modelfile.parse(Path(modelfile_path).read_text(encoding="utf-8"))
    folder = Path(modelfile_path).parent
    split = test_split(source)
    loaded = loader.load(source)
    todo = evaluate.targets(data.load_split(split.parent, "test"))[:n]
    if not todo:
        raise UserError(f"{split}: no conversations to verify with")
    conversations = [with_system(t.prompt, loaded.system) for t in todo]
    prompts = [chat_template.prompt_ids(loaded.tokenizer, c) for c in conversations]
    adapter = _file(folder, mf.adapters[0]) if mf.adapters else None
    names = " + ".join(Path(p).name for p in (mf.source, *mf.adapters))
    print(
        f"mlx_ft: verifying {len(todo)} test prompts, greedy, first {k} tokens: MLX vs llama.cpp on {names}",
        file=sys.stderr,
    )
    llm = lib.Llama(
        model_path=_file(folder, mf.source),
        lora_path=adapter,
        n_ctx=max(len(p) for p in prompts) + k + 64,
        verbose=False,
        seed=0,
    )
    checks = []
    for conv, prompt in zip(conversations, prompts):
        theirs = llm.tokenize(_ollama_prompt(mf, conv).encode("utf-8"), add_bos=True, special=True)
        checks.append(
            Check(
                conv[-1]["content"],
                mlx_answer(loaded.model, loaded.tokenizer, prompt, k),
                cpp_answer(lib, llm, theirs, k, mf.stop),
                theirs == prompt,
            )
        )
    report = Report(checks, k)
    for line in report.lines(loaded.tokenizer):
        print(line)
    return report
