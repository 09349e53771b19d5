"""Garbage collection: a suspended greenlet that only a reference cycle keeps alive can never
be switched to again, so the collector finds it and it is killed with ``GreenletExit`` (its
``finally`` blocks run) in its own thread, the next time that thread runs greenlet code.
greenlet before 3.15 leaks such greenlets; running greenlets are never collected."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from corolet import GreenletExit, getcurrent, greenlet

pytestmark = pytest.mark.corolet_only


def _parked(body):
    g = greenlet(body)
    g.switch()
    return g


def test_a_greenlet_kept_only_by_its_own_frame_is_collected_and_killed():
    main = getcurrent()
    log = []

    def body():
        me = getcurrent()  # the only reference: a local of its own suspended frame
        try:
            main.switch()
        except GreenletExit:
            log.append("exit")
            raise
        finally:
            log.append(f"finally {me is getcurrent()}")

    g = _parked(body)
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert log == []  # not inside the collection: killed when this thread next uses greenlets
    getcurrent()
    assert log == ["exit", "finally True"]
    gc.collect()
    assert ref() is None


def test_a_cycle_through_the_greenlets_dict_is_collected():
    main = getcurrent()
    log = []

    def body():
        try:
            main.switch()
        finally:
            log.append("finally")

    g = _parked(body)
    holder = [g]
    g.holder = holder
    del g, holder
    gc.collect()
    getcurrent()
    assert log == ["finally"]


def test_a_suspended_greenlet_referenced_from_outside_is_left_alone():
    main = getcurrent()

    def body():
        me = getcurrent()
        main.switch()
        return me is getcurrent()

    g = _parked(body)
    gc.collect()
    getcurrent()
    assert g and not g.dead
    assert g.switch() is True


def test_objects_only_the_suspended_frames_hold_survive_a_collection():
    main = getcurrent()

    class Payload:
        pass

    def body():
        payload = Payload()
        ref = weakref.ref(payload)
        main.switch(ref)
        return payload

    g = greenlet(body)
    ref = g.switch()
    gc.collect()
    assert ref() is not None
    assert g.switch() is ref()


def test_a_cyclic_greenlet_of_another_thread_is_killed_in_that_thread():
    log = []
    ready = threading.Event()
    collected = threading.Event()

    def in_thread():
        here = getcurrent()

        def body():
            me = getcurrent()
            try:
                here.switch()
            finally:
                log.append((me is getcurrent(), threading.current_thread().name))

        greenlet(body).switch()
        ready.set()
        collected.wait(10)
        getcurrent()  # greenlet code in this thread: the queued kill happens here

    t = threading.Thread(target=in_thread, name="owner")
    t.start()
    ready.wait(10)
    gc.collect()
    assert log == []
    collected.set()
    t.join(10)
    assert log == [(True, "owner")]


def test_collections_stay_right_while_greenlets_start_and_go_in_any_order():
    # The collector fetches ahead along the order greenlets started in (src/readahead.rs),
    # which keeps pointers to the last few started: greenlets that finish, are dropped or
    # are collected out of that order, from this thread and another, must leave it coherent.
    import random

    main = getcurrent()
    rng = random.Random(1234)
    kills = []
    finished = []

    def body(i):
        try:
            main.switch(i)
        except GreenletExit:
            kills.append(i)
            raise
        finished.append(i)

    live = {}
    for i in range(1500):
        g = greenlet(body)
        assert g.switch(i) == i
        live[i] = g
        action = rng.randrange(6)
        if action == 0 and live:
            live.pop(rng.choice(list(live))).switch()  # finishes
        elif action == 1 and live:
            del live[rng.choice(list(live))]  # killed on last reference
        elif action == 2:
            victim = live.pop(rng.choice(list(live)))
            victim.cycle = victim  # only a cycle keeps it: the collector's to find
            del victim
        elif action == 3:
            gc.collect()
        elif action == 4 and live:
            dropped = live.pop(rng.choice(list(live)))
            t = threading.Thread(target=lambda g=dropped: g)  # the last reference goes there
            del dropped
            t.start()
            t.join()
    gc.collect()
    for g in live.values():
        assert g.switch() is None and g.dead
    live.clear()
    gc.collect()
    greenlet(lambda: None).switch()  # deferred kills run when this thread next runs greenlets
    assert sorted(kills + finished) == list(range(1500))


class _Marker:
    pass


def test_every_visit_of_a_parked_greenlet_reports_the_same_references():
    # The first visit after a suspension reads the frames and records what it reports; the
    # later ones report the record: both must give the frames' references.
    main = getcurrent()
    held = _Marker()

    def body():
        mine = held
        inner = _Marker()
        main.switch()
        return mine, inner

    g = _parked(body)
    first = gc.get_referents(g)
    second = gc.get_referents(g)
    assert [id(o) for o in first] == [id(o) for o in second]
    assert any(o is held for o in second)
    assert sum(isinstance(o, _Marker) for o in second) == 2
    gc.collect()
    mine, inner = g.switch()
    assert mine is held and isinstance(inner, _Marker)


def _write_local(frame, name, value):
    """Rebinds a local of a suspended frame through its frame object, as a debugger does."""
    import sys

    if sys.version_info >= (3, 13):
        frame.f_locals[name] = value  # PEP 667: writes to the frame itself
        return
    import ctypes

    frame.f_locals[name] = value  # the snapshot dict, copied back into the frame:
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))


def test_a_local_rebound_through_gr_frame_while_parked_is_what_the_collector_sees():
    # The recorded references must not outlive a change made through a frame object: up to
    # 3.13 the old object is freed by the write, and reporting it would hand the collector a
    # dead object (a segfault); 3.14 and 3.15 keep it alive a while longer, elsewhere than in
    # the frame, and reporting it would be a wrong reference.
    main = getcurrent()

    def body():
        x = _Marker()
        main.switch()
        return x

    g = _parked(body)
    before = [o for o in gc.get_referents(g) if isinstance(o, _Marker)]
    assert len(before) == 1
    old = weakref.ref(before[0])
    del before
    replacement = _Marker()
    frame = g.gr_frame
    _write_local(frame, "x", replacement)
    del frame
    after = [o for o in gc.get_referents(g) if isinstance(o, _Marker)]
    assert len(after) == 1 and after[0] is replacement
    assert old() is None or old() is not after[0]
    del after
    gc.collect()
    assert g.switch() is replacement


def test_references_made_after_a_collection_are_seen_once_the_greenlet_parks_again():
    main = getcurrent()
    box = []

    def body():
        main.switch()
        late = _Marker()
        box.append(weakref.ref(late))
        me = getcurrent()  # a cycle through the frame, made after the first collection
        main.switch()
        del me, late

    g = _parked(body)
    gc.collect()  # records the frames' references as they are now
    g.switch()
    ref = weakref.ref(g)
    del g
    gc.collect()  # must read the new frames: the cycle is found, the greenlet killed
    getcurrent()
    gc.collect()
    assert ref() is None
    assert box[0]() is None
