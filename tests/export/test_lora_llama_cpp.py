"""The proof that an adapter GGUF works where users run it: llama.cpp on the base f16 GGUF with our adapter computes
what our fused f16 export computes (the same weights, rounded in a different place), far closer than the adapter's
own effect, with the same top-1 token everywhere; and `--verify` reports the round trip. Needs llama-cpp-python,
like test_llama_cpp.py (whose helpers this uses, and whose import rules apply)."""

from pathlib import Path

import numpy as np
import pytest

from mlx_ft import chat_template, cli
from mlx_ft.export.gguf import export_gguf
from mlx_ft.models import loader
from tests.conftest import REPO
from tests.export.test_hf import _run
from tests.export.test_llama_cpp import CHATS, _cpp_logits, _llama

LORA = {"rank": 4, "scale": 20.0, "dropout": 0.0}  # test_hf's, mlx_lm's default scale


def _adapter_and_fused(model: Path, tmp: Path, **kw) -> tuple[Path, Path, Path, Path]:
    """(run, base f16 GGUF, adapter GGUF, fused f16 GGUF) for a short LoRA run on `model` with a real effect."""
    run = _run(model, tmp, learning_rate=2e-3, **kw)
    out = tmp / "adapter" / "lora.gguf"
    assert cli.main(["export", "gguf", str(run), "--adapter-only", "--base-type", "f16", "--out", str(out)]) == 0
    bits = f"-{kw['quantize']}bit" if kw.get("quantize") else ""
    base = out.parent / f"{model.name}{bits}-f16.gguf"
    assert base.is_file()
    return run, base, out, export_gguf(str(run), "f16", tmp / "fused" / "fused-f16.gguf")


@pytest.mark.parametrize(
    "fixture, kw",
    [
        ("smollm2_dir", dict(lora_parameters=LORA, num_layers=4)),  # llama: the Q/K permutation, on B
        ("qwen3_dir", dict(lora_parameters=LORA)),  # both of its 2 layers
        ("smollm2_dir", dict(lora_parameters={"rank": 8, "scale": 7.5, "dropout": 0.0}, num_layers=4)),  # alpha 60
    ],
    ids=["smollm2", "qwen3", "smollm2-rank8-scale7.5"],
)
def test_llama_cpp_with_the_adapter_computes_the_fused_model(request, fixture, kw, tmp_path):
    model = request.getfixturevalue(fixture)
    run, base, adapter, fused = _adapter_and_fused(model, tmp_path, **kw)
    tok = loader.load(str(model)).tokenizer
    with_adapter, fused_llm, bare = _llama(base, adapter), _llama(fused), _llama(base)
    for chat in CHATS:
        ids = chat_template.prompt_ids(tok, chat)
        expected, got, plain = _cpp_logits(fused_llm, ids), _cpp_logits(with_adapter, ids), _cpp_logits(bare, ids)
        effect, error = np.abs(expected - plain).max(), np.abs(expected - got).max()
        print(f"{request.node.callspec.id}: max |base+adapter - fused| {error:.4f}, adapter's effect {effect:.3f}")
        assert effect > 1.0, "the adapter changes the model, so the comparison can fail"
        assert error < 0.02 * effect
        _same_top1(expected, got, error)


def _same_top1(expected: np.ndarray, got: np.ndarray, error: float) -> None:
    """The same top-1 token everywhere, but for near-ties: a position may differ only where the two tokens' logits
    were within the rounding error (the random-weight Qwen fixtures have such flat rows; SmolLM2 has none)."""
    top, theirs = expected.argmax(-1), got.argmax(-1)
    gap = expected.max(-1) - np.take_along_axis(expected, theirs[:, None], -1)[:, 0]
    assert (gap[top != theirs] <= 2 * error).all() and (top != theirs).mean() <= 0.05


def test_qlora_adapter_applies_to_the_dequantized_base(qwen2_dir, tmp_path, capsys):
    """The base written beside a QLoRA adapter is the 4-bit base dequantized, and the CLI says so: llama.cpp on it
    with the adapter is the fused export (the dequantized base plus the update), not the float original plus it."""
    run, base, adapter, fused = _adapter_and_fused(qwen2_dir, tmp_path, quantize=4, lora_parameters=LORA)
    assert "dequantized" in capsys.readouterr().out
    tok = loader.load(str(qwen2_dir)).tokenizer
    original = export_gguf(str(qwen2_dir), "f16", tmp_path / "original" / "original-f16.gguf")
    ids = chat_template.prompt_ids(tok, CHATS[0])
    expected = _cpp_logits(_llama(fused), ids)
    got = _cpp_logits(_llama(base, adapter), ids)
    on_original = _cpp_logits(_llama(original, adapter), ids)
    error, other = np.abs(expected - got).max(), np.abs(expected - on_original).max()
    print(f"qlora: max |dequantized base+adapter - fused| {error:.4f}; on the float original {other:.4f}")
    assert error < 0.25 * other
    _same_top1(expected, got, error)


def test_verify_on_the_default_run(tmp_path, capsys):
    """The default run (lora_config.yaml: SmolLM2, fish_care, DoRA), two steps of it: its f16 export agrees with MLX
    on every test prompt; q4_k_m's share is printed."""
    run = tmp_path / "run"
    config = str(REPO / "lora_config.yaml")
    assert cli.main(["train", "-c", config, "--iters", "2", "--val-batches", "1", "--adapter-path", str(run)]) == 0
    capsys.readouterr()
    f16 = tmp_path / "f16" / "fish-f16.gguf"
    assert cli.main(["export", "gguf", str(run), "--type", "f16", "--out", str(f16), "--verify", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    with capsys.disabled():
        print("\n".join(lines))
    assert lines[-1] == "agreement: 4/4 prompts (100%) on the first 16 tokens"
    assert all("(llama.cpp's prompt tokens differ" not in line for line in lines), "Modelfile template = chat template"
    q4 = tmp_path / "q4" / "fish-q4_k_m.gguf"
    assert cli.main(["export", "gguf", str(run), "--out", str(q4), "--verify", "4", "--verify-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    with capsys.disabled():
        print("\n".join(lines))
    assert lines[-1].startswith("agreement: ") and lines[-1].endswith("on the first 8 tokens")
    assert len([line for line in lines if line.lstrip()[:1].isdigit()]) == 4, "a line per prompt"


def test_verify_an_adapter_export(smollm2_dir, tmp_path, capsys):
    """`--verify` on an adapter export runs llama.cpp with the Modelfile's FROM and ADAPTER."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text((REPO / "data" / "fish_care" / "test.jsonl").read_text(encoding="utf-8"))
    run = _run(smollm2_dir, tmp_path, learning_rate=2e-3, num_layers=4, lora_parameters=LORA)
    out = tmp_path / "a" / "lora.gguf"
    args = ["--adapter-only", "--base-type", "f16", "--out", str(out), "--verify", "3"]
    assert cli.main(["export", "gguf", str(run), *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    with capsys.disabled():
        print("\n".join(lines))
    assert lines[-1] == "agreement: 3/3 prompts (100%) on the first 16 tokens"
