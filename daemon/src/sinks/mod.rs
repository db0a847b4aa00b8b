//! Sinks: durable writes. A sink reports, per record, whether the write is
//! durable (or was already), so that sources acknowledge only that.

pub mod dynamodb;
pub mod redshift;
pub mod rejected;

/// The outcome of one record's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written now, durably.
    Written,
    /// Already written before (a replay): nothing changed.
    Duplicate,
    /// Not written; give the message back to its source.
    Failed,
}

/// The SDK configuration of a client whose every call is refused at once
/// (nothing listens on port 1), with no retries: for unit tests of what
/// callers do when AWS fails.
#[cfg(test)]
pub(crate) fn refusing_sdk_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"),
        ))
        .endpoint_url("http://127.0.0.1:1")
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build()
}

/// An HTTP client whose every request goes to `connector`, an AWS
/// endpoint in the process: for unit tests of what callers do with its
/// answers (or its silence).
#[cfg(test)]
pub(crate) fn in_process<C>(connector: C) -> aws_smithy_runtime_api::client::http::SharedHttpClient
where
    C: aws_smithy_runtime_api::client::http::HttpConnector + Clone + 'static,
{
    aws_smithy_runtime_api::client::http::http_client_fn(move |_, _| {
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(connector.clone())
    })
}

/// An endpoint that takes every request and never answers, counting them:
/// a silent AWS endpoint, for unit tests that a caller does not wait on it
/// past a stop.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct Silent(pub std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[cfg(test)]
impl aws_smithy_runtime_api::client::http::HttpConnector for Silent {
    fn call(
        &self,
        _: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(std::future::pending())
    }
}

/// An endpoint that answers every request with `status` and `body`, after
/// `delay`: an AWS endpoint's answer, for unit tests of what callers do
/// with it (and when).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct Answering {
    pub status: u16,
    pub body: &'static str,
    pub delay: std::time::Duration,
}

#[cfg(test)]
impl Answering {
    /// `status` with `body`, at once.
    pub(crate) fn now(status: u16, body: &'static str) -> Self {
        Answering { status, body, delay: std::time::Duration::ZERO }
    }
}

#[cfg(test)]
impl aws_smithy_runtime_api::client::http::HttpConnector for Answering {
    fn call(
        &self,
        _: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        let Answering { status, body, delay } = self.clone();
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let status = status.try_into().expect("a valid status");
            Ok(aws_smithy_runtime_api::client::orchestrator::HttpResponse::new(
                status,
                aws_smithy_types::body::SdkBody::from(body),
            ))
        })
    }
}

/// The SDK configuration of a client whose every call goes to
/// `connector`, an endpoint in the process (no timeout, no retries).
#[cfg(test)]
pub(crate) fn in_process_sdk_config<C>(connector: C) -> aws_config::SdkConfig
where
    C: aws_smithy_runtime_api::client::http::HttpConnector + Clone + 'static,
{
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"),
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .http_client(in_process(connector))
        .build()
}

/// The SDK configuration of a client whose every call goes to [`Silent`]
/// (no timeout, no retries): every call waits for ever.
#[cfg(test)]
pub(crate) fn silent_sdk_config(calls: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> aws_config::SdkConfig {
    in_process_sdk_config(Silent(std::sync::Arc::clone(calls)))
}
