//! The contract's event model (contract v1, with the v1.1 bounds on
//! numbers and event times) and its validation.
//!
//! Owns: turning the bytes of one Kinesis record or SQS body into a typed,
//! fully validated [`Event`], or into a [`Rejection`] that names the rule it
//! broke. Must not: know where the bytes came from, or keep state across
//! events (the order state machine lives in `orders`).
//!
//! The envelope is parsed borrowing from the input; only the validated
//! fields are copied out.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::orders::OrderStatus;

/// An event larger than this is rejected as `too_large`.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// A menu image larger than this, decoded, is rejected as `too_large`.
pub const MAX_IMAGE_BYTES: usize = 512 * 1024;
/// Most line items in one `order.placed`.
pub const MAX_ORDER_ITEMS: usize = 500;
/// Largest `amount_cents` of a payment (contract v1.1).
pub const MAX_AMOUNT_CENTS: u64 = 100_000_000_000;
/// Largest `price_cents` of a menu item (contract v1.1).
pub const MAX_PRICE_CENTS: u64 = 1_000_000_000;
/// Largest value of every ingredient number (contract v1.1).
pub const MAX_INGREDIENT_NUMBER: f64 = 1_000_000.0;
/// Event times before this are rejected as `ts_out_of_range` (contract v1.1).
pub const MIN_TS: OffsetDateTime = time::macros::datetime!(2000-01-01 00:00:00 UTC);
/// The default of `max_future_secs`: how far ahead of the daemon's clock an
/// event time may be.
pub const DEFAULT_MAX_FUTURE_SECS: u64 = 3600;

/// Why an event was rejected: the `reason` attribute of `cafe-rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not UTF-8, or not syntactically valid JSON.
    BadJson,
    /// Valid JSON that breaks a field rule of the contract.
    Schema,
    /// `v` is not a version this daemon understands.
    UnsupportedVersion,
    /// `type` is not one of the contract's event types.
    UnknownType,
    /// `order.placed` whose `total_cents` is not the sum of its lines.
    TotalMismatch,
    /// An order status change the state machine does not allow.
    IllegalTransition,
    /// An order status for an order that was never placed.
    UnknownOrder,
    /// The event exceeds 1 MiB, or its image exceeds 512 KiB decoded.
    TooLarge,
    /// `ts` before 2000-01-01 or more than `max_future_secs` ahead of the
    /// daemon's clock (contract v1.1).
    TsOutOfRange,
}

impl RejectReason {
    /// Every reason, for metric pre-registration and docs.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::BadJson,
        RejectReason::Schema,
        RejectReason::UnsupportedVersion,
        RejectReason::UnknownType,
        RejectReason::TotalMismatch,
        RejectReason::IllegalTransition,
        RejectReason::UnknownOrder,
        RejectReason::TooLarge,
        RejectReason::TsOutOfRange,
    ];

    /// The short code used on the wire and as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::BadJson => "bad_json",
            RejectReason::Schema => "schema",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::TotalMismatch => "total_mismatch",
            RejectReason::IllegalTransition => "illegal_transition",
            RejectReason::UnknownOrder => "unknown_order",
            RejectReason::TooLarge => "too_large",
            RejectReason::TsOutOfRange => "ts_out_of_range",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An event that breaks the contract: the reason code and a human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    /// The short code.
    pub reason: RejectReason,
    /// What exactly was wrong, for the operator (no payload contents).
    pub detail: String,
}

impl Rejection {
    /// A rejection with the given reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }

    fn schema(detail: impl Into<String>) -> Self {
        Rejection::new(RejectReason::Schema, detail)
    }
}

/// The event types of contract v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `order.placed`
    OrderPlaced,
    /// `order.status`
    OrderStatus,
    /// `payment.requested`
    PaymentRequested,
    /// `menu.item.upserted`
    MenuItemUpserted,
}

impl EventType {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            EventType::OrderPlaced => "order.placed",
            EventType::OrderStatus => "order.status",
            EventType::PaymentRequested => "payment.requested",
            EventType::MenuItemUpserted => "menu.item.upserted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "order.placed" => EventType::OrderPlaced,
            "order.status" => EventType::OrderStatus,
            "payment.requested" => EventType::PaymentRequested,
            "menu.item.upserted" => EventType::MenuItemUpserted,
            _ => return None,
        })
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The idempotency key. Shared (not copied) by whatever keeps it
    /// beyond the event: an order's history entry.
    pub id: Arc<str>,
    /// Event time.
    pub ts: OffsetDateTime,
    /// Event time as it was sent, for writing back unchanged; shared as
    /// `id` is.
    pub ts_raw: Arc<str>,
    /// The store the event belongs to.
    pub store: String,
    /// The per-type payload.
    pub body: Body,
}

/// The per-type payload of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `order.placed`
    OrderPlaced(OrderPlaced),
    /// `order.status`
    OrderStatus(OrderStatusChange),
    /// `payment.requested`
    PaymentRequested(PaymentRequested),
    /// `menu.item.upserted`
    MenuItemUpserted(MenuItem),
}

impl Body {
    /// The event type of this payload.
    pub fn event_type(&self) -> EventType {
        match self {
            Body::OrderPlaced(_) => EventType::OrderPlaced,
            Body::OrderStatus(_) => EventType::OrderStatus,
            Body::PaymentRequested(_) => EventType::PaymentRequested,
            Body::MenuItemUpserted(_) => EventType::MenuItemUpserted,
        }
    }
}

/// Ordering channel of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Mobile app.
    App,
    /// Web shop.
    Web,
    /// In-store kiosk.
    Kiosk,
    /// Corporate bulk ordering.
    Corporate,
}

impl Channel {
    /// Its name on the wire (and in `cafe-orders`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::App => "app",
            Channel::Web => "web",
            Channel::Kiosk => "kiosk",
            Channel::Corporate => "corporate",
        }
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderLine {
    /// Menu item.
    pub sku: String,
    /// 1..=1000.
    pub qty: u32,
    /// 0..=10,000,000.
    pub unit_price_cents: u64,
}

/// `order.placed`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// Where it was ordered.
    pub channel: Channel,
    /// 1..=500 lines.
    pub items: Vec<OrderLine>,
    /// Sum of qty × unit_price_cents.
    pub total_cents: u64,
}

impl OrderPlaced {
    /// Sum of the quantities of all lines.
    pub fn item_count(&self) -> u64 {
        self.items.iter().map(|l| u64::from(l.qty)).sum()
    }
}

/// `order.status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrderStatusChange {
    /// The order.
    pub order_id: String,
    /// The new status.
    pub status: OrderStatus,
    /// Why, for cancellations.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The card of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Card {
    /// Bank identification number: 6 digits.
    pub bin: String,
    /// Last four digits.
    pub last4: String,
    /// Stable fingerprint of the card number.
    pub fingerprint: String,
}

/// `payment.requested`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentRequested {
    /// The payment; the key of `cafe-payments`.
    pub payment_id: String,
    /// The order paid for.
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// Greater than 0.
    pub amount_cents: u64,
    /// ISO 4217, 3 upper-case letters.
    pub currency: String,
    /// The card.
    pub card: Card,
    /// Client address.
    pub ip: IpAddr,
    /// Client device.
    pub device_id: String,
    /// ISO 3166 alpha-2, 2 upper-case letters.
    pub billing_country: String,
}

/// A menu item's image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Image {
    /// MIME type.
    pub content_type: String,
    /// The image bytes, base64 (standard alphabet, padded).
    pub base64: String,
    /// Declared SHA-256 of the decoded bytes, 64 lower-case hex.
    pub sha256: String,
}

/// One ingredient of a menu item, per 100 g values.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Ingredient {
    /// Name.
    pub name: String,
    /// Grams in the item.
    pub grams: f64,
    /// kcal per 100 g.
    pub kcal_per_100g: f64,
    /// Protein per 100 g.
    pub protein_per_100g: f64,
    /// Fat per 100 g.
    pub fat_per_100g: f64,
    /// Carbohydrates per 100 g.
    pub carbs_per_100g: f64,
}

/// `menu.item.upserted`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct MenuItem {
    /// The item; the key of `cafe-menu`.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Menu category.
    pub category: String,
    /// Price, ≥ 0.
    pub price_cents: u64,
    /// The image.
    pub image: Image,
    /// 0..=100 ingredients.
    pub ingredients: Vec<Ingredient>,
    /// Allergen names.
    pub allergens: Vec<String>,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    v: serde_json::Value,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    store: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The clock an event time is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The daemon's time now.
    pub now: OffsetDateTime,
    /// How far ahead of `now` an event time may be.
    pub max_future: time::Duration,
}

impl Clock {
    /// The system clock now, with `max_future_secs` of allowance.
    pub fn system(max_future_secs: u64) -> Self {
        Clock { now: OffsetDateTime::now_utc(), max_future: time::Duration::seconds(max_future_secs.min(i64::MAX as u64) as i64) }
    }
}

/// Decodes and validates one event against the system clock and the
/// default `max_future_secs`; see [`decode_at`].
pub fn decode(bytes: &[u8]) -> Result<Event, Rejection> {
    decode_at(bytes, &Clock::system(DEFAULT_MAX_FUTURE_SECS))
}

/// Decodes and validates one event.
///
/// Every contract rule that can be checked on the event alone is checked
/// here, event times against `clock`; rules that need history (order
/// transitions) are checked by the order state machine.
pub fn decode_at(bytes: &[u8], clock: &Clock) -> Result<Event, Rejection> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("event is {} bytes, the limit is {MAX_EVENT_BYTES}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Rejection::new(RejectReason::BadJson, format!("not UTF-8: {e}")))?;
    let raw: RawEnvelope<'_> = serde_json::from_str(text).map_err(json_rejection)?;

    if raw.v.as_u64() != Some(1) {
        return Err(Rejection::new(RejectReason::UnsupportedVersion, format!("v is {}, only 1 is supported", raw.v)));
    }
    check_id("id", &raw.id, 64, |c| c.is_ascii_alphanumeric() || "._:-".contains(c))?;
    check_id("store", &raw.store, 32, |c| c.is_ascii_alphanumeric() || "._-".contains(c))?;
    let ts = OffsetDateTime::parse(&raw.ts, &Rfc3339)
        .map_err(|e| Rejection::schema(format!("ts is not RFC 3339 with offset: {e}")))?;
    if ts < MIN_TS {
        return Err(Rejection::new(RejectReason::TsOutOfRange, "ts is before 2000-01-01T00:00:00Z"));
    }
    if ts > clock.now.saturating_add(clock.max_future) {
        return Err(Rejection::new(
            RejectReason::TsOutOfRange,
            format!("ts is more than {} s ahead of the daemon's clock", clock.max_future.whole_seconds()),
        ));
    }
    let kind = EventType::parse(&raw.kind)
        .ok_or_else(|| Rejection::new(RejectReason::UnknownType, format!("unknown type {:?}", truncate(&raw.kind, 40))))?;

    let data = raw.data.get();
    let body = match kind {
        EventType::OrderPlaced => Body::OrderPlaced(validate_order(parse_data(data)?)?),
        EventType::OrderStatus => Body::OrderStatus(validate_status(parse_data(data)?)?),
        EventType::PaymentRequested => Body::PaymentRequested(validate_payment(parse_data(data)?)?),
        EventType::MenuItemUpserted => Body::MenuItemUpserted(validate_menu(parse_data(data)?)?),
    };
    Ok(Event { id: Arc::from(&*raw.id), ts, ts_raw: Arc::from(&*raw.ts), store: raw.store.into_owned(), body })
}

fn json_rejection(e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => Rejection::new(RejectReason::BadJson, e.to_string()),
        Category::Data => Rejection::schema(e.to_string()),
    }
}

fn parse_data<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, Rejection> {
    serde_json::from_str(data).map_err(|e| Rejection::schema(format!("data: {e}")))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn check_id(field: &str, value: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), Rejection> {
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(Rejection::schema(format!("{field} must be 1..{max} characters, got {len}")));
    }
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(Rejection::schema(format!("{field} contains the character {bad:?}")));
    }
    Ok(())
}

/// `field` is formatted only into a rejection's message: a name made per
/// value (an order line's, `format_args!` with its index) costs nothing
/// when the value is fine, as it is for nearly every event (a `format!`
/// per line was 4% of decoding an order event).
fn non_empty(field: impl std::fmt::Display, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::schema(format!("data.{field} must not be empty")));
    }
    if value.len() > 256 {
        return Err(Rejection::schema(format!("data.{field} is longer than 256 bytes")));
    }
    Ok(())
}

fn all_chars(field: &str, value: &str, len: usize, ok: impl Fn(char) -> bool, what: &str) -> Result<(), Rejection> {
    if value.len() != len || !value.chars().all(ok) {
        return Err(Rejection::schema(format!("data.{field} must be {len} {what}")));
    }
    Ok(())
}

fn validate_order(o: OrderPlaced) -> Result<OrderPlaced, Rejection> {
    non_empty("order_id", &o.order_id)?;
    non_empty("customer_id", &o.customer_id)?;
    if o.items.is_empty() || o.items.len() > MAX_ORDER_ITEMS {
        return Err(Rejection::schema(format!("data.items must hold 1..{MAX_ORDER_ITEMS} lines, got {}", o.items.len())));
    }
    let mut sum: u64 = 0;
    for (i, line) in o.items.iter().enumerate() {
        non_empty(format_args!("items[{i}].sku"), &line.sku)?;
        if !(1..=1000).contains(&line.qty) {
            return Err(Rejection::schema(format!("data.items[{i}].qty must be 1..1000, got {}", line.qty)));
        }
        if line.unit_price_cents > 10_000_000 {
            return Err(Rejection::schema(format!(
                "data.items[{i}].unit_price_cents must be 0..10000000, got {}",
                line.unit_price_cents
            )));
        }
        // Bounded above: 500 × 1000 × 10^7 fits easily in u64.
        sum += u64::from(line.qty) * line.unit_price_cents;
    }
    if sum != o.total_cents {
        return Err(Rejection::new(
            RejectReason::TotalMismatch,
            format!("total_cents is {} but the lines sum to {sum}", o.total_cents),
        ));
    }
    Ok(o)
}

fn validate_status(s: OrderStatusChange) -> Result<OrderStatusChange, Rejection> {
    non_empty("order_id", &s.order_id)?;
    if s.status == OrderStatus::Placed {
        return Err(Rejection::schema("data.status cannot be placed; use order.placed"));
    }
    Ok(s)
}

fn validate_payment(p: PaymentRequested) -> Result<PaymentRequested, Rejection> {
    non_empty("payment_id", &p.payment_id)?;
    non_empty("order_id", &p.order_id)?;
    non_empty("customer_id", &p.customer_id)?;
    non_empty("device_id", &p.device_id)?;
    non_empty("card.fingerprint", &p.card.fingerprint)?;
    if !(1..=MAX_AMOUNT_CENTS).contains(&p.amount_cents) {
        return Err(Rejection::schema(format!("data.amount_cents must be 1..{MAX_AMOUNT_CENTS}, got {}", p.amount_cents)));
    }
    all_chars("currency", &p.currency, 3, |c| c.is_ascii_uppercase(), "upper-case letters")?;
    all_chars("billing_country", &p.billing_country, 2, |c| c.is_ascii_uppercase(), "upper-case letters")?;
    all_chars("card.bin", &p.card.bin, 6, |c| c.is_ascii_digit(), "digits")?;
    all_chars("card.last4", &p.card.last4, 4, |c| c.is_ascii_digit(), "digits")?;
    Ok(p)
}

fn validate_menu(m: MenuItem) -> Result<MenuItem, Rejection> {
    non_empty("sku", &m.sku)?;
    non_empty("name", &m.name)?;
    non_empty("category", &m.category)?;
    if m.price_cents > MAX_PRICE_CENTS {
        return Err(Rejection::schema(format!("data.price_cents must be 0..{MAX_PRICE_CENTS}, got {}", m.price_cents)));
    }
    all_chars("image.sha256", &m.image.sha256, 64, |c| c.is_ascii_digit() || ('a'..='f').contains(&c), "lower-case hex digits")?;
    // The decoded size follows from the base64 length; decoding is the menu
    // stage's CPU work, not validation's.
    let decoded = m.image.base64.len() / 4 * 3;
    if decoded > MAX_IMAGE_BYTES + 2 {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("image is about {decoded} bytes decoded, the limit is {MAX_IMAGE_BYTES}"),
        ));
    }
    if m.ingredients.len() > 100 {
        return Err(Rejection::schema(format!("data.ingredients must hold 0..100 entries, got {}", m.ingredients.len())));
    }
    for (i, ing) in m.ingredients.iter().enumerate() {
        let nums = [ing.grams, ing.kcal_per_100g, ing.protein_per_100g, ing.fat_per_100g, ing.carbs_per_100g];
        if nums.iter().any(|n| !(0.0..=MAX_INGREDIENT_NUMBER).contains(n)) {
            return Err(Rejection::schema(format!("data.ingredients[{i}] has a number outside 0..{MAX_INGREDIENT_NUMBER}")));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment_json() -> serde_json::Value {
        serde_json::json!({
            "v": 1, "id": "pay-1", "type": "payment.requested",
            "ts": "2026-11-22T08:15:30.123Z", "store": "store-1", "extra": true,
            "data": {
                "payment_id": "p1", "order_id": "o1", "customer_id": "c1",
                "amount_cents": 1250, "currency": "USD",
                "card": {"bin": "411111", "last4": "1234", "fingerprint": "fp1"},
                "ip": "203.0.113.9", "device_id": "d1", "billing_country": "US"
            }
        })
    }

    fn decode_value(v: &serde_json::Value) -> Result<Event, Rejection> {
        decode(v.to_string().as_bytes())
    }

    fn reason_after(edit: impl FnOnce(&mut serde_json::Value)) -> RejectReason {
        let mut v = payment_json();
        edit(&mut v);
        match decode_value(&v) {
            Ok(e) => panic!("expected a rejection, got {e:?}"),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn a_channel_is_named_as_it_is_read() {
        for c in [Channel::App, Channel::Web, Channel::Kiosk, Channel::Corporate] {
            let read: Channel = serde_json::from_value(serde_json::Value::from(c.name())).expect("a channel's name reads back");
            assert_eq!(read, c);
        }
    }

    #[test]
    fn decodes_a_valid_payment_and_ignores_unknown_top_level_fields() {
        let e = decode_value(&payment_json()).expect("valid");
        assert_eq!(&*e.id, "pay-1");
        assert_eq!(e.store, "store-1");
        let Body::PaymentRequested(p) = e.body else { panic!("wrong body") };
        assert_eq!(p.amount_cents, 1250);
        assert_eq!(p.ip, "203.0.113.9".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn bad_json_and_not_utf8_are_bad_json() {
        assert_eq!(decode(b"{\"v\":1,").expect_err("rejected").reason, RejectReason::BadJson);
        assert_eq!(decode(b"\xff\xfe").expect_err("rejected").reason, RejectReason::BadJson);
        assert_eq!(decode(b"not json").expect_err("rejected").reason, RejectReason::BadJson);
    }

    #[test]
    fn envelope_rules_are_schema_or_version_or_type() {
        assert_eq!(reason_after(|v| v["v"] = 2.into()), RejectReason::UnsupportedVersion);
        assert_eq!(reason_after(|v| v["type"] = "order.eaten".into()), RejectReason::UnknownType);
        assert_eq!(reason_after(|v| v["id"] = "has space".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["id"] = "x".repeat(65).into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["store"] = "a:b".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["ts"] = "2026-11-22T08:15:30".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v.as_object_mut().map(|o| o.remove("data")).map(drop).unwrap_or(())), RejectReason::Schema);
    }

    #[test]
    fn payment_field_rules_are_schema() {
        assert_eq!(reason_after(|v| v["data"]["amount_cents"] = 0.into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["amount_cents"] = (-5).into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["currency"] = "usd".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["card"]["bin"] = "41111".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["card"]["last4"] = "12a4".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["ip"] = "999.1.1.1".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["billing_country"] = "USA".into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["payment_id"] = "".into()), RejectReason::Schema);
    }

    #[test]
    fn oversized_events_are_too_large() {
        let mut v = payment_json();
        v["pad"] = "x".repeat(MAX_EVENT_BYTES).into();
        assert_eq!(decode_value(&v).expect_err("rejected").reason, RejectReason::TooLarge);
    }

    fn order_json(total: u64) -> serde_json::Value {
        serde_json::json!({
            "v": 1, "id": "ord-1", "type": "order.placed", "ts": "2026-11-22T08:15:30+01:00", "store": "s1",
            "data": {"order_id": "o1", "customer_id": "c1", "channel": "corporate", "total_cents": total,
                     "items": [{"sku": "latte", "qty": 3, "unit_price_cents": 450},
                               {"sku": "bagel", "qty": 2, "unit_price_cents": 300}]}
        })
    }

    #[test]
    fn order_totals_are_checked() {
        let e = decode_value(&order_json(1950)).expect("valid order");
        let Body::OrderPlaced(o) = e.body else { panic!("wrong body") };
        assert_eq!(o.item_count(), 5);
        assert_eq!(decode_value(&order_json(1951)).expect_err("rejected").reason, RejectReason::TotalMismatch);
        let mut v = order_json(0);
        v["data"]["items"] = serde_json::json!([]);
        assert_eq!(decode_value(&v).expect_err("rejected").reason, RejectReason::Schema);
    }

    /// A line's sku is checked as any other field, and named by its index
    /// (the name made only for the message).
    #[test]
    fn an_empty_or_long_sku_is_schema_and_names_its_line() {
        for (sku, said) in [
            (String::new(), "data.items[1].sku must not be empty"),
            ("s".repeat(257), "data.items[1].sku is longer than 256 bytes"),
        ] {
            let mut v = order_json(1950);
            v["data"]["items"][1]["sku"] = sku.into();
            let r = decode_value(&v).expect_err("rejected");
            assert_eq!((r.reason, r.detail.as_str()), (RejectReason::Schema, said));
        }
        let mut v = order_json(1950);
        v["data"]["items"][1]["sku"] = "s".repeat(256).into();
        decode_value(&v).expect("a sku of 256 bytes is valid");
    }

    #[test]
    fn numbers_outside_the_contracts_bounds_are_schema() {
        let mut at_max = payment_json();
        at_max["data"]["amount_cents"] = MAX_AMOUNT_CENTS.into();
        assert!(decode_value(&at_max).is_ok(), "the largest amount is valid");
        assert_eq!(reason_after(|v| v["data"]["amount_cents"] = (MAX_AMOUNT_CENTS + 1).into()), RejectReason::Schema);
        assert_eq!(reason_after(|v| v["data"]["amount_cents"] = u64::MAX.into()), RejectReason::Schema);
        let menu = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::json!({"v":1,"id":"m-1","type":"menu.item.upserted","ts":"2026-11-22T08:16:00Z","store":"s1",
                "data":{"sku":"latte","name":"Latte","category":"drinks","price_cents":450,
                        "image":{"content_type":"image/png","base64":"AAAA","sha256":"0".repeat(64)},
                        "ingredients":[{"name":"milk","grams":200.0,"kcal_per_100g":64.0,"protein_per_100g":3.4,
                                        "fat_per_100g":3.6,"carbs_per_100g":4.8}],
                        "allergens":["milk"]}});
            edit(&mut v);
            decode_value(&v).err().map(|r| r.reason)
        };
        assert_eq!(menu(&|_| {}), None);
        assert_eq!(menu(&|v| v["data"]["price_cents"] = MAX_PRICE_CENTS.into()), None);
        assert_eq!(menu(&|v| v["data"]["price_cents"] = (MAX_PRICE_CENTS + 1).into()), Some(RejectReason::Schema));
        assert_eq!(menu(&|v| v["data"]["ingredients"][0]["grams"] = 1_000_000.0.into()), None);
        assert_eq!(menu(&|v| v["data"]["ingredients"][0]["grams"] = 1_000_000.5.into()), Some(RejectReason::Schema));
        assert_eq!(menu(&|v| v["data"]["ingredients"][0]["kcal_per_100g"] = 1e300.into()), Some(RejectReason::Schema));
        assert_eq!(menu(&|v| v["data"]["ingredients"][0]["fat_per_100g"] = (-0.5).into()), Some(RejectReason::Schema));
    }

    #[test]
    fn event_times_outside_the_contracts_range_are_ts_out_of_range() {
        let clock = Clock { now: time::macros::datetime!(2026-11-30 12:00:00 UTC), max_future: time::Duration::hours(1) };
        let at = |ts: &str| {
            let mut v = payment_json();
            v["ts"] = ts.into();
            decode_at(v.to_string().as_bytes(), &clock).err().map(|r| r.reason)
        };
        assert_eq!(at("0000-01-01T00:00:00Z"), Some(RejectReason::TsOutOfRange));
        assert_eq!(at("1999-12-31T23:59:59.999Z"), Some(RejectReason::TsOutOfRange));
        assert_eq!(at("2000-01-01T00:00:00Z"), None);
        assert_eq!(at("2026-11-30T13:00:00Z"), None, "exactly max_future ahead is allowed");
        assert_eq!(at("2026-11-30T13:00:01Z"), Some(RejectReason::TsOutOfRange));
        assert_eq!(at("2026-11-30T14:30:00+02:00"), None, "offsets are honoured: 12:30 UTC");
        assert_eq!(at("9999-12-31T23:59:59Z"), Some(RejectReason::TsOutOfRange));
    }

    #[test]
    fn status_events_decode() {
        let v = serde_json::json!({"v":1,"id":"st-1","type":"order.status","ts":"2026-11-22T08:16:00Z","store":"s1",
            "data":{"order_id":"o1","status":"cancelled","reason":"customer"}});
        let e = decode_value(&v).expect("valid");
        assert_eq!(e.body.event_type(), EventType::OrderStatus);
    }
}
