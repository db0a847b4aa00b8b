//! The control API of `cafe-faultproxy`: switches faults on and off while the client under
//! test runs, and reports what fired. HTTP/1.1 and JSON, meant for loopback only: it has
//! no authentication.
//!
//! - `PUT /proxies/{name}/rules` with a JSON array of [`Rule`] replaces that proxy's rules
//! - `DELETE /proxies/{name}/rules` clears them; `GET /proxies/{name}/rules` lists them
//! - `GET /proxies/{name}/stats` gives its [`crate::Stats`]; `GET /stats` those of every proxy
//!
//! Every error is a JSON `{"error": "..."}` with a 4xx status; a bad body never panics.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::{Proxy, Rule};

/// The proxies the control API manages, by name.
pub type Proxies = BTreeMap<String, Proxy>;

/// Rule lists are small; anything bigger is a mistake, not a rule set.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Answers one control request. Synchronous and free of I/O so tests can call it directly.
pub fn route(proxies: &Proxies, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["stats"]) => {
            let all: BTreeMap<&str, _> = proxies.iter().map(|(name, proxy)| (name.as_str(), proxy.stats())).collect();
            reply(StatusCode::OK, &all)
        }
        (_, ["proxies", name, resource]) => {
            let Some(proxy) = proxies.get(*name) else {
                return error(StatusCode::NOT_FOUND, &format!("no proxy named {name:?}"));
            };
            match (method, *resource) {
                (&Method::PUT, "rules") => match serde_json::from_slice::<Vec<Rule>>(body) {
                    Err(e) => error(StatusCode::BAD_REQUEST, &format!("body is not a JSON array of rules: {e}")),
                    Ok(rules) => {
                        let count = rules.len();
                        match proxy.set_rules(rules) {
                            Ok(()) => reply(StatusCode::OK, &json!({ "rules": count })),
                            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
                        }
                    }
                },
                (&Method::DELETE, "rules") => {
                    proxy.clear();
                    reply(StatusCode::OK, &json!({ "rules": 0 }))
                }
                (&Method::GET, "rules") => reply(StatusCode::OK, &proxy.rules()),
                (&Method::GET, "stats") => reply(StatusCode::OK, &proxy.stats()),
                (_, "rules" | "stats") => error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} is not allowed on {path}")),
                _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
            }
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    }
}

/// Serves the control API on `listener` until the returned future is dropped.
pub async fn serve_control(listener: TcpListener, proxies: Arc<Proxies>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "Control accept failed, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxies = Arc::clone(&proxies);
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let proxies = Arc::clone(&proxies);
            async move {
                let (parts, body) = request.into_parts();
                let response = match Limited::new(body, MAX_BODY_BYTES).collect().await {
                    Ok(body) => route(&proxies, &parts.method, parts.uri.path(), &body.to_bytes()),
                    Err(e) => error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(error = %e, "Control connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    // Serialising these plain structs cannot fail; the fallback keeps that claim out of a panic.
    let body = serde_json::to_vec(value).unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string().into_bytes());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &json!({ "error": message }))
}
