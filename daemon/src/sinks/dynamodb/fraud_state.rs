//! The fraud rules' shared history (`fraud_state_table`) and the payment
//! writes that carry it.
//!
//! Owns: the state item layout, reading states (BatchGetItem, strongly
//! consistent), and the transaction that writes scored payments together
//! with the states they changed. Must not: score (`pipeline::fraud::Rules`
//! does, in `route::apply_payments`).
//!
//! Item: `key` (S): `card#` and the card fingerprint, `cust#` and the
//! customer id, or `dev#` and the device id; a value over
//! [`MAX_PLAIN_KEY`] bytes is replaced by `sha256:` and its hex digest,
//! since DynamoDB refuses a partition key over 2,048 bytes and the contract
//! bounds none of these strings. `ver` (N): the state's version: the
//! writer's clock in milliseconds on the item's first write, +1 on every
//! write after, so a version is not used again for a key whose item
//! expired and was created anew (a writer holding the old item's version
//! must not overwrite the new one). `expires_at` (N, the table's TTL
//! attribute): `history_secs` after the newest entry's event time or the
//! write, whichever is later (an old event replayed from a backlog keeps
//! its key's history as long as a new one). `entries` (L of M), oldest
//! first: `t` (N) event time in Unix seconds, `p` (S) the payment id's
//! digest (32 hex digits, `pipeline::fraud::state::Digest`), and `v` the
//! customer's amount in cents (N) or the digest of the device's card
//! fingerprint (S); a card's entries have no `v`.
//!
//! Protocol: a transaction holds conditional puts of payments
//! (`attribute_not_exists(payment_id)`: a redelivery's put fails), then puts
//! of the states their scoring changed, each conditional on the version it
//! was scored against (`attribute_not_exists(#k)` for version 0), then the
//! aggregate rows. A failed state condition means another writer (another
//! instance, or another batch of this one) moved that key first: the caller
//! reads it again and scores again. Everything in the transaction lands or
//! nothing does, so a payment's decision and the history it counted in are
//! never apart.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem};
use pipeline::decided::DecidedPayment;
use pipeline::fraud::Rules;
use pipeline::fraud::state::{CardState, CustomerState, DeviceState, Digest, Entry};
use pipeline::window::Deltas;
use sha2::{Digest as _, Sha256};
use tracing::warn;

use super::{Attempt, DynamoDbSink, num, s};
use crate::aws::{AwsError, ErrorClass, classify};
use crate::internal_events::{InternalEvent, Sink, SinkGaveUp, SinkRequestOutcome};

/// State item attribute: the partition key.
pub const STATE_KEY: &str = "key";
/// State item attribute: the version.
pub const STATE_VERSION: &str = "ver";
/// State item attribute: when it expires (epoch seconds, the table's TTL attribute).
pub const STATE_EXPIRES: &str = "expires_at";
/// Key values longer than this are stored by their SHA-256.
pub const MAX_PLAIN_KEY: usize = 512;

/// One key of the fraud history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKey {
    /// A card fingerprint.
    Card(String),
    /// A customer id.
    Customer(String),
    /// A device id.
    Device(String),
}

impl StateKey {
    /// The item's `key`.
    pub fn item_key(&self) -> String {
        let (prefix, value) = match self {
            StateKey::Card(v) => ("card#", v),
            StateKey::Customer(v) => ("cust#", v),
            StateKey::Device(v) => ("dev#", v),
        };
        if value.len() <= MAX_PLAIN_KEY {
            format!("{prefix}{value}")
        } else {
            format!("{prefix}sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
        }
    }

    /// The empty state of this key's kind.
    pub fn empty(&self) -> AnyState {
        match self {
            StateKey::Card(_) => AnyState::Card(CardState::default()),
            StateKey::Customer(_) => AnyState::Customer(CustomerState::default()),
            StateKey::Device(_) => AnyState::Device(DeviceState::default()),
        }
    }
}

/// A key's state, of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyState {
    /// A card's.
    Card(CardState),
    /// A customer's.
    Customer(CustomerState),
    /// A device's.
    Device(DeviceState),
}

impl AnyState {
    /// The newest event time recorded.
    pub fn newest(&self) -> Option<i64> {
        match self {
            AnyState::Card(s) => s.newest(),
            AnyState::Customer(s) => s.newest(),
            AnyState::Device(s) => s.newest(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        match self {
            AnyState::Card(s) => s.entries().len(),
            AnyState::Customer(s) => s.entries().len(),
            AnyState::Device(s) => s.entries().len(),
        }
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A key's state and the version it was read at (0: no item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The item's `ver`, 0 when there is no item.
    pub version: u64,
    /// Its state.
    pub state: AnyState,
}

fn entry_value<V>(e: &Entry<V>, v: Option<AttributeValue>) -> AttributeValue {
    let mut m = HashMap::with_capacity(3);
    m.insert("t".to_owned(), num(e.t));
    m.insert("p".to_owned(), s(e.payment.to_string()));
    if let Some(v) = v {
        m.insert("v".to_owned(), v);
    }
    AttributeValue::M(m)
}

fn entries_value(state: &AnyState) -> AttributeValue {
    AttributeValue::L(match state {
        AnyState::Card(st) => st.entries().iter().map(|e| entry_value(e, None)).collect(),
        AnyState::Customer(st) => st.entries().iter().map(|e| entry_value(e, Some(num(e.value)))).collect(),
        AnyState::Device(st) => st.entries().iter().map(|e| entry_value(e, Some(s(e.value.to_string())))).collect(),
    })
}

/// A state item as `key`'s state under `rules`' bounds; `None` if it is not
/// an item this daemon wrote (a malformed entry, a missing attribute).
pub fn parse_state(key: &StateKey, item: &HashMap<String, AttributeValue>, rules: &Rules) -> Option<Versioned> {
    let version = item.get(STATE_VERSION)?.as_n().ok()?.parse::<u64>().ok()?;
    let raw = item.get("entries")?.as_l().ok()?;
    let mut parsed: Vec<(i64, Digest, Option<&AttributeValue>)> = Vec::with_capacity(raw.len());
    for e in raw {
        let m = e.as_m().ok()?;
        let t = m.get("t")?.as_n().ok()?.parse::<i64>().ok()?;
        let p = Digest::parse(m.get("p")?.as_s().ok()?)?;
        parsed.push((t, p, m.get("v")));
    }
    let state = match key {
        StateKey::Card(_) => {
            AnyState::Card(rules.card_state(parsed.into_iter().map(|(t, payment, _)| Entry { t, payment, value: () }).collect()))
        }
        StateKey::Customer(_) => AnyState::Customer(
            rules.customer_state(
                parsed
                    .into_iter()
                    .map(|(t, payment, v)| Some(Entry { t, payment, value: v?.as_n().ok()?.parse::<u64>().ok()? }))
                    .collect::<Option<Vec<_>>>()?,
            ),
        ),
        StateKey::Device(_) => AnyState::Device(
            rules.device_state(
                parsed
                    .into_iter()
                    .map(|(t, payment, v)| Some(Entry { t, payment, value: Digest::parse(v?.as_s().ok()?)? }))
                    .collect::<Option<Vec<_>>>()?,
            ),
        ),
    };
    Some(Versioned { version, state })
}

/// The state item of `key` at `version` holding `state`, written at `now`
/// (Unix seconds).
pub fn state_item(
    key: &StateKey,
    version: u64,
    state: &AnyState,
    history_secs: u32,
    now: i64,
) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::with_capacity(4);
    item.insert(STATE_KEY.to_owned(), s(key.item_key()));
    item.insert(STATE_VERSION.to_owned(), num(version));
    item.insert("entries".to_owned(), entries_value(state));
    let last = state.newest().unwrap_or(now).max(now);
    item.insert(STATE_EXPIRES.to_owned(), num(last.saturating_add(i64::from(history_secs))));
    item
}

/// One state a transaction writes: the key, the version its scoring read,
/// and the state after the transaction's payments.
#[derive(Debug, Clone)]
pub struct StateWrite<'a> {
    /// Which key.
    pub key: &'a StateKey,
    /// The version read (0: no item, or an item without a version).
    pub read: u64,
    /// The version it is written at.
    pub next: u64,
    /// Its state after the payments.
    pub state: &'a AnyState,
}

impl DynamoDbSink {
    /// Reads the states of `keys` (distinct; strongly consistent): one per
    /// key, in order, an absent or unreadable item as version 0 and empty.
    /// The requests (one per 100 keys) go out at once, so a batch waits one
    /// round trip. Fails only when the reads keep failing. `calls` counts
    /// the requests.
    pub async fn read_fraud_states(&self, keys: &[StateKey], rules: &Rules, calls: &mut u64) -> Result<Vec<Versioned>, AwsError> {
        let names: Vec<String> = keys.iter().map(StateKey::item_key).collect();
        let reads = futures::future::join_all(names.chunks(100).map(|chunk| self.read_state_items(chunk, keys.len()))).await;
        let mut found: HashMap<String, HashMap<String, AttributeValue>> = HashMap::with_capacity(keys.len());
        let mut failed = None;
        for read in reads {
            match read {
                Ok((items, n)) => {
                    *calls += n;
                    found.extend(items);
                }
                Err((e, n)) => {
                    *calls += n;
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(keys
            .iter()
            .zip(&names)
            .map(|(key, name)| match found.get(name) {
                None => Versioned { version: 0, state: key.empty() },
                Some(item) => parse_state(key, item, rules).unwrap_or_else(|| {
                    // Not written by this daemon: overwritten at the version it has, or created.
                    let version = item.get(STATE_VERSION).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
                    warn!(key = %name, "A fraud state item could not be read; scoring as if it were empty");
                    Versioned { version: version.unwrap_or(0), state: key.empty() }
                }),
            })
            .collect())
    }

    /// The items of at most 100 keys by name, with the requests it took;
    /// unprocessed keys and failed requests are retried with the backoff,
    /// within `max_retries`. `records` is for the log.
    #[allow(clippy::type_complexity)]
    async fn read_state_items(
        &self,
        names: &[String],
        records: usize,
    ) -> Result<(Vec<(String, HashMap<String, AttributeValue>)>, u64), (AwsError, u64)> {
        let table = &self.config.fraud_state_table;
        let what = "Reading fraud state";
        let key = |k: &String| HashMap::from([(STATE_KEY.to_owned(), s(k))]);
        let mut found = Vec::with_capacity(names.len());
        let mut pending: Vec<HashMap<String, AttributeValue>> = names.iter().map(key).collect();
        let (mut attempt, mut calls) = (0, 0);
        while !pending.is_empty() {
            let ka = KeysAndAttributes::builder()
                .set_keys(Some(pending.clone()))
                .consistent_read(true)
                .build()
                .map_err(|e| (AwsError::request("reading fraud state", e), calls))?;
            calls += 1;
            let call = self.client.batch_get_item().request_items(table, ka).send();
            let result = tokio::select! {
                r = call => r,
                () = self.stop_retrying.cancelled() => {
                    let error = "shutting down";
                    SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(error) }.emit(&self.metrics);
                    let e = AwsError { what: "reading fraud state".into(), class: ErrorClass::Fatal, detail: error.into() };
                    return Err((e, calls));
                }
            };
            let asked = pending.len();
            let error = match result {
                Ok(resp) => {
                    self.count(SinkRequestOutcome::Ok);
                    for item in resp.responses.as_ref().and_then(|r| r.get(table)).into_iter().flatten() {
                        if let Some(k) = item.get(STATE_KEY).and_then(|v| v.as_s().ok()) {
                            found.push((k.clone(), item.clone()));
                        }
                    }
                    pending =
                        resp.unprocessed_keys.as_ref().and_then(|u| u.get(table)).map(|k| k.keys().to_vec()).unwrap_or_default();
                    if pending.is_empty() {
                        break;
                    }
                    // Unprocessed keys (throttling): the backoff, within the
                    // budget unless some were processed.
                    if !self.again_for_unprocessed(pending.len() < asked, &mut attempt, what, records).await {
                        let detail = "unprocessed keys".into();
                        return Err((
                            AwsError { what: "reading fraud state".into(), class: ErrorClass::Throttled, detail },
                            calls,
                        ));
                    }
                    continue;
                }
                Err(e) => {
                    let error = AwsError::sdk("reading fraud state", &e);
                    if classify(&e) == ErrorClass::Fatal {
                        SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(&error.to_string()) }.emit(&self.metrics);
                        return Err((error, calls));
                    }
                    error
                }
            };
            if !self.retry_later(&mut attempt, what, records, &error.to_string()).await {
                return Err((error, calls));
            }
        }
        Ok((found, calls))
    }

    /// One attempt at writing `payments` with the `states` their scoring
    /// changed (see the protocol above). On `Attempt::Conditions`, a
    /// position below `payments.len()` is that payment (written before);
    /// one at or above it is the state `states[position - payments.len()]`
    /// (moved by another writer).
    pub(crate) async fn write_scored(
        &self,
        payments: &[&DecidedPayment],
        states: &[StateWrite<'_>],
        history_secs: u32,
        attempt: &mut u32,
    ) -> Attempt {
        let mut items = Vec::with_capacity(payments.len() + states.len() + 4);
        let mut deltas = Deltas::new();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for p in payments {
            deltas.entry(p.window.clone()).or_default().add(&p.counters);
            match self.payment_put(p) {
                Ok(put) => items.push(TransactWriteItem::builder().put(put).build()),
                Err(e) => return self.unbuildable(payments.len(), &e.to_string()),
            }
        }
        for w in states {
            let item = state_item(w.key, w.next, w.state, history_secs, now);
            let put = Put::builder().table_name(&self.config.fraud_state_table).set_item(Some(item));
            // (AWS refuses a name or value the expression does not use.)
            let put = if w.read == 0 {
                put.condition_expression("attribute_not_exists(#v)").expression_attribute_names("#v", STATE_VERSION)
            } else {
                put.condition_expression("#v = :v")
                    .expression_attribute_names("#v", STATE_VERSION)
                    .expression_attribute_values(":v", num(w.read))
            };
            match put.build() {
                Ok(put) => items.push(TransactWriteItem::builder().put(put).build()),
                Err(e) => return self.unbuildable(payments.len(), &e.to_string()),
            }
        }
        for (row, counters) in &deltas {
            if let Some(update) = self.aggregate_update(row, counters) {
                items.push(TransactWriteItem::builder().update(update).build());
            }
        }
        self.transact(items, "Payment write", payments.len(), attempt).await
    }

    fn unbuildable(&self, records: usize, error: &str) -> Attempt {
        SinkGaveUp { sink: Sink::DynamoDb, what: "Payment write", records, error: Some(error) }.emit(&self.metrics);
        Attempt::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use pipeline::fraud::FraudConfig;

    use super::*;

    fn rules() -> Rules {
        Rules::new(FraudConfig::default()).expect("valid config")
    }

    #[test]
    fn a_state_reads_back_as_it_was_written() {
        let r = rules();
        let card = r.card_state((0..3).map(|i| Entry { t: 100 + i, payment: Digest::of(&format!("p{i}")), value: () }).collect());
        let customer = r.customer_state(
            (0..3).map(|i| Entry { t: 100 + i, payment: Digest::of(&format!("p{i}")), value: 10 * i as u64 }).collect(),
        );
        let device = r.device_state(
            (0..3)
                .map(|i| Entry { t: 100 + i, payment: Digest::of(&format!("p{i}")), value: Digest::of(&format!("fp{i}")) })
                .collect(),
        );
        for (key, state) in [
            (StateKey::Card("fp".into()), AnyState::Card(card)),
            (StateKey::Customer("c".into()), AnyState::Customer(customer)),
            (StateKey::Device("d".into()), AnyState::Device(device)),
        ] {
            let item = state_item(&key, 7, &state, 86_400, 50);
            assert_eq!(item.get(STATE_EXPIRES), Some(&num(102 + 86_400)), "from the newest entry");
            let late = state_item(&key, 7, &state, 86_400, 1_000);
            assert_eq!(late.get(STATE_EXPIRES), Some(&num(1_000 + 86_400)), "from the write, when later");
            assert_eq!(parse_state(&key, &item, &r), Some(Versioned { version: 7, state }), "{key:?}");
        }
    }

    #[test]
    fn an_item_of_another_shape_is_not_read_as_a_state() {
        let r = rules();
        let key = StateKey::Customer("c".into());
        let mut item = state_item(&key, 2, &key.empty(), 60, 0);
        assert!(parse_state(&key, &item, &r).is_some());
        let bad = AttributeValue::L(vec![entry_value(&Entry { t: 1, payment: Digest::of("p"), value: () }, Some(s("ten")))]);
        item.insert("entries".into(), bad);
        assert_eq!(parse_state(&key, &item, &r), None, "an amount that is not a number");
        item.remove("entries");
        assert_eq!(parse_state(&key, &item, &r), None);
    }

    #[test]
    fn long_key_values_are_stored_by_their_digest_within_dynamodbs_key_limit() {
        assert_eq!(StateKey::Card("fp-1".into()).item_key(), "card#fp-1");
        let long = "x".repeat(1024 * 1024);
        let k = StateKey::Device(long.clone()).item_key();
        assert!(k.starts_with("dev#sha256:") && k.len() == 4 + 7 + 64, "{k}");
        assert_ne!(k, StateKey::Device(long[1..].to_owned()).item_key());
        assert_eq!(StateKey::Customer("y".repeat(MAX_PLAIN_KEY)).item_key().len(), 5 + MAX_PLAIN_KEY);
    }
}
