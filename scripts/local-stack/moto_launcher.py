"""Start moto's server with the O(depth) defects of its SQS model fixed.

Why: moto 5.2.5 builds `Queue.attributes` eagerly, and that property counts
the queue's messages three times (ApproximateNumberOfMessages, ...Delayed,
...NotVisible), each by scanning every message. `send_message` and
`add_message` read it just to look up `ContentBasedDeduplication`, so every
send costs O(queue depth): 10,000 FIFO sends into one queue never finish in
minutes, which would make any load figure measured against it fiction.

Receiving has the same defect: `Queue.messages` filters every message into
a fresh list on each receive, though the receiver stops after ten.

The fixes: `attributes` becomes a read-only mapping with the same keys that
computes each value only when that key is read (values, key sets and
formatting unchanged; GetQueueAttributes still scans when it asks for a
depth, as before), and `messages` becomes a lazily filtered view of the same
messages in the same order. Nothing else in moto is touched.

Usage: python moto_launcher.py [moto_server arguments...]
"""

import json
import sys
from collections.abc import Mapping

from moto.server import main
from moto.sqs import models as sqs_models
from moto.core.utils import camelcase_to_underscores


class LazyQueueAttributes(Mapping):
    """The same dict `Queue.attributes` returns, computed key by key."""

    def __init__(self, queue):
        self._queue = queue
        keys = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            keys += queue.FIFO_ATTRIBUTES
        if queue.kms_master_key_id:
            keys += queue.KMS_ATTRIBUTES
        self._keys = keys

    def _value(self, key):
        queue = self._queue
        if key == "Policy" and queue.policy:
            value = queue.policy
        elif key == "RedrivePolicy" and queue.redrive_policy:
            value = json.dumps(queue.redrive_policy)
        else:
            value = getattr(queue, camelcase_to_underscores(key))
        if isinstance(value, bool):
            value = str(value).lower()
        return value

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._value(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


class LazyVisibleMessages:
    """`Queue.messages` (visible, not delayed), filtered while iterated.

    Why: receive_message iterates `queue.messages` only until it has found
    `count` deliverable messages, but moto builds the whole filtered list
    first, so every receive (and every long-poll wake-up) costs O(depth).
    Iterating lazily yields the same messages in the same order.
    """

    def __init__(self, queue):
        self._queue = queue

    def __iter__(self):
        for message in self._queue._messages:
            if message.visible and not message.delayed:
                yield message

    def __len__(self):
        return sum(1 for _ in self)

    def __bool__(self):
        return any(True for _ in self)


sqs_models.Queue.attributes = property(LazyQueueAttributes)
sqs_models.Queue.messages = property(LazyVisibleMessages)

if __name__ == "__main__":
    main(sys.argv[1:])
