"""Write a keyhole task in Python.

A keyhole task is a WebAssembly component that takes a JSON document in and
gives a JSON document back. Decorate one function with ``@task``::

    from keyhole import task, secrets, log

    @task
    def run(input):
        token = secrets.get("GREETING_TOKEN")   # only if the flow granted it
        log.info(f"greeting {input['name']}")
        return {"greeting": f"hello, {input['name']}", "token_length": len(token)}

Build it with ``host plugin build`` (componentize-py underneath). The value a
task reads is masked by the host in everything the task prints, logs or
returns. Outside WebAssembly (plain ``python -m unittest``), install a fake
host first: see ``keyhole.testing``.

This package targets ``keyhole:task@0.1.0`` (``WIT_VERSION``).
"""

import json
import sys

WIT_VERSION = "0.1.0"

try:  # Inside the component: the bindings componentize-py generates from wit/.
    from wit_world.imports import secrets as _wit_secrets, log as _wit_log, context as _wit_context
    from componentize_py_types import Err as _Err
    import wit_world as _wit_world

    _IN_WASM = True
except ImportError:  # Plain Python: keyhole.testing provides the host.
    _IN_WASM = False

    class _Err(Exception):
        def __init__(self, value):
            super().__init__(value)
            self.value = value


class SecretError(Exception):
    """Why the host did not hand out a secret. ``kind`` is one of
    ``denied``, ``not-found``, ``revoked``, ``expired``, ``unavailable``."""

    kind = "unavailable"

    def __init__(self, name, detail=""):
        self.name = name
        self.detail = detail
        super().__init__(self._message())

    def _message(self):
        return f"secret {self.name}: {self.kind}" + (f": {self.detail}" if self.detail else "")


class Denied(SecretError):
    """Not granted to this task: add it to the task's ``secrets:`` in the flow
    (or ``--grant NAME`` for ``host exec``)."""

    kind = "denied"


class NotFound(SecretError):
    """Granted, but in no namespace of the task's namespace chain."""

    kind = "not-found"


class Revoked(SecretError):
    """Revoked by an operator."""

    kind = "revoked"


class Expired(SecretError):
    """Past its expiry: it needs rotating."""

    kind = "expired"


class Unavailable(SecretError):
    """The host could not serve the request; ``detail`` says why."""

    kind = "unavailable"


class TaskError(Exception):
    """Raise it to fail the task with a message for the operator."""


_BY_WIT_NAME = {
    "Error_Denied": Denied,
    "Error_NotFound": NotFound,
    "Error_Revoked": Revoked,
    "Error_Expired": Expired,
    "Error_Unavailable": Unavailable,
}


def _host():
    from . import testing

    return testing._current()


class secrets:
    """Reading the secrets the flow granted to this task."""

    @staticmethod
    def get(name: str) -> str:
        """The value of secret ``name``; raises a ``SecretError`` subclass
        (``Denied``, ``NotFound``, ...) when the host does not hand it out."""
        if not _IN_WASM:
            return _host().get(name)
        try:
            return _wit_secrets.get(name)
        except _Err as e:
            cls = _BY_WIT_NAME.get(type(e.value).__name__, Unavailable)
            raise cls(name, getattr(e.value, "value", "") or "") from None


class log:
    """Log lines to the operator's terminal, masked, prefixed with the task id."""

    @staticmethod
    def _emit(level: str, message: str) -> None:
        if not _IN_WASM:
            return _host().log(level, str(message))
        _wit_log.log(getattr(_wit_log.Level, level.upper()), str(message))

    @staticmethod
    def debug(message: str) -> None:
        log._emit("debug", message)

    @staticmethod
    def info(message: str) -> None:
        log._emit("info", message)

    @staticmethod
    def warn(message: str) -> None:
        log._emit("warn", message)

    @staticmethod
    def error(message: str) -> None:
        log._emit("error", message)


class context:
    """Where the task runs."""

    @staticmethod
    def current():
        """An object with ``namespace``, ``flow``, ``task`` and ``execution_id``."""
        if not _IN_WASM:
            return _host().context
        return _wit_context.current()


def task(fn):
    """Registers ``fn(input) -> output`` as the task: ``input`` is the decoded
    JSON input, the return value is encoded as the JSON output. An exception
    fails the task with its message."""
    module = sys.modules[fn.__module__]
    base = _wit_world.WitWorld if _IN_WASM else object

    class WitWorld(base):
        def run(self, input: str) -> str:
            try:
                return json.dumps(fn(json.loads(input)))
            except TaskError as e:
                raise _Err(str(e)) from None
            except SecretError as e:
                raise _Err(str(e)) from None
            except Exception as e:  # the message, never a traceback of host internals
                raise _Err(f"{type(e).__name__}: {e}") from None

    # componentize-py looks for `WitWorld` in the app module.
    module.WitWorld = WitWorld
    return fn
