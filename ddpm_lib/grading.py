"""Graded exercises: an answer must derive what it is asked for, not call the library function that computes it.

A notebook's graded test cell runs the student's answer inside :func:`refusing`, under which the library
functions the exercise re-derives raise when called, then compares the answer's values with those same
functions. :func:`names_used` reads the names an answer's code mentions, for answers that are not run.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

# (owner, name): owner is a module, a class, or a namespace dict such as a notebook's globals()
Place = tuple[object, str]


def names_used(fn: Callable) -> set[str]:
    """The global and attribute names that the code of ``fn`` mentions, its inner functions' included."""
    codes, names = [fn.__code__], set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return names


def _function(value: object) -> object:
    return value.__func__ if isinstance(value, types.MethodType) else value


def _label(owner: object, name: str) -> str:
    if isinstance(owner, dict):
        return name
    if name == "__init__":
        return f"{owner.__name__}() (it builds the object)"
    return f"{owner.__name__}.{name}"


@contextlib.contextmanager
def refusing(*places: Place, answer: Callable | None = None) -> Iterator[None]:
    """Within the block, calling any ``(owner, name)`` of ``places`` raises ``AssertionError`` naming it.

    ``owner`` is a module, a class (``(cls, "__init__")`` refuses building one) or a namespace dict. With
    ``answer``, a function, the names of its module that hold one of those functions, or a bound method of
    one (``from ddpm_lib.x import f``; ``g = model.forward``), are refused too. Everything is restored on exit.
    """

    def refuse(what: str) -> Callable:
        def call(*args, **kwargs):
            raise AssertionError(
                f"the answer calls {what}: the exercise asks you to derive what it computes"
            )

        return call

    saved = []  # (owner, name, the value it held or None, whether the owner itself held it, label)
    for owner, name in places:
        table = owner if isinstance(owner, dict) else vars(owner)
        if name not in table and not hasattr(owner, name):
            raise AttributeError(f"{owner!r} has no {name!r} to refuse")
        value = table[name] if name in table else getattr(owner, name)
        saved.append((owner, name, value, name in table, _label(owner, name)))
    if answer is not None:
        namespace, originals = answer.__globals__, [(_function(v), w) for *_, v, _, w in saved]
        for key, value in list(namespace.items()):
            what = next((w for f, w in originals if _function(value) is f), None)
            if what is not None and not any(o is namespace and n == key for o, n, *_ in saved):
                saved.append((namespace, key, value, True, what))

    def put(owner: object, name: str, value: object) -> None:
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)

    try:
        for owner, name, _, _, what in saved:
            put(owner, name, refuse(what))
        yield
    finally:
        for owner, name, value, held, _ in reversed(saved):
            if held:
                put(owner, name, value)
            elif isinstance(owner, dict):
                owner.pop(name, None)
            else:
                delattr(owner, name)
