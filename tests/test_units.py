"""Attack budgets in their three spellings (value, `k/255` label, MLflow step): round trips."""

import pytest

from robust_deepfake import units
from robust_deepfake.units import (
    CLEAN,
    from_step,
    grey_levels,
    is_whole_grey_level,
    label,
    parse_pixel_value,
    require_whole_grey_levels,
    to_step,
)

WHOLE = [k / 255 for k in range(256)]
# fractional grey levels whose label is exact: halves and quarters (limit_denominator(4):
# what the MLflow step, in hundredths of a grey level, represents exactly)
FRACTIONAL = [0.5 / 255, 1.5 / 255, 2.5 / 255, 0.25 / 255, 0.75 / 255, 3.25 / 255]


def test_labels_of_whole_grey_levels():
    assert label(0.0) == "0"
    assert label(1 / 255) == "1/255"
    assert label(4 / 255) == "4/255"
    assert label(16 / 255) == "16/255"
    assert label(1.0) == "255/255"


def test_labels_of_fractional_grey_levels():
    assert label(0.5 / 255) == "0.5/255"
    assert label(1.5 / 255) == "1.5/255"
    assert label(0.25 / 255) == "0.25/255"
    assert label(0.125 / 255) == f"{0.125 / 255:.6g}"  # an eighth has no exact step: a float label
    assert units.rng_offset(parse_pixel_value(label(0.25 / 255))) == 25


def test_off_grid_budgets_are_labelled_as_floats():
    assert label(0.01) == "0.01"
    assert parse_pixel_value("0.01") == 0.01


@pytest.mark.parametrize("eps", WHOLE + FRACTIONAL)
def test_label_round_trip_is_exact(eps):
    assert parse_pixel_value(label(eps)) == eps


def test_parse_pixel_value_accepts_every_spelling():
    assert parse_pixel_value("4/255") == 4 / 255
    assert parse_pixel_value(" 4 / 255 ") == 4 / 255
    assert parse_pixel_value("0.5/255") == 0.5 / 255
    assert parse_pixel_value("0.0156") == 0.0156
    assert parse_pixel_value("0") == 0.0
    with pytest.raises(ValueError):
        parse_pixel_value("four/255")


@pytest.mark.parametrize("eps", WHOLE)
def test_step_round_trip_is_exact_on_the_grey_level_grid(eps):
    step = to_step(eps)
    assert isinstance(step, int)
    assert step == round(eps * 255)
    assert from_step(step) == eps  # exactly, so SweepMetrics.get(from_step(step)) finds the cell


def test_steps_are_grey_levels_and_refuse_fractions():
    assert to_step(0.0) == 0
    assert to_step(2 / 255) == 2
    assert sorted(to_step(e) for e in (4 / 255, 1 / 255, 2 / 255)) == [1, 2, 4]
    with pytest.raises(ValueError, match="not a whole grey level"):
        to_step(0.5 / 255)


def test_attack_random_starts_keep_their_seed_offsets():
    """rng_offset seeds the attacks' random starts (robustness.sweep.attack_generator): it
    counts hundredths of a grey level whatever unit the MLflow step uses."""
    assert units.rng_offset(2 / 255) == 200
    assert units.rng_offset(0.5 / 255) == 50


def test_grey_levels():
    assert grey_levels(0.0) == 0.0
    assert grey_levels(2 / 255) == 2.0
    assert grey_levels(8 / 255) == 8.0
    assert grey_levels(0.5 / 255) == 0.5
    assert grey_levels(parse_pixel_value("1.5/255")) == 1.5
    assert all(grey_levels(k / 255) == k for k in range(256))


def test_whole_grey_levels():
    assert all(is_whole_grey_level(k / 255) for k in range(256))
    assert not is_whole_grey_level(0.5 / 255)
    assert not is_whole_grey_level(1.5 / 255)
    assert not is_whole_grey_level(0.01)
    assert not is_whole_grey_level(float("nan"))
    assert not is_whole_grey_level(float("inf"))


def test_require_whole_grey_levels_names_the_offending_budget():
    require_whole_grey_levels([0.0, 1 / 255, 8 / 255])
    with pytest.raises(ValueError, match=r"^0.5/255 is not a whole grey level"):
        require_whole_grey_levels([1 / 255, 0.5 / 255])
    with pytest.raises(ValueError, match="not a whole grey level"):
        require_whole_grey_levels([float("nan")])


def test_labels_outside_the_pixel_range_are_floats():
    assert label(1.5) == "1.5"
    assert label(-0.1) == "-0.1"
    assert label(-2 / 255) == f"{-2 / 255:.6g}"


def test_clean_spelling():
    assert CLEAN == "clean"
