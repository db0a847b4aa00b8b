//! What the bare clients (`payments-throughput`, `menu-throughput`) share:
//! their scratch queue, their SDK clients, and a drain of the queue shaped
//! as the daemon's SQS input drains one, without the daemon's work.
//!
//! Owns: the drain's stages, as `daemon/src/topology.rs` starts an SQS
//! input's: long-polling receivers (a task each) of up to ten messages, a
//! batcher that gathers their receives into batches as the decide stage
//! does (up to `pipeline.max_batch_events`, closed `pipeline.linger_ms`
//! after the first) into a channel of `pipeline.channel_capacity`, a
//! writer that writes up to `pipeline.sink_concurrency` batches at once and
//! passes each written batch on, and an acknowledger that deletes them
//! (DeleteMessageBatch by ten, a written batch's deletes taken on while
//! fewer than 8 calls are out, as the daemon's `ack_loop`); the drain's
//! clock (a stamp per batch where the daemon stamps its `decided_at` or
//! `applied_at`: as its write starts, or, for payments scored in the
//! process, as it closes) and its count of deletes; the deadline, which
//! bounds every stage; a BatchGetItem whose unprocessed keys are asked
//! again a bounded number of times. Must not: decide what a batch's writes are (each client's own).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, QueueAttributeName};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The daemon's defaults a drain is shaped by (`daemon/src/config.rs`:
/// `pipeline.max_batch_events`, `linger_ms`, `sink_concurrency`,
/// `channel_capacity`; `sinks.dynamodb.max_transaction_items`; the
/// acknowledger's calls, `topology.rs`).
pub const MAX_BATCH: usize = 250;
pub const LINGER: Duration = Duration::from_millis(50);
pub const WRITES_AT_ONCE: usize = 8;
pub const CHANNEL_CAPACITY: usize = 16;
pub const MAX_TRANSACTION_ITEMS: usize = 100;
const DELETE_CALLS: usize = 8;

/// A bare client's SQS and DynamoDB clients: the environment's
/// configuration with a timeout on every call (a silent endpoint fails the
/// measurement instead of hanging it).
pub async fn clients() -> (aws_sdk_sqs::Client, aws_sdk_dynamodb::Client) {
    let timeouts = aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(30)).build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts).load().await;
    (aws_sdk_sqs::Client::new(&sdk), aws_sdk_dynamodb::Client::new(&sdk))
}

/// Creates the scratch queue `name` (FIFO when it ends in `.fifo`) with
/// `visibility_secs` of visibility timeout; its URL.
pub async fn scratch_queue(sqs: &aws_sdk_sqs::Client, name: &str, visibility_secs: u64) -> anyhow::Result<String> {
    let mut create =
        sqs.create_queue().queue_name(name).attributes(QueueAttributeName::VisibilityTimeout, visibility_secs.to_string());
    if name.ends_with(".fifo") {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    create.send().await.context("creating the scratch queue")?.queue_url.context("no queue URL")
}

/// The visibility timeout of a drain's scratch queue, for a run of
/// `timeout_secs`: it outlasts the run, so that a message in flight (up to
/// 64 receives waiting and [`WRITES_AT_ONCE`] batches of [`MAX_BATCH`]) is
/// never delivered again meanwhile, which a bare client, unlike the daemon,
/// would not take (its conditional put refused).
pub fn visibility_for(timeout_secs: u64) -> u64 {
    timeout_secs.clamp(60, 43_200)
}

/// Deletes a bare client's scratch queue and table (what is already gone
/// is no error: the measurement's own result is the one reported).
pub async fn remove_scratch(sqs: &aws_sdk_sqs::Client, ddb: &aws_sdk_dynamodb::Client, queue: &str, table: &str) {
    let _ = sqs.delete_queue().queue_url(queue).send().await;
    let _ = ddb.delete_table().table_name(table).send().await;
}

/// Reads `keys` of `table` with BatchGetItem (one request: at most 100
/// keys), asking again for keys left unprocessed (throttling) after a
/// growing pause, a few times, then failing with `what`; the requests it
/// took.
pub async fn batch_get(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: aws_sdk_dynamodb::types::KeysAndAttributes,
    what: &str,
) -> anyhow::Result<u64> {
    let mut ask = Some(keys);
    let mut calls = 0;
    while let Some(keys) = ask.take() {
        anyhow::ensure!(calls < 8, "{what}: keys still unprocessed after {calls} reads");
        if calls > 0 {
            tokio::time::sleep(Duration::from_millis(25 << calls.min(5))).await;
        }
        let out = ddb.batch_get_item().request_items(table, keys).send().await.with_context(|| what.to_owned())?;
        calls += 1;
        ask = out.unprocessed_keys.and_then(|mut u| u.remove(table)).filter(|k| !k.keys.is_empty());
    }
    Ok(calls)
}

/// A body's key, for a client that knows what it sent by the body's hash
/// (not the body: a catalogue's images are hundreds of MB).
pub fn body_key(body: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(body)
}

/// What a drain counts: messages deleted, and when the last of those it
/// waits for was. (Its consumers end later: each finishes the long poll it
/// is in, up to a second, which is not the drain's time.)
#[derive(Debug)]
pub struct Deleted {
    count: AtomicUsize,
    want: usize,
    last: OnceLock<Instant>,
    given_up: AtomicBool,
}

impl Deleted {
    /// Waiting for `want` deletes.
    pub fn new(want: usize) -> Self {
        Deleted { count: AtomicUsize::new(0), want, last: OnceLock::new(), given_up: AtomicBool::new(false) }
    }

    /// Something the drain needs failed (a send, a write): its receivers
    /// stop at their next receive instead of waiting out the deadline for
    /// deletes that will not come.
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::SeqCst);
    }

    /// `n` more deleted: the moment the count reaches `want` is the last.
    pub fn add(&self, n: usize) {
        if self.count.fetch_add(n, Ordering::SeqCst) + n >= self.want {
            self.last.get_or_init(Instant::now);
        }
    }

    /// Whether every message waited for is deleted.
    pub fn all(&self) -> bool {
        self.count.load(Ordering::SeqCst) >= self.want
    }

    /// When the last message waited for was deleted.
    pub fn last(&self) -> Option<Instant> {
        self.last.get().copied()
    }

    fn given_up(&self) -> bool {
        self.given_up.load(Ordering::SeqCst)
    }
}

/// A stage's error that is only that another gave up: the drain reports
/// the other's.
#[derive(Debug)]
struct GaveUp;

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the drain gave up (see the error beside this one)")
    }
}

impl std::error::Error for GaveUp {}

/// The first of `results`' errors that is not only that the drain gave up,
/// else the first.
fn first_error(results: Vec<anyhow::Result<()>>) -> anyhow::Result<()> {
    let errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    let own = errors.iter().position(|e| !e.chain().any(|c| c.is::<GaveUp>())).unwrap_or(0);
    errors.into_iter().nth(own).map_or(Ok(()), Err)
}

/// When a drain stamps a batch, as the daemon stamps its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// As its write starts: the daemon's `decided_at` of payments scored
    /// against the shared history, and every `applied_at`.
    AtWrite,
    /// As the batch closes: the daemon's `decided_at` with the fraud
    /// history in the process, stamped in the decide stage, before the
    /// batch waits for a write.
    AtClose,
}

/// When a drain's batches were stamped ([`Stamp`]): its clock, as the
/// daemon's (each batch's `decided_at` or `applied_at`; a drain's span is
/// the first's to the last's).
#[derive(Debug, Default)]
pub struct Stamps {
    first: OnceLock<Instant>,
    last: Mutex<Option<Instant>>,
}

impl Stamps {
    /// A batch is stamped now.
    pub fn stamp(&self) {
        let now = Instant::now();
        self.first.get_or_init(|| now);
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = Some(last.map_or(now, |l| l.max(now)));
    }

    /// The first stamp and the last.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let last = *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some((*self.first.get()?, last?))
    }
}

/// What a drain measured.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// When its first message was received.
    pub first_received: Instant,
    /// When its first batch was stamped (the start of the daemon's span).
    pub first_stamp: Instant,
    /// When its last batch was stamped (the end of the daemon's span).
    pub last_stamp: Instant,
    /// When its last message was deleted.
    pub last_delete: Instant,
    /// Batches written.
    pub batches: usize,
    /// The most batches written at once.
    pub most_at_once: usize,
}

/// Drains `queue` as the daemon's SQS input does (the module's stages),
/// `write` making each batch's writes, each batch stamped as `stamp`
/// says, until `deleted` has them all; a failed write, receive or delete,
/// or `deadline` passing (each write and delete is bounded by it too),
/// ends it with that error.
pub async fn drain<W, F>(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    receivers: usize,
    deleted: &Arc<Deleted>,
    (deadline, stamp): (Instant, Stamp),
    write: W,
) -> anyhow::Result<Drained>
where
    W: Fn(Arc<Vec<Message>>) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    anyhow::ensure!(receivers > 0, "a drain needs a receiver");
    let first_received: Arc<OnceLock<Instant>> = Arc::default();
    let (recv_tx, recv_rx) = mpsc::channel::<Vec<Message>>(CHANNEL_CAPACITY * receivers);
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Message>>(CHANNEL_CAPACITY);
    let (ack_tx, ack_rx) = mpsc::channel::<Arc<Vec<Message>>>(CHANNEL_CAPACITY);
    let receiving: Vec<_> = (0..receivers)
        .map(|_| {
            let (sqs, queue, deleted, tx, first) =
                (sqs.clone(), queue.to_owned(), Arc::clone(deleted), recv_tx.clone(), Arc::clone(&first_received));
            tokio::spawn(async move { receive(&sqs, &queue, &deleted, deadline, &tx, &first).await })
        })
        .collect();
    drop(recv_tx);
    let stamps = Arc::new(Stamps::default());
    let batching = tokio::spawn(gather(recv_rx, batch_tx, (stamp == Stamp::AtClose).then(|| Arc::clone(&stamps))));
    let writing = {
        let at_write = (stamp == Stamp::AtWrite).then(|| Arc::clone(&stamps));
        tokio::spawn(write_batches(batch_rx, ack_tx, Arc::clone(deleted), (deadline, at_write), write))
    };
    let acking = {
        let (sqs, queue, deleted) = (sqs.clone(), queue.to_owned(), Arc::clone(deleted));
        tokio::spawn(async move { acknowledge(&sqs, &queue, ack_rx, &deleted, deadline).await })
    };
    // Each stage's own error before another's that is only that the drain
    // gave up: the acknowledger's, the writers', the receivers'.
    let (written, acked) = (writing.await?, acking.await?);
    let mut results = vec![acked.context("deleting the batches")];
    let (batches, most_at_once) = match written {
        Ok(counts) => counts,
        Err(e) => {
            results.push(Err(e.context("writing the batches")));
            (0, 0)
        }
    };
    for r in receiving {
        results.push(r.await?);
    }
    batching.await?;
    first_error(results)?;
    let (first_stamp, last_stamp) = stamps.span().context("nothing was stamped")?;
    Ok(Drained {
        first_received: *first_received.get().context("nothing was received")?,
        first_stamp,
        last_stamp,
        last_delete: deleted.last().context("not every message was deleted")?,
        batches,
        most_at_once,
    })
}

/// One receiver, as the daemon's `receive_loop`: receives of up to ten,
/// each non-empty one sent to the batcher, until `deleted` has every
/// message, it gave up, or `deadline` passes.
async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    deleted: &Deleted,
    deadline: Instant,
    tx: &mpsc::Sender<Vec<Message>>,
    first_received: &OnceLock<Instant>,
) -> anyhow::Result<()> {
    while !deleted.all() {
        if deleted.given_up() {
            return Err(GaveUp.into());
        }
        if Instant::now() >= deadline {
            // The writers and the acknowledger stop too.
            deleted.give_up();
            anyhow::bail!("only {} of {} deleted by the deadline", deleted.count.load(Ordering::SeqCst), deleted.want);
        }
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .context("receive");
        let messages = match got {
            Ok(got) => got.messages.unwrap_or_default(),
            Err(e) => {
                deleted.give_up();
                return Err(e);
            }
        };
        if messages.is_empty() {
            continue;
        }
        first_received.get_or_init(Instant::now);
        // The batcher ends only when the writers stopped (an error of theirs).
        if tx.send(messages).await.is_err() {
            return Err(GaveUp.into());
        }
    }
    Ok(())
}

/// Gathers the receives into batches of [`MAX_BATCH`] or more (the receive
/// that reaches it is added whole, as the daemon's `decide_loop` adds it),
/// each closed [`LINGER`] after its first, stamping each as it closes when
/// `stamps` is given; ends when the receivers do or the writers stopped.
async fn gather(mut rx: mpsc::Receiver<Vec<Message>>, tx: mpsc::Sender<Vec<Message>>, stamps: Option<Arc<Stamps>>) {
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        let closes = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(closes, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(stamps) = &stamps {
            stamps.stamp();
        }
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Writes up to [`WRITES_AT_ONCE`] batches at once, as the daemon's
/// `write_loop` does, each a task (aborted if the drain stops) bounded by
/// the deadline, stamping each write's start when `stamps` is given, and
/// passes each written batch to the acknowledger; ends when the batcher
/// does, or at the first failed write (the drain then gives up). The
/// batches written and the most written at once.
async fn write_batches<W, F>(
    mut rx: mpsc::Receiver<Vec<Message>>,
    ack_tx: mpsc::Sender<Arc<Vec<Message>>>,
    deleted: Arc<Deleted>,
    (deadline, stamps): (Instant, Option<Arc<Stamps>>),
    write: W,
) -> anyhow::Result<(usize, usize)>
where
    W: Fn(Arc<Vec<Message>>) -> F,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut writes: JoinSet<anyhow::Result<Arc<Vec<Message>>>> = JoinSet::new();
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (mut open, mut batches) = (true, 0);
    let result = async {
        while open || !writes.is_empty() {
            tokio::select! {
                batch = rx.recv(), if open && writes.len() < WRITES_AT_ONCE => match batch {
                    Some(_) if deleted.given_up() => return Err(GaveUp.into()),
                    Some(batch) => {
                        let batch = Arc::new(batch);
                        if let Some(stamps) = &stamps {
                            stamps.stamp();
                        }
                        let written = write(Arc::clone(&batch));
                        let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                        writes.spawn(async move {
                            most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                            let done = tokio::time::timeout_at(deadline.into(), written).await;
                            running.fetch_sub(1, Ordering::SeqCst);
                            done.map_err(|_| anyhow::anyhow!("a write still under way at the deadline"))??;
                            Ok(batch)
                        });
                        batches += 1;
                    }
                    None => open = false,
                },
                Some(done) = writes.join_next(), if !writes.is_empty() => {
                    let batch = done.context("a write panicked")??;
                    ack_tx.send(batch).await.map_err(|_| GaveUp)?;
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        deleted.give_up();
    }
    result.map(|()| (batches, most.load(Ordering::SeqCst)))
}

/// Deletes each written batch, DeleteMessageBatch by ten, taking a batch's
/// deletes on while fewer than [`DELETE_CALLS`] calls are out, as the
/// daemon's `ack_loop` does, each bounded by the deadline; counts each
/// call's messages in `deleted`.
async fn acknowledge(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    mut rx: mpsc::Receiver<Arc<Vec<Message>>>,
    deleted: &Deleted,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut calls = FuturesUnordered::new();
    let mut open = true;
    let result = async {
        while open || !calls.is_empty() {
            tokio::select! {
                batch = rx.recv(), if open && calls.len() < DELETE_CALLS => match batch {
                    Some(batch) => {
                        for k in 0..batch.len().div_ceil(10) {
                            let batch = Arc::clone(&batch);
                            calls.push(async move {
                                let ten = &batch[k * 10..batch.len().min(k * 10 + 10)];
                                let done = tokio::time::timeout_at(deadline.into(), delete_batch(sqs, queue, ten)).await;
                                done.map_err(|_| anyhow::anyhow!("a delete still under way at the deadline"))?.map(|()| ten.len())
                            });
                        }
                    }
                    None => open = false,
                },
                Some(done) = calls.next(), if !calls.is_empty() => deleted.add(done?),
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        deleted.give_up();
    }
    result
}

/// Deletes `messages` (at most ten) with one DeleteMessageBatch.
async fn delete_batch(sqs: &aws_sdk_sqs::Client, queue: &str, messages: &[Message]) -> anyhow::Result<()> {
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = sqs.delete_message_batch().queue_url(queue).set_entries(Some(entries)).send().await.context("delete")?;
    anyhow::ensure!(out.failed.is_empty(), "{} deletes refused", out.failed.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the local stack's SQS (scripts/test.sh starts it): a
    /// drain of a full queue gathers receives into batches of at most
    /// [`MAX_BATCH`], writes at most [`WRITES_AT_ONCE`] at once, deletes
    /// a batch's messages only after its write (each write finds its
    /// messages still in flight), deletes every message, and its clock's
    /// write starts lie within it.
    #[tokio::test]
    async fn a_drain_batches_writes_at_most_eight_at_once_and_deletes_after_the_writes() {
        std::env::var("AWS_ENDPOINT_URL_SQS").expect("the local stack (scripts/local-stack/stack.sh env)");
        let (sqs, _) = clients().await;
        let name = format!("loadgen-drain-{}", crate::coldstart::new_run_id());
        let queue = scratch_queue(&sqs, &name, 120).await.expect("a queue");
        let want = 700;
        let bodies: Vec<String> = (0..want).map(|i| format!("m{i}")).collect();
        futures::future::try_join_all(bodies.chunks(10).map(|ten| {
            let entries = ten
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(b).build()
                })
                .collect::<Result<Vec<_>, _>>()
                .expect("entries");
            sqs.send_message_batch().queue_url(&queue).set_entries(Some(entries)).send()
        }))
        .await
        .expect("sent");
        let at_once = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::<usize>::new()));
        let write = {
            let (sqs, queue, at_once, seen) = (sqs.clone(), queue.clone(), Arc::clone(&at_once), Arc::clone(&seen));
            move |batch: Arc<Vec<Message>>| {
                let (sqs, queue, at_once, seen) = (sqs.clone(), queue.clone(), Arc::clone(&at_once), Arc::clone(&seen));
                async move {
                    let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.lock().expect("seen").push(batch.len());
                    anyhow::ensure!(now <= WRITES_AT_ONCE, "{now} writes at once");
                    // Its messages are not deleted yet: still in flight.
                    for m in batch.iter().step_by(10) {
                        sqs.change_message_visibility()
                            .queue_url(&queue)
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .visibility_timeout(120)
                            .send()
                            .await
                            .context("a message deleted before its batch's write")?;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    at_once.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        };
        let deleted = Arc::new(Deleted::new(want));
        let deadline = Instant::now() + Duration::from_secs(60);
        let drained = drain(&sqs, &queue, 4, &deleted, (deadline, Stamp::AtWrite), write).await;
        let left = sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("the queue's attributes");
        let _ = sqs.delete_queue().queue_url(&queue).send().await;
        let drained = drained.expect("drained");
        let sizes = seen.lock().expect("seen").clone();
        assert_eq!(sizes.iter().sum::<usize>(), want, "every message written once: {sizes:?}");
        // A batch closes at MAX_BATCH, the receive that reached it whole.
        assert!(sizes.iter().all(|&n| n < MAX_BATCH + 10), "{sizes:?}");
        assert!(sizes.iter().any(|&n| n > 10), "receives gathered into batches: {sizes:?}");
        assert_eq!(drained.batches, sizes.len());
        assert!(drained.most_at_once <= WRITES_AT_ONCE && drained.most_at_once > 1, "{drained:?}");
        assert!(drained.first_received <= drained.first_stamp, "{drained:?}");
        assert!(drained.first_stamp <= drained.last_stamp && drained.last_stamp < drained.last_delete, "{drained:?}");
        for attribute in
            [QueueAttributeName::ApproximateNumberOfMessages, QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
        {
            assert_eq!(left.attributes().and_then(|a| a.get(&attribute)).map(String::as_str), Some("0"), "{attribute:?}");
        }
    }

    /// Against the local stack's SQS: a write that never ends fails the
    /// drain at its deadline, with that error, instead of hanging it.
    #[tokio::test]
    async fn a_write_that_never_ends_fails_the_drain_at_its_deadline() {
        // Its own queue's name: run ids made at the same moment (the tests
        // run at once) can be equal.
        std::env::var("AWS_ENDPOINT_URL_SQS").expect("the local stack (scripts/local-stack/stack.sh env)");
        let (sqs, _) = clients().await;
        let queue = scratch_queue(&sqs, &format!("loadgen-drain-deadline-{}", crate::coldstart::new_run_id()), 120)
            .await
            .expect("a queue");
        sqs.send_message().queue_url(&queue).message_body("m").send().await.expect("sent");
        let write = |_: Arc<Vec<Message>>| std::future::pending::<anyhow::Result<()>>();
        let deadline = Instant::now() + Duration::from_secs(3);
        let drained = tokio::time::timeout(
            Duration::from_secs(20),
            drain(&sqs, &queue, 2, &Arc::new(Deleted::new(1)), (deadline, Stamp::AtWrite), write),
        )
        .await;
        let _ = sqs.delete_queue().queue_url(&queue).send().await;
        let failed = drained.expect("ended at its deadline, not hung").expect_err("the write never ended");
        assert!(format!("{failed:#}").contains("a write still under way at the deadline"), "{failed:#}");
    }

    /// With [`Stamp::AtClose`] a batch is stamped as it closes, before it
    /// waits for a writer (here none takes it).
    #[tokio::test]
    async fn a_batch_stamped_at_close_is_stamped_before_any_write() {
        let (recv_tx, recv_rx) = mpsc::channel(4);
        let (batch_tx, mut batch_rx) = mpsc::channel(1);
        let stamps = Arc::new(Stamps::default());
        recv_tx.send(vec![Message::builder().body("m").build()]).await.expect("sent");
        drop(recv_tx);
        gather(recv_rx, batch_tx, Some(Arc::clone(&stamps))).await;
        assert!(stamps.span().is_some(), "stamped as it closed");
        assert_eq!(batch_rx.recv().await.map(|b| b.len()), Some(1));
        // Without stamps (the writers stamp), gathering stamps nothing.
        let (recv_tx, recv_rx) = mpsc::channel(4);
        let (batch_tx, _batch_rx) = mpsc::channel(1);
        recv_tx.send(vec![Message::builder().body("m").build()]).await.expect("sent");
        drop(recv_tx);
        let none = Arc::new(Stamps::default());
        gather(recv_rx, batch_tx, None).await;
        assert!(none.span().is_none());
    }

    #[test]
    fn a_drain_reports_a_stage_s_own_error_before_another_s_giving_up() {
        let gave_up = || Err(anyhow::Error::new(GaveUp).context("writing the batches"));
        let own = first_error(vec![Ok(()), gave_up(), Err(anyhow::anyhow!("receive: throttled")), gave_up()]);
        assert_eq!(format!("{:#}", own.expect_err("an error")), "receive: throttled");
        // Only giving up: that is the error.
        let only = first_error(vec![gave_up(), Ok(())]).expect_err("an error");
        assert!(only.chain().any(|c| c.is::<GaveUp>()), "{only:#}");
        assert!(first_error(vec![Ok(()), Ok(())]).is_ok());
    }

    #[test]
    fn a_drain_ends_when_its_last_message_is_deleted_not_when_its_consumers_do() {
        let deleted = Deleted::new(3);
        deleted.add(2);
        assert!(!deleted.all() && deleted.last().is_none());
        deleted.add(1);
        let last = deleted.last().expect("the last delete's moment");
        assert!(deleted.all());
        // A consumer's long poll ending later, or a count past the one
        // waited for, does not move it.
        std::thread::sleep(Duration::from_millis(5));
        deleted.add(1);
        assert_eq!(deleted.last(), Some(last));
    }
}

/// What the bare clients' stack tests share.
#[cfg(test)]
pub mod testing {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::types::AttributeValue;

    /// The loadgen's default targets (the resources `run` uses unless told).
    pub fn default_targets() -> crate::Targets {
        <crate::Targets as clap::FromArgMatches>::from_arg_matches(
            &<crate::Targets as clap::Args>::augment_args(clap::Command::new("t")).get_matches_from(["t"]),
        )
        .expect("default targets")
    }

    /// Every item of a scratch table.
    pub async fn scan_all(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<HashMap<String, AttributeValue>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = ddb.scan().table_name(table).set_exclusive_start_key(start).send().await.expect("a scan");
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return items;
            }
        }
    }
}
