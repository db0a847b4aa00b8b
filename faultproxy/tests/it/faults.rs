//! Forwarding and each fault, seen by a plain HTTP client.

use std::time::{Duration, Instant};

use faultproxy::{Counts, Fault};

use crate::{client, json, proxy_to_echo, rule, send};

const GET_ITEM: &str = "DynamoDB_20120810.GetItem";

#[tokio::test]
async fn forwards_requests_and_answers_unchanged() {
    let proxy = proxy_to_echo().await;
    let (status, headers, body) = send(&client(), &proxy, Some(GET_ITEM), r#"{"TableName":"t"}"#).await.expect("forwarded");
    assert_eq!(status, 201);
    assert_eq!(headers["x-upstream"], "echo");
    assert_eq!(headers["x-echo-host"], proxy.addr().to_string(), "Host reaches the upstream as the client signed it");
    assert!(headers["x-echo-authorization"].to_str().expect("ascii").starts_with("AWS4-HMAC-SHA256 Credential=AKID/"));
    assert_eq!(headers["x-echo-x-amz-target"], GET_ITEM);
    assert_eq!(&body[..], b"POST /a/path?x=1\n{\"TableName\":\"t\"}");
}

#[tokio::test]
async fn throttle_answers_in_each_services_shape() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(None, 1.0, Fault::Throttle)]).expect("valid rules");
    let client = client();

    let (status, headers, body) =
        send(&client, &proxy, Some("DynamoDB_20120810.TransactWriteItems"), "{}").await.expect("answer");
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/x-amz-json-1.0");
    assert_eq!(headers["x-amzn-errortype"], "ProvisionedThroughputExceededException");
    assert_eq!(json(&body)["__type"], "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException");

    let (status, headers, body) = send(&client, &proxy, Some("Kinesis_20131202.GetRecords"), "{}").await.expect("answer");
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/x-amz-json-1.1");
    assert_eq!(json(&body)["__type"], "ProvisionedThroughputExceededException");
    let (_, _, body) = send(&client, &proxy, Some("Kinesis_20131202.ListShards"), "{}").await.expect("answer");
    assert_eq!(json(&body)["__type"], "LimitExceededException");

    let (status, headers, body) = send(&client, &proxy, Some("AmazonSQS.ReceiveMessage"), "{}").await.expect("answer");
    assert_eq!(status, 400);
    assert_eq!(headers["x-amzn-query-error"], "RequestThrottled;Sender");
    assert_eq!(json(&body)["__type"], "com.amazonaws.sqs#RequestThrottled");

    let (status, headers, body) =
        send(&client, &proxy, None, "Action=DeleteMessageBatch&Version=2012-11-05").await.expect("answer");
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "text/xml");
    let xml = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(xml.contains("<Type>Sender</Type><Code>RequestThrottled</Code>"), "{xml}");
    assert_eq!(proxy.stats().operations["DeleteMessageBatch"].throttle, 1);
}

#[tokio::test]
async fn error_and_server_error_faults() {
    let proxy = proxy_to_echo().await;
    let extra = serde_json::json!({ "CancellationReasons": [{ "Code": "ConditionalCheckFailed" }] });
    let cancelled =
        Fault::Error { status: 400, code: "TransactionCanceledException".into(), message: "no".into(), extra: Some(extra) };
    proxy
        .set_rules(vec![rule(Some("TransactWriteItems"), 1.0, cancelled), rule(None, 1.0, Fault::ServerError)])
        .expect("valid rules");
    let client = client();
    let (status, _, body) = send(&client, &proxy, Some("DynamoDB_20120810.TransactWriteItems"), "{}").await.expect("answer");
    assert_eq!(status, 400);
    let body = json(&body);
    assert_eq!(body["__type"], "com.amazonaws.dynamodb.v20120810#TransactionCanceledException");
    assert_eq!(body["message"], "no");
    assert_eq!(body["CancellationReasons"][0]["Code"], "ConditionalCheckFailed");

    let (status, _, body) = send(&client, &proxy, Some(GET_ITEM), "{}").await.expect("answer");
    assert_eq!(status, 500);
    assert_eq!(json(&body)["__type"], "com.amazonaws.dynamodb.v20120810#InternalServerError");
    let (status, headers, _) = send(&client, &proxy, Some("AmazonSQS.SendMessage"), "{}").await.expect("answer");
    assert_eq!(status, 500);
    assert_eq!(headers["x-amzn-query-error"], "InternalError;Receiver");
}

#[tokio::test]
async fn probability_hits_exactly_that_share() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(Some("GetItem"), 0.5, Fault::Throttle)]).expect("valid rules");
    let client = client();
    let mut throttled = 0;
    for _ in 0..400 {
        let (status, _, _) = send(&client, &proxy, Some(GET_ITEM), "{}").await.expect("answer");
        throttled += usize::from(status == 400);
    }
    assert_eq!(throttled, 200, "{throttled} of 400 throttled");
    let counts = proxy.stats().operations["GetItem"];
    assert_eq!((counts.throttle + counts.forwarded) as usize, 400);
}

#[tokio::test]
async fn latency_delays_then_forwards() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(None, 1.0, Fault::Latency { millis: 200 })]).expect("valid rules");
    let started = Instant::now();
    let (status, _, _) = send(&client(), &proxy, Some(GET_ITEM), "{}").await.expect("answer");
    assert!(started.elapsed() >= Duration::from_millis(200), "answered after {:?}", started.elapsed());
    assert_eq!(status, 201);
}

/// Requests held together count in the peak, per operation; one answered
/// before the next arrives does not; a client that gives up leaves.
#[tokio::test]
async fn the_peak_of_requests_held_at_once_is_counted_per_operation() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(Some("GetItem"), 1.0, Fault::Latency { millis: 300 })]).expect("valid rules");
    let client = client();
    let get = || send(&client, &proxy, Some(GET_ITEM), "{}");
    let (a, b, c) = tokio::join!(get(), get(), get());
    for answer in [a, b, c] {
        answer.expect("answer");
    }
    for _ in 0..2 {
        send(&client, &proxy, Some("DynamoDB_20120810.PutItem"), "{}").await.expect("answer");
    }
    let gave_up = tokio::time::timeout(Duration::from_millis(50), send(&client, &proxy, Some(GET_ITEM), "{}")).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = proxy.stats();
    assert_eq!(stats.peak_in_flight["GetItem"], 3, "{stats:?}");
    assert_eq!(stats.peak_in_flight["PutItem"], 1, "{stats:?}");
    assert_eq!(stats.in_flight["GetItem"], 0, "a request whose client gave up still counts: {stats:?}");
}

#[tokio::test]
async fn a_late_answer_reaches_the_upstream_though_the_client_gave_up() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(None, 1.0, Fault::LateAnswer { millis: 400 })]).expect("valid rules");
    let client = client();
    let gave_up = tokio::time::timeout(Duration::from_millis(100), send(&client, &proxy, Some(GET_ITEM), "{}")).await;
    assert!(gave_up.is_err(), "the answer was held past the client's timeout");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = proxy.stats();
    assert_eq!(stats.total, Counts { late_answer: 1, forwarded: 1, ..Counts::default() }, "{stats:?}");
    // A client that waits gets the upstream's answer, late.
    let started = Instant::now();
    let (status, _, _) = send(&client, &proxy, Some(GET_ITEM), "{}").await.expect("answer");
    assert_eq!(status, 201);
    assert!(started.elapsed() >= Duration::from_millis(400), "answered after {:?}", started.elapsed());
}

#[tokio::test]
async fn reset_fails_the_clients_connection() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(None, 1.0, Fault::Reset)]).expect("valid rules");
    let error = send(&client(), &proxy, Some(GET_ITEM), "{}").await.expect_err("connection error");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    let mut reset = false;
    while let Some(e) = source {
        reset |= e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        source = e.source();
    }
    assert!(reset, "expected a TCP reset, got {error:?}");
    assert_eq!(proxy.stats().total.reset, 1);
}

#[tokio::test]
async fn black_hole_holds_until_cleared() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(None, 1.0, Fault::BlackHole)]).expect("valid rules");
    let client = client();
    let held = tokio::time::timeout(Duration::from_millis(300), send(&client, &proxy, Some(GET_ITEM), "{}")).await;
    assert!(held.is_err(), "a black-holed request must not be answered");
    proxy.clear();
    let (status, _, _) = send(&client, &proxy, Some(GET_ITEM), "{}").await.expect("forwarded after clear");
    assert_eq!(status, 201);
}

#[tokio::test]
async fn stats_count_per_operation_and_kind() {
    let proxy = proxy_to_echo().await;
    proxy
        .set_rules(vec![rule(Some("PutItem"), 1.0, Fault::Throttle), rule(Some("Query"), 1.0, Fault::Latency { millis: 1 })])
        .expect("valid rules");
    let client = client();
    for target in ["DynamoDB_20120810.PutItem", "DynamoDB_20120810.PutItem", "DynamoDB_20120810.Query", GET_ITEM] {
        send(&client, &proxy, Some(target), "{}").await.expect("answer");
    }
    let stats = proxy.stats();
    assert_eq!(stats.operations["PutItem"], Counts { throttle: 2, ..Counts::default() });
    assert_eq!(stats.operations["Query"], Counts { latency: 1, forwarded: 1, ..Counts::default() });
    assert_eq!(stats.operations["GetItem"], Counts { forwarded: 1, ..Counts::default() });
    assert_eq!(stats.total, Counts { throttle: 2, latency: 1, forwarded: 2, ..Counts::default() });
}
