"""A stand-in ``corolet`` that is the real greenlet: ``make pytest-greenlet`` runs our suite on it.

greenlet is the specification corolet follows, so every expectation of a test that is not
marked ``corolet_only`` must hold on greenlet itself. This package, put first on ``PYTHONPATH``
in a virtualenv that has PyPI's greenlet and no corolet, makes ``import corolet`` give
greenlet's names and ``corolet._corolet`` be ``greenlet._greenlet`` (where the private test
helpers live). It adds nothing of its own: a test that needs a corolet-only name
(``stack_size``, ``install``, the bridge) is marked ``corolet_only``, and the conftest skips it
when ``COROLET_TEST_AGAINST_GREENLET=1``.

Committed rather than generated, so that the child interpreters some tests start see the same
package through the inherited ``PYTHONPATH``.
"""

import sys

import greenlet as _real
from greenlet import _greenlet

# Every name of greenlet's package, the private ones too (``_C_API``), but not its dunders.
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})

# What the conftest's report header names as the implementation under test.
IMPLEMENTATION_FILE = _greenlet.__file__
_corolet = _greenlet
sys.modules[__name__ + "._corolet"] = _greenlet
