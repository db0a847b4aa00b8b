//! The PostgreSQL-wire transport of the Redshift sink: Redshift clusters
//! speak the PostgreSQL protocol (port 5439), and so does PostgreSQL, which
//! runs the same SQL in the tests.
//!
//! Owns: the connection (TLS as the URL's `sslmode` says, with libpq's
//! meanings: `tls.rs`), reconnecting after a failure, running one batch of
//! statements as one transaction, and the time a call may take (connecting
//! included): a server that stops answering (a network that drops the
//! packets, a cluster that hangs) fails the call, and the connection is
//! dropped and made again at the next call, instead of waiting out TCP's
//! retransmissions. Must not: build SQL (`sql` does) or log the URL (it
//! may hold a password).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server refused a statement (its SQLSTATE and message); the
    /// transaction was rolled back.
    #[error("statement failed ({code}): {message}")]
    Statement {
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// The connection failed; the next call reconnects.
    #[error("connection failed: {0}")]
    Connection(String),
    /// Given up, or not sent, at the end of a shutdown's grace period
    /// ([`PgTransport::cut_by`]); not retried.
    #[error("{0}")]
    Cut(String),
}

impl PgError {
    /// Whether the same batch may succeed later (connection trouble,
    /// serialization failures, deadlocks, the server shutting down, and a
    /// unique violation: another flush inserted the same new key first, and
    /// the retry compares versions with it).
    pub fn retryable(&self) -> bool {
        match self {
            PgError::Connection(_) => true,
            PgError::Cut(_) => false,
            PgError::Statement { code, .. } => {
                code.starts_with("08") || code.starts_with("57") || code == "40001" || code == "40P01" || code == "23505"
            }
        }
    }
}

impl PgError {
    /// Whether the server refused the data of a row (SQLSTATE class 22, a
    /// data exception, or 23, an integrity violation other than a racing
    /// insert), not the statement, the table or the connection.
    pub fn row_level(&self) -> bool {
        match self {
            PgError::Connection(_) | PgError::Cut(_) => false,
            PgError::Statement { code, .. } => code.starts_with("22") || (code.starts_with("23") && code != "23505"),
        }
    }
}

fn classify(e: tokio_postgres::Error) -> PgError {
    match e.as_db_error() {
        Some(db) => PgError::Statement { code: db.code().code().to_owned(), message: db.message().to_owned() },
        // With its causes: "error performing TLS handshake: invalid peer
        // certificate: UnknownIssuer" says what to fix.
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            PgError::Connection(text)
        }
    }
}

/// A connection that reconnects on the next call after it failed.
#[derive(Clone)]
pub struct PgTransport {
    config: tokio_postgres::Config,
    /// The TLS connector of the URL's `sslmode`; none for `disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: Arc<Mutex<Option<Live>>>,
    /// How long one call may take, its connection included.
    timeout: Duration,
    /// Cancelled when a shutdown's grace period is over (never, by
    /// default): the batch under way is cancelled on the server (a
    /// backend waiting on a lock does not see its client's connection
    /// close), and none is sent after it.
    cut: CancellationToken,
}

/// The TCP connect's own limit (within the call's): the server's port
/// answers at once or not at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection's I/O, driven by whoever uses the client: no task of its
/// own, so nothing outside topology spawns.
type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// A connected client and the future that drives its connection.
struct Live {
    client: Client,
    driver: Driver,
}

impl Live {
    /// Runs `op` on the client while driving the connection; a connection
    /// that ends first is a connection error.
    async fn run<'a, T, F>(&'a mut self, op: impl FnOnce(&'a mut Client) -> F) -> Result<T, PgError>
    where
        F: Future<Output = Result<T, PgError>> + 'a,
    {
        let Live { client, driver } = self;
        tokio::select! {
            r = op(client) => r,
            end = driver => Err(PgError::Connection(match end {
                Ok(()) => "the server closed the connection".to_owned(),
                Err(e) => e.to_string(),
            })),
        }
    }
}

impl std::fmt::Debug for PgTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTransport")
    }
}

impl PgTransport {
    /// A transport on `url` (`postgres://user[:password]@host:port/db[?sslmode=require]`)
    /// that connects on first use: a server that is down at start is an
    /// outage like any other.
    /// Each call (a batch, a statement, a query) fails after `timeout`,
    /// connecting included (`sinks.redshift.statement_timeout_ms`).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, PgError> {
        let parsed = super::tls::parse(url).map_err(|e| PgError::Connection(e.to_string()))?;
        let tls = super::tls::client_config(parsed.mode, &parsed.root_cert)
            .map_err(|e| PgError::Connection(e.to_string()))?
            .map(tokio_postgres_rustls::MakeRustlsConnect::new);
        let mut config = parsed.config;
        config.connect_timeout(CONNECT_TIMEOUT.min(timeout));
        Ok(PgTransport { config, tls, client: Arc::new(Mutex::new(None)), timeout, cut: CancellationToken::new() })
    }

    /// The same transport, cut off by `cut` (see the field).
    pub fn cut_by(self, cut: CancellationToken) -> Self {
        PgTransport { cut, ..self }
    }

    /// Whether it was cut off.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Gives the batch under way up at the cut: its query is cancelled on
    /// the server (within [`crate::aws::AFTER_STOP`]), and its connection
    /// is dropped by the caller (so the transaction rolls back).
    async fn cut_off(&self, cancel: tokio_postgres::CancelToken) -> PgError {
        let asked = match &self.tls {
            None => tokio::time::timeout(crate::aws::AFTER_STOP, cancel.cancel_query(tokio_postgres::NoTls)).await,
            Some(tls) => tokio::time::timeout(crate::aws::AFTER_STOP, cancel.cancel_query(tls.clone())).await,
        };
        let outcome = match asked {
            Ok(Ok(())) => "cancelled".to_owned(),
            Ok(Err(e)) => format!("its cancel failed: {e}"),
            Err(_) => format!("its cancel got no answer within {} ms", crate::aws::AFTER_STOP.as_millis()),
        };
        PgError::Cut(format!("batch given up at the end of the grace period; {outcome}"))
    }

    /// [`PgTransport::new`], connected now.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, PgError> {
        let t = Self::new(url, timeout)?;
        let mut guard = t.client.lock().await;
        *guard = Some(t.within_timeout(t.open()).await?);
        drop(guard);
        Ok(t)
    }

    /// `call`, failed as a connection error if it takes longer than the
    /// transport's timeout.
    async fn within_timeout<T>(&self, call: impl Future<Output = Result<T, PgError>>) -> Result<T, PgError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Connection(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    async fn open(&self) -> Result<Live, PgError> {
        // `sslmode=disable`: plain. Otherwise the connector of the mode;
        // tokio-postgres falls back to plain for `prefer` when the server
        // offers no TLS.
        let mut live = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.map_err(classify)?;
                Live { client, driver: Box::pin(conn) }
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(classify)?;
                Live { client, driver: Box::pin(conn) }
            }
        };
        // The server ends a statement after the same time as this side
        // gives up on it: a connection dropped on a timeout does not leave
        // its statement running there (holding the table's lock, which the
        // retry would queue behind).
        // Refused, it is the connection's failure, not a row's (the
        // flush would split its batch for it).
        let set = format!("SET statement_timeout TO {}", self.timeout.as_millis());
        live.run(|client| async move { client.batch_execute(&set).await.map_err(classify) })
            .await
            .map_err(|e| PgError::Connection(format!("setting statement_timeout: {e}")))?;
        Ok(live)
    }

    /// The live connection, reconnecting if the last one failed.
    async fn live<'a>(&self, slot: &'a mut Option<Live>) -> Result<&'a mut Live, PgError> {
        if slot.as_ref().is_none_or(|l| l.client.is_closed()) {
            *slot = Some(self.open().await?);
        }
        slot.as_mut().ok_or_else(|| PgError::Connection("no connection".into()))
    }

    /// Runs `statements` in one transaction: all commit or none.
    /// A connection that failed or ran out of time is dropped (a
    /// transaction it had open is rolled back by the server when it sees
    /// the connection end; one whose commit was sent may have committed,
    /// which the mirror's version checks make harmless when the batch runs
    /// again).
    /// At the cut, the batch under way is cancelled and none is sent.
    pub async fn run_batch(&self, statements: &[String]) -> Result<(), PgError> {
        if self.cut.is_cancelled() {
            return Err(PgError::Cut("not sent: the grace period is over".into()));
        }
        let mut slot = self.client.lock().await;
        let result = self
            .within_timeout(async {
                let live = self.live(&mut slot).await?;
                let cancel = live.client.cancel_token();
                let batch = live.run(|client| async move {
                    let tx = client.transaction().await.map_err(classify)?;
                    for s in statements {
                        tx.batch_execute(s).await.map_err(classify)?;
                    }
                    tx.commit().await.map_err(classify)
                });
                tokio::select! {
                    result = batch => result,
                    () = self.cut.cancelled() => Err(self.cut_off(cancel).await),
                }
            })
            .await;
        if matches!(result, Err(PgError::Connection(_) | PgError::Cut(_))) {
            *slot = None;
        }
        result
    }

    /// Runs one statement outside a batch (DDL).
    pub async fn execute(&self, statement: &str) -> Result<(), PgError> {
        let mut slot = self.client.lock().await;
        let result = self
            .within_timeout(async {
                let live = self.live(&mut slot).await?;
                live.run(|client| async move { client.batch_execute(statement).await.map_err(classify) }).await
            })
            .await;
        if matches!(result, Err(PgError::Connection(_))) {
            *slot = None;
        }
        result
    }

    /// Rows of `query` as text columns (for checks and tests).
    pub async fn query_text(&self, query: &str) -> Result<Vec<Vec<String>>, PgError> {
        let mut slot = self.client.lock().await;
        let rows = self
            .within_timeout(async {
                let live = self.live(&mut slot).await?;
                live.run(|client| async move { client.simple_query(query).await.map_err(classify) }).await
            })
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                if matches!(e, PgError::Connection(_)) {
                    *slot = None;
                }
                return Err(e);
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
                }
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::time::Instant;

    use super::*;

    /// A server that takes connections and never answers (a cluster that
    /// hangs, a network that drops packets once connected): each call
    /// fails within the transport's timeout as a connection error, which
    /// the mirror retries, and the next call connects again.
    #[tokio::test]
    async fn a_server_that_never_answers_fails_each_call_within_the_timeout_and_is_connected_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = listener.accept().await {
                    accepted.fetch_add(1, Relaxed);
                    held.push(conn);
                }
            }
        });
        let t = PgTransport::new(&format!("postgres://u@{addr}/db?sslmode=disable"), Duration::from_millis(300))
            .expect("a transport");
        for call in 1..=2 {
            let started = Instant::now();
            let r = match call {
                1 => tokio::time::timeout(Duration::from_secs(10), t.run_batch(&["SELECT 1".to_owned()])).await,
                _ => tokio::time::timeout(Duration::from_secs(10), t.execute("SELECT 1")).await,
            };
            let r = r.expect("ends within the transport's timeout, not TCP's");
            assert!(matches!(&r, Err(PgError::Connection(m)) if m == "no answer within 300 ms"), "{r:?}");
            assert!(r.is_err_and(|e| e.retryable()));
            assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
            assert_eq!(accepted.load(Relaxed), call, "each call connects again");
        }
        server.abort();
    }
}
