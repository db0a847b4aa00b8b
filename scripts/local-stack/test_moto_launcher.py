"""Checks of moto_launcher's fixes that no client can time.

A race between two requests on moto's server threads shows up once in
several runs at best; here the same steps run in one thread, in the order
that breaks, against moto's backend with the launcher's fixes applied (the
import applies them). Run by `stack.sh selftest`, which the integration
tests call (`daemon/tests/it/stack.rs`).
"""

import http.client
import json
import socket
import threading
import unittest
import uuid
from unittest import mock

from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs import exceptions as sqs_exceptions
from moto.sqs import models as sqs_models

import moto_launcher  # noqa: F401  (applies the fixes)


def _backend():
    return sqs_models.sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]


def _standard_queue(backend):
    name = f"selftest-{uuid.uuid4().hex[:12]}"
    backend.create_queue(name)
    return name


def _fifo_queue(backend, dead_letters=None):
    """A FIFO queue; with `dead_letters` (another queue's name), a message
    received once goes there on its next receive."""
    name = f"selftest-{uuid.uuid4().hex[:12]}.fifo"
    redrive = {}
    if dead_letters is not None:
        target = backend.get_queue(dead_letters).queue_arn
        redrive["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": target, "maxReceiveCount": "1"})
    backend.create_queue(name, FifoQueue="true", ContentBasedDeduplication="true", VisibilityTimeout="30", **redrive)
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


class AGroupTurningVisibleDuringAWalk(unittest.TestCase):
    def test_no_message_of_a_group_is_delivered_ahead_of_one_the_walk_passed_over(self):
        # A FIFO group given back in pieces: m0 and m1 are visible again, m2
        # is still in flight, m3 was never received. A receive passes over
        # m0 and m1 (their group is in flight through m2); if m2's timeout
        # runs out while the walk is between m1 and m2, m2 is no longer in
        # flight when the walk reaches it, the group looks free, and moto
        # delivered m2 and m3 ahead of m0 and m1. Real SQS delivers a group
        # in order. Where in the walk m2 turns visible depends on how often
        # moto reads the clock, so every point is tried: the clock ticks a
        # millisecond per read, and m2's timeout ends `flip` reads in.
        backend = _backend()
        real_clock = sqs_models.unix_time_millis
        broken = []
        try:
            for flip in range(0, 60):
                sqs_models.unix_time_millis = real_clock
                name = _fifo_queue(backend)
                for i in range(4):
                    backend.send_message(name, f"m{i}", group_id="g")
                held = backend.receive_message(name, 3, 0, 30)
                self.assertEqual([m.body for m in held], ["m0", "m1", "m2"])
                queue = backend.get_queue(name)
                by_body = {m.body: m for m in queue._messages}
                start = real_clock()
                clock = [start]

                def tick():
                    clock[0] += 1
                    return clock[0]

                by_body["m0"].visible_at = start - 1000
                by_body["m1"].visible_at = start - 1000
                by_body["m2"].visible_at = start + flip
                sqs_models.unix_time_millis = tick
                got = [m.body for m in backend.receive_message(name, 10, 0, 30)]
                # In order or nothing: the group's first message leads.
                if got and got[0] != "m0":
                    broken.append((flip, got))
        finally:
            sqs_models.unix_time_millis = real_clock
        self.assertEqual(broken, [], "a group delivered out of order (clock reads before m2 turned visible, delivered)")


class ALongPollWakesWhenAGroupFrees(unittest.TestCase):
    """A FIFO queue whose every visible message waits behind its group's
    message in flight: a long poll waits on the queue's condition, and
    SQS answers it once the group frees. moto woke it only for a new
    message, so the poll slept its full wait (up to a second, the
    launcher's cap) after the delete, give-back or dead-letter move that
    freed the group:
    in cold-start's tail, where every message left waited behind its
    group, each of a group's last payments waited about a second (10,000
    payments: the last 36 decided 0.5 to 2 s after the rest, the server
    idle)."""

    def _waits_until(self, free, dead_letters=False):
        backend = _backend()
        name = _fifo_queue(backend, _fifo_queue(backend) if dead_letters else None)
        backend.send_message(name, "m0", group_id="g")
        backend.send_message(name, "m1", group_id="g")
        (head,) = backend.receive_message(name, 1, 0, 30)
        self.assertEqual(head.body, "m0")
        queue = backend.get_queue(name)
        self.assertFalse(queue.messages, "m1 waits behind m0: nothing to deliver")
        woke = threading.Event()

        def poll():
            # The wait each long-poll pass makes (the wrapper caps it at a
            # second; uncapped here, so a wake that never comes shows).
            queue.wait_for_messages(60)
            woke.set()

        threading.Thread(target=poll, daemon=True).start()
        for _ in range(500):
            if queue._messages_lock._waiters:
                break
            woke.wait(0.01)
        self.assertTrue(queue._messages_lock._waiters, "the poll waits on the queue's condition")
        free(backend, name, head.receipt_handle)
        self.assertTrue(woke.wait(10), "the poll still waits after its group freed")
        return [m.body for m in backend.receive_message(name, 10, 0, 30)]

    def test_a_delete_that_frees_a_group_wakes_the_long_polls(self):
        got = self._waits_until(lambda backend, name, handle: backend.delete_message(name, handle))
        self.assertEqual(got, ["m1"])

    def test_a_give_back_that_frees_a_group_wakes_the_long_polls(self):
        got = self._waits_until(lambda backend, name, handle: backend.change_message_visibility(name, handle, 0))
        self.assertEqual(got, ["m0", "m1"])

    def test_a_receive_that_moves_a_group_s_message_to_the_dead_letter_queue_wakes_the_long_polls(self):
        def timed_out_then_moved(backend, name, handle):
            queue = backend.get_queue(name)
            (head,) = [m for m in queue._messages if m.body == "m0"]
            # Its visibility runs out (which wakes no poll) ...
            head.change_visibility(0)
            # ... and another receive's pass moves it, received once, to
            # the dead-letter queue, passing over m1 behind it.
            self.assertEqual(backend.receive_message(name, 10, 0, 30), [])

        got = self._waits_until(timed_out_then_moved, dead_letters=True)
        self.assertEqual(got, ["m1"])


class ADeleteDuringADeadLetterMove(unittest.TestCase):
    def test_a_message_moved_to_the_dead_letter_queue_is_not_put_back(self):
        # moto's receive moves a message that ran out of receives with
        # `queue._messages.remove(message)`; the launcher's delete copies the
        # list, removes its message from the copy and puts the copy in place.
        # A delete that copies before the move's removal and puts its copy in
        # place after it brings the moved message back: it is then in both
        # queues. Here the removal pauses until the delete has finished (or
        # for half a second, when the delete waits for the receive instead).
        backend = _backend()
        dlq = _fifo_queue(backend)
        name = _fifo_queue(backend, dlq)
        backend.send_message(name, "other", group_id="g2", deduplication_id="o")
        backend.send_message(name, "poison", group_id="g1", deduplication_id="p")
        # "other" in flight (its delete is valid); "poison" received once and
        # visible again at once.
        (other,) = backend.receive_message(name, 1, 0, 30)
        self.assertEqual(other.body, "other")
        self.assertEqual([m.body for m in backend.receive_message(name, 1, 0, 0)], ["poison"])
        queue = backend.get_queue(name)
        deleted = threading.Event()

        class PausingList(list):
            def remove(self, value):
                deleter = threading.Thread(target=lambda: (backend.delete_message(name, other.receipt_handle), deleted.set()))
                deleter.start()
                deleted.wait(0.5)
                super().remove(value)

        queue._messages = PausingList(queue._messages)
        # This receive finds "poison" received once: it moves it.
        self.assertEqual(backend.receive_message(name, 10, 0, 0), [])
        self.assertTrue(deleted.wait(5), "the delete never finished")
        self.assertEqual([m.body for m in queue._messages], [], "the moved message is back in its queue")
        self.assertEqual([m.body for m in backend.get_queue(dlq)._messages], ["poison"])


class FifoDeduplication(unittest.TestCase):
    """SQS drops a FIFO send whose deduplication id was sent in the last five
    minutes, whether or not the first copy was deleted since; moto only
    compared it with the messages still in the queue."""

    def _drain(self, backend, name):
        got = backend.receive_message(name, 10, 0, 30)
        for m in got:
            backend.delete_message(name, m.receipt_handle)
        return [m.body for m in got]

    def test_a_resend_after_the_first_copy_was_deleted_is_dropped_for_five_minutes(self):
        backend = _backend()
        name = _fifo_queue(backend)
        backend.send_message(name, "first", group_id="g", deduplication_id="d1")
        self.assertEqual(self._drain(backend, name), ["first"])
        backend.send_message(name, "again", group_id="g", deduplication_id="d1")
        backend.send_message(name, "other", group_id="g", deduplication_id="d2")
        self.assertEqual(self._drain(backend, name), ["other"])
        # Five minutes after the first send the id is new again.
        later = sqs_models.unix_time_millis() + 300_001
        with mock.patch.object(sqs_models, "unix_time_millis", lambda: later):
            backend.send_message(name, "much later", group_id="g", deduplication_id="d1")
            self.assertEqual(self._drain(backend, name), ["much later"])

    def test_a_duplicate_still_in_the_queue_is_dropped_and_content_based_ids_count(self):
        backend = _backend()
        name = _fifo_queue(backend)
        backend.send_message(name, "same body", group_id="g1")
        backend.send_message(name, "same body", group_id="g2")
        backend.send_message(name, "x", group_id="g3", deduplication_id="d")
        backend.send_message(name, "y", group_id="g3", deduplication_id="d")
        self.assertEqual(sorted(self._drain(backend, name)), ["same body", "x"])

    def test_with_message_group_scope_the_id_is_per_group(self):
        backend = _backend()
        name = f"selftest-{uuid.uuid4().hex[:12]}.fifo"
        backend.create_queue(name, FifoQueue="true", DeduplicationScope="messageGroup", FifoThroughputLimit="perMessageGroupId")
        backend.send_message(name, "a", group_id="g1", deduplication_id="d")
        backend.send_message(name, "b", group_id="g2", deduplication_id="d")
        backend.send_message(name, "c", group_id="g1", deduplication_id="d")
        self.assertEqual(sorted(self._drain(backend, name)), ["a", "b"])

    def test_a_duplicate_inside_one_batch_is_dropped(self):
        backend = _backend()
        name = _fifo_queue(backend)
        entries = {
            "0": {"Id": "0", "MessageBody": "p", "MessageGroupId": "g", "MessageDeduplicationId": "same", "MessageAttributes": {}, "DelaySeconds": None},
            "1": {"Id": "1", "MessageBody": "q", "MessageGroupId": "g", "MessageDeduplicationId": "same", "MessageAttributes": {}, "DelaySeconds": None},
        }
        backend.send_message_batch(name, entries)
        self.assertEqual(self._drain(backend, name), ["p"])

    def test_a_dead_letter_move_is_not_a_send(self):
        # The dead-letter queue already holds a message with the same id;
        # the redriven one must still arrive there.
        backend = _backend()
        dlq = _fifo_queue(backend)
        dlq_arn = backend.get_queue(dlq).queue_arn
        name = f"selftest-{uuid.uuid4().hex[:12]}.fifo"
        backend.create_queue(
            name,
            FifoQueue="true",
            VisibilityTimeout="0",
            RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"}),
        )
        backend.send_message(dlq, "direct", group_id="g", deduplication_id="d")
        backend.send_message(name, "poison", group_id="g", deduplication_id="d")
        self.assertEqual([m.body for m in backend.receive_message(name, 10, 0, 0)], ["poison"])
        # Received once: the next receive moves it to the dead-letter queue.
        self.assertEqual(backend.receive_message(name, 10, 0, 0), [])
        self.assertEqual(sorted(self._drain(backend, dlq)), ["direct", "poison"])

    def test_the_index_forgets_ids_older_than_five_minutes(self):
        backend = _backend()
        name = _fifo_queue(backend)
        for i in range(50):
            backend.send_message(name, f"m{i}", group_id="g", deduplication_id=f"d{i}")
        queue = backend.get_queue(name)
        self.assertEqual(len(queue._cafe_dedup_seen), 50)
        later = sqs_models.unix_time_millis() + 300_001
        with mock.patch.object(sqs_models, "unix_time_millis", lambda: later):
            backend.send_message(name, "late", group_id="g", deduplication_id="late")
        self.assertEqual(len(queue._cafe_dedup_seen), 1)


class _InTheCopy:
    """A value in a message's dict whose deep copy runs `step`: what a
    sender's thread does while a receive copies the message."""

    def __init__(self, step):
        self.step = step

    def __deepcopy__(self, memo):
        self.step()
        return None


class ASendFinishingWhileAReceiveCopies(unittest.TestCase):
    # A receive deep-copies each message it returns; a send goes on writing
    # to its message after the add (SendMessageBatch sets `user_id`; the
    # send's answer read the body MD5, which the launcher kept as a new
    # key). A key added while the copy walked the dict: "dictionary changed
    # size during iteration", a 500 to a receive that had marked its
    # earlier messages received, invisible then for a visibility timeout.

    def test_a_key_added_to_a_message_while_a_receive_copies_it_fails_nothing(self):
        backend = _backend()
        name = _standard_queue(backend)
        backend.send_message(name, "first")
        sent = backend.send_message(name, "second")
        self.assertNotIn("user_id", sent.__dict__)
        # As send_message_batch does once send_message has added it.
        sent.__dict__["_selftest_in_the_copy"] = _InTheCopy(lambda: setattr(sent, "user_id", "entry-2"))
        got = backend.receive_message(name, 10, 0, 30)
        self.assertEqual([m.body for m in got], ["first", "second"])

    def test_the_kept_body_md5_is_in_the_message_once_it_is_added(self):
        backend = _backend()
        name = _standard_queue(backend)
        sent = backend.send_message(name, "body")
        keys = set(sent.__dict__)
        # The send's answer reads it after the add: nothing is added then.
        sent.body_md5
        self.assertEqual(set(sent.__dict__), keys)


class AGiveBackRacingAReceive(unittest.TestCase):
    def test_a_receive_un_pending_the_message_between_check_and_removal_fails_nothing(self):
        backend = _backend()
        name = _standard_queue(backend)
        backend.send_message(name, "m")
        (got,) = backend.receive_message(name, 1, 0, 30)
        queue = backend.get_queue(name)

        class UnpendedRightAfterTheCheck(set):
            # A receive pass on another thread finds the message visible
            # and un-pends it just after the give-back looked.
            def __contains__(self, message):
                found = set.__contains__(self, message)
                self.discard(message)
                return found

        queue._pending_messages = UnpendedRightAfterTheCheck(queue._pending_messages)
        backend.change_message_visibility(name, got.receipt_handle, 0)
        self.assertEqual([m.body for m in backend.receive_message(name, 1, 0, 30)], ["m"])


class WorkKeptInsteadOfRedone(unittest.TestCase):
    def test_an_ascii_body_is_checked_as_every_body_is(self):
        backend = _backend()
        name = _standard_queue(backend)
        backend.send_message(name, "tab\tnewline\ncr\r and every printable ~\x7f")
        for bad in ["\x00", "a\x08b", "\x0b", "\x0c", "x" * 30000 + "\x1f", "\ufffe", "caf\u00e9\x01"]:
            with self.assertRaises(sqs_exceptions.SQSException, msg=repr(bad)) as raised:
                backend.send_message(name, bad)
            self.assertIn("Invalid binary character", str(raised.exception), repr(bad))
        # Allowed non-ASCII goes to the regular expression and passes it.
        backend.send_message(name, "caf\u00e9 \U0001F600")

    def test_a_body_md5_follows_its_body(self):
        import hashlib

        backend = _backend()
        name = _standard_queue(backend)
        message = backend.send_message(name, "first")
        self.assertEqual(message.body_md5, hashlib.md5(b"first").hexdigest())
        self.assertEqual(message.body_md5, hashlib.md5(b"first").hexdigest())
        message.body = "second"
        self.assertEqual(message.body_md5, hashlib.md5(b"second").hexdigest())

    def test_a_response_is_enriched_as_moto_enriches_it(self):
        from moto.core.responses import BaseResponse

        xml = "<R><RequestId>placeholder</RequestId></R>"
        headers, body = BaseResponse._enrich_response({"status": 200}, xml)
        self.assertEqual(headers["status"], "200")
        self.assertNotIn("placeholder", body)
        self.assertIn(f"<RequestId>{headers['x-amzn-requestid']}</RequestId>", body)
        json_body = json.dumps({"Messages": [{"Body": "x" * 1000}]})
        headers, body = BaseResponse._enrich_response({"status": 200}, json_body)
        self.assertIs(body, json_body)
        self.assertEqual(headers["status"], "200")
        self.assertIn("x-amzn-requestid", headers)

    def test_the_module_list_is_moto_s(self):
        from moto import backends

        modules = backends.list_of_moto_modules()
        self.assertIn("sqs", modules)
        self.assertNotIn("sqs.us-east-1.amazonaws.com", modules)
        self.assertIs(modules, backends.list_of_moto_modules())


class ReceivesDoNotChargeForWhatIsInFlight(unittest.TestCase):
    """A receive read moto's datetime clock for every message in flight and
    deep-copied the set of their groups: its cost grew with what the
    consumer held, which real SQS does not charge for."""

    def _in_flight(self, backend, name, n):
        held = []
        while len(held) < n:
            held += backend.receive_message(name, 10, 0, 60)
        return held

    def test_a_receive_reads_the_datetime_clock_a_few_times_whatever_is_in_flight(self):
        from moto.core import utils as moto_utils

        backend = _backend()
        name = _fifo_queue(backend)
        for i in range(600):
            backend.send_message(name, f"m{i}", group_id=f"g{i}")
        self._in_flight(backend, name, 500)
        reads = []
        real = moto_utils.utcnow

        def counted():
            reads.append(1)
            return real()

        with mock.patch.object(moto_utils, "utcnow", counted):
            got = backend.receive_message(name, 10, 0, 60)
        self.assertEqual(len(got), 10)
        # The poll's deadline and each delivered message's retention: not
        # one read per message in flight (over a thousand before).
        self.assertLessEqual(len(reads), 20)

    def test_the_groups_in_flight_are_moto_s_and_copied_as_they_are(self):
        import copy

        backend = _backend()
        name = _fifo_queue(backend)
        for i in range(4):
            backend.send_message(name, f"m{i}", group_id=f"g{i}")
        given_back = backend.receive_message(name, 1, 0, 60)[0]
        self.assertEqual(len(backend.receive_message(name, 2, 0, 60)), 2)
        queue = backend.get_queue(name)
        self.assertEqual(queue.pending_message_groups, {"g0", "g1", "g2"})
        groups = queue.pending_message_groups
        self.assertIs(copy.deepcopy(groups), groups)
        # A message visible again (given back) no longer holds its group.
        backend.change_message_visibility(name, given_back.receipt_handle, 0)
        self.assertEqual(queue.pending_message_groups, {"g1", "g2"})

    def test_a_message_turns_visible_again_when_its_timeout_runs_out(self):
        backend = _backend()
        name = _standard_queue(backend)
        backend.send_message(name, "m")
        self.assertEqual([m.body for m in backend.receive_message(name, 10, 0, 30)], ["m"])
        self.assertEqual(backend.receive_message(name, 10, 0, 30), [])
        later = sqs_models.unix_time_millis() + 30_001
        with mock.patch.object(sqs_models, "unix_time_millis", lambda: later):
            self.assertEqual([m.body for m in backend.receive_message(name, 10, 0, 30)], ["m"])


class ConnectionsStayOpen(unittest.TestCase):
    """moto's server (werkzeug's) closed every connection after one answer,
    so each SQS call paid for a TCP connection and a server thread, which
    AWS, keeping a client's connections open, does not charge. These run a
    real server on a free port of loopback with the launcher's handler."""

    _auth = "AWS4-HMAC-SHA256 Credential=test/20261205/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=x"

    @staticmethod
    def _serve(app):
        from werkzeug import serving

        server = serving.make_server(
            "127.0.0.1",
            0,
            moto_launcher._whole_answers(app),
            threaded=True,
            request_handler=moto_launcher._KeepAliveHandler,
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    @classmethod
    def setUpClass(cls):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        cls.server = cls._serve(DomainDispatcherApplication(create_backend_app))

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def _connection(self, server=None):
        return http.client.HTTPConnection("127.0.0.1", (server or self.server).server_port, timeout=5)

    def _call(self, conn, action, body, **headers):
        conn.request(
            "POST",
            "/",
            body=body if isinstance(body, bytes) or hasattr(body, "__next__") else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": f"AmazonSQS.{action}",
                "Authorization": self._auth,
                **headers,
            },
            encode_chunked="Transfer-Encoding" in headers,
        )
        answer = conn.getresponse()
        return answer, answer.read()

    def test_calls_share_one_connection_and_each_body_ends_where_it_should(self):
        conn = self._connection()
        self.addCleanup(conn.close)
        answer, data = self._call(conn, "CreateQueue", {"QueueName": f"selftest-{uuid.uuid4().hex[:12]}"})
        self.assertEqual(answer.status, 200, data)
        self.assertIsNone(answer.getheader("Connection"))
        sock = conn.sock
        self.assertIsNotNone(sock)
        url = json.loads(data)["QueueUrl"]
        big = "x" * 200_000
        for body in [big, "small", big]:
            answer, data = self._call(conn, "SendMessage", {"QueueUrl": url, "MessageBody": body})
            self.assertEqual(answer.status, 200, data)
        received = []
        while len(received) < 3:
            answer, data = self._call(conn, "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10})
            self.assertEqual(answer.status, 200, data)
            received += [m["Body"] for m in json.loads(data).get("Messages", [])]
        self.assertEqual(sorted(received), sorted([big, "small", big]))
        self.assertIs(conn.sock, sock)

    def test_a_request_sent_as_soon_as_its_answer_arrives_is_answered(self):
        # werkzeug waits up to 10 ms after an answer for stray body bytes
        # and throws them away: on a kept connection that would be the
        # client's next request, and the client would wait forever.
        conn = self._connection()
        self.addCleanup(conn.close)
        for _ in range(50):
            answer, data = self._call(conn, "ListQueues", {})
            self.assertEqual(answer.status, 200, data)

    def _closed_after_one_answer(self, request):
        with socket.create_connection(("127.0.0.1", self.server.server_port), timeout=5) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):  # a connection kept open times out here
                answer += chunk
        return answer

    def _list_queues(self, version, *headers):
        lines = [
            f"POST / {version}",
            "Content-Type: application/x-amz-json-1.0",
            "X-Amz-Target: AmazonSQS.ListQueues",
            f"Authorization: {self._auth}",
            "Content-Length: 2",
            *headers,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n{}").encode()

    def test_a_client_that_asks_to_close_is_closed_and_told_so(self):
        answer = self._closed_after_one_answer(self._list_queues("HTTP/1.1", "Connection: close"))
        self.assertIn(b" 200 OK\r\n", answer[:20])
        self.assertIn(b"\r\nConnection: close\r\n", answer)

    def test_an_http_1_0_client_is_closed(self):
        answer = self._closed_after_one_answer(self._list_queues("HTTP/1.0"))
        self.assertIn(b" 200 OK\r\n", answer[:20])

    def test_an_http_1_0_client_asking_for_keep_alive_is_closed(self):
        for options in ["Connection: keep-alive", "Connection: keep-alive, TE"]:
            answer = self._closed_after_one_answer(self._list_queues("HTTP/1.0", options))
            self.assertIn(b" 200 OK\r\n", answer[:20], options)

    def test_close_among_other_connection_options_closes(self):
        for options in [("Connection: close, TE",), ("Connection: TE", "Connection: close")]:
            answer = self._closed_after_one_answer(self._list_queues("HTTP/1.1", *options))
            self.assertIn(b" 200 OK\r\n", answer[:20], options)

    def test_a_request_line_refused_as_too_long_closes_a_kept_connection(self):
        # http.server answers 414 before it parses the request; the answer
        # before it on the connection was kept, this one must not be, or
        # the rest of the line is read as the next request.
        long_line = b"GET /" + b"a" * 65_600 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = self._closed_after_one_answer(self._list_queues("HTTP/1.1") + long_line)
        self.assertEqual(answer.count(b"HTTP/1.1 "), 2, answer[:300])
        self.assertIn(b"HTTP/1.1 414 ", answer)
        self.assertIn(b"\r\nConnection: close\r\n", answer[answer.index(b"HTTP/1.1 414 "):])

    def test_an_idle_connection_is_closed_by_the_server_after_the_clients_would_close_it(self):
        # hyper (the SDK for Rust) drops an idle pooled connection after 90 s.
        self.assertGreater(moto_launcher._KeepAliveHandler.timeout, 90)

        class Impatient(moto_launcher._KeepAliveHandler):
            timeout = 0.3

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug import serving

        server = serving.make_server(
            "127.0.0.1",
            0,
            moto_launcher._whole_answers(DomainDispatcherApplication(create_backend_app)),
            threaded=True,
            request_handler=Impatient,
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as sock:
            sock.sendall(self._list_queues("HTTP/1.1"))
            answer = b""
            while chunk := sock.recv(65536):  # kept open, then closed when idle
                answer += chunk
        self.assertIn(b" 200 OK\r\n", answer[:20])
        self.assertNotIn(b"Connection: close", answer)

    def test_a_chunked_body_closes_its_connection(self):
        conn = self._connection()
        self.addCleanup(conn.close)
        answer, data = self._call(conn, "ListQueues", iter([b"{", b"}"]), **{"Transfer-Encoding": "chunked"})
        self.assertEqual(answer.status, 200, data)
        self.assertEqual(answer.getheader("Connection"), "close")

    def test_an_error_while_answering_is_a_500_and_closes_the_connection(self):
        def failing(environ, start_response):
            start_response("200 OK", [("Content-Length", "10")])
            yield b"half"
            raise RuntimeError("moto failed while answering")

        server = self._serve(failing)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        conn = self._connection(server)
        self.addCleanup(conn.close)
        server.log = lambda *args, **kwargs: None  # the traceback werkzeug logs
        answer, _ = self._call(conn, "ListQueues", {})
        self.assertEqual(answer.status, 500)
        self.assertEqual(answer.getheader("Connection"), "close")


if __name__ == "__main__":
    unittest.main()
