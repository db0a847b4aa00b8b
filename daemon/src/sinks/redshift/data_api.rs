//! The Redshift Data API transport: statements go over HTTPS to the AWS
//! API (no network path to the cluster, no connection to keep), with IAM
//! or Secrets Manager credentials.
//!
//! Owns: submitting a batch (ExecuteStatement for one statement,
//! BatchExecuteStatement, which runs its statements as one transaction, for
//! several), polling DescribeStatement with backoff until the batch ends,
//! and turning FAILED and ABORTED into errors with the server's message.
//! Must not: build SQL (`sql` does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_redshiftdata::Client;
use aws_sdk_redshiftdata::config::http::HttpResponse;
use aws_sdk_redshiftdata::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_redshiftdata::types::StatusString;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::BatchError;
use crate::aws::{ErrorClass, classify, describe};
use crate::config::RedshiftSinkConfig;
use crate::internal_events::{InternalEvent, Sink, SinkRequest, SinkRequestOutcome};
use crate::metrics::Metrics;

/// Statement name shown in the cluster's query history.
const STATEMENT_NAME: &str = "cafe-streamd-flush";

/// How long a submit under way at the cut may still take, for its
/// statement's id (then its cancel, within [`crate::aws::AFTER_STOP`]).
const SUBMIT_AFTER_CUT: Duration = Duration::from_secs(1);

/// A Data API target: a cluster or a serverless workgroup, and a database.
#[derive(Debug, Clone)]
pub struct DataApiTransport {
    client: Client,
    config: RedshiftSinkConfig,
    /// Where a failed poll is counted as a retried Redshift request
    /// (`run`; logged only without); the sink's component is left to the
    /// flush's outcome.
    metrics: Option<Arc<Metrics>>,
    /// Cancelled when a shutdown's grace period is over (never, by
    /// default): no batch is sent from then on, and the statement being
    /// waited for is cancelled at once rather than left running on the
    /// cluster after the daemon exits.
    cut: CancellationToken,
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Errors worth retrying as a whole batch: Redshift's serializable
/// isolation violation (another flush touched the same rows), a key
/// collision, and connection or capacity trouble on the cluster.
fn retryable_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["serializable isolation violation", "duplicate key", "connection", "timeout", "timed out", "restart", "capacity", "throttl"]
        .iter()
        .any(|k| m.contains(k))
}

/// Whether a FAILED statement's message says the server refused a row's
/// data rather than the statement, the table or the session. The Data API
/// gives no SQLSTATE, only the server's text, so this reads the wording of
/// PostgreSQL's and Redshift's data exceptions (class 22) and integrity
/// violations (class 23 but a racing insert). A wrong guess costs little:
/// the flush sets a row aside only when other rows of its group were
/// written (see `RedshiftSink::write_isolating`).
fn row_level_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of range",
        "invalid input syntax",
        "value too long",
        "numeric field overflow",
        "overflow for numeric",
        "invalid byte sequence",
        "invalid character",
        "multibyte character",
        "division by zero",
        "violates not-null constraint",
        "violates check constraint",
        "cannot be null",
    ]
    .iter()
    .any(|k| m.contains(k))
}

impl DataApiTransport {
    /// A transport on the configured target; `metrics` counts its failed
    /// polls (`cafe_sink_requests_total{sink="redshift",outcome="retry"}`).
    pub fn new(client: Client, config: RedshiftSinkConfig, metrics: Option<Arc<Metrics>>) -> Self {
        DataApiTransport { client, config, metrics, cut: CancellationToken::new() }
    }

    /// The same transport, cut off by `cut` (see the field).
    pub fn cut_by(self, cut: CancellationToken) -> Self {
        DataApiTransport { cut, ..self }
    }

    /// Whether it was cut off.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Runs `statements` as one transaction and waits for the outcome.
    pub async fn run_batch(&self, statements: &[String]) -> Result<(), BatchError> {
        if self.cut.is_cancelled() {
            return Err(BatchError { retryable: false, row_level: false, message: "not sent: the grace period is over".into() });
        }
        let c = &self.config;
        // The target and the statement's name, on either request's builder.
        macro_rules! on_target {
            ($request:expr) => {
                $request
                    .set_cluster_identifier(opt(&c.cluster_identifier))
                    .set_workgroup_name(opt(&c.workgroup_name))
                    .database(&c.database)
                    .set_db_user(opt(&c.db_user))
                    .set_secret_arn(opt(&c.secret_arn))
                    .statement_name(STATEMENT_NAME)
            };
        }
        fn refused<E: ProvideErrorMetadata + std::error::Error>(e: SdkError<E, HttpResponse>) -> BatchError {
            BatchError { retryable: classify(&e) != ErrorClass::Fatal, row_level: false, message: describe(&e) }
        }
        let submit = async {
            Ok::<_, BatchError>(if let [one] = statements {
                on_target!(self.client.execute_statement().sql(one)).send().await.map_err(refused)?.id.unwrap_or_default()
            } else {
                let sqls = Some(statements.to_vec());
                on_target!(self.client.batch_execute_statement().set_sqls(sqls))
                    .send()
                    .await
                    .map_err(refused)?
                    .id
                    .unwrap_or_default()
            })
        };
        let mut submit = std::pin::pin!(submit);
        // At the cut, a submit under way gets a second more for its
        // statement's id (to cancel it); past that the statement may run
        // on the cluster after the exit, and says so.
        let id = tokio::select! {
            biased;
            id = &mut submit => id?,
            () = self.cut.cancelled() => match tokio::time::timeout(SUBMIT_AFTER_CUT, &mut submit).await {
                Ok(id) => id?,
                Err(_) => {
                    warn!("A Redshift batch being submitted at the end of the grace period got no statement id in time; it may still run on the cluster");
                    return Err(BatchError {
                        retryable: false,
                        row_level: false,
                        message: "given up while being submitted at the end of the grace period".into(),
                    });
                }
            },
        };
        if id.is_empty() {
            return Err(BatchError {
                retryable: true,
                row_level: false,
                message: "the Data API returned no statement id".into(),
            });
        }
        self.wait(&id).await
    }

    /// Cancels statement `id`, best effort, within
    /// [`crate::aws::AFTER_STOP`]: what became of the cancel, for the
    /// batch's error.
    async fn cancel(&self, id: &str) -> String {
        match tokio::time::timeout(crate::aws::AFTER_STOP, self.client.cancel_statement().id(id).send()).await {
            Ok(Ok(_)) => "cancelled".to_owned(),
            Ok(Err(e)) => format!("its cancel failed: {}", describe(&e)),
            Err(_) => format!("its cancel got no answer within {} ms", crate::aws::AFTER_STOP.as_millis()),
        }
    }

    /// Gives statement `id` up at the cut: it is cancelled, within
    /// [`crate::aws::AFTER_STOP`] (the grace period is over), and not
    /// retried.
    async fn cut_off(&self, id: &str) -> BatchError {
        let cancelled = self.cancel(id).await;
        BatchError {
            retryable: false,
            row_level: false,
            message: format!("statement {id} given up at the end of the grace period; {cancelled}"),
        }
    }

    /// Polls DescribeStatement, doubling the delay from `first_poll_ms` up
    /// to `max_poll_ms` (jittered: a fleet's flushes do not poll in step),
    /// until the statement ends or `statement_timeout_ms` passes (then it
    /// is cancelled and reported retryable). A poll that fails is counted
    /// and made again, within the same time; past that time the statement
    /// is cancelled too: the batch is given up and sent again, and the
    /// statement must not go on running beside it, holding the mirror
    /// table's locks. At the cut it is cancelled at once ([`Self::cut_off`]).
    async fn wait(&self, id: &str) -> Result<(), BatchError> {
        let started = Instant::now();
        let backoff = crate::aws::Backoff {
            base: Duration::from_millis(self.config.first_poll_ms),
            max: Duration::from_millis(self.config.max_poll_ms),
        };
        let timeout = Duration::from_millis(self.config.statement_timeout_ms);
        let mut polls = 0;
        let mut failed = 0;
        loop {
            // No wait past the statement's time.
            let pause = backoff.delay(polls).min(timeout.saturating_sub(started.elapsed()));
            let polled = tokio::select! {
                biased;
                () = self.cut.cancelled() => None,
                polled = async {
                    tokio::time::sleep(pause).await;
                    self.client.describe_statement().id(id).send().await
                } => Some(polled),
            };
            let Some(polled) = polled else { return Err(self.cut_off(id).await) };
            polls += 1;
            let out = match polled {
                Ok(out) => out,
                Err(e) if classify(&e) != ErrorClass::Fatal && started.elapsed() < timeout => {
                    // Counted, not marked on the sink's component: the
                    // flush's outcome says whether the mirror works.
                    if let Some(m) = &self.metrics {
                        SinkRequest { sink: Sink::Redshift, outcome: SinkRequestOutcome::Retry }.emit(m);
                    }
                    warn!(statement = %id, error = %describe(&e), failed, "DescribeStatement failed; polling again");
                    failed += 1;
                    continue;
                }
                // Refused for good (access, credentials): not cancelled,
                // as nothing says it has not committed or will not; the
                // batch is sent again (the mirror's writes are idempotent).
                Err(e) if classify(&e) == ErrorClass::Fatal => {
                    return Err(BatchError { retryable: true, row_level: false, message: describe(&e) });
                }
                // Polls failing until the statement's time: it is given up,
                // so it is cancelled, as one seen still running then is.
                Err(e) => {
                    let message = format!("polling statement {id}: {}; {}", describe(&e), self.cancel(id).await);
                    return Err(BatchError { retryable: true, row_level: false, message });
                }
            };
            match out.status() {
                Some(StatusString::Finished) => return Ok(()),
                Some(StatusString::Failed) => {
                    let message = out.error().unwrap_or("FAILED with no error message").to_owned();
                    let retryable = retryable_message(&message);
                    return Err(BatchError { retryable, row_level: !retryable && row_level_message(&message), message });
                }
                Some(StatusString::Aborted) => {
                    return Err(BatchError { retryable: true, row_level: false, message: format!("statement {id} was aborted") });
                }
                _ if started.elapsed() >= timeout => {
                    let cancelled = self.cancel(id).await;
                    return Err(BatchError {
                        retryable: true,
                        row_level: false,
                        message: format!("statement {id} still running after {} ms; {cancelled}", timeout.as_millis()),
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A Data API whose statements never end: every operation it was
    /// asked for, in order, with when; a submit answered after a delay.
    #[derive(Debug, Clone, Default)]
    struct Running(Arc<Mutex<Vec<(String, Instant)>>>, Duration);

    impl Running {
        fn calls(&self, op: &str) -> Vec<Instant> {
            self.0.lock().expect("lock").iter().filter(|(o, _)| o == op).map(|(_, at)| *at).collect()
        }
    }

    impl aws_smithy_runtime_api::client::http::HttpConnector for Running {
        fn call(
            &self,
            request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            let op = request.headers().get("x-amz-target").unwrap_or("").trim_start_matches("RedshiftData.").to_owned();
            let (body, delay) = match op.as_str() {
                "ExecuteStatement" => (r#"{"Id":"s-1"}"#, self.1),
                "DescribeStatement" => (r#"{"Id":"s-1","Status":"STARTED"}"#, Duration::ZERO),
                _ => (r#"{"Status":true}"#, Duration::ZERO),
            };
            self.0.lock().expect("lock").push((op, Instant::now()));
            let response = aws_smithy_runtime_api::http::Response::new(
                200.try_into().expect("a status"),
                aws_smithy_types::body::SdkBody::from(body),
            );
            aws_smithy_runtime_api::client::http::HttpConnectorFuture::new(async move {
                tokio::time::sleep(delay).await;
                Ok(response)
            })
        }
    }

    fn transport(api: &Running, config: RedshiftSinkConfig) -> DataApiTransport {
        let sdk = crate::sinks::in_process_sdk_config(api.clone());
        let config = RedshiftSinkConfig { cluster_identifier: "c".into(), database: "d".into(), ..config };
        DataApiTransport::new(Client::new(&sdk), config, None)
    }

    /// A poll's wait stops at the statement's time: with waits of up to a
    /// minute and a statement of one second, the statement still running
    /// is given up (and cancelled) after about a second, not a minute.
    #[tokio::test]
    async fn no_wait_between_polls_goes_past_the_statements_time() {
        let api = Running::default();
        let config = RedshiftSinkConfig {
            first_poll_ms: 60_000,
            max_poll_ms: 60_000,
            statement_timeout_ms: 1_000,
            ..RedshiftSinkConfig::default()
        };
        let started = Instant::now();
        let e = transport(&api, config).run_batch(&["SELECT 1".to_owned()]).await.expect_err("never ends");
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "gave up after {took:?}");
        assert!(e.retryable && e.message.contains("still running after 1000 ms; cancelled"), "{e}");
        assert_eq!(api.calls("CancelStatement").len(), 1);
    }

    /// At the cut (the grace period over), the statement waited for is
    /// cancelled at once and the batch is not retryable; no batch is sent
    /// after it.
    #[tokio::test]
    async fn the_cut_cancels_the_statement_waited_for_at_once_and_sends_nothing_after_it() {
        let api = Running::default();
        let config = RedshiftSinkConfig { first_poll_ms: 10, max_poll_ms: 50, ..RedshiftSinkConfig::default() };
        let cut = CancellationToken::new();
        let t = transport(&api, config).cut_by(cut.clone());
        let batch = ["SELECT 1".to_owned()];
        let waiting = t.run_batch(&batch);
        let cutting = async {
            // Once it polls a statement still running.
            while api.calls("DescribeStatement").len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cut.cancel();
            Instant::now()
        };
        let (e, cut_at) = tokio::join!(waiting, cutting);
        let e = e.expect_err("cut off");
        assert!(cut_at.elapsed() < Duration::from_millis(500), "ended {:?} after the cut", cut_at.elapsed());
        assert!(!e.retryable && e.message.contains("given up at the end of the grace period; cancelled"), "{e}");
        assert_eq!(api.calls("CancelStatement").len(), 1);
        let executed = api.calls("ExecuteStatement").len();
        let e = t.run_batch(&batch).await.expect_err("not sent");
        assert!(!e.retryable, "{e}");
        assert_eq!(api.calls("ExecuteStatement").len(), executed, "a batch was sent after the cut");
    }

    #[test]
    fn redshift_conflicts_are_retried_and_sql_errors_are_not() {
        assert!(retryable_message("ERROR: 1023 DETAIL: Serializable isolation violation on table - 100345"));
        assert!(retryable_message("duplicate key value violates unique constraint"));
        assert!(!retryable_message("ERROR: column \"colour\" does not exist"));
        assert!(!retryable_message("ERROR: permission denied for relation cafe_store_minute"));
    }

    #[test]
    fn refusals_of_a_row_are_told_from_refusals_of_the_statement() {
        // PostgreSQL's wording (the local endpoint) and Redshift's.
        assert!(row_level_message("ERROR: date/time field value out of range: \"0000-01-01T00:00:00Z\""));
        assert!(row_level_message("ERROR: value \"99999999999\" is out of range for type integer"));
        assert!(row_level_message("ERROR: Value too long for character type"));
        assert!(row_level_message("ERROR: Overflow for NUMERIC(38,0)"));
        assert!(row_level_message("ERROR: invalid input syntax for type timestamp with time zone: \"x\""));
        assert!(!row_level_message("ERROR: column \"colour\" does not exist"));
        assert!(!row_level_message("ERROR: permission denied for relation cafe_store_minute"));
        assert!(!row_level_message("ERROR: relation \"cafe_store_minute\" does not exist"));
        assert!(!row_level_message("ERROR: syntax error at or near \"MERGE\""));
    }

    /// A cut while the batch is being submitted: a submit answered within
    /// a second of it is cancelled once its id is known; one still
    /// unanswered then is given up (and says it may run), not waited for.
    #[tokio::test]
    async fn a_submit_under_way_at_the_cut_is_cancelled_once_its_id_is_known_or_given_up() {
        for (delay, cancels) in [(Duration::from_millis(300), 1), (Duration::from_secs(30), 0)] {
            let api = Running(Arc::default(), delay);
            let cut = CancellationToken::new();
            let t =
                transport(&api, RedshiftSinkConfig { first_poll_ms: 10, ..RedshiftSinkConfig::default() }).cut_by(cut.clone());
            let batch = ["SELECT 1".to_owned()];
            let cutting = async {
                while api.calls("ExecuteStatement").is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                cut.cancel();
                Instant::now()
            };
            let (e, cut_at) = tokio::join!(t.run_batch(&batch), cutting);
            let e = e.expect_err("cut off");
            let took = cut_at.elapsed();
            assert!(!e.retryable && took < SUBMIT_AFTER_CUT + Duration::from_millis(500), "{delay:?}: {took:?}, {e}");
            assert_eq!(api.calls("CancelStatement").len(), cancels, "{delay:?}: {e}");
            assert_eq!(api.calls("DescribeStatement").len(), 0, "{delay:?}: polled after the cut");
        }
    }

    /// The waits between polls are jittered (a quarter of the bound to all
    /// of it), so a fleet's flushes do not poll in step: with a bound of
    /// 200 ms every wait is within it, and they are not all alike.
    #[tokio::test]
    async fn the_waits_between_polls_are_jittered_within_their_bound() {
        let api = Running::default();
        let config = RedshiftSinkConfig {
            first_poll_ms: 200,
            max_poll_ms: 200,
            statement_timeout_ms: 3_000,
            ..RedshiftSinkConfig::default()
        };
        transport(&api, config).run_batch(&["SELECT 1".to_owned()]).await.expect_err("never ends");
        let polls = api.calls("DescribeStatement");
        // The last wait may be cut short by the statement's time.
        let mut waits: Vec<Duration> = polls.windows(2).map(|w| w[1] - w[0]).collect();
        waits.pop();
        assert!(waits.len() >= 10, "{waits:?}");
        assert!(waits.iter().all(|w| *w >= Duration::from_millis(45) && *w <= Duration::from_millis(260)), "{waits:?}");
        let (least, most) = (waits.iter().min().copied().unwrap_or_default(), waits.iter().max().copied().unwrap_or_default());
        assert!(most - least >= Duration::from_millis(40), "waits in step: {waits:?}");
    }
}
