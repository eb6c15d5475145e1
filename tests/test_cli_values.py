"""The command line checks numbers as the config and the server do (`mlx_ft.checks`): NaN, infinities and values
outside what a command can use are refused by argparse, with the same words, before anything loads."""

import pytest

from mlx_ft import cli


@pytest.mark.parametrize(
    "argv, words",
    [
        (["prepare", "x.json", "--out", "o", "--valid", "nan"], "--valid: must be a finite number from 0 to 0.9"),
        (["prepare", "x.json", "--out", "o", "--test", "inf"], "--test: must be a finite number from 0 to 0.9"),
        (["prepare", "x.json", "--out", "o", "--max-seq-length", "0"], "--max-seq-length: must be an integer from 1"),
        (["infer", "run", "hi", "--temp", "NaN"], "--temp: must be a finite number from 0 to 10"),
        (["infer", "run", "hi", "--top-p", "0"], "--top-p: must be a finite number above 0 and at most 1"),
        (["chat", "run", "--max-tokens", "1e3"], "--max-tokens: must be an integer"),
        (["serve", "--port", "70000"], "--port: must be an integer from 1 to 65535"),
        (["serve", "--max-upload-mb", "-1"], "--max-upload-mb: must be a finite number above 0"),
        (["train", "--learning-rate", "nan"], "'learning_rate' must be a finite number above 0"),
    ],
)
def test_bad_numbers_are_one_line_refusals(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train reads ./lora_config.yaml when there is one: the shipped one here
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's refusal
        status = e.code
    assert status == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
