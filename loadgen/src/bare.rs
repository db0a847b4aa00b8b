//! What the bare clients (`payments-throughput`, `menu-throughput`) share:
//! their scratch queue, and a drain of it shaped as the daemon's SQS input
//! drains a queue, without the daemon's work.
//!
//! Owns: receiving as the daemon's receivers do (long-polling consumers of
//! up to ten), gathering the receives into batches as its decide stage does
//! (up to `pipeline.max_batch_events`, closed `pipeline.linger_ms` after
//! the first), writing up to `pipeline.sink_concurrency` batches at once,
//! and deleting each batch's messages once its writes are done
//! (DeleteMessageBatch by ten, all at once), as its acknowledger does; the
//! count of deletes that times a drain. Must not: decide what a batch's
//! writes are (each client's own).

use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, QueueAttributeName};
use tokio::sync::{Semaphore, mpsc};

/// The daemon's defaults a drain is shaped by (`daemon/src/config.rs`:
/// `pipeline.max_batch_events`, `linger_ms`, `sink_concurrency`;
/// `sinks.dynamodb.max_transaction_items`).
pub const MAX_BATCH: usize = 250;
pub const LINGER: Duration = Duration::from_millis(50);
pub const WRITES_AT_ONCE: usize = 8;
pub const MAX_TRANSACTION_ITEMS: usize = 100;

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
}

/// Drains `queue` as the daemon's SQS input does, `write` making each
/// batch's writes: `receivers` long-polling consumers (tasks of their own)
/// receive up to ten at a time; the receives are gathered into batches of
/// up to [`MAX_BATCH`] messages, each closed [`LINGER`] after its first;
/// up to [`WRITES_AT_ONCE`] batches are written at once (each a task), and
/// a batch's messages are deleted once its `write` succeeded. Until
/// `deleted` has them all; a failed write, or `deadline` passing, ends it
/// with that error. Returns when the first message was received.
pub async fn drain<W, F>(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    receivers: usize,
    deleted: &Arc<Deleted>,
    deadline: Instant,
    write: W,
) -> anyhow::Result<Instant>
where
    W: Fn(Arc<Vec<Message>>) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Vec<Message>>(64);
    let receive = {
        let (sqs, queue, deleted) = (sqs.clone(), queue.to_owned(), Arc::clone(deleted));
        tokio::spawn(async move { receive_until(&sqs, &queue, receivers, &deleted, deadline, tx).await })
    };
    let write = tokio::spawn(write_batches(rx, sqs.clone(), queue.to_owned(), Arc::clone(deleted), write));
    // The writers' error first: the receivers' is then only that they gave up.
    let (written, received) = (write.await?, receive.await?);
    written.context("writing the batches")?;
    received
}

/// Receives from `queue` as the daemon's SQS source does, `receivers`
/// long-polling consumers each receiving up to ten, and sends each
/// non-empty receive to `tx`, until `deleted` has them all or `deadline`
/// passes. Returns when the first message was received.
async fn receive_until(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    receivers: usize,
    deleted: &Deleted,
    deadline: Instant,
    tx: mpsc::Sender<Vec<Message>>,
) -> anyhow::Result<Instant> {
    let first_received: OnceLock<Instant> = OnceLock::new();
    let first_received = &first_received;
    let consumers = (0..receivers).map(|_| {
        let tx = tx.clone();
        async move {
            while !deleted.all() {
                anyhow::ensure!(!deleted.given_up.load(Ordering::SeqCst), "the drain gave up (see the error beside this one)");
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {} of {} deleted",
                    deleted.count.load(Ordering::SeqCst),
                    deleted.want
                );
                let got = sqs
                    .receive_message()
                    .queue_url(queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .context("receive")?;
                let messages = got.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                first_received.get_or_init(Instant::now);
                tx.send(messages).await.map_err(|_| anyhow::anyhow!("the writers stopped"))?;
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    let consumers: Vec<_> = consumers.collect();
    // Only the consumers' senders are left: the writers end when they do.
    drop(tx);
    futures::future::join_all(consumers).await.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    first_received.get().copied().context("nothing was received")
}

/// Gathers received messages into batches (up to [`MAX_BATCH`], closed
/// [`LINGER`] after the first) and writes up to [`WRITES_AT_ONCE`] at once,
/// deleting each batch's messages after its writes. Ends when the
/// receivers do, or at the first failed batch.
async fn write_batches<W, F>(
    mut rx: mpsc::Receiver<Vec<Message>>,
    sqs: aws_sdk_sqs::Client,
    queue: String,
    deleted: Arc<Deleted>,
    write: W,
) -> anyhow::Result<()>
where
    W: Fn(Arc<Vec<Message>>) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(WRITES_AT_ONCE));
    let mut writes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        let closes = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(closes, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let (sqs, queue, deleted) = (sqs.clone(), queue.clone(), Arc::clone(&deleted));
        let batch = Arc::new(batch);
        let written = write(Arc::clone(&batch));
        writes.push(tokio::spawn(async move {
            let _slot = slot;
            let result = async {
                written.await?;
                delete_all(&sqs, &queue, &batch).await?;
                Ok::<usize, anyhow::Error>(batch.len())
            }
            .await;
            match &result {
                Ok(n) => deleted.add(*n),
                Err(_) => deleted.give_up(),
            }
            result.map(drop)
        }));
        // Writes that ended are reaped as the batches go (an error stops the run).
        let mut still = Vec::with_capacity(writes.len());
        for w in writes {
            if w.is_finished() {
                w.await??;
            } else {
                still.push(w);
            }
        }
        writes = still;
    }
    for w in writes {
        w.await??;
    }
    Ok(())
}

/// Deletes `messages`, DeleteMessageBatch by ten, all at once.
async fn delete_all(sqs: &aws_sdk_sqs::Client, queue: &str, messages: &[Message]) -> anyhow::Result<()> {
    futures::future::try_join_all(messages.chunks(10).map(|ten| delete_batch(sqs, queue, ten))).await?;
    Ok(())
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

    #[test]
    fn a_drain_ends_when_its_last_message_is_deleted_not_when_its_consumers_do() {
        let deleted = Deleted::new(3);
        deleted.add(2);
        assert!(!deleted.all() && deleted.last().is_none());
        deleted.add(1);
        let last = deleted.last().expect("the last delete's moment");
        assert!(deleted.all());
        // A consumer's long poll ending later, or a delete past the count
        // (a redelivered message), does not move it.
        std::thread::sleep(Duration::from_millis(5));
        deleted.add(1);
        assert_eq!(deleted.last(), Some(last));
    }
}
