//! Bad events, as real producers send them: malformed JSON, control
//! characters, oversized junk, wrong types, extreme numbers and far-off
//! timestamps. Each carries a marker (`poison-<run>-<n>`) at the start of
//! its bytes, so that its rejection can be found in `cafe-rejected` even
//! when it was truncated or sent base64; the reason to expect is the one
//! the contract's own decoder (`pipeline::decode`) gives.
//!
//! Owns: the payloads, sending them straight to an input (not through the
//! proxy), and finding their rejections. Must not: judge the run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::primitives::Blob;
use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where bad events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    /// The orders stream (Kinesis: raw bytes, up to 1 MiB).
    Orders,
    /// The payments FIFO queue (SQS: its character set, 256 KiB).
    Payments,
    /// The menu queue (SQS).
    Menu,
}

/// The ways a producer gets an event wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cut off mid-object.
    MalformedJson,
    /// A control character: raw in a stream record; escaped (SQS carries
    /// no raw one) in a queue message, where it is a bad value.
    ControlCharacters,
    /// Junk far larger than any event: 900 KiB not UTF-8 on the stream,
    /// 200 KiB on a queue.
    Oversized,
    /// A number sent as a string.
    WrongType,
    /// An amount beyond every bound (u64::MAX).
    ExtremeNumber,
    /// An event time in year 0.
    FarOffTime,
}

impl Kind {
    /// Every kind, in the order they are sent.
    pub const ALL: [Kind; 6] =
        [Kind::MalformedJson, Kind::ControlCharacters, Kind::Oversized, Kind::WrongType, Kind::ExtremeNumber, Kind::FarOffTime];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::MalformedJson => "malformed_json",
            Kind::ControlCharacters => "control_characters",
            Kind::Oversized => "oversized",
            Kind::WrongType => "wrong_type",
            Kind::ExtremeNumber => "extreme_number",
            Kind::FarOffTime => "far_off_time",
        }
    }
}

/// A payment event around `marker`, with `amount` and `ts` as given (raw JSON).
fn payment(marker: &str, amount: &str, ts: &str, store: &str) -> String {
    format!(
        r#"{{"id":"{marker}","v":1,"type":"payment.requested","ts":{ts},"store":{store},"data":{{"payment_id":"{marker}","order_id":"{marker}-o","customer_id":"c-{marker}","amount_cents":{amount},"currency":"USD","card":{{"bin":"411111","last4":"1111","fingerprint":"fp-{marker}"}},"ip":"198.51.100.7","device_id":"dev-{marker}","billing_country":"US"}}}}"#
    )
}

/// The bytes of a bad event of `kind` for `input`, starting with `marker`.
pub fn payload(kind: Kind, marker: &str, input: Input) -> Vec<u8> {
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    let ts = format!("\"{now}\"");
    let stream = input == Input::Orders;
    match kind {
        Kind::MalformedJson => format!(r#"{{"id":"{marker}","v":1,"type":"payment.requested","ts":"20"#).into_bytes(),
        Kind::ControlCharacters if stream => payment(marker, "100", &ts, "\"st\u{1}ore\u{7}\"").into_bytes(),
        Kind::ControlCharacters => {
            format!(r#"{{"id":"{marker}","v":1,"type":"order.status","ts":{ts},"store":"s1","data":{{"order_id":"{marker}-o","status":"\u0001"}}}}"#)
                .into_bytes()
        }
        Kind::Oversized => {
            let mut out = format!("{marker} ").into_bytes();
            let (size, fill) = if stream { (900 * 1024, 0xFFu8) } else { (200 * 1024, b'x') };
            out.resize(size, fill);
            out
        }
        Kind::WrongType => payment(marker, "\"100\"", &ts, "\"s1\"").into_bytes(),
        Kind::ExtremeNumber => payment(marker, "18446744073709551615", &ts, "\"s1\"").into_bytes(),
        Kind::FarOffTime => payment(marker, "100", "\"0000-01-01T00:00:00Z\"", "\"s1\"").into_bytes(),
    }
}

/// The marker a bad event's bytes start with: `poison-...` up to a quote
/// (the JSON ones, `{"id":"poison-..."`) or a space (the junk).
fn marker_of(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    let start = text.find("poison-")?;
    let rest = &text[start..];
    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// The reason the contract gives `bytes` (None: it is a valid event).
pub fn expected_reason(bytes: &[u8]) -> Option<&'static str> {
    pipeline::decode(bytes).err().map(|r| r.reason.code())
}

/// One bad event sent.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    /// Its marker.
    pub marker: String,
    /// What is wrong with it.
    pub kind: &'static str,
    /// The reason it must be rejected with.
    pub reason: &'static str,
}

/// Where to send.
pub struct Target {
    /// Straight to Kinesis.
    pub kinesis: aws_sdk_kinesis::Client,
    /// Straight to SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// The orders stream.
    pub stream: String,
    /// The payments queue.
    pub payments_queue: String,
    /// The menu queue.
    pub menu_queue: String,
    /// The rejected queue.
    pub rejected_queue: String,
}

impl Target {
    /// Sends one bad event, retrying a failed send three times with backoff.
    pub async fn send_retrying(&self, input: Input, marker: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let mut attempt = 0u64;
        loop {
            match self.send(input, marker, bytes.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt + rand::random::<u64>() % 100)).await;
                }
            }
        }
    }

    /// Sends one bad event.
    async fn send(&self, input: Input, marker: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        match input {
            Input::Orders => {
                self.kinesis
                    .put_record()
                    .stream_name(&self.stream)
                    .partition_key(marker)
                    .data(Blob::new(bytes))
                    .send()
                    .await
                    .with_context(|| format!("putting a bad record on {}", self.stream))?;
            }
            Input::Payments | Input::Menu => {
                let fifo = input == Input::Payments;
                let queue = if fifo { &self.payments_queue } else { &self.menu_queue };
                let url = crate::attack::queue_url(&self.sqs, queue).await?;
                let body = String::from_utf8(bytes).context("a queue message is text")?;
                let mut req = self.sqs.send_message().queue_url(url).message_body(body);
                if fifo {
                    // A nonce: a rerun with the same run id within SQS's
                    // five-minute deduplication window still delivers.
                    let dedup = format!("{marker}-{:016x}", rand::random::<u64>());
                    req = req.message_group_id(marker).message_deduplication_id(dedup);
                }
                req.send().await.with_context(|| format!("sending a bad message to {queue}"))?;
            }
        }
        Ok(())
    }

    /// Reads `cafe-rejected` until every marker of `sent` is found or
    /// `within` passes; deletes what it found of this run. Other messages
    /// are kept invisible while it reads (SQS would hand the same ones out
    /// again), then made visible again. Returns marker -> the reason it
    /// was rejected with.
    pub async fn rejections(&self, sent: &[Sent], within: Duration) -> anyhow::Result<HashMap<String, String>> {
        let url = crate::attack::queue_url(&self.sqs, &self.rejected_queue).await?;
        let mut found: HashMap<String, String> = HashMap::new();
        let mut others: Vec<String> = Vec::new();
        let result = self.find(&url, sent, &mut found, &mut others, Instant::now() + within).await;
        for handle in others {
            let _ =
                self.sqs.change_message_visibility().queue_url(&url).receipt_handle(handle).visibility_timeout(0).send().await;
        }
        result.map(|()| found)
    }

    async fn find(
        &self,
        url: &str,
        sent: &[Sent],
        found: &mut HashMap<String, String>,
        others: &mut Vec<String>,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let markers: HashMap<&str, &Sent> = sent.iter().map(|s| (s.marker.as_str(), s)).collect();
        while found.len() < sent.len() && Instant::now() < deadline {
            let resp = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(120)
                .message_attribute_names("All")
                .send()
                .await
                .with_context(|| format!("reading {}", self.rejected_queue))?;
            let mut ours = 0usize;
            for m in resp.messages() {
                let attr =
                    |k: &str| m.message_attributes().and_then(|a| a.get(k)).and_then(|v| v.string_value()).map(str::to_owned);
                let body = m.body().unwrap_or_default();
                let bytes = if attr("encoding").as_deref() == Some("base64") {
                    base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default()
                } else {
                    body.as_bytes().to_vec()
                };
                let mine = marker_of(&bytes).and_then(|k| markers.get(k.as_str()).copied());
                match (mine, m.receipt_handle()) {
                    (Some(s), Some(handle)) => {
                        found.insert(s.marker.clone(), attr("reason").unwrap_or_default());
                        ours += 1;
                        let _ = self.sqs.delete_message().queue_url(url).receipt_handle(handle).send().await;
                    }
                    (None, Some(handle)) => others.push(handle.to_owned()),
                    _ => {}
                }
            }
            if ours == 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_rejected_by_the_contract_on_every_input() {
        for input in [Input::Orders, Input::Payments, Input::Menu] {
            for kind in Kind::ALL {
                let bytes = payload(kind, "poison-r-1", input);
                let reason = expected_reason(&bytes);
                assert!(reason.is_some(), "{} on {input:?} is a valid event", kind.name());
                assert!(bytes.starts_with(b"poison-r-1 ") || bytes.starts_with(b"{\"id\":\"poison-r-1\""), "{}", kind.name());
                if input != Input::Orders {
                    assert!(std::str::from_utf8(&bytes).is_ok(), "{} is not text for SQS", kind.name());
                    assert!(
                        !bytes.iter().any(|b| *b < 0x20 && !b"\t\n\r".contains(b)),
                        "{}: SQS refuses raw control bytes",
                        kind.name()
                    );
                    assert!(bytes.len() < 256 * 1024, "{}", kind.name());
                } else {
                    assert!(bytes.len() <= 1024 * 1024, "{}", kind.name());
                }
            }
        }
        assert_eq!(expected_reason(&payload(Kind::FarOffTime, "m", Input::Payments)), Some("ts_out_of_range"));
        assert_eq!(expected_reason(&payload(Kind::MalformedJson, "m", Input::Payments)), Some("bad_json"));
        assert_eq!(expected_reason(&payload(Kind::ExtremeNumber, "m", Input::Payments)), Some("schema"));
        assert_eq!(expected_reason(&payload(Kind::WrongType, "m", Input::Payments)), Some("schema"));
    }

    #[test]
    fn the_marker_is_read_back_from_every_kind_and_not_confused_with_a_longer_one() {
        for input in [Input::Orders, Input::Payments] {
            for kind in Kind::ALL {
                let bytes = payload(kind, "poison-r-0-1", input);
                assert_eq!(marker_of(&bytes).as_deref(), Some("poison-r-0-1"), "{}", kind.name());
            }
        }
        assert_eq!(marker_of(b"{\"id\":\"poison-r-0-10\"").as_deref(), Some("poison-r-0-10"));
        assert_eq!(marker_of(b"{\"id\":\"e-1\"}"), None);
    }

    #[test]
    fn the_events_around_the_faults_are_valid() {
        let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let good = payment("m", "100", &format!("\"{now}\""), "\"s1\"");
        assert_eq!(expected_reason(good.as_bytes()), None, "{good}");
    }
}
