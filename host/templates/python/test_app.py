import unittest

import keyhole
from keyhole.testing import FakeHost

from app import run


class AppTest(unittest.TestCase):
    def test_greets_with_the_granted_token(self):
        with FakeHost(secrets={"GREETING_TOKEN": "t0k3n"}) as host:
            out = run({"name": "ada"})
        self.assertEqual(out, {"greeting": "hello, ada", "token_length": 5})
        self.assertEqual(host.reads, ["GREETING_TOKEN"])

    def test_fails_without_the_grant(self):
        with FakeHost():
            with self.assertRaises(keyhole.Denied):
                run({"name": "ada"})


if __name__ == "__main__":
    unittest.main()
