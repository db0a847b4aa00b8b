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
