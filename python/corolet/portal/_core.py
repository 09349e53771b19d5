"""The portal: a task's coroutine stepped inside a greenlet (``await_`` is in ``_await.py``).

:class:`Portal` is native (``src/portal.rs``, the driver's side; ``src/portal_run.rs``, P's
stepping loop and ``await_``'s native path); this module names it and registers it as a
``collections.abc.Coroutine``. What follows is the model both implement.

Model
-----
A :class:`Portal` stands where the event loop expects a task's coroutine (asyncio's task
factory, Trio's ``Task.coro``) or where a coroutine awaits (``with_portal_run``). Each
``send``/``throw`` the loop makes is one *step*. The first step of an active portal creates a
:class:`PortalGreenlet` (the portal's greenlet, *P*) whose parent is the greenlet that made the
step (the *driver*, where the loop runs), and P steps the inner coroutine. Whatever the inner
coroutine yields to the loop travels up by one switch, P to driver, and the loop's answer comes
back down by one switch; so a step costs two switches and the loop sees exactly what the inner
coroutine yields.

Because the inner coroutine runs in P, synchronous code it calls can suspend the whole task:
``await_(aw)`` steps ``aw`` itself, in whatever greenlet calls it (P, or a greenlet started
under P), and switches each thing ``aw`` yields straight to the driver, naming itself as the
greenlet to resume. The loop's answer (a value, or an exception such as ``CancelledError``)
comes back at that very ``await_`` call, so a cancellation or timeout is raised in the sync
code, where its ``finally`` blocks run.

Messages from P's side to the driver are switches *tagged* with ``resume`` (the tag travels
beside the value, inside the switch, not in a tuple): the greenlet to switch into with the
loop's next answer (``None``: P's own stepping loop). An untagged object from a live P is an
awaitable sent by the greenlet bridge protocol (``await_only`` of SQLAlchemy or
``corolet.bridge``: P carries ``__sqlalchemy_greenlet_provider__`` and its parent is the
driver, so they switch the awaitable to it); the portal then awaits it in a helper greenlet
under P, which hands P the result (or raises in P) when done, as the protocol wants. When the
job is done P ends: its return value is the coroutine's result, which the driver raises as
``StopIteration(result)``, and its exception (raised from its last switch) is the coroutine's
(or sync function's), unchanged, which the driver raises from ``send``/``throw`` (a
``GreenletExit``, which a greenlet's end would turn into a value, travels in a ``Raised``).

Invariants
----------
- P runs in the context the first active step ran in: the task's own ``contextvars.Context``
  (the same object, not a copy), so ``ContextVar.set`` in sync code is the task's.
- The driver is re-read on every step: if a step comes from another greenlet than the last
  (an eager task's first step ran inside the greenlet that created it), P's parent moves there
  first, so messages always reach the greenlet that is waiting for them.
- A portal that is not active (a task made portal-capable by ``install(eager=False)``) passes
  each step straight to its coroutine, in the driver; ``activate()`` takes effect at the next
  step.
- ``close()`` raises ``GeneratorExit`` wherever the task is suspended, again at each ``await_``
  that sync code reaches while unwinding, until P has finished.
- No object's memory is written: the coroutine is replaced only through the loop's own hooks.
- Nothing on P's stack refers to P or holds the coroutine: the job P runs (its ``run``,
  which the collector sees) holds the coroutine, so a cycle through an abandoned portal is
  found and broken.
- The loop's latest answer to a step (a value, or an exception such as trio's ``Cancelled``)
  stays referenced by a Python frame under the coroutine until the next answer, as a
  stepping loop written in Python keeps it in a local: ``_portal_main`` here, ``await_``'s
  frame for what it steps. An exception's traceback keeps the frames it went through, which
  link back to that frame once finished: so what those frames held is in a cycle, freed by
  the garbage collector in a task (as under greenback), not by the event loop between tasks,
  where an ``autoawait`` finalizer cannot wait (greenback's ``test_magic``).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from corolet._corolet import Portal, _portal_set_main, _portal_step

Coroutine.register(Portal)


def _portal_main(value: Any) -> Any:
    """The Python frame at the bottom of a portal's greenlet (its job calls it): holds the
    loop's answers in ``held`` (see the invariants) while ``_portal_step`` steps the job's
    coroutine natively."""
    held = [value]
    del value
    return _portal_step(held)


_portal_set_main(_portal_main)

__all__ = ["Portal"]
