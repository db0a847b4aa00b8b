//! Integration tests: the proxy in front of a tiny echoing upstream, driven by a raw
//! HTTP client, by the AWS SDKs, and through the control API. No moto needed.

mod binary;
mod control;
mod faults;
mod sdk;

use std::net::SocketAddr;

use bytes::Bytes;
use faultproxy::{Fault, Proxy, Rule};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestClient = Client<HttpConnector, Full<Bytes>>;

/// Starts an upstream that answers 201 with what it received (request line, then body)
/// and echoes a few headers back as `x-echo-*`, so a test sees exactly what was forwarded.
async fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(echo)));
        }
    });
    format!("http://{addr}")
}

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let mut echoed = format!("{} {}\n", parts.method, parts.uri).into_bytes();
    echoed.extend_from_slice(&body.collect().await?.to_bytes());
    let mut response = Response::builder().status(201).header("x-upstream", "echo");
    for name in ["host", "authorization", "x-amz-target"] {
        if let Some(value) = parts.headers.get(name) {
            response = response.header(format!("x-echo-{name}"), value);
        }
    }
    Ok(response.body(Full::new(Bytes::from(echoed))).expect("valid response"))
}

async fn proxy_to_echo() -> Proxy {
    let upstream = echo_upstream().await;
    Proxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), &upstream).await.expect("start proxy")
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn rule(operation: Option<&str>, probability: f64, fault: Fault) -> Rule {
    Rule { operation: operation.map(str::to_owned), probability, fault }
}

/// A POST in the AWS JSON protocol (`target` like "DynamoDB_20120810.GetItem"), or a form
/// POST when `target` is None.
async fn send(
    client: &TestClient,
    proxy: &Proxy,
    target: Option<&str>,
    body: &str,
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    let mut request = Request::post(format!("{}/a/path?x=1", proxy.url()))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/dynamodb/aws4_request, Signature=abc");
    request = match target {
        Some(target) => request.header("x-amz-target", target).header("content-type", "application/x-amz-json-1.0"),
        None => request.header("content-type", "application/x-www-form-urlencoded"),
    };
    let response = client.request(request.body(Full::new(Bytes::from(body.to_owned())))?).await?;
    let (parts, body) = response.into_parts();
    Ok((parts.status, parts.headers, body.collect().await?.to_bytes()))
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}
