//! The AWS SDKs for Rust against the proxy: they must parse injected errors as the
//! service's own and classify throttles as throttles. The upstream answers nothing
//! useful; every request here is faulted before it gets there.

use std::time::Duration;

use aws_runtime::retries::classifiers::THROTTLING_ERRORS;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use faultproxy::{Fault, Proxy};

use crate::{proxy_to_echo, rule};

fn credentials() -> Credentials {
    Credentials::new("AKIDFAULTPROXY", "secret", None, None, "faultproxy-test")
}

fn dynamodb(proxy: &Proxy, retry: RetryConfig) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(proxy.url())
        .retry_config(retry)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

async fn get_item(
    client: &aws_sdk_dynamodb::Client,
) -> aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::get_item::GetItemError> {
    client.get_item().table_name("t").key("pk", AttributeValue::S("a".into())).send().await.expect_err("faulted")
}

#[tokio::test]
async fn dynamodb_sees_its_own_throttle_and_retries_it() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(Some("GetItem"), 1.0, Fault::Throttle)]).expect("valid rules");
    let error = get_item(&dynamodb(&proxy, RetryConfig::disabled())).await;
    let service_error = error.as_service_error().expect("a service error");
    assert!(service_error.is_provisioned_throughput_exceeded_exception(), "{service_error:?}");
    let code = service_error.code().expect("a code");
    assert_eq!(code, "ProvisionedThroughputExceededException");
    assert!(THROTTLING_ERRORS.contains(&code));

    let retrying = RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(1));
    get_item(&dynamodb(&proxy, retrying)).await;
    assert_eq!(proxy.stats().operations["GetItem"].throttle, 1 + 3, "the SDK retried the throttle");
}

#[tokio::test]
async fn dynamodb_parses_cancellation_reasons_and_server_errors() {
    let proxy = proxy_to_echo().await;
    let extra = serde_json::json!({ "CancellationReasons": [{ "Code": "None" }, { "Code": "ConditionalCheckFailed" }] });
    let cancelled = Fault::Error {
        status: 400,
        code: "TransactionCanceledException".into(),
        message: "cancelled".into(),
        extra: Some(extra),
    };
    proxy
        .set_rules(vec![rule(Some("TransactWriteItems"), 1.0, cancelled), rule(None, 1.0, Fault::ServerError)])
        .expect("valid rules");
    let client = dynamodb(&proxy, RetryConfig::disabled());
    let put = Put::builder().table_name("t").item("pk", AttributeValue::S("a".into())).build().expect("valid put");
    let error = client.transact_write_items().transact_items(TransactWriteItem::builder().put(put).build()).send().await;
    let error = error.expect_err("cancelled").into_service_error();
    let cancelled = match error {
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(e) => e,
        other => panic!("expected TransactionCanceledException, got {other:?}"),
    };
    let codes: Vec<_> = cancelled.cancellation_reasons().iter().map(|r| r.code().unwrap_or_default()).collect();
    assert_eq!(codes, ["None", "ConditionalCheckFailed"]);

    let error = get_item(&client).await;
    assert!(error.as_service_error().is_some_and(|e| e.is_internal_server_error()), "{error:?}");
}

#[tokio::test]
async fn sqs_sees_request_throttled() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(Some("ReceiveMessage"), 1.0, Fault::Throttle)]).expect("valid rules");
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(proxy.url())
        .retry_config(RetryConfig::disabled())
        .build();
    let client = aws_sdk_sqs::Client::from_conf(config);
    let error =
        client.receive_message().queue_url(format!("{}/000000000000/q", proxy.url())).send().await.expect_err("throttled");
    let service_error = error.as_service_error().expect("a service error");
    assert!(service_error.is_request_throttled(), "{service_error:?}");
    assert_eq!(service_error.code(), Some("RequestThrottled"));
    assert!(THROTTLING_ERRORS.contains(&"RequestThrottled"));
}

#[tokio::test]
async fn kinesis_sees_its_own_throttles() {
    let proxy = proxy_to_echo().await;
    proxy.set_rules(vec![rule(None, 1.0, Fault::Throttle)]).expect("valid rules");
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(proxy.url())
        .retry_config(RetryConfig::disabled())
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(config);
    let error = client.get_records().shard_iterator("AAAA").send().await.expect_err("throttled");
    assert!(error.as_service_error().is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()), "{error:?}");
    let error = client.list_shards().stream_name("orders").send().await.expect_err("throttled");
    let service_error = error.as_service_error().expect("a service error");
    assert!(service_error.is_limit_exceeded_exception(), "{service_error:?}");
    assert!(THROTTLING_ERRORS.contains(&service_error.code().expect("a code")));
}
