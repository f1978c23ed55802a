"""A fake keyhole host for plain ``python -m unittest``.

::

    from keyhole.testing import FakeHost

    with FakeHost(secrets={"GREETING_TOKEN": "t0k3n"}) as host:
        assert run({"name": "ada"})["token_length"] == 5
        assert host.reads == ["GREETING_TOKEN"]

Like the real host it refuses (``keyhole.Denied``) every secret it was not
given; ``errors={"NAME": keyhole.Revoked}`` makes a read fail another way.
``rotatable=["NAME"]`` lets the task rotate NAME: ``keyhole.rotation`` calls
answer with placeholders ``khp_fake_next_NAME`` / ``khp_fake_current_NAME``
and are recorded in ``host.rotations`` (``"generate NAME 32 alnum"``, ...).
"""

from types import SimpleNamespace

_installed = []


class FakeHost:
    def __init__(self, secrets=None, errors=None, rotatable=(), namespace="", flow="test", task="test"):
        self.secrets = dict(secrets or {})
        self.errors = dict(errors or {})
        self.rotatable = list(rotatable)
        self.rotations = []
        self.context = SimpleNamespace(
            namespace=namespace, flow=flow, task=task, execution_id="00000000-0000-0000-0000-000000000000"
        )
        self.reads = []
        self.logs = []

    def __enter__(self):
        _installed.append(self)
        return self

    def __exit__(self, *exc):
        _installed.remove(self)
        return False

    def get(self, name):
        import keyhole

        self.reads.append(name)
        if name in self.errors:
            raise self.errors[name](name)
        if name not in self.secrets:
            raise keyhole.Denied(name)
        return self.secrets[name]

    def log(self, level, message):
        self.logs.append((level, message))

    def rotate(self, name, step):
        import keyhole

        if name not in self.rotatable:
            raise keyhole.RotationError(name, "denied")
        verb, _, rest = step.partition(" ")
        self.rotations.append(" ".join(p for p in (verb, name, rest) if p))
        return SimpleNamespace(next=f"khp_fake_next_{name}", current=f"khp_fake_current_{name}")


def _current():
    if not _installed:
        raise RuntimeError(
            "no keyhole host: this code runs outside WebAssembly; in a test, use `with keyhole.testing.FakeHost(...)`"
        )
    return _installed[-1]
