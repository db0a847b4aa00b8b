"""Checks of moto_launcher's fixes that no client can time.

A race between two requests on moto's server threads shows up once in
several runs at best; here the same steps run in one thread, in the order
that breaks, against moto's backend with the launcher's fixes applied (the
import applies them). Run by `stack.sh selftest`, which the integration
tests call (`daemon/tests/it/stack.rs`).
"""

import unittest
import uuid

from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs import models as sqs_models

import moto_launcher  # noqa: F401  (applies the fixes)


def _backend():
    return sqs_models.sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]


def _fifo_queue(backend):
    name = f"selftest-{uuid.uuid4().hex[:12]}.fifo"
    backend.create_queue(name, FifoQueue="true", ContentBasedDeduplication="true", VisibilityTimeout="30")
    return name


class DeleteDuringAWalk(unittest.TestCase):
    def test_a_delete_while_a_receive_walks_the_queue_skips_nothing(self):
        backend = _backend()
        name = _fifo_queue(backend)
        for i in range(6):
            backend.send_message(name, f"m{i}", group_id=f"g{i}")
        in_flight = backend.receive_message(name, 2, 0, 30)
        self.assertEqual([m.body for m in in_flight], ["m0", "m1"])
        queue = backend.get_queue(name)
        # A receive's walk, as moto's receive_message runs it: it has
        # passed the two in-flight messages and taken m2 ...
        walk = iter(queue.messages)
        self.assertEqual(next(walk).body, "m2")
        # ... when another request deletes a message it already passed.
        backend.delete_message(name, in_flight[0].receipt_handle)
        # The walk goes on with m3. Changed in place, the list shifts under
        # it and m3 is skipped: in a FIFO queue, m3's group's next message
        # would be delivered ahead of m3.
        self.assertEqual([m.body for m in walk], ["m3", "m4", "m5"])
        self.assertEqual([m.body for m in queue._messages], ["m1", "m2", "m3", "m4", "m5"])


if __name__ == "__main__":
    unittest.main()
