"""numba's ``@njit``, deferred: kernels are compiled when a run's work is worth compiling.

Importing numba and loading a process's compiled loops from numba's on-disk cache takes about
0.4 s. A short run (``flower-qlearn num_rounds=1``, one Flower message of a few hundred
steps) does less work than that. So the kernels of this package are declared with
:func:`njit` from here, which takes numba's options but imports nothing: the decorated
function stays plain Python until it is first called, and then

- outside :func:`interpreted` (or once any kernel of the process is compiled), it is compiled
  by numba's own ``njit`` with the same options (its on-disk cache included), together with
  every other declared kernel, and runs compiled;
- inside :func:`interpreted`, while the process's interpreted budget
  (:data:`INTERPRETED_STEPS`) lasts, it runs as the Python function it is: the same code, the
  same IEEE operations in the same order, so the same numbers bit for bit
  (``tests/test_jit.py`` compares every client kernel both ways).

The compiled loops call each other through their modules' globals (``markov_step`` inside
``async_q_steps``); numba resolves those when it compiles, so compiling rebinds every such
global of this package's modules to its numba dispatcher. Code outside the package holding a
kernel (``from flower_qlearn.kernels import async_q_steps``) holds a :class:`Kernel`, which
forwards to the dispatcher, or, imported after compilation, the dispatcher itself; an
``@numba.njit`` function of its own must call :func:`dispatcher` ``(kernel)`` instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ENVIRONMENT_ERROR", "ENV_VAR", "INTERPRETED_STEPS", "Kernel", "compile_all",
           "compiled", "interpreted", "njit"]

#: The environment variable that sets :data:`INTERPRETED_STEPS`.
ENV_VAR = "FLOWER_QLEARN_INTERPRETED_STEPS"
DEFAULT_INTERPRETED_STEPS = 50_000


def _budget_from_environment() -> tuple[int, str | None]:
    """``(budget, error)``: the variable's value, or the default and a one-line error."""
    text = os.environ.get(ENV_VAR)
    if text is None:
        return DEFAULT_INTERPRETED_STEPS, None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        return DEFAULT_INTERPRETED_STEPS, (
            f"invalid environment: {ENV_VAR}={text!r}; expected an integer >= 0")
    return value, None


#: Kernel steps (Markov transitions, or synchronous (s, a) updates) a process runs interpreted
#: before it compiles: ~5 us a step interpreted, so about the 0.4 s numba's import and cache
#: loads cost. ``FLOWER_QLEARN_INTERPRETED_STEPS=0`` compiles from the first call.
INTERPRETED_STEPS, ENVIRONMENT_ERROR = _budget_from_environment()

_KERNELS: list[Kernel] = []
_LOCK = threading.RLock()
_STATE = {"compiled": False, "interpreted_steps": 0}
_LOCAL = threading.local()  # .active: this thread runs kernels interpreted


class Kernel:
    """A function declared ``@njit(**options)``: its Python function until compiled, then
    numba's dispatcher (``.dispatcher``; its other attributes, e.g. ``signatures``, too)."""

    def __init__(self, py_func: Callable, options: dict[str, Any]) -> None:
        self.py_func = py_func
        self.options = options
        self._dispatcher = None
        functools.update_wrapper(self, py_func)

    def __call__(self, *args):
        dispatcher = self._dispatcher
        if dispatcher is None:
            if getattr(_LOCAL, "active", False):
                return self.py_func(*args)
            dispatcher = self.dispatcher
        return dispatcher(*args)

    @property
    def dispatcher(self):
        """numba's dispatcher of this function (compiles every pending kernel first)."""
        if self._dispatcher is None:
            compile_all()
        return self._dispatcher

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("py_func", "options"):
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        state = "compiled" if self._dispatcher is not None else "not compiled"
        return f"<flower_qlearn kernel {self.__module__}.{self.__qualname__} ({state})>"


def njit(*args, **options):
    """``@njit``, ``@njit(cache=True, inline="always")``: numba's options, applied when the
    function is compiled (:class:`Kernel`)."""
    if args and callable(args[0]) and len(args) == 1 and not options:
        return njit()(args[0])
    if args:
        raise TypeError("flower_qlearn.jit.njit takes numba's keyword options only")

    def declare(py_func: Callable) -> Kernel:
        kernel = Kernel(py_func, options)
        with _LOCK:
            _KERNELS.append(kernel)
        return kernel

    return declare


def compile_all() -> None:
    """Compile (or load from numba's cache) every declared kernel not compiled yet, and rebind
    the package's module globals that hold them to their dispatchers (numba types a call
    through the global). numba compiles lazily itself: a kernel's machine code is made (or
    loaded) on its first call with new argument types."""
    with _LOCK:
        pending = [k for k in _KERNELS if k._dispatcher is None]
        if not pending:
            _STATE["compiled"] = True
            return
        import numba

        for kernel in pending:  # in declaration order: a kernel's callees come first
            kernel._dispatcher = numba.njit(**kernel.options)(kernel.py_func)
        _STATE["compiled"] = True
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith("flower_qlearn"):
                continue
            for attr, value in list(vars(module).items()):
                if isinstance(value, Kernel) and value._dispatcher is not None:
                    setattr(module, attr, value._dispatcher)


def dispatcher(kernel):
    """numba's dispatcher of a package kernel, whether ``kernel`` is still its :class:`Kernel`
    or already the dispatcher (module globals imported after :func:`compile_all`)."""
    return kernel.dispatcher if isinstance(kernel, Kernel) else kernel


def compiled() -> bool:
    """Whether this process has compiled its kernels (numba is imported)."""
    return bool(_STATE["compiled"])


@contextlib.contextmanager
def interpreted(steps: int) -> Iterator[bool]:
    """Run the kernels called inside interpreted, if nothing is compiled yet and ``steps``
    fit in what is left of :data:`INTERPRETED_STEPS`; yields whether they do."""
    with _LOCK:
        use = (not _STATE["compiled"]
               and _STATE["interpreted_steps"] + steps <= INTERPRETED_STEPS)
        if use:
            _STATE["interpreted_steps"] += steps
    if not use:
        yield False
        return
    previous = getattr(_LOCAL, "active", False)
    _LOCAL.active = True
    try:
        yield True
    finally:
        _LOCAL.active = previous
