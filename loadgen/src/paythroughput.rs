//! `cafe-loadgen payments-throughput`: the payments path's floor on this
//! stack, a bare client that makes the daemon's SQS and DynamoDB calls for
//! a burst of payments and does nothing else.
//!
//! Owns: the measurement. It creates a scratch FIFO queue and a scratch
//! table, sends the burst (the cold-start scenario's payments: same bodies,
//! same FIFO groups), then (or, with `--while-sending`, meanwhile) times
//! `receivers` long-polling consumers as the daemon runs them: receive up
//! to ten, one TransactWriteItems per batch (a conditional put per payment
//! and one `ADD` to an aggregate row),
//! DeleteMessageBatch, until every payment is deleted. Both scratch
//! resources are deleted afterwards. Must not: decode, score or check
//! anything (the daemon's share of the work is what the ratio measures).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry};
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use crate::Targets;
use crate::scenario::Load;

/// `payments-throughput` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsThroughputArgs {
    /// Payments in the burst.
    #[arg(long, default_value_t = 10_000)]
    pub payments: u64,
    /// Concurrent long-polling consumers (the daemon's default is 4).
    #[arg(long, default_value_t = 4)]
    pub receivers: usize,
    /// Drain the burst while it is being sent, as the cold-start scenario's
    /// daemon does (the sends then share the stack with the drain), rather
    /// than after.
    #[arg(long)]
    pub while_sending: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub targets: Targets,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentsThroughput {
    /// Payments in the burst.
    pub payments: u64,
    /// Seconds from the first message received to the last deleted.
    pub bare_secs: f64,
    /// Payments per second the bare client drained.
    pub bare_payments_per_sec: f64,
}

/// Runs the measurement on scratch resources named after the targets'.
pub async fn run(args: &PaymentsThroughputArgs, seed: u64) -> anyhow::Result<PaymentsThroughput> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let run_id = crate::coldstart::new_run_id();
    let base = args.targets.payments_queue.trim_end_matches(".fifo");
    let queue = sqs
        .create_queue()
        .queue_name(format!("{base}-floor-{run_id}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .context("creating the scratch queue")?
        .queue_url
        .context("no queue URL")?;
    let table = format!("{}-floor-{run_id}", args.targets.payments_table);
    crate::throughput::create_scratch_table(&ddb, &table).await?;
    let result = measure(&sqs, &ddb, &queue, &table, args, seed, &run_id).await;
    let _ = sqs.delete_queue().queue_url(&queue).send().await;
    let _ = ddb.delete_table().table_name(&table).send().await;
    result
}

async fn measure(
    sqs: &aws_sdk_sqs::Client,
    ddb: &aws_sdk_dynamodb::Client,
    queue: &str,
    table: &str,
    args: &PaymentsThroughputArgs,
    seed: u64,
    run_id: &str,
) -> anyhow::Result<PaymentsThroughput> {
    let load = Load {
        payments: args.payments,
        users: 1,
        stores: 20,
        customers: 4000,
        shared_card_ratio: 0.02,
        geo_mismatch_ratio: 0.05,
        big_amount_ratio: 0.02,
    };
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let payments: Vec<_> = (0..args.payments).map(|i| crate::payload::payment(seed, run_id, i, &load, &ts)).collect();
    info!(payments = payments.len(), while_sending = args.while_sending, "Sending the burst to the scratch queue");
    let send = futures::stream::iter(payments.chunks(10))
        .map(|chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&p.body)
                        .message_group_id(&p.customer_id)
                        .message_deduplication_id(&p.dedup_id)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = sqs.send_message_batch().queue_url(queue).set_entries(Some(entries)).send().await?;
            anyhow::ensure!(out.failed.is_empty(), "{} sends refused", out.failed.len());
            Ok(())
        })
        .buffer_unordered(16)
        .collect::<Vec<anyhow::Result<()>>>();
    let send = async move { send.await.into_iter().collect::<anyhow::Result<Vec<()>>>().map(drop) };

    let deleted = Arc::new(AtomicUsize::new(0));
    let want = payments.len();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    // The drain runs from the first message received to the last deleted.
    let first_received: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let consumers = (0..args.receivers).map(|r| {
        let deleted = Arc::clone(&deleted);
        let first_received = Arc::clone(&first_received);
        async move {
            let mut batch_no = 0u64;
            while deleted.load(Ordering::SeqCst) < want {
                anyhow::ensure!(Instant::now() < deadline, "only {} of {want} deleted", deleted.load(Ordering::SeqCst));
                let got = sqs
                    .receive_message()
                    .queue_url(queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .context("receive")?;
                let messages = got.messages();
                if messages.is_empty() {
                    continue;
                }
                first_received.get_or_init(Instant::now);
                batch_no += 1;
                let mut items = messages
                    .iter()
                    .map(|m| {
                        let put = Put::builder()
                            .table_name(table)
                            .item("k", AttributeValue::S(m.message_id().unwrap_or_default().to_owned()))
                            .item("decision", AttributeValue::S("approve".into()))
                            .condition_expression("attribute_not_exists(k)")
                            .build()?;
                        Ok(TransactWriteItem::builder().put(put).build())
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let row = Update::builder()
                    .table_name(table)
                    .key("k", AttributeValue::S(format!("row-{r}-{}", batch_no % 20)))
                    .update_expression("ADD payments :n")
                    .expression_attribute_values(":n", AttributeValue::N(messages.len().to_string()))
                    .build()?;
                items.push(TransactWriteItem::builder().update(row).build());
                ddb.transact_write_items().set_transact_items(Some(items)).send().await.context("write")?;
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
                let out =
                    sqs.delete_message_batch().queue_url(queue).set_entries(Some(entries)).send().await.context("delete")?;
                anyhow::ensure!(out.failed.is_empty(), "{} deletes refused", out.failed.len());
                deleted.fetch_add(messages.len(), Ordering::SeqCst);
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    let drain = async { futures::future::join_all(consumers).await.into_iter().collect::<anyhow::Result<Vec<()>>>().map(drop) };
    if args.while_sending {
        info!(receivers = args.receivers, "Draining it with a bare consumer as it is sent");
        let (sent, drained) = tokio::join!(send, drain);
        sent.context("sending the burst")?;
        drained?;
    } else {
        send.await.context("sending the burst")?;
        info!(receivers = args.receivers, "Draining it with a bare consumer");
        drain.await?;
    }
    let started = *first_received.get().context("nothing was received")?;
    let bare_secs = started.elapsed().as_secs_f64();
    Ok(PaymentsThroughput { payments: want as u64, bare_secs, bare_payments_per_sec: want as f64 / bare_secs })
}
