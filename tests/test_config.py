"""Config composition: group choices, typed values, and one-line errors for typos."""

from __future__ import annotations

import pytest

from spine.config import ConfigError, compose
from spine.synth.config import SynthConfig


def test_group_choice_then_values_take_precedence():
    cfg = compose("synth", ["preset=tiny", "seed=7", "n_train=2", "sag_size=[96,128]"], SynthConfig)
    assert (cfg.preset, cfg.seed, cfg.n_train, cfg.sag_size) == ("tiny", 7, 2, [96, 128])
    assert compose("synth", [], SynthConfig).preset == "small"  # the default group choice


def test_schema_fields_absent_from_the_yaml_can_be_set():
    assert compose("synth", ["overwrite=true"], SynthConfig).overwrite is True


@pytest.mark.parametrize("override, message", [
    ("sedd=3", "sedd"),
    ("seed=abc", "seed"),
    ("preset=huge", "tiny"),  # lists the valid options
    ("seed", "key=value"),
])
def test_errors_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("synth", [override], SynthConfig)
