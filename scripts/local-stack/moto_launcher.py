"""Start moto's server with the defects that would fake cafe-stream's results fixed.

SQS

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
messages in the same order.

SQS also loses messages under load: `Queue.delete_message` rebuilds the
message list from a copy and assigns it back without the queue's lock, so a
message `add_message` appends meanwhile (it does take the lock) is dropped:
the sender got a message id, the message is gone. Measured: 43 of 10,000
FIFO payments vanished when sends and deletes overlapped. The fix runs
`delete_message` under the same lock (see the index below); nothing else
about it changes.

SQS FIFO queues break their group order after a retry: moto keeps a
message it delivered in `pending_messages` until a later receive finds it
visible again, and counts every pending message's group as in flight,
visible or not. When several messages of one group were given back (a
consumer that failed the group's first message and so holds back the rest,
as the SQS documentation asks), the next receive walks the group in order,
un-pends each visible message and re-checks the group: the first ones are
still blocked by the later ones' stale entries, and the last message of the
group is delivered before the first. Measured: a FIFO group whose second
message kept failing had its fourth message delivered alone, ahead of it.
Real SQS delivers a group strictly in order. The fix counts a group as in
flight only for its pending messages that are still invisible; which
messages are pending, and everything else about receiving, is unchanged.

SQS FIFO receives race each other. moto's ReceiveMessage decides which
groups are in flight once, when the call starts, and long-polls with that
answer; receives run on the server's threads side by side. A receive that
started before another delivered a group's first message therefore takes
the group's later messages too, and two consumers hold one group at once,
out of order. Measured: with four long-polling receivers, a group whose
first message kept failing had its third and fourth delivered (and
deleted) while the first was in flight, about one run in three. Real SQS
never delivers a group's message while an earlier one is in flight. The fix
runs each queue's receives one at a time, each pass with a fresh view (the
long poll waits between passes, outside the lock), and a walk over a FIFO
queue skips every message behind one of its group that is not
deliverable. What is delivered, and when, is otherwise moto's.

SQS FIFO receives look at the clock while they walk. moto passes over a
visible message whose group has another message in flight, but goes on
walking the group; when that other message's timeout runs out during the
walk (a group given back in pieces: the first messages visible again, a
later one still in flight for a few more milliseconds), the walk reaches it
visible, counts the group free, and delivers it and the rest of the group
ahead of the messages it passed over. Measured: the daemon's
SIGTERM-while-DynamoDB-is-silent test had an order's `preparing` delivered
(and rejected, "never placed") before its `placed`, about one run in five.
The fix ends a group's walk at the first of its messages the walk passes
over without delivering it, as at the first invisible one.
`test_moto_launcher.py` moves the clock a millisecond per read and tries
every point of the walk.

SQS long polls return once a message can be delivered; moto's wake only
for a new message. A long poll waits on the queue's condition while
nothing is deliverable, and in a FIFO queue that includes every visible
message behind its group's message in flight; a delete or a give-back
that freed the group did not wake it, so the poll slept out its wait (up
to a second: `_serialised_receive` caps each wait there). Measured: in
cold-start's tail, where each message left waited behind its group, a
group's last payments were decided about a second apart, the server idle
between them (10,000 payments: the last 36 came 0.5 to 2 s after the
rest). The fix wakes the long polls on a FIFO delete (a standard queue's
frees nothing), on a give-back that makes a message visible, and after a
receive pass that moved messages to the dead-letter queue (a group's next
message may lead now); a woken poll passes again within its 20 ms pacing.
A visibility timeout that runs out wakes nothing: it is noticed at the
next pass, at most a second later.

SQS lets ChangeMessageVisibility hide a message that is not in flight: a
message visible again (its timeout ran out, or it was given back) is made
invisible without being received, and since moto counts a FIFO group as in
flight only through messages it delivered, the group's later messages are
then delivered ahead of it. Real SQS refuses the call ("MessageNotInflight:
The specified message isn't in flight"), so a consumer whose visibility
extension races with its own give-back learns of it instead of silently
breaking a group's order. Measured: a held-back FIFO group lost its order
once in a few dozen retries when an extension landed after the message was
visible again. The fix refuses a visibility change of a visible message
with that error (a batch entry fails with ReceiptHandleIsInvalid, the code
moto's batch gives every refused entry); everything else is moto's.

SQS finds a message by its receipt handle with a scan: `delete_message`
and `change_message_visibility` walk every message of the queue, asking
each for the list of every receipt handle it ever had, so each call costs
O(depth) in Python, and a consumer that extends the visibility of
thousands of in-flight messages (as the daemon does while a write retries)
spends its time in the stand-in, not in its own work. The fix keeps an
index from every receipt handle moto issues to its message, and for each
message the queue that holds it (set when a queue adds it, cleared when it
is deleted or purged; a dead-letter move re-adds it to its new queue). A
delete removes the message by identity from a copy of the queue's list and
puts the copy in its place, as moto's own delete replaces the list (two
C-level steps, no Python per message): a receive may be walking the old
list meanwhile, and a list changed in place under that walk skips the
message after the removed one. That skip delivered FIFO groups out of
order (a group's next message ahead of the skipped one) in about one run in
four of a test that gives messages back while two consumers receive and
delete; `test_moto_launcher.py` shows it deterministically. What either
call answers is moto's: any handle the message ever had works, a deleted
one is accepted again by DeleteMessage and refused by
ChangeMessageVisibility, a visibility over 12 hours from the send is
refused with moto's message.

SQS accepts message contents that SQS refuses. Real SQS allows only
#x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF in
a message body and in string attribute values, and refuses the whole
SendMessage or SendMessageBatch request with InvalidMessageContents
otherwise; it counts a message's size as the UTF-8 bytes of its body plus
its attributes (names, types and values) against MaximumMessageSize, and a
batch's as the sum of its messages against 1 MiB. moto checks neither the
characters nor the bytes (it counts the body's characters, without the
attributes). A consumer that forwards what it could not process (a
rejected-events queue) then passes every test and stalls in production on
the first control character. The fix refuses what SQS refuses, with its
error codes and messages; valid requests are moto's.

SQS FIFO deduplication forgets a message once it is deleted, and finds a
duplicate with a scan. moto drops a FIFO send whose deduplication id
matches a message still in the queue and sent within five minutes, walking
every message of the queue to find out, so each send costs O(depth) in
Python (10,000 payments sent into a FIFO queue: moto's send rate fell from
110 to 55 requests a second as the queue filled, and a consumer draining it
meanwhile got what was left of moto). Real SQS drops any message whose
deduplication id was sent in the last five minutes, deleted or not ("any
messages sent with the same message deduplication ID are accepted
successfully but aren't delivered during the 5-minute deduplication
interval"), per message group when the queue's DeduplicationScope is
messageGroup. So a producer that re-sends after its consumer has deleted
the first copy delivered a duplicate under moto and none on AWS. The fix
keeps, per queue, the deduplication ids sent in the last five minutes (a
dict and a queue of expiries: O(1) a send) and drops a send that repeats
one, deleted or not; the duplicate's answer is moto's (success, a message
id). A dead-letter move is not a send and is never dropped (moto
dropped one whose id the dead-letter queue held: the message was then in
neither queue). A queue with a Lambda event source mapping (none in this
stack) keeps moto's own check.

SQS FIFO and standard queues with a redrive policy could hold a message
twice: moto's receive moves a message out of receives to the dead-letter
queue with `queue._messages.remove(...)`, without the list's lock, while
the launcher's delete (above) copies the list under that lock and puts the
copy in place; a delete whose copy was taken before the removal and put in
place after it brought the moved message back to its queue, now in both.
Found by reading; `test_moto_launcher.py` pauses the removal until a
delete has run. The fix runs each receive pass under the list's lock as
well (the receive lock first, then the list's; a pass never waits inside).

SQS spends its time on work that never changes. Profiled (py-spy) while
menu-sync sent 10,000 items of about 25 KiB and the daemon drained them,
moto held one core for the whole send, and of its busy time 16% went to
finding which backend serves a request (`backends.list_of_moto_modules`
lists moto's package folder and stats every entry, for every request,
under the dispatcher's one lock), 16% to the MD5 of message bodies
(`Message.body_md5` hashes the body again each time it is read: once for
the send's answer and again for every receive), and 13% to this launcher's
own character check (a regular expression run character by character over
every body). Meanwhile the daemon, waiting on its receives, used a quarter
of a core. While the daemon drained the queue, 16% of moto's busy time went
to `BaseResponse._enrich_response`, which puts the request id into an XML
answer's `<RequestId>` with a look-behind regular expression tried at every
position of the answer, JSON answers of 250 KiB included (SQS answers in
JSON, and they hold no `<RequestId>`). The fixes: the module list is read
once (moto's folder does not change while it runs), a message's body MD5
is kept with the body it was computed from, a body that is all ASCII is
checked by deleting the allowed bytes in one C-level pass (only the
regular expression is run to name the first bad character, as before), and
an answer without `<RequestId>` skips the substitution (which could not
have changed it; the headers are enriched as before). What moto answers is
unchanged.

SQS answered a receive with a 500 while a send was still finishing. moto's
receive deep-copies every message it returns, walking the message's
attribute dict, and a send goes on writing to its message after the
message is in the queue: SendMessageBatch sets `user_id` on it, and this
launcher's kept body MD5 (above) was added on its first read, by the
send's answer. Another server thread adding a key while the copy walked
the dict raised "dictionary changed size during iteration": a 500 to a
receive that had already marked its earlier messages received, so they
stayed invisible for a whole visibility timeout, a stall real SQS would
not have made. Measured: menu-sync at 300 items had 5 items stored 30 s
late in 2 runs of 15 on a busy host, and a CI run failed on it. The fix
copies a message from a snapshot of its dict (taken in one C-level step),
and the add computes the kept MD5 before the message is in the queue.
`test_moto_launcher.py` adds each key in the middle of a receive's copy.
In the same way a give-back (a visibility change to 0) that found its
message pending could have it un-pended by a receive pass before its own
removal, which then raised KeyError (a 500, a batch's later entries left
unchanged; found by reading, not seen in a run: the daemon gives back
with a delay). The removal now tolerates it.

SQS receives cost more the more messages are in flight. A message's
`visible` (and `delayed`) reads moto's clock, `unix_time_millis`, which
builds two datetimes and subtracts them: about 10 microseconds a read. A
receive reads it for every pending message (which FIFO groups are in
flight, above) and for every message its walk passes before the first
visible one (the oldest messages, the ones in flight), so its cost grows
with what the consumer holds, not with what it takes. Measured in process
(a FIFO queue of 10,000, a receive of ten and its deletes): 2.45 ms with
40 messages in flight, 15 ms with 1,000, 33 ms with 2,000, nine tenths of
it the clock; the rest mostly the deep copy moto's receive makes of the
set of groups in flight (a Python call per group). Real SQS does not
charge a consumer for pipelining: a consumer that keeps a few hundred
messages in flight (the daemon's batches being decided and written) was
slowed against one that holds ten (a bare client), and the difference
measured was the stand-in's. The fix reads the
same clock (milliseconds since the epoch, UTC, as a float) from
`time.time()`; every reader of `unix_time_millis` in moto's SQS gets it.
Tests that move moto's clock still replace that one name. And the groups
in flight are handed to the receive as a frozenset, whose deep copy is
itself (strings in a set that cannot change). With both, the same
measure: 1.87 ms with 40 in flight, 1.86 with 400, 3.51 with 1,000, 3.83
with 2,000 (a walk past the messages in flight is left, at a fraction of
a microsecond each). `test_moto_launcher.py` counts the datetime clock's
reads in one receive with 500 in flight (1,061 before).

HTTP: moto's server closes every connection after one answer. Werkzeug's
development server, which moto runs, sends `Connection: close` with every
response (its http.server base cannot tell where an unread request body
ends, so it never reuses a connection), and starts a thread for each
connection. So every SQS call paid for a TCP connection and a server
thread, on both ends, where AWS keeps a client's connections open between
calls; and a client's connection pool, which is how it talks to AWS, was
never used against the stack. The fix keeps an HTTP/1.1 connection open
when the request's body had a Content-Length (read whole before moto sees
the request, so nothing of it is left on the connection; up to 16 MiB)
and moto answered without raising; werkzeug's wait for stray body bytes
after the answer, which could swallow a client's next request, is skipped
then. A chunked or oversized body, an HTTP/1.0 client, a client that asks
to close, a request line refused as too long, and an error close the
connection as before, and an idle connection is closed after 120 s (a
thread per connection must not be held for ever by a client that went
away). What moto answers is unchanged.

DynamoDB and Kinesis are not served by moto here: the stack runs dynoxide
and ferrokinesis for them (`cafe-emulators`), so no DynamoDB fix is needed.

Garbage collection: full collections walk every object moto holds and grew
into 1-5 s stalls in which moto served nothing; after each one the
survivors are frozen, so the next walks only newer objects (see
`_bounded_gc`).

Nothing else in moto is touched.

Usage: python moto_launcher.py [moto_server arguments...]
"""

import collections
import copy
import functools
import gc
import io
import json
import re
import selectors
import sys
import threading
import time
import types
import weakref
from collections.abc import Mapping

from moto import backends as moto_backends
from moto import server as moto_server
from moto.core import responses as moto_responses
from moto.server import main
from moto.sqs import constants as sqs_constants
from moto.sqs import exceptions as sqs_exceptions
from moto.sqs import models as sqs_models
from moto.core.utils import camelcase_to_underscores
from moto.moto_server import werkzeug_app as moto_werkzeug_app
from werkzeug import serving as werkzeug_serving


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
        # A FIFO group is delivered in order: once one of its messages is not
        # deliverable, none after it is, in this walk (see _serialised_receive).
        fifo = self._queue.fifo_queue
        blocked = set()
        for message in self._queue._messages:
            group = message.group_id if fifo else None
            if group is not None and group in blocked:
                continue
            if message.visible and not message.delayed:
                received = message.approximate_receive_count
                yield message
                # Passed over (its group looked in flight, or it went to
                # the DLQ): none after it in its group may go ahead of it.
                if group is not None and message.approximate_receive_count == received:
                    blocked.add(group)
            elif group is not None:
                blocked.add(group)

    def __len__(self):
        # ApproximateNumberOfMessages: every visible message, held by its
        # group or not, as SQS counts them.
        return sum(1 for m in self._queue._messages if m.visible and not m.delayed)

    def __bool__(self):
        # Whether a receive would find something to deliver.
        return any(True for _ in self)


def _in_flight_groups(self):
    """Groups with a message delivered and still invisible (see above).

    Iterates a copy: a delete or visibility change on another server thread
    changes the set meanwhile, and iterating it live raised "Set changed size
    during iteration": a 500 that real SQS would not have answered (seen
    once in a full test run, on a ReceiveMessage while a shutdown's
    give-backs were landing). `tuple()` of a set copies it in one step under
    the GIL. The answer is a `_Groups`, which receive's deep copy of it
    returns as it is."""
    pending = tuple(self._pending_messages)
    return _Groups(m.group_id for m in pending if m.group_id is not None and not m.visible)


class _Groups(frozenset):
    """Group ids in flight. moto's receive deep-copies the set it is given
    (once a receive, and again for each message it finds pending and
    visible), one Python call per group in flight; a frozenset of strings
    cannot change, so its deep copy is itself."""

    def __deepcopy__(self, memo):
        return self


class MessageNotInflight(sqs_exceptions.ReceiptHandleIsInvalid):
    def __init__(self):
        sqs_exceptions.SQSException.__init__(self, "MessageNotInflight", "The specified message isn't in flight.")


_by_handle = weakref.WeakValueDictionary()  # every receipt handle moto issued -> its message
# message -> the queue that holds it. Not an attribute of the message:
# receive deep-copies each message it returns, and a queue (with its locks)
# cannot be copied.
_holder = weakref.WeakKeyDictionary()
_original_mark_received = sqs_models.Message.mark_received
_original_add_message = sqs_models.Queue.add_message
_original_purge = sqs_models.SQSBackend.purge_queue


def _indexed_mark_received(self, *args, **kwargs):
    _original_mark_received(self, *args, **kwargs)
    _by_handle[self.receipt_handle] = self


def _fifo_duplicate(queue, message):
    """Whether `message`, sent to FIFO `queue`, repeats a deduplication id
    sent within the last five minutes (and records it if not). See the
    module's docstring: deleted messages count, as in SQS."""
    if message.approximate_receive_count:
        # A dead-letter move of a received message, not a send.
        return False
    now = message.sent_timestamp or int(time.time() * 1000)
    window = sqs_models.DEDUPLICATION_TIME_IN_SECONDS * 1000
    seen = queue.__dict__.setdefault("_cafe_dedup_seen", {})
    order = queue.__dict__.setdefault("_cafe_dedup_order", collections.deque())
    while order and now - order[0][0] >= window:
        at, key = order.popleft()
        if seen.get(key) == at:
            del seen[key]
    scope = queue.attributes.get("DeduplicationScope")
    key = (message.group_id if scope == "messageGroup" else None, message.deduplication_id)
    # Checked against the time too: sends take the lock in their own order,
    # so an expired id can sit behind a newer one in `order` for a moment.
    if key in seen and now - seen[key] < window:
        return True
    seen[key] = now
    order.append((now, key))
    return False


def _snapshot_deepcopy(self, memo):
    """A message's deep copy, made from a snapshot of its attribute dict.

    `dict(...)` copies the dict in one C-level step under the GIL, so a key
    a sender's thread adds meanwhile is either in the copy or not; the
    default copy walks the live dict and fails when one is added (see the
    module's docstring). Otherwise the copy is the default one."""
    cls = type(self)
    new = cls.__new__(cls)
    memo[id(self)] = new
    state = dict(self.__dict__)
    new.__dict__.update(copy.deepcopy(state, memo))
    return new


def _indexed_add_message(self, message):
    # The body's MD5 is kept in the message (`_kept_body_md5`) before the
    # message is in a queue, not on its first read by the send's answer:
    # no key of ours is added to a message a receive may be copying.
    message.body_md5
    if self.fifo_queue and message.deduplication_id is not None and not self.lambda_event_source_mappings:
        # Under the list's lock: sends run on several server threads, and
        # two sends of one id must not both get through.
        with self._messages_lock:
            if _fifo_duplicate(self, message):
                return
            _holder[message] = self
            self._messages.append(message)
            self._messages_lock.notify_all()
        return
    # Set before the call: a FIFO duplicate moto drops is never received,
    # so no handle leads to it.
    _holder[message] = self
    return _original_add_message(self, message)


def _indexed_purge(self, queue_name):
    queue = self.get_queue(queue_name)
    held = list(queue._messages)
    _original_purge(self, queue_name)
    for message in held:
        _holder.pop(message, None)


def _held_message(queue, receipt_handle):
    """The message of `queue` that was given `receipt_handle`, or None."""
    message = _by_handle.get(receipt_handle)
    if message is None or _holder.get(message) is not queue:
        return None
    return message


def _indexed_delete(self, receipt_handle):
    with self._messages_lock:
        if receipt_handle in self.deleted_messages:
            # Already deleted: accepted again, as moto (and SQS) do.
            return
        message = _held_message(self, receipt_handle)
        if message is None:
            raise sqs_exceptions.ReceiptHandleIsInvalid()
        # A new list, never the old one changed in place: a receive walking
        # the old list meanwhile (receives take another lock) would skip
        # the message after the removed one, and a FIFO group whose next
        # message is skipped is delivered out of order. Copying the list is
        # one C-level step, like the removal.
        remaining = self._messages.copy()
        remaining.remove(message)
        self._messages = remaining
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)
        _holder.pop(message, None)
        # The next message of its group may be deliverable now: wake the
        # long polls (the docstring's "SQS long polls return once").
        if self.fifo_queue and message.group_id is not None:
            self._messages_lock.notify_all()


def _indexed_change_visibility(self, queue_name, receipt_handle, visibility_timeout):
    """moto's change_message_visibility, the message found by its handle;
    a message not in flight is refused (see above)."""
    queue = self.get_queue(queue_name)
    message = _held_message(queue, receipt_handle)
    if message is None:
        raise sqs_exceptions.ReceiptHandleIsInvalid()
    if message.visible:
        raise MessageNotInflight()
    given = sqs_models.unix_time_millis() + int(visibility_timeout) * 1000
    if given - message.sent_timestamp > 43200 * 1000:
        raise sqs_exceptions.InvalidParameterValue(
            f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
            "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
        )
    message.change_visibility(visibility_timeout)
    # A receive pass on another thread may un-pend a visible message
    # between a check and a removal (no lock is held here): a `remove`
    # then raised KeyError, a 500 for a give-back that had already
    # happened, and a batch's later entries were left unchanged.
    if message.visible:
        queue.pending_messages.discard(message)
        # Given back: deliverable now, and its group with it.
        with queue._messages_lock:
            queue._messages_lock.notify_all()


_SQS_INVALID_CHAR = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# Every ASCII byte SQS allows: a body of these alone needs no further check.
_SQS_ASCII_ALLOWED = b"\t\n\r" + bytes(range(0x20, 0x80))


def _check_contents(text, where):
    text = text or ""
    if text.isascii() and not text.encode("ascii").translate(None, _SQS_ASCII_ALLOWED):
        return
    bad = _SQS_INVALID_CHAR.search(text)
    if bad:
        raise sqs_exceptions.SQSException(
            "InvalidMessageContents",
            f"Invalid binary character '#x{ord(bad.group()):X}' was found in the {where}, the set of allowed "
            "characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        )


def _message_bytes(body, attributes):
    size = len((body or "").encode("utf-8", "surrogatepass"))
    for name, value in (attributes or {}).items():
        size += len(name.encode("utf-8")) + len((value.get("DataType") or "").encode("utf-8"))
        if value.get("StringValue") is not None:
            size += len(value["StringValue"].encode("utf-8", "surrogatepass"))
        if value.get("BinaryValue") is not None:
            size += len(value["BinaryValue"])
    return size


def _check_message(queue, body, attributes):
    _check_contents(body, "message body")
    for value in (attributes or {}).values():
        if value.get("StringValue") is not None:
            _check_contents(value["StringValue"], "message attribute value")
    size = _message_bytes(body, attributes)
    if size > queue.maximum_message_size:
        raise sqs_exceptions.InvalidParameterValue(
            "One or more parameters are invalid. Reason: Message must be shorter than "
            f"{queue.maximum_message_size} bytes."
        )
    return size


def _strict_send(send):
    @functools.wraps(send)
    def wrapper(self, queue_name, message_body, message_attributes=None, *args, **kwargs):
        _check_message(self.get_queue(queue_name), message_body, message_attributes)
        return send(self, queue_name, message_body, message_attributes, *args, **kwargs)

    return wrapper


def _strict_send_batch(send_batch):
    @functools.wraps(send_batch)
    def wrapper(self, queue_name, entries):
        queue = self.get_queue(queue_name)
        total = sum(_check_message(queue, e.get("MessageBody"), e.get("MessageAttributes")) for e in entries.values())
        if total > sqs_constants.MAXIMUM_MESSAGE_LENGTH:
            raise sqs_exceptions.BatchRequestTooLong(total)
        return send_batch(self, queue_name, entries)

    return wrapper


def _serialised_receive(receive):
    @functools.wraps(receive)
    def wrapper(self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names=None):
        queue = self.get_queue(queue_name)
        lock = queue.__dict__.setdefault("_cafe_receive_lock", threading.Lock())
        deadline = time.monotonic() + float(wait_seconds_timeout or 0)
        while True:
            # The list's lock too: a pass that moves a message to the
            # dead-letter queue removes it from the list in place, and a
            # delete's copy taken before that removal and put in place after
            # it would bring the message back (see the docstring).
            with lock, queue._messages_lock:
                held = len(queue._messages)
                result = receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
                if len(queue._messages) < held:
                    # Moved to the dead-letter queue (a receive removes
                    # nothing else): what waited behind them may lead now.
                    queue._messages_lock.notify_all()
            remaining = deadline - time.monotonic()
            if result or remaining <= 0:
                return result
            # Wakes at once while messages are visible but held by their
            # group: pace the passes rather than spin.
            queue.wait_for_messages(min(1.0, remaining))
            time.sleep(min(0.02, max(remaining, 0)))

    return wrapper


def _cached_modules(list_of_moto_modules):
    modules = frozenset(list_of_moto_modules())

    @functools.wraps(list_of_moto_modules)
    def wrapper():
        return modules

    return wrapper


def _kept_body_md5(body_md5):
    """The body's MD5, computed once per body. Read first by the add,
    before any receive can see the message: after that a read only replaces
    the value (when the body changed)."""

    @functools.wraps(body_md5.fget)
    def getter(self):
        kept = self.__dict__.get("_cafe_body_md5")
        if kept is None or kept[0] is not self.body:
            kept = (self.body, body_md5.fget(self))
            self.__dict__["_cafe_body_md5"] = kept
        return kept[1]

    return property(getter)


def _quick_enrich(enrich):
    @functools.wraps(enrich)
    def wrapper(headers, body):
        if isinstance(body, str) and "<RequestId>" not in body:
            # The substitution finds nothing to replace: only the headers change.
            headers, _ = enrich(headers, "")
            return headers, body
        return enrich(headers, body)

    return staticmethod(wrapper)


# A request body the keep-alive handler reads whole before moto sees the
# request; a longer one closes its connection after the answer, as before.
_KEPT_BODY_MAX = 16 * 1024 * 1024

# Whether the connection this server thread serves (werkzeug runs a thread
# per connection) stays open after the current answer.
_connection = threading.local()


class _KeepAliveHandler(moto_werkzeug_app.MotoRequestHandler):
    """moto's request handler, keeping HTTP/1.1 connections open (see the
    docstring): the body is read whole into memory before moto runs, so the
    next request on the connection starts where this one's body ended.

    Nagle's algorithm is off, as on AWS's endpoints: an answer goes out in
    more than one write (headers, then body), and on a connection kept open
    the body would otherwise wait for the client's delayed ACK of the
    headers (40 ms on Linux) before it is sent."""

    disable_nagle_algorithm = True

    # An idle kept connection holds its server thread until the client
    # closes it; past this many seconds the server closes it (longer than
    # hyper's 90 s pool idle timeout, so the SDK closes first).
    timeout = 120

    def handle_one_request(self):
        # Before anything of this request can be answered: http.server
        # refuses an over-long request line (414) before parse_request, and
        # that answer must close as before, whatever the last one did.
        _connection.keep = False
        super().handle_one_request()

    def log_error(self, format, *args):
        if format.startswith("Request timed out"):  # an idle connection closed
            return
        super().log_error(format, *args)

    def make_environ(self):
        environ = super().make_environ()
        if "wsgi.input_terminated" in environ:  # chunked: werkzeug reads it
            return environ
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return environ
        if not 0 <= length <= _KEPT_BODY_MAX:
            return environ
        body = self.rfile.read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        # An HTTP/1.0 client (even one that asks for keep-alive), or one with
        # a `close` among its Connection options, is closed as before.
        options = {o.strip().lower() for v in self.headers.get_all("Connection", []) for o in v.split(",")}
        _connection.keep = (
            len(body) == length
            and self.request_version >= "HTTP/1.1"
            and "close" not in options
            and not self.close_connection
        )
        return environ

    def send_header(self, keyword, value):
        # http.server keeps an HTTP/1.1 connection unless a header says close.
        if getattr(_connection, "keep", False) and keyword.lower() == "connection" and value.lower() == "close":
            return
        super().send_header(keyword, value)


class _DrainUnlessKept(selectors.DefaultSelector):
    """Werkzeug's wait for stray body bytes after an answer (up to 10 ms),
    made a no-op on a kept connection: the body was read whole, and what
    arrives next is the client's next request."""

    def select(self, timeout=None):
        if getattr(_connection, "keep", False):
            return []
        return super().select(timeout)


def _whole_answers(app):
    """The WSGI app, with moto's answer read whole before werkzeug writes
    it: an error while answering is then raised before anything is sent,
    and closes the connection (werkzeug answers it with a 500)."""

    def answer(environ, start_response):
        try:
            result = app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                if hasattr(result, "close"):
                    result.close()
        except BaseException:
            _connection.keep = False
            raise

    return answer


def _run_simple_keeping_connections(host, port, app, **kwargs):
    kwargs["request_handler"] = _KeepAliveHandler
    return werkzeug_serving.run_simple(host, port, _whole_answers(app), **kwargs)


def _epoch_millis(dt=None):
    """moto's `unix_time_millis`, without its datetimes when reading the
    clock (see the docstring); a given datetime is moto's to convert."""
    if dt is not None:
        return _moto_unix_time_millis(dt)
    return time.time() * 1000.0


_moto_unix_time_millis = sqs_models.unix_time_millis


moto_responses.BaseResponse._enrich_response = _quick_enrich(moto_responses.BaseResponse._enrich_response)
moto_backends.list_of_moto_modules = _cached_modules(moto_backends.list_of_moto_modules)
sqs_models.Message.body_md5 = _kept_body_md5(sqs_models.Message.body_md5)
sqs_models.unix_time_millis = _epoch_millis
sqs_models.SQSBackend.receive_message = _serialised_receive(sqs_models.SQSBackend.receive_message)
sqs_models.SQSBackend.send_message = _strict_send(sqs_models.SQSBackend.send_message)
sqs_models.SQSBackend.send_message_batch = _strict_send_batch(sqs_models.SQSBackend.send_message_batch)
sqs_models.SQSBackend.change_message_visibility = _indexed_change_visibility
sqs_models.SQSBackend.purge_queue = _indexed_purge
sqs_models.Message.mark_received = _indexed_mark_received
sqs_models.Message.__deepcopy__ = _snapshot_deepcopy
sqs_models.Queue.add_message = _indexed_add_message
sqs_models.Queue.delete_message = _indexed_delete
sqs_models.Queue.pending_message_groups = property(_in_flight_groups)
sqs_models.Queue.attributes = property(LazyQueueAttributes)
sqs_models.Queue.messages = property(LazyVisibleMessages)
moto_server.run_simple = _run_simple_keeping_connections
werkzeug_serving.selectors = types.SimpleNamespace(
    DefaultSelector=_DrainUnlessKept, EVENT_READ=selectors.EVENT_READ
)

_gc_started = {}


def _bounded_gc(phase, info):
    """Keeps moto's full garbage collections from growing with its heap.

    moto keeps every item and message in Python objects, and CPython's full
    (generation 2) collection walks all of them: on the dev machine a fresh
    moto's full collections grew from 150 ms to 550 ms within one 60 s
    orders run, and a moto that had served a few runs stalled for 1 to 5 s,
    during which it answered nothing (measured as 0-1 requests per second in
    its log, and as end-to-end latency spikes no real DynamoDB has). After
    each full collection the survivors are frozen (`gc.freeze`), so the next
    one walks only what was allocated since. The cost: cyclic garbage that
    survived a collection is never freed, which a test stack that lives for a
    few runs can afford. Collections still over 100 ms are logged.
    """
    if phase == "start":
        _gc_started["t"] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started.get("t", time.perf_counter())
    if info.get("generation") == 2:
        gc.freeze()
    if took > 0.1:
        print(f"moto_launcher: gc generation {info.get('generation')} took {took * 1000:.0f} ms", file=sys.stderr, flush=True)


if __name__ == "__main__":
    gc.callbacks.append(_bounded_gc)
    main(sys.argv[1:])
