"""greenlet's C-level interface: the object layout C extensions (gevent's Cython classes)
compile against, and the ``_C_API`` capsule with the header that reads it. The capsule's
functions are exercised by greenlet's own test helpers, which the upstream runner builds
against this header."""

from __future__ import annotations

import os
import struct

import corolet
import pytest

pytestmark = pytest.mark.corolet_only

POINTER = struct.calcsize("P")


def test_object_layout_is_greenlets():
    assert corolet.greenlet.__basicsize__ == 5 * POINTER  # head (2) + weakrefs, dict, state
    assert corolet.greenlet.__weakrefoffset__ == 2 * POINTER
    assert corolet.greenlet.__dictoffset__ == 3 * POINTER
    assert corolet.greenlet.__module__ == "greenlet"
    assert corolet.greenlet.__name__ == "greenlet"


def test_capsule_carries_greenlets_name():
    assert type(corolet._C_API).__name__ == "PyCapsule"
    assert 'capsule object "greenlet._C_API"' in repr(corolet._C_API)
    assert corolet._corolet._C_API is corolet._C_API


def test_header_ships_with_the_package():
    header = os.path.join(corolet.get_include(), "greenlet", "greenlet.h")
    with open(header) as f:
        text = f.read()
    assert "PyGreenlet_Import()" in text
    assert '"greenlet._C_API"' in text
    assert "#define PyGreenlet_API_pointers 12" in text
