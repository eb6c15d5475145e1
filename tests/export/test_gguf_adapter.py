"""`export gguf --adapter-only`: the adapter file is laid out as llama.cpp's convert_lora_to_gguf.py writes one, the
Modelfile's FROM/ADAPTER pair names files that are there, and what has no LoRA form is refused without a file. The
proof that llama.cpp applies it right is in test_lora_llama_cpp.py."""

import sys

import gguf
import numpy as np
import pytest

from mlx_ft import cli
from mlx_ft.export import modelfile
from mlx_ft.models import loader
from tests.export.test_hf import _run

RANK, SCALE = 8, 7.5


@pytest.fixture(scope="module")
def lora_run(qwen3_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    return _run(qwen3_dir, tmp, learning_rate=2e-3, lora_parameters={"rank": RANK, "scale": SCALE, "dropout": 0.0})


def _fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}, reader.tensors


def test_adapter_file_is_what_llama_cpp_reads(lora_run, tmp_path, capsys):
    out = tmp_path / "x" / "lora.gguf"
    assert cli.main(["export", "gguf", str(lora_run), "--adapter-only", "--base-type", "q8_0", "--out", str(out)]) == 0
    fields, tensors = _fields(out)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "qwen3"
    assert fields["adapter.lora.alpha"] == pytest.approx(SCALE * RANK), "llama.cpp's alpha / rank is mlx_lm's scale"
    assert not any(k.startswith("tokenizer.") or k.startswith("qwen3.") for k in fields), "the base holds those"

    loaded = loader.load(str(lora_run), fuse=False)
    params = dict(loaded.model.named_modules())
    by_name = {t.name: t for t in tensors}
    assert len(by_name) == 2 * 2 * 7, "a pair for each of the 7 projections of the 2 adapted layers"
    layer = len(loaded.model.layers) - 1
    q = params[f"model.layers.{layer}.self_attn.q_proj"]
    a, b = by_name[f"blk.{layer}.attn_q.weight.lora_a"], by_name[f"blk.{layer}.attn_q.weight.lora_b"]
    # GGUF shapes are ggml's ne: lora_a is (in, rank), lora_b (rank, out), as llama.cpp checks them against the base
    assert list(a.shape) == [q.lora_a.shape[0], RANK] and list(b.shape) == [RANK, q.lora_b.shape[1]]
    assert gguf.GGMLQuantizationType(a.tensor_type).name == "F16"
    got = np.asarray(b.data, dtype=np.float32).reshape(q.lora_b.shape[1], RANK)
    assert np.allclose(got, np.array(q.lora_b).T, atol=1e-3), "qwen3 is not permuted: B is lora_b transposed"

    written = modelfile.parse((out.parent / "Modelfile").read_text())
    assert written.source == "./qwen3-tiny-q8_0.gguf", "the base, named for the run's base model and --base-type"
    assert written.adapters == ["./lora.gguf"] and "<|im_end|>" in written.stop
    assert (out.parent / written.source).is_file() and (out.parent / written.adapters[0]).is_file()
    assert out.stat().st_size < (out.parent / written.source).stat().st_size / 10
    assert "alpha 60" in capsys.readouterr().out


def test_q8_0_adapter_keeps_rank_long_rows_in_f16(lora_run, qwen3_dir, tmp_path):
    """convert_lora_to_gguf --outtype q8_0: lora_a rows (the input width) fill Q8_0 blocks, lora_b's (rank 8) do not
    and fall back to F16."""
    base = tmp_path / "base.gguf"
    assert cli.main(["export", "gguf", str(qwen3_dir), "--type", "f16", "--out", str(base)]) == 0
    out = tmp_path / "q" / "l.gguf"
    args = ["--adapter-only", "--type", "q8_0", "--base", str(base), "--out", str(out)]
    assert cli.main(["export", "gguf", str(lora_run), *args]) == 0
    types = {t.name.rsplit(".", 1)[-1]: gguf.GGMLQuantizationType(t.tensor_type).name for t in _fields(out)[1]}
    assert types == {"lora_a": "Q8_0", "lora_b": "F16"}
    written = modelfile.parse((out.parent / "Modelfile").read_text())
    assert written.source == str(base.resolve()), "an existing base outside the folder: named by its absolute path"
    assert {p.name for p in out.parent.iterdir()} == {"l.gguf", "Modelfile"}, "--base: no second base written"


def test_a_base_of_another_model_is_refused(lora_run, smollm2_dir, tmp_path, capsys):
    other = tmp_path / "other.gguf"
    cli.main(["export", "gguf", str(smollm2_dir), "--type", "q8_0", "--out", str(other)])
    out = tmp_path / "o" / "l.gguf"
    assert cli.main(["export", "gguf", str(lora_run), "--adapter-only", "--base", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mlx_ft: error: ") and "a llama model with 30 blocks" in err and "qwen3" in err
    assert not out.parent.exists()


@pytest.mark.parametrize("kind", [dict(fine_tune_type="dora"), dict(fine_tune_type="full")], ids=["dora", "full"])
def test_no_lora_form_is_refused_with_the_full_export_named(qwen2_dir, tmp_path, capsys, kind):
    run = _run(qwen2_dir, tmp_path, iters=1, **kind)
    out = tmp_path / "out" / "l.gguf"
    assert cli.main(["export", "gguf", str(run), "--adapter-only", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("mlx_ft: error:")]) == 1 and "Traceback" not in "\n".join(err)
    assert f"export gguf {run} --type" in err[-1]
    assert not out.parent.exists(), "no file, no folder"


def test_verify_without_llama_cpp_says_how_to_install_it(qwen2_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    out = tmp_path / "m.gguf"
    assert cli.main(["export", "gguf", str(qwen2_dir), "--type", "f16", "--out", str(out), "--verify", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "llama-cpp-python" in err and "pip install llama-cpp-python" in err
    assert not out.exists(), "checked before the export, not after minutes of it"


def test_verify_needs_a_run_with_a_test_split(qwen2_dir, lora_run, tmp_path, monkeypatch, capsys):
    from mlx_ft.inference import verify

    monkeypatch.setattr(verify, "llama_cpp", lambda: None)  # as if installed: the other checks come next
    out = tmp_path / "m.gguf"
    assert cli.main(["export", "gguf", str(qwen2_dir), "--type", "f16", "--out", str(out), "--verify"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert cli.main(["export", "gguf", str(lora_run), "--adapter-only", "--out", str(out), "--verify"]) == 2
    assert "test.jsonl: no test split to verify with" in capsys.readouterr().err
    assert cli.main(["export", "gguf", str(lora_run), "--out", str(out), "--verify", "0"]) == 2
    assert "give 1 or more" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "all refused before anything was written"


def test_base_flags_need_adapter_only(qwen2_dir, capsys):
    assert cli.main(["export", "gguf", str(qwen2_dir), "--base-type", "f16"]) == 2
    assert "--adapter-only" in capsys.readouterr().err


def test_modelfile_parse_reads_what_modelfile_writes(qwen2_dir):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(qwen2_dir)
    text = modelfile.modelfile("base.gguf", tok, 'Say "hi".\nTwo lines.', adapter="a.gguf")
    parsed = modelfile.parse(text)
    assert (parsed.source, parsed.adapters, parsed.system) == ("./base.gguf", ["./a.gguf"], 'Say "hi".\nTwo lines.')
    assert parsed.stop == modelfile.stop_tokens(tok) == ["<|im_end|>"]
    assert parsed.parameters == {"temperature": "0.7", "top_p": "0.9"}
    assert parsed.template.startswith("{{ if .System }}<|im_start|>system\n") and parsed.template.endswith("\n")
