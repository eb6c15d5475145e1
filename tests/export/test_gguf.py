"""`export gguf`: files that read back through gguf-py and our own import as the model they came from, with the
tokenizer intact; refusals leave nothing behind. The llama.cpp proof is in test_llama_cpp.py."""

import gguf
import mlx.core as mx
import numpy as np
import pytest

from mlx_ft import cli
from mlx_ft.chat_template import prompt_ids
from mlx_ft.errors import UserError
from mlx_ft.export import gguf as export
from mlx_ft.models import gguf_arch, loader
from mlx_ft.models.gguf_import import import_gguf

CHAT = [
    {"role": "system", "content": "你是观赏鱼专家。"},
    {"role": "user", "content": "金鱼每天喂几次？ How often, 3 or 4?"},
]


def _logits(model, ids) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


@pytest.mark.parametrize("fixture", ["smollm2_dir", "qwen2_dir", "qwen3_dir"])
def test_f16_export_imports_back_as_the_same_model(request, fixture, tmp_path):
    src = str(request.getfixturevalue(fixture))
    out = tmp_path / "model-f16.gguf"
    export.export_gguf(src, "f16", out)
    assert (tmp_path / "Modelfile").read_text().startswith("FROM ./model-f16.gguf\n")

    reader = gguf.GGUFReader(out)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.chat_template"].contents()
    original = loader.load(src)
    back = loader.load(str(import_gguf(out, tmp_path / "back")))
    ids = prompt_ids(original.tokenizer, CHAT)
    assert prompt_ids(back.tokenizer, CHAT) == ids, "vocab, merges, pre-tokenizer and template survive the trip"
    a, b = _logits(original.model, ids), _logits(back.model, ids)
    assert np.abs(a - b).max() <= 2e-3 * np.abs(a).max() and (a.argmax(-1) == b.argmax(-1)).mean() > 0.95


def test_pre_tokenizer_names_match_llama_cpp(smollm2_dir, qwen2_dir):
    assert export.pre_tokenizer_name(loader.load(str(smollm2_dir)).tokenizer) == "smollm"
    assert export.pre_tokenizer_name(loader.load(str(qwen2_dir)).tokenizer) == "qwen2"


def test_quantized_export_of_a_run_keeps_the_adapter(qwen2_dir, tmp_path):
    from tests.export.test_hf import _run

    run = _run(qwen2_dir, tmp_path)
    assert cli.main(["export", "gguf", str(run), "--type", "q8_0", "--out", str(tmp_path / "g" / "run.gguf")]) == 0
    types = {
        gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(tmp_path / "g" / "run.gguf").tensors
    }
    assert types == {"Q8_0", "F32"}
    tuned = loader.load(str(run))
    back = loader.load(str(import_gguf(tmp_path / "g" / "run.gguf", tmp_path / "back")))
    ids = prompt_ids(tuned.tokenizer, CHAT)
    a, b = _logits(tuned.model, ids), _logits(back.model, ids)
    base = _logits(loader.load(str(qwen2_dir)).model, ids)
    assert np.abs(a - b).max() < 0.25 * np.abs(a - base).max(), "the file is the tuned model, not the base"


def test_refusals_leave_no_file(qwen2_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.gguf"
    with pytest.raises(UserError, match="GGUF type 'q3_k' is not supported"):
        export.export_gguf(str(qwen2_dir), "q3_k", out)
    monkeypatch.setattr(gguf_arch, "BY_MODEL_TYPE", {})
    assert cli.main(["export", "gguf", str(qwen2_dir), "--type", "f16", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlx_ft: error: architecture 'qwen2' cannot be exported") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_modelfile_command(qwen2_dir, tmp_path):
    assert cli.main(["export", "modelfile", str(qwen2_dir), "--gguf", "q.gguf", "--out", str(tmp_path / "M")]) == 0
    text = (tmp_path / "M").read_text()
    assert text.startswith('FROM ./q.gguf\nTEMPLATE """') and 'PARAMETER stop "<|im_end|>"' in text
