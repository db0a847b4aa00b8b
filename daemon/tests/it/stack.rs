//! The local stack refuses what AWS refuses: each test here fails on the
//! emulator as it is packaged, and passes through the project's launcher
//! (`scripts/local-stack/moto_launcher.py`), which says why for each.

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
