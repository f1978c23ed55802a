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

Hands-off rotation (a flow's ``rotate: [NAME]``) is ``rotation``: the task
holds placeholders only::

    staged = rotation.generate("SERVICE_PASSWORD", 32)
    r = http_post(url, body={"password": staged.next})   # your HTTP client
    rotation.commit("SERVICE_PASSWORD") if r.ok else rotation.discard("SERVICE_PASSWORD")

This package targets ``keyhole:task@0.2.0`` (``WIT_VERSION``).
"""

import json
import sys

WIT_VERSION = "0.2.0"

try:  # Inside the component: the bindings componentize-py generates from wit/.
    from wit_world.imports import secrets as _wit_secrets, log as _wit_log, context as _wit_context
    from wit_world.imports import rotation as _wit_rotation
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


class RotationError(Exception):
    """Why a rotation step was refused. ``kind`` is one of ``denied`` (not in
    the task's ``rotate:``), ``not-found``, ``refused`` or ``unavailable``;
    ``detail`` says why and what to do."""

    def __init__(self, name, kind, detail=""):
        self.name = name
        self.kind = kind
        self.detail = detail
        super().__init__(f"rotation of {name}: {kind}" + (f": {detail}" if detail else ""))


_ROTATION_KINDS = {
    "Error_Denied": "denied",
    "Error_NotFound": "not-found",
    "Error_Refused": "refused",
    "Error_Unavailable": "unavailable",
}


def _rotation_call(name, call):
    try:
        return call()
    except _Err as e:
        kind = _ROTATION_KINDS.get(type(e.value).__name__, "unavailable")
        raise RotationError(name, kind, getattr(e.value, "value", "") or "") from None


class rotation:
    """Hands-off rotation of a secret the flow lets this task rotate
    (``rotate: [NAME]``), bound to the service's destinations. Each call
    returns placeholders (``.next`` for the new value, ``.current`` for the
    current one or ``None``): put them in requests to the service; the host
    substitutes the values as the requests leave."""

    @staticmethod
    def generate(name: str, length: int = 32, charset: str = "alnum"):
        """Stages a new random value (``alnum``, ``hex``, ``base64`` or
        ``ascii``; 8 to 4096) and returns its placeholders."""
        if not _IN_WASM:
            return _host().rotate(name, f"generate {length} {charset}")
        spec = _wit_rotation.Generator(length=length, charset=getattr(_wit_rotation.Charset, charset.upper()))
        return _rotation_call(name, lambda: _wit_rotation.generate(name, spec))

    @staticmethod
    def capture(name: str, pointer: str):
        """Captures the new value from the first 2xx JSON answer of one of the
        secret's destinations, at JSON pointer ``pointer``; the task reads
        ``.next`` there instead."""
        if not _IN_WASM:
            return _host().rotate(name, f"capture {pointer}")
        return _rotation_call(name, lambda: _wit_rotation.capture(name, pointer))

    @staticmethod
    def commit(name: str) -> int:
        """Makes the staged value current (once the service accepted it);
        returns its version."""
        if not _IN_WASM:
            _host().rotate(name, "commit")
            return 2
        return _rotation_call(name, lambda: _wit_rotation.commit(name))

    @staticmethod
    def discard(name: str) -> None:
        """Erases the staged value (refused once the service may hold it)."""
        if not _IN_WASM:
            _host().rotate(name, "discard")
            return None
        return _rotation_call(name, lambda: _wit_rotation.discard(name))


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
            except (SecretError, RotationError) as e:
                raise _Err(str(e)) from None
            except Exception as e:  # the message, never a traceback of host internals
                raise _Err(f"{type(e).__name__}: {e}") from None

    # componentize-py looks for `WitWorld` in the app module.
    module.WitWorld = WitWorld
    return fn
