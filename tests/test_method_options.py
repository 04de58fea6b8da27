"""Typed method options: checked with the config, before any model is loaded or trained."""

from __future__ import annotations

import pytest
from tiny_run import CONFIG, error_line

from bslora_pyro.cli import main
from bslora_pyro.experiment.config import ConfigError, load_config
from bslora_pyro.methods import MethodError, available_methods, check_options, method_module
from bslora_pyro.methods.base import Method, MethodOptions


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=random_mask", "method_options.num_maskd=1"],
         "method 'random_mask' has no option 'num_maskd' (did you mean num_masked?)"),
        (["method=mle", "method_options.rank=1"], "method 'mle' has no option 'rank' (it takes: none)"),
        (["method=random_mask", "method_options.num_masked=two"],
         "method_options.num_masked: 'two' is not a valid int | None"),
        (["method=ensemble", "method_options.members=[3]"],
         "method_options.members: expected int, got [3]"),
        (["method=random_mask", "method_options.num_masked=4"],
         "random_mask.num_masked must be an integer in [0, 4), got 4"),
        (["method=ensemble", "method_options.members=0"],
         "ensemble.members must be a positive integer, got 0"),
        (["method=mc_dropout", "method_options.dropout=1.5"],
         "mc_dropout.dropout must be in (0, 1), got 1.5"),
        (["method=laplace", "method_options.predictive=probit"], "laplace.predictive must be one of"),
        (["method=blob", "method_options.prior_std=-1"], "blob.prior_std must be positive"),
        (["method=map", "method_options.weight_decay=-1"], "map.weight_decay must be >= 0"),
        (["method=temperature_scaling", "method_options.holdout_fraction=1.0"],
         "holdout_fraction must be in (0, 1)"),
        (["predict.num_samples=0"], "predict.num_samples must be a positive integer, got 0"),
    ],
)
def test_a_bad_method_option_is_a_config_error_naming_it(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG, overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("override", ["predict.num_samples=0", "method_options.guid=x"])
def test_the_cli_refuses_a_bad_value_before_training(tmp_path, capsys, override):
    out = tmp_path / "run"
    code = main(["train", str(CONFIG), "--out", str(out), "--quiet",
                 "--set", "model.name=no-model-is-loaded", "--set", override])
    assert code == 2
    assert override.split("=")[0].split(".")[-1] in error_line(capsys.readouterr().err)
    assert not out.exists()  # refused before the run directory was made


def test_valid_options_pass_and_exponent_strings_are_floats():
    config = load_config(CONFIG, ["method=map", "method_options.weight_decay=1e-4"])
    assert config.method_options == {"weight_decay": "1e-4"}  # the config keeps what was given
    check_options("map", {"weight_decay": "1e-4"})  # YAML 1.1 reads 1e-4 as a string


@pytest.mark.parametrize("name", available_methods())
def test_every_method_module_follows_the_protocol(name):
    module = method_module(name)
    assert module.NAME == name
    assert issubclass(module.OPTIONS, MethodOptions)
    assert callable(module.build) and callable(module.load)
    with pytest.raises(MethodError, match="has no option 'no_such_option'"):
        check_options(name, {"no_such_option": 1})


def test_the_method_hooks_default_to_nothing():
    from bslora_pyro.methods.zero_shot import ZeroShot

    class Probe(ZeroShot):
        pass

    method = Probe(None, None)
    assert isinstance(method, Method) and not method.trainable and not method.trains_itself
    assert method.fit([], None, None) == []
    assert method.fit_posthoc([], None) is None
    assert method.save("unused") is None
    assert method.gate_probabilities() is None and method.active_ranks() is None
