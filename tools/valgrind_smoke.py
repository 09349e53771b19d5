"""A short workout of corolet for valgrind (`make valgrind`): switching both ways, throw,
finishing, killing suspended greenlets, deep native recursion, threads, gr_frame, contexts."""

import contextvars
import threading

from corolet import GreenletExit, getcurrent, greenlet

main = getcurrent()


def ping_pong(rounds):
    here = getcurrent()

    def other(v):
        while True:
            v = here.switch(v + 1)

    g = greenlet(other)
    v = g.switch(0)
    for _ in range(rounds):
        v = g.switch(v)
    g.throw()
    assert g.dead
    return v


def chain():
    def a():
        return b.switch("a") + "!"

    def bb(x):
        return main.switch(x + "b")

    b = greenlet(bb)
    ga = greenlet(a)
    assert ga.switch() == "ab"
    assert b.switch("c") == "c"
    assert ga.switch is not None


def deep():
    def down(d):
        if d == 0:
            return main.switch("bottom")
        return list(map(down, [d - 1]))[0]

    g = greenlet(down)
    assert g.switch(300) == "bottom"
    assert g.gr_frame is not None
    assert g.switch("up") == "up"


def killed():
    seen = []

    def body():
        try:
            main.switch()
        except GreenletExit:
            seen.append("exit")
            raise

    g = greenlet(body)
    g.switch()
    del g
    assert seen == ["exit"]


def collected_cycle():
    import gc

    log = []

    def body():
        me = getcurrent()  # only its own frame refers to it
        try:
            main.switch()
        finally:
            log.append(me is getcurrent())

    greenlet(body).switch()
    gc.collect()
    getcurrent()  # the collector queued it: killed here
    assert log == [True]


def errors():
    def boom():
        raise ValueError("x")

    try:
        greenlet(boom).switch()
    except ValueError:
        pass
    else:
        raise AssertionError


var = contextvars.ContextVar("var", default=0)


def contexts():
    def body():
        var.set(5)
        main.switch()
        return var.get()

    g = greenlet(body)
    g.switch()
    assert var.get() == 0
    assert g.switch() == 5


def in_thread():
    def body():
        ping_pong(100)
        g = greenlet(lambda: main_t.switch())
        g.switch()
        keep.append(g)  # outlives its thread: abandoned later

    keep = []
    main_t = None

    def run():
        nonlocal main_t
        main_t = getcurrent()
        body()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    keep.clear()


for _ in range(3):
    ping_pong(1000)
    chain()
    deep()
    killed()
    collected_cycle()
    errors()
    contexts()
    in_thread()
print("valgrind smoke: ok")
