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
        (["serve", "--prompt-cache-bytes", "inf"], "--prompt-cache-bytes: 'inf' is not a size between 0 and"),
        (["serve", "--prompt-cache-bytes", "--port"], "--prompt-cache-bytes: expected one argument"),
        (["serve", "--prompt-cache-bytes", "2X"], "'2X' is not a size: write bytes or a number with K, M or G"),
        (["serve", "--prompt-cache-size", "-1"], "--prompt-cache-size: must be an integer from 0"),
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


def test_prompt_cache_sizes_read_as_serve_documents_them():
    args = cli.build_parser().parse_args(["serve", "--prompt-cache-bytes", "1.5G", "--prompt-cache-size", "0"])
    assert (args.prompt_cache_bytes, args.prompt_cache_size) == (3 << 29, 0)
    for text, size in (("0", 0), ("512M", 512 << 20), ("2GB", 2 << 30), ("64KiB", 64 << 10), ("1000", 1000)):
        assert cli.build_parser().parse_args(["serve", "--prompt-cache-bytes", text]).prompt_cache_bytes == size
    assert cli.build_parser().parse_args(["serve"]).prompt_cache_bytes is None  # from the machine's memory
