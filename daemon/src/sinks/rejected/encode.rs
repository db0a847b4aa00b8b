//! A rejection as an SQS message that SQS accepts, whatever the rejected
//! bytes were.
//!
//! Owns: SQS's content rules for the rejected queue. A message body and a
//! string attribute may hold only #x9 | #xA | #xD | #x20 to #xD7FF | #xE000
//! to #xFFFD | #x10000 to #x10FFFF, and a message (body plus attributes)
//! only the queue's `MaximumMessageSize` bytes. So: a body that is UTF-8 of
//! allowed characters goes as it is; any other goes base64 (attribute
//! `encoding` = `base64`); `detail` has every other character escaped
//! (`\u{1}`) and is bounded; a body still too large goes as much of it as
//! fits (attribute `truncated_from` = its full size in bytes; the
//! `position` attribute says where the whole of it is); an empty body (SQS
//! refuses one) goes as `-` with `encoding` = `empty`. Must not: drop a
//! rejection or send something SQS refuses.

use base64::Engine;
use pipeline::decided::RejectedEvent;

/// Most characters of `detail` sent.
pub const MAX_DETAIL_CHARS: usize = 900;
/// Most bytes of `detail`, `source` and `position` each, escaped, and at
/// most a quarter of the message each (SQS allows queues of 1 KiB).
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// A rejection ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The message body.
    pub body: String,
    /// String attributes, by name.
    pub attributes: Vec<(&'static str, String)>,
    /// Its size as SQS counts it: body, and each attribute's name, type and value.
    pub bytes: usize,
    /// The body's full size in bytes, when only part of it is sent.
    pub truncated_from: Option<usize>,
}

/// Whether SQS allows `c` in a message body or string attribute.
pub fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// `text` with every character SQS refuses escaped, at most `max_chars`
/// characters of it and at most `max_bytes` bytes once escaped.
pub fn sanitize(text: &str, max_chars: usize, max_bytes: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max_chars) {
        let before = out.len();
        if allowed(c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
        if out.len() > max_bytes {
            out.truncate(before);
            break;
        }
    }
    out
}

fn attribute_bytes(name: &str, value: &str) -> usize {
    name.len() + "String".len() + value.len()
}

/// `r` as a message of at most `max_bytes`.
pub fn encode(r: &RejectedEvent, max_bytes: usize) -> Encoded {
    let text = std::str::from_utf8(&r.body).ok().filter(|t| t.chars().all(allowed));
    let each = MAX_ATTRIBUTE_BYTES.min(max_bytes / 4);
    let mut attributes: Vec<(&'static str, String)> = vec![
        ("reason", r.reason.to_owned()),
        ("detail", sanitize(&r.detail, MAX_DETAIL_CHARS, each)),
        ("source", sanitize(&r.source, 256, each)),
        ("position", sanitize(&r.position, 256, each)),
    ];
    attributes.retain(|(_, v)| !v.is_empty());
    if r.body.is_empty() {
        attributes.push(("encoding", "empty".to_owned()));
        let bytes = 1 + attributes.iter().map(|(n, v)| attribute_bytes(n, v)).sum::<usize>();
        return Encoded { body: "-".to_owned(), attributes, bytes, truncated_from: None };
    }
    if text.is_none() {
        attributes.push(("encoding", "base64".to_owned()));
    }
    // Room for the largest `truncated_from` there could be.
    let reserve = attribute_bytes("truncated_from", &usize::MAX.to_string());
    let fixed: usize = attributes.iter().map(|(n, v)| attribute_bytes(n, v)).sum();
    let budget = max_bytes.saturating_sub(fixed + reserve);
    let b64 = base64::engine::general_purpose::STANDARD;
    let (body, truncated_from) = match text {
        Some(t) if t.len() <= budget => (t.to_owned(), None),
        Some(t) => {
            let mut cut = budget;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            (t[..cut].to_owned(), Some(t.len()))
        }
        None => {
            let whole = r.body.len().div_ceil(3) * 4;
            if whole <= budget {
                (b64.encode(&r.body), None)
            } else {
                (b64.encode(&r.body[..(budget / 4 * 3).min(r.body.len())]), Some(r.body.len()))
            }
        }
    };
    // Nothing of it fits (a tiny queue limit): one character, which says so.
    let body = if body.is_empty() { "-".to_owned() } else { body };
    if let Some(n) = truncated_from {
        attributes.push(("truncated_from", n.to_string()));
    }
    let bytes = body.len() + attributes.iter().map(|(n, v)| attribute_bytes(n, v)).sum::<usize>();
    Encoded { body, attributes, bytes, truncated_from }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(body: &[u8], detail: &str) -> RejectedEvent {
        RejectedEvent {
            body: body.to_vec(),
            reason: "schema",
            detail: detail.to_owned(),
            source: "cafe-orders".into(),
            position: "shardId-000000000000/49590338271490256608559692538361571095921575989136588898".into(),
        }
    }

    fn sqs_accepts(e: &Encoded, max: usize) -> bool {
        e.body.chars().all(allowed) && e.attributes.iter().all(|(_, v)| v.chars().all(allowed)) && e.bytes <= max
    }

    #[test]
    fn valid_text_goes_as_it_is() {
        let e = encode(&rejected(b"{\"v\":1,", "expected value"), 1024 * 1024);
        assert_eq!(e.body, "{\"v\":1,");
        assert!(!e.attributes.iter().any(|(n, _)| *n == "encoding" || *n == "truncated_from"));
        assert!(sqs_accepts(&e, 1024 * 1024));
    }

    #[test]
    fn control_characters_and_non_utf8_go_base64_and_detail_is_escaped() {
        for body in [&b"{\"status\":\"\x01\"}"[..], b"\xff\xfe\x00", "ok \u{FFFF}".as_bytes()] {
            let e = encode(&rejected(body, "unknown variant `\u{1}`"), 1024 * 1024);
            assert!(e.attributes.contains(&("encoding", "base64".to_owned())), "{e:?}");
            assert_eq!(base64::engine::general_purpose::STANDARD.decode(&e.body).expect("base64"), body);
            assert!(sqs_accepts(&e, 1024 * 1024), "{e:?}");
        }
        let e = encode(&rejected(b"x", "unknown variant `\u{1}`"), 1024);
        assert!(e.attributes.contains(&("detail", "unknown variant `\\u{1}`".to_owned())), "{e:?}");
        let long = encode(&rejected(b"x", &"d".repeat(5000)), 1024 * 1024);
        assert_eq!(long.attributes.iter().find(|(n, _)| *n == "detail").map(|(_, v)| v.len()), Some(MAX_DETAIL_CHARS));
        // Escaping grows a detail up to ten-fold: bounded in bytes too.
        let escaped = encode(&rejected(b"x", &"\u{1}".repeat(900)), 1024 * 1024);
        let detail = escaped.attributes.iter().find(|(n, _)| *n == "detail").map(|(_, v)| v.clone()).unwrap_or_default();
        assert!(detail.len() <= MAX_ATTRIBUTE_BYTES && detail.ends_with('}'), "{} bytes", detail.len());
    }

    #[test]
    fn an_empty_body_and_the_smallest_queue_limit_still_give_a_message_sqs_accepts() {
        let e = encode(&rejected(b"", "EOF while parsing a value"), 1024 * 1024);
        assert_eq!(e.body, "-");
        assert!(e.attributes.contains(&("encoding", "empty".to_owned())));
        assert!(sqs_accepts(&e, 1024 * 1024) && !e.body.is_empty());
        // SQS's smallest MaximumMessageSize, a long escaped detail, a large body.
        let big: Vec<u8> = vec![0xff; 64 * 1024];
        let e = encode(&rejected(&big, &"\u{1}".repeat(900)), 1024);
        assert!(sqs_accepts(&e, 1024) && !e.body.is_empty(), "{} bytes: {e:?}", e.bytes);
        assert_eq!(e.truncated_from, Some(big.len()));
    }

    #[test]
    fn what_does_not_fit_goes_as_much_as_fits_with_its_full_size() {
        let max = 256 * 1024;
        // 900 KiB of bytes that are not UTF-8: 1.2 MiB as base64.
        let big: Vec<u8> = (0..900 * 1024).map(|i| (i % 251) as u8 | 0x80).collect();
        let e = encode(&rejected(&big, "not UTF-8"), max);
        assert!(sqs_accepts(&e, max), "{} bytes", e.bytes);
        assert_eq!(e.truncated_from, Some(big.len()));
        assert!(e.attributes.contains(&("truncated_from", big.len().to_string())));
        let prefix = base64::engine::general_purpose::STANDARD.decode(&e.body).expect("base64");
        assert!(prefix.len() > max / 2 && big.starts_with(&prefix));
        // Text, cut on a character boundary.
        let text = "é".repeat(200 * 1024);
        let e = encode(&rejected(text.as_bytes(), "schema"), max);
        assert!(sqs_accepts(&e, max) && text.starts_with(&e.body) && e.truncated_from == Some(text.len()));
        // Exactly what fits is not cut.
        let fits = encode(&rejected(b"{}", "schema"), max);
        assert_eq!(fits.truncated_from, None);
    }
}
