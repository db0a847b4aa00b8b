//! DynamoDB's front: dynoxide behind a proxy of this process that keeps a
//! new table CREATING for a while, as DynamoDB does.
//!
//! DynamoDB creates a table CREATING and makes it ACTIVE seconds later;
//! until then it refuses the table's reads and writes
//! (ResourceNotFoundException: "the resource might not be specified
//! correctly, or its status might not be ACTIVE") and its deletion
//! (ResourceInUseException: "tried to delete a table currently in the
//! CREATING state"). dynoxide makes a table ACTIVE at once, so a client that
//! writes to a table it has just created without waiting works on the local
//! stack and fails on AWS. This front reports a new table CREATING to
//! DescribeTable for `window` and meanwhile refuses the item calls on it
//! (single, batch and transaction) and its deletion or update, as DynamoDB
//! does. Not covered: PartiQL calls (the table is named inside the
//! statement), UpdateTimeToLive, tagging, backups and DynamoDB Streams
//! calls on a CREATING table, none of which the project makes before a
//! table is ACTIVE; they, and every other request and answer, pass
//! unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A request body this front reads whole: DynamoDB's limit is 16 MB, and
/// dynoxide answers one past it itself.
const MAX_BODY: usize = 32 << 20;

/// The front's state: where dynoxide listens and the tables still CREATING.
pub struct Front {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    window: Duration,
    /// Table name -> when it becomes ACTIVE.
    creating: Mutex<HashMap<String, Instant>>,
}

impl Front {
    /// A front of dynoxide at `upstream` (`127.0.0.1:PORT`), new tables
    /// CREATING for `window` (zero: ACTIVE at once, as dynoxide has them).
    pub fn new(upstream: std::net::SocketAddr, window: Duration) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Arc::new(Front {
            upstream: format!("http://{upstream}"),
            client: Client::builder(TokioExecutor::new()).build(connector),
            window,
            creating: Mutex::new(HashMap::new()),
        })
    }

    /// Of `tables`, the first still CREATING (entries past their time are
    /// dropped as they are seen).
    fn first_creating<'a>(&self, tables: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let mut creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        if creating.is_empty() {
            return None;
        }
        let now = Instant::now();
        creating.retain(|_, active_at| *active_at > now);
        tables.into_iter().find(|t| creating.contains_key(*t))
    }
}

/// The tables a DynamoDB request names, by operation: those whose reads,
/// writes or deletion DynamoDB refuses while a table is CREATING.
fn tables_of<'a>(operation: &str, request: &'a Value) -> Vec<&'a str> {
    let name = |v: &'a Value| -> Option<&'a str> { v.get("TableName").and_then(Value::as_str) };
    match operation {
        "GetItem" | "PutItem" | "UpdateItem" | "DeleteItem" | "Query" | "Scan" | "DeleteTable" | "UpdateTable" => {
            name(request).into_iter().collect()
        }
        "BatchGetItem" | "BatchWriteItem" => request
            .get("RequestItems")
            .and_then(Value::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default(),
        "TransactWriteItems" | "TransactGetItems" => request
            .get("TransactItems")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_object).flat_map(|item| item.values()).filter_map(name).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// DynamoDB's error answer, with the checksum of its body DynamoDB sends
/// (`x-amz-crc32`: botocore checks it).
fn refuse(content_type: Option<&HeaderValue>, code: &str, message: String) -> Response {
    let body = serde_json::json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{code}"), "message": message});
    let body = Bytes::from(body.to_string());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let content_type = content_type.cloned().unwrap_or_else(|| HeaderValue::from_static("application/x-amz-json-1.0"));
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response.headers_mut().insert("x-amzn-requestid", HeaderValue::from_static("cafe-emulators-front"));
    set_body(response, body)
}

/// `response` with `body`, its length and its `x-amz-crc32` checksum (the
/// body dynoxide checksummed may have been rewritten).
fn set_body(mut response: Response, body: Bytes) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert("x-amz-crc32", HeaderValue::from(crc32fast::hash(&body)));
    *response.body_mut() = Body::from(body);
    response
}

/// Every DynamoDB request: refused while its table is CREATING, or
/// forwarded to dynoxide (its answer to DescribeTable saying CREATING
/// meanwhile).
pub async fn handle(State(front): State<Arc<Front>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            let mut response = Response::new(Body::from(format!("request body: {e}")));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .and_then(|t| t.strip_prefix("DynamoDB_20120810."))
        .map(str::to_owned);
    // Read only when a table could be CREATING or is being created.
    let watched = |op: &str| op == "CreateTable" || !front.creating.lock().unwrap_or_else(PoisonError::into_inner).is_empty();
    let request_json: Option<Value> =
        operation.as_deref().filter(|op| watched(op)).and_then(|_| serde_json::from_slice(&body).ok());
    if let (Some(op), Some(json)) = (operation.as_deref(), &request_json)
        && let Some(table) = front.first_creating(tables_of(op, json))
    {
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        return match op {
            "DeleteTable" | "UpdateTable" => refuse(
                content_type,
                "ResourceInUseException",
                format!("Attempt to change a resource which is still in use: Table is being created: {table}"),
            ),
            // DynamoDB's item-level wording (dynoxide's too, for a table
            // that does not exist).
            _ => refuse(content_type, "ResourceNotFoundException", "Requested resource not found".to_owned()),
        };
    }

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{}{path}", front.upstream).parse() {
        Ok(uri) => uri,
        Err(e) => return bad_gateway(format!("upstream URI: {e}")),
    };
    let answer = match front.client.request(hyper::Request::from_parts(parts, Full::new(body))).await {
        Ok(answer) => answer,
        Err(e) => return bad_gateway(format!("dynoxide: {e}")),
    };
    let (answer_parts, answer_body) = answer.into_parts();
    let answer_body = match answer_body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_gateway(format!("dynoxide's answer: {e}")),
    };
    if let (Some(op), Some(json), true) = (operation.as_deref(), &request_json, answer_parts.status.is_success()) {
        let table = json.get("TableName").and_then(Value::as_str);
        match (op, table) {
            ("CreateTable", Some(table)) if !front.window.is_zero() => {
                let active_at = Instant::now() + front.window;
                front.creating.lock().unwrap_or_else(PoisonError::into_inner).insert(table.to_owned(), active_at);
            }
            ("DescribeTable", Some(table)) if front.first_creating([table]).is_some() => {
                if let Some(creating) = still_creating(&answer_body) {
                    return set_body(Response::from_parts(answer_parts, Body::empty()), creating);
                }
            }
            _ => {}
        }
    }
    Response::from_parts(answer_parts, Body::from(answer_body))
}

/// A DescribeTable answer with the table and its indexes CREATING.
fn still_creating(answer: &[u8]) -> Option<Bytes> {
    let mut json: Value = serde_json::from_slice(answer).ok()?;
    let table = json.get_mut("Table")?.as_object_mut()?;
    table.insert("TableStatus".to_owned(), Value::from("CREATING"));
    for index in table.get_mut("GlobalSecondaryIndexes").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(index) = index.as_object_mut() {
            index.insert("IndexStatus".to_owned(), Value::from("CREATING"));
        }
    }
    serde_json::to_vec(&json).ok().map(Bytes::from)
}

fn bad_gateway(message: String) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_names_the_tables_dynamodb_checks() {
        let json = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        assert_eq!(tables_of("PutItem", &json(r#"{"TableName":"a","Item":{}}"#)), ["a"]);
        assert_eq!(tables_of("DeleteTable", &json(r#"{"TableName":"a"}"#)), ["a"]);
        let request = json(r#"{"RequestItems":{"a":[],"b":[]}}"#);
        let mut batch = tables_of("BatchWriteItem", &request);
        batch.sort_unstable();
        assert_eq!(batch, ["a", "b"]);
        let transact = json(
            r#"{"TransactItems":[{"Put":{"TableName":"a"}},{"Update":{"TableName":"b"}},{"ConditionCheck":{"TableName":"c"}},{"Delete":{"TableName":"d"}}]}"#,
        );
        assert_eq!(tables_of("TransactWriteItems", &transact), ["a", "b", "c", "d"]);
        assert_eq!(tables_of("TransactGetItems", &json(r#"{"TransactItems":[{"Get":{"TableName":"a"}}]}"#)), ["a"]);
        // Asking about a table, or listing them, is answered while it is CREATING.
        assert!(tables_of("DescribeTable", &json(r#"{"TableName":"a"}"#)).is_empty());
        assert!(tables_of("ListTables", &json("{}")).is_empty());
    }

    /// A body rewritten or made here carries its own length and checksum,
    /// as dynoxide's and DynamoDB's do (botocore refuses an answer whose
    /// `x-amz-crc32` does not match its body).
    #[test]
    fn an_answer_made_here_carries_its_length_and_checksum() {
        let response = refuse(None, "ResourceNotFoundException", "Requested resource not found".to_owned());
        let headers = response.headers().clone();
        let body = futures_body(response);
        assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string());
        assert_eq!(headers["x-amz-crc32"], crc32fast::hash(&body).to_string());
        assert_eq!(headers[header::CONTENT_TYPE], "application/x-amz-json-1.0");
        let stale = Response::builder()
            .header("x-amz-crc32", "1")
            .header(header::CONTENT_LENGTH, "3")
            .body(Body::empty())
            .expect("response");
        let response = set_body(stale, Bytes::from_static(b"{\"Table\":{}}"));
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "12");
        assert_eq!(response.headers()["x-amz-crc32"], crc32fast::hash(b"{\"Table\":{}}").to_string());
    }

    /// A response's whole body.
    fn futures_body(response: Response) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(async { response.into_body().collect().await.expect("body").to_bytes() })
    }

    #[test]
    fn a_description_says_creating_for_the_table_and_its_indexes() {
        let answer = br#"{"Table":{"TableName":"a","TableStatus":"ACTIVE","GlobalSecondaryIndexes":[{"IndexName":"i","IndexStatus":"ACTIVE"}]}}"#;
        let json: Value = serde_json::from_slice(&still_creating(answer).expect("rewritten")).expect("json");
        assert_eq!(json["Table"]["TableStatus"], "CREATING");
        assert_eq!(json["Table"]["GlobalSecondaryIndexes"][0]["IndexStatus"], "CREATING");
        assert_eq!(json["Table"]["TableName"], "a");
        assert!(still_creating(b"not json").is_none());
    }
}
