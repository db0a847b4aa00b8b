//! AWS plumbing shared by sources, sinks and `provision`: SDK configuration,
//! error classification, and backoff.
//!
//! Owns: the one place the SDK's config is loaded (region, credentials and
//! endpoints from the standard AWS environment, including
//! `AWS_ENDPOINT_URL_<SERVICE>`), and what counts as retryable. Must not:
//! contain paths that exist only for tests.

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::AwsConfig;
use crate::internal_events::{AwsRequest, InternalEvent};
use crate::metrics::Metrics;

/// Loads the SDK configuration from the standard AWS environment.
pub async fn sdk_config(cfg: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &cfg.region {
        loader = loader.region(Region::new(region.clone()));
    }
    loader.load().await
}

/// The longest any one AWS call of `run` may take, every call: the longest
/// is a ReceiveMessage long poll (`wait_time_secs` is at most 20 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one DynamoDB or Kinesis call of `run` may take: none waits
/// on purpose (no long poll), and a call held this long by a silent
/// endpoint is abandoned and retried by its loop, so an outage ends for the
/// pipeline at most this long after the endpoint answers again.
pub const DATA_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The SDK configuration of `run`. Its loops retry on their own, with
/// backoff and jitter, a budget, a metric (`cafe_sink_requests_total{outcome="retry"}`,
/// `cafe_source_errors_total`) and the stop token, so the SDK's own retries
/// are off: the two never multiply, and every attempt is one request the
/// metrics count. Every call is bounded by [`CALL_TIMEOUT`].
pub async fn run_sdk_config(cfg: &AwsConfig) -> SdkConfig {
    sdk_config(cfg)
        .await
        .into_builder()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(CALL_TIMEOUT)
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .build()
}

/// The timeouts of the DynamoDB and Kinesis clients of `run`
/// ([`DATA_CALL_TIMEOUT`]); the SQS clients keep [`CALL_TIMEOUT`], which a
/// long poll needs.
pub fn data_call_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(DATA_CALL_TIMEOUT)
        .operation_timeout(DATA_CALL_TIMEOUT)
        .build()
}

/// Counts every HTTP request a client sends, by service and operation
/// (`cafe_aws_requests_total`), as it is sent: each attempt of a call, the
/// daemon's own retries included (the SDK's are off). Every client of `run`
/// carries it (`interceptor(CountRequests(..))` on its config), so the
/// series add up to what AWS bills per request.
#[derive(Debug, Clone)]
pub struct CountRequests(pub Arc<Metrics>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Every operation of a generated client stores its metadata.
        let (service, operation) = cfg.load::<Metadata>().map_or(("unknown", "unknown"), |m| (m.service(), m.name()));
        AwsRequest { service, operation }.emit(&self.0);
        Ok(())
    }
}

/// What a caller should do about a failed AWS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Slow down and retry.
    Throttled,
    /// Transient (network, timeout, 5xx): retry.
    Retryable,
    /// Retrying the same request cannot help.
    Fatal,
}

const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "TooManyRequestsException",
    "LimitExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    // Kinesis GetRecords on an encrypted stream, when KMS throttles.
    "KMSThrottlingException",
];

/// Classifies an SDK error.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorClass {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => ErrorClass::Retryable,
        SdkError::ServiceError(e) => {
            if e.err().code().is_some_and(|c| THROTTLING_CODES.contains(&c)) {
                ErrorClass::Throttled
            } else if e.raw().status().is_server_error() || e.raw().status().as_u16() == 429 {
                ErrorClass::Retryable
            } else {
                ErrorClass::Fatal
            }
        }
        _ => ErrorClass::Fatal,
    }
}

/// A short, credential-free description of an SDK error for logs.
pub fn describe<E: ProvideErrorMetadata + std::error::Error>(err: &SdkError<E, HttpResponse>) -> String {
    match err {
        SdkError::ServiceError(e) => format!(
            "{} (HTTP {}): {}",
            e.err().code().unwrap_or("unknown error"),
            e.raw().status().as_u16(),
            e.err().message().unwrap_or("")
        ),
        SdkError::TimeoutError(_) => "timeout".into(),
        SdkError::DispatchFailure(e) => format!("dispatch failure: {:?}", e.as_other().map_or("io", |_| "other")),
        other => format!("{other}"),
    }
}

/// A failed AWS call, as library code returns it: what was asked, how a
/// caller should treat it, and a credential-free description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct AwsError {
    /// What the call was for, e.g. `reading orders`.
    pub what: String,
    /// Retry or not.
    pub class: ErrorClass,
    /// The service's code and message, or the transport failure.
    pub detail: String,
}

impl AwsError {
    /// From an SDK error.
    pub fn sdk<E: ProvideErrorMetadata + std::error::Error>(what: impl Into<String>, err: &SdkError<E, HttpResponse>) -> Self {
        AwsError { what: what.into(), class: classify(err), detail: describe(err) }
    }

    /// A request this daemon could not even build (a bug, never retried).
    pub fn request(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        AwsError { what: what.into(), class: ErrorClass::Fatal, detail: format!("invalid request: {err}") }
    }
}

/// How long a call may still take once retrying has stopped in a
/// shutdown: at a clean shutdown a delete or a rejection's ledger record
/// still lands (each takes milliseconds), and silent endpoints hold the
/// drain this long in all, not each call's whole timeout.
pub const AFTER_STOP: Duration = Duration::from_secs(2);

/// The two points of a shutdown that loops of calls heed: from `retrying`
/// (half the grace period) no call is retried, and from `calls`
/// ([`AFTER_STOP`] later, for every call alike, however many come one
/// after the other) a call still waiting is abandoned. Cancelled by
/// topology; never, by default.
#[derive(Debug, Clone, Default)]
pub struct Stopping {
    /// No retry from then on.
    pub retrying: CancellationToken,
    /// No call waited for from then on.
    pub calls: CancellationToken,
}

impl Stopping {
    /// `call`'s output; `None` when calls are no longer waited for, before
    /// it starts or while it waits.
    pub async fn call<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        if self.calls.is_cancelled() {
            return None;
        }
        tokio::select! {
            r = call => Some(r),
            () = self.calls.cancelled() => None,
        }
    }

    /// Waits `delay` before a retry; false, at once, past the point of
    /// retrying.
    pub async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => !self.retrying.is_cancelled(),
            () = self.retrying.cancelled() => false,
        }
    }
}

/// Runs a batch call that can fail for some of its entries until every
/// entry succeeded or `attempts` calls were made, sleeping `backoff` between
/// calls. `call` gets the pending entries (indices into the caller's items)
/// and the attempt number, and returns those that failed (all of them when
/// the call itself failed). Returns the entries that never succeeded.
/// Once `stop.retrying` is cancelled (past the point of retrying in a
/// shutdown) no further call is made, and once `stop.calls` is, none at
/// all, and a call still waiting is abandoned, with every entry it carried counted as not
/// done (it may have landed: the callers' ends are idempotent): a silent
/// endpoint cannot hold the drain.
pub async fn retry_failed_entries<F, Fut>(
    items: usize,
    attempts: u32,
    backoff: Backoff,
    stop: &Stopping,
    mut call: F,
) -> Vec<usize>
where
    F: FnMut(Vec<usize>, u32) -> Fut,
    Fut: std::future::Future<Output = Vec<usize>>,
{
    let mut pending: Vec<usize> = (0..items).collect();
    for attempt in 0..attempts {
        if (attempt > 0 && stop.retrying.is_cancelled()) || stop.calls.is_cancelled() {
            break;
        }
        let asked = pending.clone();
        let Some(failed) = stop.call(call(pending, attempt)).await else { return asked };
        pending = failed;
        if pending.is_empty() || attempt + 1 == attempts || !stop.pause(backoff.delay(attempt)).await {
            break;
        }
    }
    pending
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay's upper bound.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): uniform in
    /// `[cap/4, cap]` with `cap = min(max, base * 2^attempt)`, so retrying
    /// clients spread out but none retries at once.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let millis = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 4..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP client that answers every request in-process with `status`
    /// and an empty JSON object.
    fn answer(status: u16) -> crate::sinks::Answering {
        crate::sinks::Answering::now(status, "{}")
    }

    fn requests(metrics: &Metrics, service: &str, operation: &str) -> u64 {
        let label = crate::metrics::AwsRequestLabel { service: service.to_owned(), operation: operation.to_owned() };
        metrics.aws_requests.get_or_create(&label).get()
    }

    #[tokio::test]
    async fn every_request_a_client_sends_is_counted_by_service_and_operation_failed_ones_too() {
        use aws_sdk_dynamodb::config::{Builder, Credentials, Region};
        let metrics = Arc::new(Metrics::new());
        let client = |status: u16| {
            aws_sdk_dynamodb::Client::from_conf(
                Builder::new()
                    .behavior_version(BehaviorVersion::latest())
                    .region(Region::new("us-east-1"))
                    .credentials_provider(Credentials::new("k", "s", None, None, "test"))
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .http_client(crate::sinks::in_process(answer(status)))
                    .interceptor(CountRequests(Arc::clone(&metrics)))
                    .build(),
            )
        };
        let ok = client(200);
        for _ in 0..2 {
            ok.get_item()
                .table_name("t")
                .key("k", aws_sdk_dynamodb::types::AttributeValue::S("v".into()))
                .send()
                .await
                .expect("answered");
        }
        ok.describe_table().table_name("t").send().await.expect("answered");
        // A request the service refuses was still sent, and billed.
        let refused = client(500).get_item().table_name("t").send().await;
        assert!(refused.is_err());
        assert_eq!(requests(&metrics, "DynamoDB", "GetItem"), 3);
        assert_eq!(requests(&metrics, "DynamoDB", "DescribeTable"), 1);
        assert_eq!(requests(&metrics, "DynamoDB", "TransactWriteItems"), 0);
        // A client without the interceptor counts nothing.
        let metrics_before = requests(&metrics, "DynamoDB", "GetItem");
        let plain = aws_sdk_dynamodb::Client::from_conf(
            Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("k", "s", None, None, "test"))
                .http_client(crate::sinks::in_process(answer(200)))
                .build(),
        );
        plain.get_item().table_name("t").send().await.expect("answered");
        assert_eq!(requests(&metrics, "DynamoDB", "GetItem"), metrics_before);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
        for _ in 0..100 {
            assert!(b.delay(0) <= Duration::from_millis(100));
            assert!(b.delay(3) <= Duration::from_millis(800));
            assert!(b.delay(30) <= Duration::from_secs(1));
            assert!(b.delay(30) >= Duration::from_millis(250));
        }
    }

    #[tokio::test]
    async fn a_stop_abandons_the_call_under_way_and_makes_no_other() {
        let b = Backoff { base: Duration::from_secs(60), max: Duration::from_secs(60) };
        // A retry that never ends, when calls stop being waited for:
        // abandoned, the entries it carried not done (and those an earlier
        // call did, done).
        let quick = Backoff { base: Duration::from_millis(1), max: Duration::from_millis(1) };
        let stop = Stopping::default();
        let (abandon, calls) = (stop.calls.clone(), std::cell::Cell::new(0));
        let left = retry_failed_entries(3, 5, quick, &stop, |pending: Vec<usize>, attempt| {
            calls.set(calls.get() + 1);
            if attempt > 0 {
                abandon.cancel();
            }
            async move {
                if attempt == 0 {
                    return vec![1, 2];
                }
                std::future::pending::<()>().await;
                pending
            }
        });
        let left = tokio::time::timeout(Duration::from_secs(5), left).await.expect("the call abandoned");
        assert_eq!((left, calls.get()), (vec![1, 2], 2));
        // Retrying stopped before it starts, a call that answers still
        // lands (a delete, at a clean shutdown), and what it left is not
        // retried.
        let stop = Stopping::default();
        stop.retrying.cancel();
        let left = retry_failed_entries(3, 5, quick, &stop, |_: Vec<usize>, attempt| async move {
            if attempt == 0 { vec![2] } else { Vec::new() }
        });
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), left).await.expect("ends"), vec![2]);
        // A call that failed, then retrying stops: no wait for the
        // backoff's minute, no other call.
        let stop = Stopping::default();
        let (cancel, calls) = (stop.retrying.clone(), std::cell::Cell::new(0));
        let started = std::time::Instant::now();
        let left = retry_failed_entries(3, 5, b, &stop, |pending: Vec<usize>, _| {
            calls.set(calls.get() + 1);
            let cancel = cancel.clone();
            async move {
                cancel.cancel();
                pending.into_iter().filter(|&i| i == 1).collect()
            }
        });
        let left = tokio::time::timeout(Duration::from_secs(5), left).await.expect("no wait for the backoff");
        assert_eq!((left, calls.get()), (vec![1], 1));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn failed_entries_alone_are_sent_again_until_done_or_out_of_attempts() {
        let b = Backoff { base: Duration::from_millis(1), max: Duration::from_millis(2) };
        let mut calls: Vec<Vec<usize>> = Vec::new();
        // Entry 1 fails twice, entry 3 always.
        let left = retry_failed_entries(4, 4, b, &Stopping::default(), |pending: Vec<usize>, attempt| {
            calls.push(pending.clone());
            async move { pending.into_iter().filter(|&i| i == 3 || (i == 1 && attempt < 2)).collect() }
        })
        .await;
        assert_eq!(left, vec![3]);
        assert_eq!(calls, vec![vec![0, 1, 2, 3], vec![1, 3], vec![1, 3], vec![3]]);
        let none = retry_failed_entries(2, 3, b, &Stopping::default(), |_: Vec<usize>, _| async { Vec::new() }).await;
        assert!(none.is_empty());
    }
}
