"""Greenlets sharing data: a producer and a consumer around a bounded buffer.

Both greenlets read and write the same ``buffer`` list without any lock: a greenlet is only
ever interrupted where it calls ``switch()``, so each of them sees the buffer in the state the
other one left it at its last switch. The producer fills the buffer until it is full, then hands
control to the consumer, which drains it and hands control back. The producer's parent is the
consumer, so when the producer returns, its return value lands in the consumer's pending
``switch()``: both greenlets end finished, none is left suspended.

Run: ``python examples/shared_data.py``
"""

from __future__ import annotations

from corolet import greenlet

CAPACITY = 3
ITEMS = [f"item-{i}" for i in range(8)]

buffer: list[str] = []
consumed: list[str] = []
DONE = object()


def producer() -> object:
    for item in ITEMS:
        if len(buffer) == CAPACITY:
            print(f"producer: buffer full {buffer}, switching to consumer")
            consumer_greenlet.switch()
        buffer.append(item)
    print(f"producer: all produced, {len(buffer)} left in the buffer")
    return DONE  # to the parent, the consumer


def consumer() -> int:
    while True:
        signal = producer_greenlet.switch()  # wait for the producer to fill the buffer
        while buffer:
            consumed.append(buffer.pop(0))
        print(f"consumer: drained, {len(consumed)} consumed so far")
        if signal is DONE:
            return len(consumed)


consumer_greenlet = greenlet(consumer)
producer_greenlet = greenlet(producer, parent=consumer_greenlet)


def main() -> None:
    total = consumer_greenlet.switch()  # the consumer starts and waits for the first batch
    print(f"consumer finished: {total} items, in order: {consumed == ITEMS}")
    print(f"producer dead: {producer_greenlet.dead}; consumer dead: {consumer_greenlet.dead}")


if __name__ == "__main__":
    main()
