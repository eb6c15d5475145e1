import re

import pytest

from mlx_ft import config
from mlx_ft.errors import UserError
from tests.conftest import REPO


def test_shipped_config_loads_and_is_dora_rank_8():
    cfg = config.load(REPO / "lora_config.yaml")
    assert cfg.model == "smollm2-135m-instruct"
    assert cfg.fine_tune_type == "dora" and cfg.lora_parameters["rank"] == 8
    assert (REPO / cfg.data / "train.jsonl").is_file()


def test_overrides_win_and_strings_are_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iters: 5\nlearning_rate: 1e-5\nlora_parameters:\n  rank: 4\n")
    cfg = config.load(path, {"iters": 7, "lora_parameters.scale": "10", "mask_prompt": "false"})
    assert cfg.iters == 7 and cfg.learning_rate == 1e-5
    assert cfg.lora_parameters == {"rank": 4, "scale": 10.0, "dropout": 0.0}
    assert cfg.mask_prompt is False


@pytest.mark.parametrize(
    "values, message",
    [
        ({"iter": 5}, "unknown key 'iter'"),
        ({"iters": "many"}, "'iters': expected int"),
        ({"fine_tune_type": "qlora"}, "'fine_tune_type': 'qlora' is not one of lora, dora, full"),
        ({"lora_parameters": {"alpha": 16}}, "lora_parameters.alpha' is unknown"),
        ({"batch_size": 0}, "'batch_size' must be an integer from 1 to 1024"),
        ({"grad_checkpoint": "maybe"}, "'grad_checkpoint': expected bool"),
    ],
)
def test_bad_keys_are_named(values, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.build(values)


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iters: 5\nlora_parameters: [\n")
    with pytest.raises(UserError, match=r"c.yaml:\d+: invalid YAML"):
        config.load(path)


def test_mlx_lm_configs_load(tmp_path):
    path = tmp_path / "mlx_lm.yaml"
    path.write_text("model: some/model\ntrain: true\ntest: false\nfine_tune_type: lora\nnum_layers: -1\n")
    assert config.load(path).num_layers == -1


def test_dump_round_trips(tmp_path):
    cfg = config.build({"iters": 3, "lr_schedule": {"name": "cosine_decay", "arguments": [1e-4, 100], "warmup": 5}})
    path = tmp_path / "back.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg


def test_nested_overrides_reach_optimizer_config():
    cfg = config.from_cli(
        None, {"optimizer": "adamw"}, ["optimizer_config.adamw.weight_decay=0.1", "lora_parameters.rank=16", "iters=3"]
    )
    assert cfg.optimizer_config == {"adamw": {"weight_decay": 0.1}}
    assert cfg.lora_parameters["rank"] == 16 and cfg.iters == 3
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        config.from_cli(None, {}, ["iters"])
    with pytest.raises(UserError, match="only lora_parameters, optimizer_config, lr_schedule have sub-keys"):
        config.from_cli(None, {}, ["iters.x=1"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"iters": "--5"}, "'iters': expected int"),
        ({"val_batches": 0}, "'val_batches' must be an integer from 1 to 100000000"),
        ({"quantize": 3}, "'quantize': 3 is not one of None, 4, 8"),
        ({"quantize": 4, "fine_tune_type": "full"}, "a full fine-tune cannot train quantized weights"),
        ({"save_every": 3, "grad_accumulation_steps": 2}, "'save_every' must be a multiple of grad_accumulation_steps"),
        ({"epochs": 0}, "'epochs' must be a finite number above 0"),
        ({"early_stopping_patience": 0}, "'early_stopping_patience' must be an integer from 1"),
        ({"keep_checkpoints": -1}, "'keep_checkpoints' must be an integer from 0"),
    ],
)
def test_more_bad_values(values, message):
    with pytest.raises(UserError, match=message):
        config.build(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": float("inf")}, "'learning_rate' must be a finite number above 0"),
        ({"learning_rate": "nan"}, "'learning_rate' must be a finite number above 0"),
        ({"learning_rate": 1e999}, "'learning_rate' must be a finite number above 0"),
        ({"beta": float("nan")}, "'beta' must be a finite number from 0 to 1000"),
        ({"epochs": 1e308}, "'epochs' must be a finite number above 0 and at most 10000"),
        ({"epochs": float("nan")}, "'epochs' must be a finite number above 0"),
        ({"lora_parameters": {"rank": 10**12}}, "'lora_parameters.rank' must be an integer from 1 to 2048"),
        ({"lora_parameters": {"dropout": 5.0}}, "'lora_parameters.dropout' must be a finite number from 0 to 0.9"),
        ({"lora_parameters": {"scale": float("nan")}}, "'lora_parameters.scale' must be a finite number above 0"),
        ({"max_seq_length": 10**9}, "'max_seq_length' must be an integer from 1 to 1048576"),
        ({"num_layers": 0}, "'num_layers' must be an integer from 1 to 1000 (or -1)"),
        ({"seed": -1}, "'seed' must be an integer from 0"),
        ({"optimizer_config": {"adamw": {"weight_decay": float("nan")}}}, "'optimizer_config.adamw.weight_decay'"),
        ({"lr_schedule": {"name": "cosine_decay", "arguments": [1e-4, float("inf")]}}, "lr_schedule.arguments"),
    ],
)
def test_non_finite_and_absurd_values_are_refused(values, message):
    """The terminal and the studio's form (which goes through this code) refuse the same things in the same words."""
    with pytest.raises(UserError, match=re.escape(message)):
        config.build(values)


def test_non_finite_flags_are_refused():
    with pytest.raises(UserError, match="'learning_rate' must be a finite number above 0"):
        config.from_cli(None, {"learning_rate": float("nan")}, [])
    with pytest.raises(UserError, match="'lora_parameters.rank' must be an integer from 1 to 2048"):
        config.from_cli(None, {}, ["lora_parameters.rank=1000000000000"])
    with pytest.raises(UserError, match="'lora_parameters.dropout' must be a finite number from 0 to 0.9"):
        config.from_cli(None, {}, ["lora_parameters.dropout=.nan"])  # YAML's NaN
    assert config.from_cli(None, {"num_layers": -1}, []).num_layers == -1


def test_mlx_lm_default_keys_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "config: null\ntrust_remote_code: false\nresume_adapter_file: null\nclear_cache_threshold: 0\n"
        "report_to: null\nproject_name: null\n"
    )
    cfg = config.load(path)
    assert cfg.resume_adapter_file is None and cfg.clear_cache_threshold == 0
