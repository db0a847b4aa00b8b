//! What a request is (service and operation) and how each service answers with an error.
//!
//! The point of the proxy is that the AWS SDK for Rust cannot tell an injected error from
//! a real one, so the shapes here follow what the SDK's own parsers read (the generated
//! `json_errors.rs` and `aws_query_compatible_errors.rs` of each SDK crate) and what the
//! services document. This module does no I/O and knows nothing about rules.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};

/// The services the proxy knows the error shapes of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    /// `X-Amz-Target: DynamoDB_20120810.*`, AWS JSON 1.0.
    DynamoDb,
    /// `X-Amz-Target: Kinesis_20131202.*`, AWS JSON 1.1.
    Kinesis,
    /// `X-Amz-Target: AmazonSQS.*`, AWS JSON 1.0 with query-compatible error codes.
    Sqs,
    /// A form body or query string with `Action=`: SQS over its older query protocol,
    /// which answers errors in XML.
    SqsQuery,
    /// Anything else: answered in the generic AWS JSON shape.
    Unknown,
}

/// The service and operation a request is for; the operation names rules and stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub service: Service,
    pub operation: String,
}

/// Reads the operation from `X-Amz-Target` (the part after the last '.'), else from an
/// `Action` parameter in the query string or form body, else calls it "unknown".
pub(crate) fn identify(headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Target {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (prefix, operation) = target.rsplit_once('.').unwrap_or(("", target));
        let service = if prefix.starts_with("DynamoDB") {
            Service::DynamoDb
        } else if prefix.starts_with("Kinesis") {
            Service::Kinesis
        } else if prefix.starts_with("AmazonSQS") {
            Service::Sqs
        } else {
            Service::Unknown
        };
        return Target { service, operation: operation.to_owned() };
    }
    let action = query
        .and_then(|q| form_value(q, "Action"))
        .or_else(|| std::str::from_utf8(body).ok().and_then(|b| form_value(b, "Action")));
    match action {
        Some(operation) => Target { service: Service::SqsQuery, operation },
        None => Target { service: Service::Unknown, operation: "unknown".to_owned() },
    }
}

fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_owned())
}

/// An error answer before it is given its service's shape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AwsError {
    pub status: StatusCode,
    /// The bare code, e.g. `ProvisionedThroughputExceededException`; for SQS the
    /// query-compatible code the SDK matches on.
    pub code: String,
    pub message: String,
    /// Extra top-level JSON fields (e.g. `CancellationReasons`); ignored by XML answers.
    pub extra: Option<Map<String, Value>>,
}

impl AwsError {
    fn new(status: StatusCode, code: &str, message: &str) -> Self {
        Self { status, code: code.to_owned(), message: message.to_owned(), extra: None }
    }
}

/// DynamoDB operations whose SDK error enum models `ProvisionedThroughputExceededException`
/// (aws-sdk-dynamodb 1.104); the control plane is throttled with `ThrottlingException`.
const DYNAMODB_DATA_PLANE: &[&str] = &[
    "BatchGetItem",
    "BatchWriteItem",
    "DeleteItem",
    "ExecuteStatement",
    "ExecuteTransaction",
    "GetItem",
    "PutItem",
    "Query",
    "Scan",
    "TransactGetItems",
    "TransactWriteItems",
    "UpdateItem",
];

/// Kinesis operations that model `ProvisionedThroughputExceededException` and
/// `InternalFailureException` (aws-sdk-kinesis 1.99); every other operation models
/// `LimitExceededException` as its throttle and has no modelled server error.
const KINESIS_DATA_PLANE: &[&str] = &["GetRecords", "GetShardIterator", "PutRecord", "PutRecords"];

impl Service {
    /// The service's own throttling error for `operation`. Every code here is in the
    /// SDK's `aws_runtime::retries::classifiers::THROTTLING_ERRORS`, so the SDK retries
    /// it as a throttle. SQS uses `RequestThrottled`: the error the SQS model attaches to
    /// every operation, and what SQS has long sent (the query protocol's `<Code>`);
    /// `RequestLimitExceeded` is DynamoDB's account-quota error, not an SQS one.
    pub(crate) fn throttle(self, operation: &str) -> AwsError {
        let bad = StatusCode::BAD_REQUEST;
        match self {
            Service::DynamoDb if DYNAMODB_DATA_PLANE.contains(&operation) => AwsError::new(
                bad,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. \
                 Consider increasing your provisioning level with the UpdateTable API.",
            ),
            Service::DynamoDb | Service::Unknown => {
                AwsError::new(bad, "ThrottlingException", "Rate of requests exceeds the allowed throughput.")
            }
            Service::Kinesis if KINESIS_DATA_PLANE.contains(&operation) => {
                AwsError::new(bad, "ProvisionedThroughputExceededException", "Rate exceeded for shard.")
            }
            Service::Kinesis => AwsError::new(bad, "LimitExceededException", "Rate exceeded for stream."),
            Service::Sqs | Service::SqsQuery => AwsError::new(bad, "RequestThrottled", "Request is throttled."),
        }
    }

    /// The service's own 500: DynamoDB models `InternalServerError` on every operation;
    /// Kinesis `InternalFailureException` on its data plane and otherwise the common
    /// `InternalFailure`; SQS answers `InternalError` ("We encountered an internal error").
    pub(crate) fn server_error(self, operation: &str) -> AwsError {
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        match self {
            Service::DynamoDb => AwsError::new(status, "InternalServerError", "Internal server error"),
            Service::Kinesis if KINESIS_DATA_PLANE.contains(&operation) => {
                AwsError::new(status, "InternalFailureException", "Internal service failure.")
            }
            Service::Kinesis | Service::Unknown => AwsError::new(status, "InternalFailure", "Internal service failure."),
            Service::Sqs | Service::SqsQuery => {
                AwsError::new(status, "InternalError", "We encountered an internal error. Please try again.")
            }
        }
    }

    /// The `__type` in a JSON error body: namespaced where the service does it. The SDK's
    /// JSON error parser drops everything up to '#' and from ':' on, so both forms parse.
    fn json_type(self, code: &str) -> String {
        match self {
            Service::DynamoDb => format!("com.amazonaws.dynamodb.v20120810#{code}"),
            Service::Sqs | Service::SqsQuery => format!("com.amazonaws.sqs#{code}"),
            Service::Kinesis | Service::Unknown => code.to_owned(),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Service::Kinesis => "application/x-amz-json-1.1",
            Service::SqsQuery => "text/xml",
            Service::DynamoDb | Service::Sqs | Service::Unknown => "application/x-amz-json-1.0",
        }
    }
}

/// Renders `error` the way `service` would send it.
pub(crate) fn error_response(service: Service, error: &AwsError) -> Response<Full<Bytes>> {
    let request_id = request_id();
    let body = if service == Service::SqsQuery {
        query_xml(error, &request_id)
    } else {
        let mut fields = error.extra.clone().unwrap_or_default();
        fields.insert("__type".to_owned(), Value::String(service.json_type(&error.code)));
        fields.insert("message".to_owned(), Value::String(error.message.clone()));
        Value::Object(fields).to_string()
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = error.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(service.content_type()));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    if let Ok(code) = HeaderValue::from_str(&error.code) {
        headers.insert("x-amzn-errortype", code);
    }
    // The SQS SDK takes its error code from this header when present, not from `__type`.
    if service == Service::Sqs
        && let Ok(value) = HeaderValue::from_str(&format!("{};{}", error.code, fault_side(error.status)))
    {
        headers.insert("x-amzn-query-error", value);
    }
    response
}

fn fault_side(status: StatusCode) -> &'static str {
    if status.is_server_error() { "Receiver" } else { "Sender" }
}

fn query_xml(error: &AwsError, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><Error>\
         <Type>{}</Type><Code>{}</Code><Message>{}</Message><Detail/></Error><RequestId>{}</RequestId></ErrorResponse>",
        fault_side(error.status),
        xml_escape(&error.code),
        xml_escape(&error.message),
        request_id
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A random UUID-shaped id, so that logs of the client under test look like AWS's.
fn request_id() -> String {
    let n: u128 = rand::random();
    let hex = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(target: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-target", HeaderValue::from_str(target).expect("valid header"));
        headers
    }

    #[test]
    fn identifies_service_and_operation() {
        let t = identify(&headers("DynamoDB_20120810.TransactWriteItems"), None, b"{}");
        assert_eq!(t, Target { service: Service::DynamoDb, operation: "TransactWriteItems".into() });
        assert_eq!(identify(&headers("Kinesis_20131202.GetRecords"), None, b"").service, Service::Kinesis);
        assert_eq!(identify(&headers("AmazonSQS.ReceiveMessage"), None, b"").operation, "ReceiveMessage");
        let form = identify(&HeaderMap::new(), None, b"Action=DeleteMessageBatch&Version=2012-11-05");
        assert_eq!(form, Target { service: Service::SqsQuery, operation: "DeleteMessageBatch".into() });
        assert_eq!(identify(&HeaderMap::new(), Some("Action=ListQueues"), b"").operation, "ListQueues");
        assert_eq!(identify(&HeaderMap::new(), None, b"{}").operation, "unknown");
    }

    #[test]
    fn throttles_by_plane() {
        assert_eq!(Service::DynamoDb.throttle("TransactWriteItems").code, "ProvisionedThroughputExceededException");
        assert_eq!(Service::DynamoDb.throttle("DescribeTable").code, "ThrottlingException");
        assert_eq!(Service::Kinesis.throttle("GetShardIterator").code, "ProvisionedThroughputExceededException");
        assert_eq!(Service::Kinesis.throttle("ListShards").code, "LimitExceededException");
        assert_eq!(Service::Sqs.server_error("ReceiveMessage").status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
