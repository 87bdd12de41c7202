"""Type-keyed dispatch: a kernel's handlers looked up by the class of the message.

Why not ``match``: every class pattern is an ``isinstance`` call, and for
msgspec classes (whose metaclass is not ``type``) one costs about 0.35 µs; a
handler with twenty cases walked most of them for a common message, several
microseconds per event. A dict keyed by message class answers in one hash
probe on ``type(msg)``, however many classes a component serves.

What the ``match`` gave is kept: a subclass of a served class finds its
nearest base's handler, as ``isinstance`` would have matched it (and the
answer is remembered in the table), and a class nobody serves gets ``None``,
so the caller rejects it exactly as its ``case _`` branch did. The table is
built once, at import, by the component that owns it; its order does not
matter (one class, one handler), so no decision depends on hash order.
"""

from __future__ import annotations

from typing import TypeVar

H = TypeVar("H")


def handler_for(table: dict[type, H], cls: type) -> H | None:
    """The handler of ``cls``: its own, else its nearest served base's, else None."""
    handler = table.get(cls)
    if handler is not None:
        return handler
    for base in cls.__mro__[1:]:
        handler = table.get(base)
        if handler is not None:
            table[cls] = handler  # a subclass: remembered, so the next lookup is direct
            return handler
    return None
