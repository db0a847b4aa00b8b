//! One listener in front of one upstream: accepts HTTP/1.1 connections, applies the
//! active rules to each request and forwards the rest unchanged.
//!
//! Bodies are collected whole (AWS requests and answers are at most a few MiB), which
//! keeps forwarding byte-exact and lets the operation be read from a form body.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::aws::{self, AwsError, Target};
use crate::rules::{self, Active, Fault, InvalidRule, Rule};
use crate::stats::{Event, Stats};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running proxy. Dropping it stops the listener and every connection it holds.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Swapped whole, so a request sees either the old rule set or the new one.
    rules: RwLock<Arc<Active>>,
    stats: Mutex<Stats>,
}

impl Proxy {
    /// Binds `listen` (e.g. 127.0.0.1:0) and forwards every request to `upstream`
    /// (e.g. "http://127.0.0.1:4566"; plain HTTP only, any path in it is ignored).
    pub async fn start(listen: SocketAddr, upstream: &str) -> io::Result<Proxy> {
        let upstream: Uri = upstream.parse().map_err(|e| invalid(format!("upstream {upstream:?}: {e}")))?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(invalid(format!("upstream {upstream} must be http://host:port")));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            rules: RwLock::new(Arc::new(Active::default())),
            stats: Mutex::new(Stats::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Proxy { addr, shared, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give a client as its endpoint, e.g. "http://127.0.0.1:41234".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream every request not faulted goes to.
    pub fn upstream(&self) -> String {
        self.shared.upstream.to_string()
    }

    /// Replaces the active rules at once, or leaves them as they were if any is invalid.
    pub fn set_rules(&self, rules: Vec<Rule>) -> Result<(), InvalidRule> {
        rules::validate(&rules)?;
        info!(proxy = %self.addr, rules = rules.len(), "Fault rules replaced");
        *self.shared.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Active::new(rules));
        Ok(())
    }

    /// The active rules.
    pub fn rules(&self) -> Vec<Rule> {
        self.shared.rules().rules().to_vec()
    }

    /// No more faults. Requests already held by a black hole stay held until their client gives up.
    pub fn clear(&self) {
        info!(proxy = %self.addr, "Fault rules cleared");
        *self.shared.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Active::default());
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so aborting it aborts them too.
        self.accept.abort();
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    // Usually out of file descriptors: wait for some to be released.
                    warn!(error = %error, "Accept failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream { stream, reset: Arc::clone(&reset) });
    let service = service_fn(move |request| handle(Arc::clone(&shared), Arc::clone(&reset), request));
    // hyper notices a client that hangs up while its request is in flight and drops the
    // handler, which is how a black-holed request ends.
    if let Err(error) = http1::Builder::new().serve_connection(io, service).await {
        debug!(error = %error, "Proxy connection ended");
    }
}

async fn handle(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let Target { service, operation } = aws::identify(&parts.headers, parts.uri.query(), &body);
    let _held = Held::enter(&shared, &operation);
    let rules = shared.rules();
    let fault = rules.pick(&operation);
    if let Some(fault) = fault {
        shared.record(&operation, Event::Fault(fault.kind()));
    }
    match fault {
        None => {}
        Some(Fault::Latency { millis }) => tokio::time::sleep(Duration::from_millis(*millis)).await,
        Some(Fault::LateAnswer { millis }) => {
            // Its own task: the upstream gets the request even if the client
            // hangs up while the answer is held.
            let (held, millis) = (Arc::clone(&shared), *millis);
            let forwarded = tokio::spawn(async move { held.forward(parts, body, &operation).await });
            tokio::time::sleep(Duration::from_millis(millis)).await;
            return Ok(forwarded.await?);
        }
        Some(Fault::Throttle) => return Ok(aws::error_response(service, &service.throttle(&operation))),
        Some(Fault::ServerError) => return Ok(aws::error_response(service, &service.server_error(&operation))),
        Some(Fault::Error { status, code, message, extra }) => {
            let error = AwsError {
                status: StatusCode::from_u16(*status)?,
                code: code.clone(),
                message: if message.is_empty() { code.clone() } else { message.clone() },
                extra: extra.as_ref().and_then(|e| e.as_object().cloned()),
            };
            return Ok(aws::error_response(service, &error));
        }
        Some(Fault::Reset) => {
            reset.store(true, Ordering::Relaxed);
            return Err("reset fault".into());
        }
        Some(Fault::BlackHole) => return std::future::pending().await,
    }
    Ok(shared.forward(parts, body, &operation).await)
}

/// One request counted in flight until it is answered or dropped (its
/// client gave up).
struct Held {
    shared: Arc<Shared>,
    operation: String,
}

impl Held {
    fn enter(shared: &Arc<Shared>, operation: &str) -> Held {
        shared.stats.lock().unwrap_or_else(PoisonError::into_inner).enter(operation);
        Held { shared: Arc::clone(shared), operation: operation.to_owned() }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.stats.lock().unwrap_or_else(PoisonError::into_inner).leave(&self.operation);
    }
}

impl Shared {
    fn rules(&self) -> Arc<Active> {
        Arc::clone(&self.rules.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn record(&self, operation: &str, event: Event) {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).record(operation, event);
    }

    async fn forward(&self, parts: hyper::http::request::Parts, body: Bytes, operation: &str) -> Response<Full<Bytes>> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut uri = Uri::builder().scheme("http").path_and_query(path);
        if let Some(authority) = self.upstream.authority() {
            uri = uri.authority(authority.clone());
        }
        let uri = match uri.build() {
            Ok(uri) => uri,
            Err(error) => return bad_gateway(&format!("cannot address upstream: {error}")),
        };
        let mut request = Request::from_parts(parts, Full::new(body));
        *request.uri_mut() = uri;
        // Server-side extensions (upgrade handles) mean nothing to the client side.
        request.extensions_mut().clear();
        self.record(operation, Event::Forwarded);
        let answer = match self.client.request(request).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                body.collect().await.map(|b| Response::from_parts(parts, Full::new(b.to_bytes()))).map_err(BoxError::from)
            }
            Err(error) => Err(error.into()),
        };
        answer.unwrap_or_else(|error| {
            warn!(upstream = %self.upstream, operation, error = %error, "Upstream request failed");
            self.record(operation, Event::UpstreamError);
            bad_gateway(&format!("upstream {} failed: {error}", self.upstream))
        })
    }
}

/// Not an AWS shape on purpose: it is the test harness that is broken, not the service.
fn bad_gateway(message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("faultproxy: {message}\n"))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A TCP stream that, once flagged, closes with SO_LINGER 0 so the client sees a reset
/// rather than an orderly end of stream.
struct ResettableStream {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
