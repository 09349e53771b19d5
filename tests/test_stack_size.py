"""corolet.stack_size([size]): the native stack size given to new greenlets.

It behaves like threading.stack_size: without an argument it returns the current size; with
one it sets the size for greenlets created afterwards and returns the previous size.
"""

from __future__ import annotations

import corolet
import pytest
from corolet import greenlet

pytestmark = pytest.mark.corolet_only

MiB = 1024 * 1024


@pytest.fixture
def original_size():
    size = corolet.stack_size()
    try:
        yield size
    finally:
        corolet.stack_size(size)
        assert corolet.stack_size() == size


def test_stack_size_reports_a_positive_number_of_bytes(original_size):
    assert type(original_size) is int
    assert original_size > 0
    assert corolet.stack_size() == original_size


def test_setting_the_stack_size_returns_the_previous_size(original_size):
    new_size = original_size + 2 * MiB
    assert corolet.stack_size(new_size) == original_size
    assert corolet.stack_size() == new_size


def test_greenlets_created_after_a_change_run_and_recurse(original_size, main_greenlet):
    corolet.stack_size(original_size + 4 * MiB)

    def dive(n):
        if n == 0:
            return main_greenlet.switch("bottom")
        return list(map(dive, [n - 1]))[0] + 1

    g = greenlet(dive)
    assert g.switch(200) == "bottom"
    assert g.switch(0) == 200


@pytest.mark.parametrize("too_small", [1, 1024])
def test_stack_size_below_the_minimum_raises_value_error(original_size, too_small):
    with pytest.raises(ValueError) as excinfo:
        corolet.stack_size(too_small)
    assert str(excinfo.value), "the error should say what the minimum is"
    assert corolet.stack_size() == original_size
