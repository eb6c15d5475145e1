"""Every export prints the one progress-line format (`mlx_ft.progress`) on stderr: a line when a stage starts, lines
as it goes, and its last line, everything done, once its file or folder is written."""

from mlx_ft import cli, progress
from tests.export.test_hf import _run


def _stages(err: str) -> dict[str, list[progress.Record]]:
    out: dict[str, list[progress.Record]] = {}
    for line in err.splitlines():
        if (record := progress.parse(line)) is not None:
            out.setdefault(record.stage, []).append(record)
    return out


def _ends_whole(records: list[progress.Record], unit: str) -> None:
    first, last = records[0], records[-1]
    assert first.done == 0 and first.eta_s is None, first
    assert last.done == last.total > 0 and last.unit == unit and last.eta_s == 0, last
    assert last.rate_unit == "MB/s" and last.rate > 0, last
    assert all(a.done <= b.done for a, b in zip(records, records[1:]))


def test_exports_report_tensors_and_mb_per_second(qwen2_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line at every update
    run = _run(qwen2_dir, tmp_path)
    capsys.readouterr()

    assert cli.main(["export", "hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    stages = _stages(capsys.readouterr().err)
    assert list(stages) == ["writing HF folder"]
    _ends_whole(stages["writing HF folder"], "tensors")
    assert len(stages["writing HF folder"]) > 3, "a line per tensor here (EVERY_S 0)"

    assert cli.main(["export", "gguf", str(run), "--type", "q8_0", "--out", str(tmp_path / "g" / "r.gguf")]) == 0
    stages = _stages(capsys.readouterr().err)
    assert list(stages) == ["fusing", "writing q8_0 GGUF"]
    for records in stages.values():
        _ends_whole(records, "tensors")
    assert stages["fusing"][-1].total == stages["writing q8_0 GGUF"][-1].total, "one GGUF tensor per weight"

    out = tmp_path / "lora" / "r-lora.gguf"
    assert cli.main(["export", "gguf", str(run), "--adapter-only", "--type", "f16", "--out", str(out)]) == 0
    stages = _stages(capsys.readouterr().err)
    assert list(stages) == ["writing f16 GGUF", "fusing", "writing q4_k_m GGUF"], "the adapter, then its base"
    for records in stages.values():
        _ends_whole(records, "tensors")
