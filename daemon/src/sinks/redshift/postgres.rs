//! The PostgreSQL-wire transport of the Redshift sink: Redshift clusters
//! speak the PostgreSQL protocol (port 5439), and so does PostgreSQL, which
//! runs the same SQL in the tests.
//!
//! Owns: the connection (TLS as the URL's `sslmode` says, with libpq's
//! meanings: `tls.rs`), reconnecting after a failure, and running one
//! batch of statements as one transaction. Must not: build SQL (`sql`
//! does) or log the URL (it may hold a password).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::Client;

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
}

impl PgError {
    /// Whether the same batch may succeed later (connection trouble,
    /// serialization failures, deadlocks, the server shutting down, and a
    /// unique violation: another flush inserted the same new key first, and
    /// the retry compares versions with it).
    pub fn retryable(&self) -> bool {
        match self {
            PgError::Connection(_) => true,
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
            PgError::Connection(_) => false,
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
}

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
    pub fn new(url: &str) -> Result<Self, PgError> {
        let parsed = super::tls::parse(url).map_err(|e| PgError::Connection(e.to_string()))?;
        let tls = super::tls::client_config(parsed.mode, &parsed.root_cert)
            .map_err(|e| PgError::Connection(e.to_string()))?
            .map(tokio_postgres_rustls::MakeRustlsConnect::new);
        Ok(PgTransport { config: parsed.config, tls, client: Arc::new(Mutex::new(None)) })
    }

    /// [`PgTransport::new`], connected now.
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let t = Self::new(url)?;
        let mut guard = t.client.lock().await;
        *guard = Some(t.open().await?);
        drop(guard);
        Ok(t)
    }

    async fn open(&self) -> Result<Live, PgError> {
        // `sslmode=disable`: plain. Otherwise the connector of the mode;
        // tokio-postgres falls back to plain for `prefer` when the server
        // offers no TLS.
        let Some(tls) = &self.tls else {
            let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.map_err(classify)?;
            return Ok(Live { client, driver: Box::pin(conn) });
        };
        let (client, conn) = self.config.connect(tls.clone()).await.map_err(classify)?;
        Ok(Live { client, driver: Box::pin(conn) })
    }

    /// The live connection, reconnecting if the last one failed.
    async fn live<'a>(&self, slot: &'a mut Option<Live>) -> Result<&'a mut Live, PgError> {
        if slot.as_ref().is_none_or(|l| l.client.is_closed()) {
            *slot = Some(self.open().await?);
        }
        slot.as_mut().ok_or_else(|| PgError::Connection("no connection".into()))
    }

    /// Runs `statements` in one transaction: all commit or none.
    pub async fn run_batch(&self, statements: &[String]) -> Result<(), PgError> {
        let mut slot = self.client.lock().await;
        let result = async {
            let live = self.live(&mut slot).await?;
            live.run(|client| async move {
                let tx = client.transaction().await.map_err(classify)?;
                for s in statements {
                    tx.batch_execute(s).await.map_err(classify)?;
                }
                tx.commit().await.map_err(classify)
            })
            .await
        }
        .await;
        if matches!(result, Err(PgError::Connection(_))) {
            *slot = None;
        }
        result
    }

    /// Runs one statement outside a batch (DDL).
    pub async fn execute(&self, statement: &str) -> Result<(), PgError> {
        let mut slot = self.client.lock().await;
        let result = async {
            let live = self.live(&mut slot).await?;
            live.run(|client| async move { client.batch_execute(statement).await.map_err(classify) }).await
        }
        .await;
        if matches!(result, Err(PgError::Connection(_))) {
            *slot = None;
        }
        result
    }

    /// Rows of `query` as text columns (for checks and tests).
    pub async fn query_text(&self, query: &str) -> Result<Vec<Vec<String>>, PgError> {
        let mut slot = self.client.lock().await;
        let live = self.live(&mut slot).await?;
        let rows = live.run(|client| async move { client.simple_query(query).await.map_err(classify) }).await?;
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
