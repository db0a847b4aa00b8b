//! An in-memory end for the DynamoDB client: an `HttpClient` that answers
//! every call in-process, as the service answers it when all goes well, so
//! that a bench runs the daemon's whole write path (building the items, the
//! SDK's serialisation, signing and parsing) with no network and no AWS.
//!
//! It serves what one shard's stage calls: `Scan` of the lease table (one
//! free lease, [`SHARD`], from `TRIM_HORIZON`), `UpdateItem` (taking the
//! lease, checkpoints), `TransactWriteItems` (committed), `BatchGetItem` and
//! `GetItem` (nothing stored). Anything else is answered with a
//! `ValidationException` naming the operation, so a bench that strays off
//! this path fails its check instead of measuring a different path.
//!
//! It keeps nothing and checks no condition: a write is always committed.
//! While [`MemoryDynamoDb::counting`] is set it counts what the committed
//! transactions wrote, for a bench to check that every event was applied
//! once, outside its timed runs.
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_sdk_dynamodb::config::http::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use serde_json::{Value, json};

/// The one shard the lease table holds.
pub const SHARD: &str = "shardId-000000000000";

/// Counts of what committed transactions wrote (see the module's doc).
#[derive(Debug, Default)]
pub struct MemoryDynamoDb {
    /// Count the transactions' items (parsing each request) while set.
    pub counting: AtomicBool,
    /// Order items put (an order's first events).
    pub order_puts: AtomicU64,
    /// History entries written to order items, by puts and by appends: one
    /// per order event applied.
    pub history_entries: AtomicU64,
    /// Calls answered with an error (an operation this end does not serve).
    pub refused: AtomicU64,
}

impl MemoryDynamoDb {
    /// A fresh end, and the client to give the SDK's config builder.
    pub fn new() -> (Arc<Self>, SharedHttpClient) {
        let end = Arc::new(MemoryDynamoDb::default());
        (Arc::clone(&end), SharedHttpClient::new(Client(end)))
    }

    fn answer(&self, request: &HttpRequest) -> (u16, Value) {
        let op = request.headers().get("x-amz-target").and_then(|t| t.rsplit('.').next()).unwrap_or("");
        match op {
            "Scan" => (
                200,
                json!({"Count": 1, "ScannedCount": 1, "Items": [{
                    "leaseKey": {"S": SHARD}, "leaseCounter": {"N": "0"}, "checkpoint": {"S": "TRIM_HORIZON"},
                    "checkpointSubSequenceNumber": {"N": "0"}, "ownerSwitchesSinceCheckpoint": {"N": "0"}
                }]}),
            ),
            "UpdateItem" | "GetItem" => (200, json!({})),
            "BatchGetItem" => (200, json!({"Responses": {}, "UnprocessedKeys": {}})),
            "TransactWriteItems" => {
                if self.counting.load(Ordering::Relaxed) {
                    self.count(request.body().bytes().unwrap_or_default());
                }
                (200, json!({}))
            }
            other => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let message = format!("the in-memory end does not serve {other:?}");
                (400, json!({"__type": "com.amazon.coral.validate#ValidationException", "message": message}))
            }
        }
    }

    /// Counts the order items and history entries of one transaction.
    fn count(&self, body: &[u8]) {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let items = request["TransactItems"].as_array().cloned().unwrap_or_default();
        let list_len = |v: &Value| v["L"].as_array().map_or(0, Vec::len) as u64;
        for item in &items {
            if let Some(put) = item.get("Put").filter(|p| p["Item"].get("order_id").is_some()) {
                self.order_puts.fetch_add(1, Ordering::Relaxed);
                self.history_entries.fetch_add(list_len(&put["Item"]["history"]), Ordering::Relaxed);
            } else if let Some(update) = item.get("Update").filter(|u| u["Key"].get("order_id").is_some()) {
                self.history_entries.fetch_add(list_len(&update["ExpressionAttributeValues"][":h"]), Ordering::Relaxed);
            }
        }
    }
}

struct Client(Arc<MemoryDynamoDb>);

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryDynamoDb")
    }
}

impl HttpClient for Client {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(Connector(Arc::clone(&self.0)))
    }
}

struct Connector(Arc<MemoryDynamoDb>);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryDynamoDb")
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (status, body) = self.0.answer(&request);
        let status = status.try_into().expect("a valid status code");
        let mut response = HttpResponse::new(status, SdkBody::from(body.to_string()));
        response.headers_mut().insert("content-type", "application/x-amz-json-1.0");
        HttpConnectorFuture::ready(Ok(response))
    }
}
