"""The one progress-line format: what it prints, and that the parser reads back ours and training's lines."""

import pytest

from mlx_ft import progress


def test_lines_read_back_as_the_record_they_say():
    text = progress.line("scoring tuned", 12, 110, "answers", 41.23, "tok/s", 185.4)
    assert text == "mlx_ft: scoring tuned: 12/110 answers  41.2 tok/s  eta 3m05s"
    assert progress.parse(text) == progress.Record("scoring tuned", 12, 110, "answers", 41.2, "tok/s", 185.0, text)
    start = progress.line("writing q8_0 GGUF", 0, 290, "tensors")
    assert start == "mlx_ft: writing q8_0 GGUF: 0/290 tensors  eta ?"
    assert progress.parse(start) == progress.Record("writing q8_0 GGUF", 0, 290, "tensors", None, None, None, start)
    served = progress.line("resuming training", 17, 40, "steps", 1234.5, "tok/s", 4000, prefix="mlx_ft serve: ")
    assert served == "mlx_ft serve: resuming training: 17/40 steps  1,234 tok/s  eta 1h06m"
    assert progress.parse(served).eta_s == 3960.0 and progress.parse(served).rate == 1234.0


def test_trainings_own_line_is_read_too():
    """The shape of training/loop.py RunLog.report's line (a preference run's adds fields in the middle)."""
    text = "step 16/40  loss 2.345  lr 1.00e-03  1,840 tok/s  12 GFLOP/s  peak 0.42 GB  eta 13m05s"
    assert progress.parse(text) == progress.Record("training", 16, 40, "steps", 1840.0, "tok/s", 785.0, text)
    dpo = "step 3/9  loss 0.693  acc 50%  margin 0.000  chosen 0.000  rejected 0.000  lr 1.00e-05  84 tok/s  eta 0m12s"
    assert progress.parse(dpo).rate == 84.0 and progress.parse(dpo).done == 3
    for other in (
        "step 16/40  val_loss 2.100  (best)",  # a validation line: no ETA, not a progress line
        "mlx_ft: loading smollm2 for runs/a",
        "mlx_ft: interrupted after step 17; checkpoint saved in runs/a/checkpoints/step-0000017",
        "$ python -m mlx_ft eval runs/a --compare-base",
    ):
        assert progress.parse(other) is None, other
    lines = ["step 1/2  loss 1.000  lr 1e-3  10 tok/s  eta 0m01s", "step 1/2  val_loss 0.9  (best)", "adapter written"]
    assert progress.last(lines).done == 1 and progress.last(["nothing"]) is None


@pytest.mark.parametrize("seconds,text", [(0, "0m00s"), (59.9, "0m59s"), (3599, "59m59s"), (7322, "2h02m")])
def test_durations_round_trip_to_the_second_or_minute(seconds, text):
    assert progress.duration(seconds) == text
    assert progress.seconds_of(text) == pytest.approx(seconds, abs=60 if seconds >= 3600 else 1)
    assert progress.duration(None) == progress.duration(float("inf")) == "?" and progress.seconds_of("?") is None


def test_a_reporter_prints_its_start_at_most_one_line_per_interval_and_always_its_end(capsys, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    r = progress.Reporter("answering", 4, "answers", "tok/s", every_s=5)
    for done in range(1, 4):
        now[0] += 2
        r.update(done, amount=done * 10)  # 2 s per answer, 5 tok/s
    now[0] += 2
    r.finish(amount=40)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "mlx_ft: answering: 0/4 answers  eta ?",
        "mlx_ft: answering: 3/4 answers  5.0 tok/s  eta 0m02s",  # 6 s in: the first update past the interval
        "mlx_ft: answering: 4/4 answers  5.0 tok/s  eta 0m00s",
    ]
    now[0] += 1
    r2 = progress.Reporter("fusing", 2, "tensors", "MB/s", every_s=0)
    r2.update(2, 1.0, 1.0)  # the last item: left to finish, which the caller calls once the work is written
    assert capsys.readouterr().err.splitlines() == ["mlx_ft: fusing: 0/2 tensors  eta ?"]
    now[0] += 1
    r2.update(1, 0.5, 0.25)  # the share of the work, not of the items, makes the ETA: 1 s for a quarter
    assert capsys.readouterr().err.strip().endswith("1/2 tensors  0.5 MB/s  eta 0m03s")
