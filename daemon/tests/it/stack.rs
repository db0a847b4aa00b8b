//! The local stack refuses what AWS refuses: each test here fails on the
//! emulator as it is packaged, and passes through the project's launcher
//! (`scripts/local-stack/moto_launcher.py`), which says why for each.

use std::time::Duration;

use aws_sdk_sqs::error::ProvideErrorMetadata;

#[tokio::test(flavor = "multi_thread")]
async fn sqs_refuses_to_hide_a_message_that_is_not_in_flight() {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let name = format!("it-stack-{}-{}", std::process::id(), rand::random::<u32>());
    let url = sqs.create_queue().queue_name(&name).send().await.expect("create queue").queue_url.expect("url");
    sqs.send_message().queue_url(&url).message_body("m").send().await.expect("send");
    let got = sqs.receive_message().queue_url(&url).wait_time_seconds(5).send().await.expect("receive");
    let receipt = got.messages().first().and_then(|m| m.receipt_handle()).expect("a message").to_owned();

    // In flight: its visibility may change.
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&receipt)
        .visibility_timeout(0)
        .send()
        .await
        .expect("an in-flight message's visibility changes");
    // Visible again: SQS refuses to hide it without a receive.
    let err = sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&receipt)
        .visibility_timeout(30)
        .send()
        .await
        .expect_err("a visible message is not in flight");
    assert!(err.as_service_error().is_some_and(|e| e.is_message_not_inflight()), "{:?}: {err:?}", err.code());
    let again = sqs.receive_message().queue_url(&url).wait_time_seconds(5).send().await.expect("receive");
    assert_eq!(again.messages().len(), 1, "the message stays visible");
    sqs.delete_queue().queue_url(&url).send().await.expect("delete queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_refuses_characters_and_sizes_that_sqs_refuses() {
    use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let name = format!("it-stack-chars-{}-{}", std::process::id(), rand::random::<u32>());
    let url = sqs.create_queue().queue_name(&name).send().await.expect("create queue").queue_url.expect("url");

    let err = sqs.send_message().queue_url(&url).message_body("status \u{1}").send().await.expect_err("a control character");
    assert!(err.code().is_some_and(|c| c.ends_with("InvalidMessageContents")), "{err:?}");
    let attr = MessageAttributeValue::builder().data_type("String").string_value("x\u{FFFF}").build().expect("attr");
    let err = sqs
        .send_message()
        .queue_url(&url)
        .message_body("ok")
        .message_attributes("detail", attr)
        .send()
        .await
        .expect_err("U+FFFF in an attribute");
    assert!(err.code().is_some_and(|c| c.ends_with("InvalidMessageContents")), "{err:?}");
    // One bad entry refuses the whole batch.
    let entry = |id: &str, body: &str| SendMessageBatchRequestEntry::builder().id(id).message_body(body).build().expect("entry");
    let err = sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("a", "fine"))
        .entries(entry("b", "tab\tis fine, NUL \u{0} is not"))
        .send()
        .await
        .expect_err("a NUL in a batch");
    assert!(err.code().is_some_and(|c| c.ends_with("InvalidMessageContents")), "{err:?}");
    // Sizes are bytes, attributes included: 600,000 two-byte characters are
    // 1.2 MB, over the 1 MiB limit, though fewer characters than it.
    let err = sqs.send_message().queue_url(&url).message_body("é".repeat(600_000)).send().await.expect_err("too large");
    assert!(err.code().is_some_and(|c| c.ends_with("InvalidParameterValue")), "{err:?}");
    // What SQS allows passes: tab, LF, CR and the rest of Unicode.
    sqs.send_message().queue_url(&url).message_body("a\tb\nc\rd é \u{10000}").send().await.expect("allowed characters");
    sqs.delete_queue().queue_url(&url).send().await.expect("delete queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_never_hands_a_fifo_groups_next_message_to_a_second_receiver() {
    use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let name = format!("it-stack-fifo-{}-{}.fifo", std::process::id(), rand::random::<u32>());
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url");
    // Two consumers long-poll an empty queue, one message at a time; then a
    // group's two messages arrive together.
    let receive = || {
        let (sqs, url) = (sqs.clone(), url.clone());
        tokio::spawn(async move {
            let out = sqs.receive_message().queue_url(&url).max_number_of_messages(1).wait_time_seconds(3).send().await;
            out.expect("receive").messages().iter().filter_map(|m| m.body().map(str::to_owned)).collect::<Vec<_>>()
        })
    };
    let (a, b) = (receive(), receive());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entry =
        |id: &str| SendMessageBatchRequestEntry::builder().id(id).message_body(id).message_group_id("g1").build().expect("entry");
    sqs.send_message_batch().queue_url(&url).entries(entry("first")).entries(entry("second")).send().await.expect("send");
    let mut got = a.await.expect("a");
    got.extend(b.await.expect("b"));
    // While the first is in flight, the group gives nothing more.
    assert_eq!(got, ["first"], "a FIFO group was handed out past a message in flight");
    sqs.delete_queue().queue_url(&url).send().await.expect("delete queue");
}

/// The launcher finds a message by its receipt handle through an index
/// instead of moto's scan of the whole queue; what DeleteMessage and
/// ChangeMessageVisibility answer must stay moto's: any handle the message
/// was given works, a deleted message's handle is accepted again by a
/// delete and refused by a visibility change, and a handle of another
/// queue's message is refused.
#[tokio::test(flavor = "multi_thread")]
async fn sqs_finds_a_message_by_every_receipt_handle_it_was_given_and_no_other() {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let base = format!("it-stack-handles-{}-{}", std::process::id(), rand::random::<u32>());
    let url = sqs.create_queue().queue_name(&base).send().await.expect("create queue").queue_url.expect("url");
    let other = sqs.create_queue().queue_name(format!("{base}-o")).send().await.expect("create queue").queue_url.expect("url");
    sqs.send_message().queue_url(&url).message_body("m").send().await.expect("send");
    sqs.send_message().queue_url(&other).message_body("o").send().await.expect("send");
    let receive = |url: String, visibility: i32| {
        let sqs = sqs.clone();
        async move {
            let got = sqs
                .receive_message()
                .queue_url(&url)
                .visibility_timeout(visibility)
                .wait_time_seconds(5)
                .send()
                .await
                .expect("receive");
            got.messages().first().and_then(|m| m.receipt_handle()).expect("a message").to_owned()
        }
    };
    let first = receive(url.clone(), 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = receive(url.clone(), 30).await;
    assert_ne!(first, second, "each receive gives a new handle");
    let elsewhere = receive(other.clone(), 30).await;

    let code = |e: &dyn ProvideErrorMetadata| e.code().map(str::to_owned);
    // Another queue's handle is not this queue's message.
    let err = sqs.delete_message().queue_url(&url).receipt_handle(&elsewhere).send().await.expect_err("another queue's");
    assert_eq!(code(&err).as_deref(), Some("ReceiptHandleIsInvalid"), "{err:?}");
    let err = sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle("not-a-handle")
        .visibility_timeout(5)
        .send()
        .await
        .expect_err("an unknown handle");
    assert_eq!(code(&err).as_deref(), Some("ReceiptHandleIsInvalid"), "{err:?}");
    // The newest handle extends; the first one the message had deletes it.
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&second)
        .visibility_timeout(60)
        .send()
        .await
        .expect("the newest handle extends");
    sqs.delete_message().queue_url(&url).receipt_handle(&first).send().await.expect("an earlier handle deletes");
    sqs.delete_message().queue_url(&url).receipt_handle(&second).send().await.expect("a deleted message's handle");
    let err = sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&second)
        .visibility_timeout(5)
        .send()
        .await
        .expect_err("a deleted message");
    assert_eq!(code(&err).as_deref(), Some("ReceiptHandleIsInvalid"), "{err:?}");
    let left = sqs.receive_message().queue_url(&url).wait_time_seconds(1).send().await.expect("receive");
    assert!(left.messages().is_empty(), "deleted: {left:?}");
    // The other queue's message is untouched by all of it.
    sqs.delete_message().queue_url(&other).receipt_handle(&elsewhere).send().await.expect("its own queue's handle");
    for u in [url, other] {
        sqs.delete_queue().queue_url(&u).send().await.expect("delete queue");
    }
}

/// The launcher's fixes for races between requests, which no client can
/// time (a delete landing while a receive walks a FIFO queue skipped a
/// message and broke its group's order in about one run in four of a
/// give-back test): `test_moto_launcher.py` runs the steps that break, in
/// the order that breaks them, against moto's backend with the fixes
/// applied.
#[test]
fn moto_launcher_fixes_hold_step_by_step() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("scripts/local-stack/stack.sh"))
        .arg("selftest")
        .current_dir(&root)
        .output()
        .expect("run stack.sh selftest");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Where the stack keeps its PostgreSQL cluster is decided the same before
/// the state folder exists (a fresh clone's first `start`) and after (every
/// later `status`, `stop` and `start`). It was not: as root, the first
/// start put the cluster in /var/tmp, and from then on the stack took its
/// own PostgreSQL for another checkout's and refused to start.
#[test]
fn the_cluster_folder_is_the_same_before_and_after_the_state_folder_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = std::env::temp_dir().join(format!("it-stack-where-{}", std::process::id()));
    let state = scratch.join("a").join("state");
    let where_ = || {
        let out = std::process::Command::new(root.join("scripts/local-stack/stack.sh"))
            .arg("where")
            .env("CAFE_STACK_DIR", &state)
            .output()
            .expect("run stack.sh where");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = where_();
    std::fs::create_dir_all(&state).expect("state folder");
    let after = where_();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(before.contains("pg_root="), "{before}");
    assert_eq!(before, after);
}

/// A consumer that follows a Kinesis shard's tip reads every record put
/// while it reads, as Kinesis makes a shard's records readable in sequence
/// order. ferrokinesis numbered the records of concurrent PutRecords calls
/// before storing them, so a later-numbered call could be stored first and
/// a reader at the tip went past the earlier numbers for good; the
/// emulators' process now runs puts one at a time (`emulators/src/main.rs`).
/// Seen as one order event lost in a chaos run. A race: this test puts from
/// many producers at once while a reader polls the tip without pause.
#[tokio::test(flavor = "multi_thread")]
async fn kinesis_a_reader_at_the_tip_misses_no_record_of_concurrent_puts() {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const PRODUCERS: usize = 16;
    const CALLS: usize = 12;
    const PER_CALL: usize = 8;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let stream = format!("it-stack-tip-{}-{}", std::process::id(), rand::random::<u32>());
    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.expect("create stream");
    let active_by = tokio::time::Instant::now() + Duration::from_secs(30);
    let shard = loop {
        assert!(tokio::time::Instant::now() < active_by, "{stream} not ACTIVE after 30 s");
        let d = kinesis.describe_stream().stream_name(&stream).send().await.expect("describe");
        let d = d.stream_description.expect("description");
        if d.stream_status == aws_sdk_kinesis::types::StreamStatus::Active {
            break d.shards[0].shard_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("iterator")
        .shard_iterator;
    let done = Arc::new(AtomicUsize::new(0));
    for p in 0..PRODUCERS {
        let (kinesis, stream, done) = (kinesis.clone(), stream.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            for c in 0..CALLS {
                let mut pending: Vec<String> = (0..PER_CALL).map(|i| format!("{p}-{c}-{i}")).collect();
                while !pending.is_empty() {
                    let entries = pending
                        .iter()
                        .map(|d| {
                            PutRecordsRequestEntry::builder()
                                .partition_key("k")
                                .data(Blob::new(d.as_bytes()))
                                .build()
                                .expect("entry")
                        })
                        .collect::<Vec<_>>();
                    let out = kinesis.put_records().stream_name(&stream).set_records(Some(entries)).send().await.expect("put");
                    // Records refused for the shard's throughput are put again.
                    pending = pending
                        .into_iter()
                        .zip(out.records())
                        .filter(|(_, r)| r.error_code().is_some())
                        .map(|(d, _)| d)
                        .collect();
                    if !pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    let total = PRODUCERS * CALLS * PER_CALL;
    let mut seen = HashSet::new();
    let mut empty_after_done = 0;
    // The emulator before the fix could also stop answering altogether
    // under these puts: a bound, so that fails instead of hanging.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < total && empty_after_done < 5 {
        assert!(tokio::time::Instant::now() < deadline, "{} of {total} records read after 60 s", seen.len());
        let all_put = done.load(Ordering::SeqCst) == PRODUCERS;
        let call = kinesis.get_records().shard_iterator(iterator.expect("open shard")).send();
        let out = tokio::time::timeout(Duration::from_secs(10), call).await.expect("GetRecords answered").expect("get records");
        if out.records().is_empty() && all_put {
            empty_after_done += 1;
        }
        seen.extend(out.records().iter().map(|r| String::from_utf8_lossy(r.data().as_ref()).into_owned()));
        iterator = out.next_shard_iterator;
    }
    assert_eq!(seen.len(), total, "the reader at the tip missed {} of {total} records", total - seen.len());
    kinesis.delete_stream().stream_name(&stream).send().await.expect("delete stream");
}

/// DynamoDB creates a table CREATING and refuses its reads and writes
/// (ResourceNotFoundException) and its deletion (ResourceInUseException)
/// until it is ACTIVE, seconds later. dynoxide makes it ACTIVE at once; the
/// emulators' front (`emulators/src/front.rs`) keeps it CREATING for half a
/// second on the stack, so a client that writes without waiting fails here
/// as on AWS. Checked on emulators of the test's own that keep it CREATING
/// for 4 s (the stack's half second is too short to make five calls in on a
/// loaded machine).
#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_refuses_a_new_table_s_reads_and_writes_until_it_is_active() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put, ScalarAttributeType, TableStatus,
        TransactWriteItem,
    };
    let port = super::free_port();
    let _own = super::OwnEmulators::start(&["--dynamodb-port", &port.to_string(), "--table-creating-ms", "4000"], port);
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(format!("http://127.0.0.1:{port}")).build();
    let ddb = aws_sdk_dynamodb::Client::from_conf(config);
    let table = format!("it-stack-creating-{}-{}", std::process::id(), rand::random::<u32>());
    let created = ddb
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("k").attribute_type(ScalarAttributeType::S).build().expect("attr"),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("k").key_type(KeyType::Hash).build().expect("key"))
        .send()
        .await
        .expect("create table");
    assert_eq!(created.table_description().and_then(|t| t.table_status()), Some(&TableStatus::Creating));
    let status = || async {
        ddb.describe_table().table_name(&table).send().await.expect("describe").table().and_then(|t| t.table_status()).cloned()
    };
    assert_eq!(status().await, Some(TableStatus::Creating));
    let item = || std::collections::HashMap::from([("k".to_owned(), AttributeValue::S("a".into()))]);
    let code = |e: &dyn aws_sdk_dynamodb::error::ProvideErrorMetadata| e.code().map(str::to_owned);
    let put = ddb.put_item().table_name(&table).set_item(Some(item())).send().await.expect_err("a CREATING table's write");
    assert_eq!(code(&put).as_deref(), Some("ResourceNotFoundException"), "{put:?}");
    let get = ddb.get_item().table_name(&table).set_key(Some(item())).send().await.expect_err("a CREATING table's read");
    assert_eq!(code(&get).as_deref(), Some("ResourceNotFoundException"), "{get:?}");
    let transact =
        TransactWriteItem::builder().put(Put::builder().table_name(&table).set_item(Some(item())).build().expect("put")).build();
    let tx = ddb.transact_write_items().transact_items(transact).send().await.expect_err("a CREATING table's transaction");
    assert_eq!(code(&tx).as_deref(), Some("ResourceNotFoundException"), "{tx:?}");
    let delete = ddb.delete_table().table_name(&table).send().await.expect_err("a CREATING table's deletion");
    assert_eq!(code(&delete).as_deref(), Some("ResourceInUseException"), "{delete:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while status().await != Some(TableStatus::Active) {
        assert!(std::time::Instant::now() < deadline, "{table} never became ACTIVE");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ddb.put_item().table_name(&table).set_item(Some(item())).send().await.expect("an ACTIVE table's write");
    let got = ddb.get_item().table_name(&table).set_key(Some(item())).consistent_read(true).send().await.expect("read");
    assert!(got.item().is_some());
    ddb.delete_table().table_name(&table).send().await.expect("delete table");
}

/// Kinesis creates, reshards and deletes a stream asynchronously: a new
/// stream is CREATING and refuses puts (ResourceNotFoundException) until
/// it is ACTIVE; a split leaves it UPDATING, still written, but refusing
/// another reshard (ResourceInUseException) until the new shards are
/// there; a deleted stream is DELETING and its name not free for a new
/// stream (ResourceInUseException) until it is gone. The emulators made each step at once
/// (ferrokinesis' delays set to 0), so a client that wrote to a stream it
/// had just created, or resharded twice without waiting, worked here and
/// would fail on AWS. Checked on emulators of the test's own that keep each
/// state for 4 s (the stack's half second is too short for the calls in
/// between on a loaded machine).
#[tokio::test(flavor = "multi_thread")]
async fn kinesis_refuses_what_a_stream_not_active_cannot_take_until_it_is() {
    use aws_sdk_kinesis::error::ProvideErrorMetadata;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::StreamStatus;
    let port = super::free_port();
    let window = "4000";
    let _own = super::OwnEmulators::start(
        &[
            "--kinesis-port",
            &port.to_string(),
            "--stream-creating-ms",
            window,
            "--stream-updating-ms",
            window,
            "--stream-deleting-ms",
            window,
        ],
        port,
    );
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let config = aws_sdk_kinesis::config::Builder::from(&sdk).endpoint_url(format!("http://127.0.0.1:{port}")).build();
    let kinesis = aws_sdk_kinesis::Client::from_conf(config);
    let stream = format!("it-stack-states-{}-{}", std::process::id(), rand::random::<u32>());
    // None: no such stream (any other error fails the test).
    let status = || async {
        match kinesis.describe_stream_summary().stream_name(&stream).send().await {
            Ok(s) => s.stream_description_summary.map(|d| d.stream_status),
            Err(e) if e.code() == Some("ResourceNotFoundException") => None,
            Err(e) => panic!("describing the stream: {e:?}"),
        }
    };
    let until = |want: Option<StreamStatus>| {
        let status = &status;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while status().await != want {
                assert!(std::time::Instant::now() < deadline, "the stream never became {want:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let put = || kinesis.put_record().stream_name(&stream).partition_key("k").data(Blob::new("r")).send();
    let create = || kinesis.create_stream().stream_name(&stream).shard_count(2).send();

    create().await.expect("create stream");
    assert_eq!(status().await, Some(StreamStatus::Creating));
    let refused = put().await.expect_err("a CREATING stream's put");
    assert_eq!(refused.code(), Some("ResourceNotFoundException"), "{refused:?}");

    until(Some(StreamStatus::Active)).await;
    put().await.expect("an ACTIVE stream's put");
    let shards = kinesis.list_shards().stream_name(&stream).send().await.expect("list shards").shards.unwrap_or_default();
    let (first, second) = (shards[0].shard_id.clone(), shards[1].shard_id.clone());
    let range = shards[0].hash_key_range.as_ref().expect("a hash key range");
    let (lo, hi) = (range.starting_hash_key.parse::<u128>().expect("key"), range.ending_hash_key.parse::<u128>().expect("key"));
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&first)
        .new_starting_hash_key((lo + (hi - lo) / 2 + 1).to_string())
        .send()
        .await
        .expect("split");
    assert_eq!(status().await, Some(StreamStatus::Updating));
    put().await.expect("an UPDATING stream's put");
    let merge = kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&first)
        .adjacent_shard_to_merge(&second)
        .send()
        .await
        .expect_err("a reshard of an UPDATING stream");
    assert_eq!(merge.code(), Some("ResourceInUseException"), "{merge:?}");

    until(Some(StreamStatus::Active)).await;
    let shards = kinesis.list_shards().stream_name(&stream).send().await.expect("list shards").shards.unwrap_or_default();
    assert_eq!(shards.len(), 4, "the split's two children beside its parent and the other shard: {shards:?}");

    kinesis.delete_stream().stream_name(&stream).send().await.expect("delete stream");
    assert_eq!(status().await, Some(StreamStatus::Deleting));
    let again = create().await.expect_err("a DELETING stream's name");
    assert_eq!(again.code(), Some("ResourceInUseException"), "{again:?}");
    // (Its puts are refused here; Kinesis "might continue to accept" them
    // while DELETING: nothing relies on either, docs/local-stack.md.)
    until(None).await;
    create().await.expect("the name free once the stream is gone");
}
