//! De-aggregation of Kinesis Producer Library (KPL) aggregated records.
//!
//! Owns: recognising an aggregated record (magic `F3 89 9A C2`, a protobuf
//! `AggregatedRecord`, a 16-byte MD5 trailer over the protobuf) and splitting
//! it into its user records, borrowing from the input. Must not: decide
//! what a sub-record means; each one is an event for `event::decode`.
//!
//! As the Kinesis Client Library does, a record that starts with the magic
//! but whose checksum or protobuf is wrong is not an error: it is treated as
//! one plain record (producers may legitimately send those bytes).
//!
//! The protobuf schema (field numbers): `AggregatedRecord { repeated string
//! partition_key_table = 1; repeated string explicit_hash_key_table = 2;
//! repeated Record records = 3; }` and `Record { uint64 partition_key_index
//! = 1; optional uint64 explicit_hash_key_index = 2; bytes data = 3;
//! repeated Tag tags = 4; }`.

use md5::{Digest, Md5};

/// The first four bytes of every KPL aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const MD5_LEN: usize = 16;

/// One user record inside an aggregated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord<'a> {
    /// Its partition key (from the key table).
    pub partition_key: &'a str,
    /// Its explicit hash key, if the producer set one.
    pub explicit_hash_key: Option<&'a str>,
    /// Its payload: one event.
    pub data: &'a [u8],
    /// Its index in the aggregate: the sub-sequence number checkpoints carry.
    pub sub_sequence_number: u64,
}

/// The user records of `data` if it is a valid KPL aggregate, or `None` if
/// it should be handled as one plain record.
pub fn deaggregate(data: &[u8]) -> Option<Vec<SubRecord<'_>>> {
    if data.len() < MAGIC.len() + MD5_LEN || data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (body, checksum) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - MD5_LEN);
    if Md5::digest(body).as_slice() != checksum {
        return None;
    }
    parse_aggregate(body)
}

/// Builds a KPL aggregated record of `records` (partition key, data), as
/// the KPL would: keys deduplicated into the key table, no explicit hash
/// keys. For producers (the loadgen) and tests; the inverse of
/// [`deaggregate`].
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    let mut recs = Vec::with_capacity(records.len());
    for (key, data) in records {
        let index = match keys.iter().position(|k| k == key) {
            Some(i) => i,
            None => {
                keys.push(key);
                keys.len() - 1
            }
        };
        let mut rec = Vec::with_capacity(data.len() + 8);
        put_varint(1 << 3, &mut rec);
        put_varint(index as u64, &mut rec);
        put_bytes(3, data, &mut rec);
        recs.push(rec);
    }
    for k in &keys {
        put_bytes(1, k.as_bytes(), &mut body);
    }
    for rec in &recs {
        put_bytes(3, rec, &mut body);
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    put_varint(field << 3 | 2, out);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first()?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(head)
    }

    /// The next (field number, wire type), or `None` at the end.
    fn key(&mut self) -> Option<Option<(u64, u8)>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        Some(Some((key >> 3, (key & 7) as u8)))
    }

    fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.bytes().map(drop),
            5 => self.advance(4),
            _ => None,
        }
    }

    fn advance(&mut self, n: usize) -> Option<()> {
        if n > self.buf.len() {
            return None;
        }
        self.buf = &self.buf[n..];
        Some(())
    }
}

struct RawRecord<'a> {
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data: &'a [u8],
}

fn parse_record(buf: &[u8]) -> Option<RawRecord<'_>> {
    let mut r = Reader { buf };
    let mut out = RawRecord { partition_key_index: 0, explicit_hash_key_index: None, data: &[] };
    let mut has_key = false;
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 0) => {
                out.partition_key_index = r.varint()?;
                has_key = true;
            }
            (2, 0) => out.explicit_hash_key_index = Some(r.varint()?),
            (3, 2) => out.data = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    has_key.then_some(out)
}

fn parse_aggregate(body: &[u8]) -> Option<Vec<SubRecord<'_>>> {
    let mut r = Reader { buf: body };
    let mut partition_keys = Vec::new();
    let mut hash_keys = Vec::new();
    let mut raw = Vec::new();
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => partition_keys.push(std::str::from_utf8(r.bytes()?).ok()?),
            (2, 2) => hash_keys.push(std::str::from_utf8(r.bytes()?).ok()?),
            (3, 2) => raw.push(parse_record(r.bytes()?)?),
            (_, w) => r.skip(w)?,
        }
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, rec)| {
            let partition_key = partition_keys.get(usize::try_from(rec.partition_key_index).ok()?)?;
            let explicit_hash_key = match rec.explicit_hash_key_index {
                Some(k) => Some(*hash_keys.get(usize::try_from(k).ok()?)?),
                None => None,
            };
            Some(SubRecord { partition_key, explicit_hash_key, data: rec.data, sub_sequence_number: i as u64 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        put_bytes(field, bytes, out);
    }

    fn field_varint(field: u64, v: u64, out: &mut Vec<u8>) {
        put_varint(field << 3, out);
        put_varint(v, out);
    }

    /// Builds an aggregate the way the KPL does.
    fn aggregate(keys: &[&str], hash_keys: &[&str], records: &[(u64, Option<u64>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for k in keys {
            field_bytes(1, k.as_bytes(), &mut body);
        }
        for k in hash_keys {
            field_bytes(2, k.as_bytes(), &mut body);
        }
        for (key, hash, data) in records {
            let mut rec = Vec::new();
            field_varint(1, *key, &mut rec);
            if let Some(h) = hash {
                field_varint(2, *h, &mut rec);
            }
            field_bytes(3, data, &mut rec);
            // A tag (field 4) the de-aggregator must skip.
            field_bytes(4, b"\x0a\x03env", &mut rec);
            field_bytes(3, &rec, &mut body);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&Md5::digest(&body));
        out
    }

    #[test]
    fn splits_an_aggregate_into_user_records_with_sub_sequence_numbers() {
        let agg = aggregate(
            &["order-1", "order-2"],
            &["170141183460469231731687303715884105728"],
            &[(0, None, b"{\"a\":1}"), (1, Some(0), b"{\"b\":2}"), (0, None, b"{\"c\":3}")],
        );
        let recs = deaggregate(&agg).expect("valid aggregate");
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[1],
            SubRecord {
                partition_key: "order-2",
                explicit_hash_key: Some("170141183460469231731687303715884105728"),
                data: b"{\"b\":2}",
                sub_sequence_number: 1,
            }
        );
        assert_eq!((recs[2].partition_key, recs[2].data, recs[2].sub_sequence_number), ("order-1", &b"{\"c\":3}"[..], 2));
    }

    #[test]
    fn anything_else_is_a_plain_record() {
        assert_eq!(deaggregate(b"{\"v\":1}"), None, "no magic");
        let mut agg = aggregate(&["k"], &[], &[(0, None, b"x")]);
        let last = agg.len() - 1;
        agg[last] ^= 1;
        assert_eq!(deaggregate(&agg), None, "bad checksum");
        // A valid checksum over a body that points past its key table.
        assert_eq!(deaggregate(&aggregate(&["k"], &[], &[(5, None, b"x")])), None, "bad key index");
        // Truncated protobuf with a matching checksum.
        let body = vec![0x0a, 0x05, b'a'];
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&body);
        bad.extend_from_slice(&Md5::digest(&body));
        assert_eq!(deaggregate(&bad), None, "truncated");
        assert_eq!(deaggregate(&MAGIC), None, "too short");
    }

    #[test]
    fn aggregate_round_trips_with_a_shared_key_table() {
        let agg = super::aggregate(&[("o-1", b"a"), ("o-2", b"bb"), ("o-1", b"ccc")]);
        let recs = deaggregate(&agg).expect("valid");
        let got: Vec<_> = recs.iter().map(|r| (r.partition_key, r.data, r.sub_sequence_number)).collect();
        assert_eq!(got, vec![("o-1", &b"a"[..], 0), ("o-2", &b"bb"[..], 1), ("o-1", &b"ccc"[..], 2)]);
    }

    #[test]
    fn an_empty_aggregate_has_no_records() {
        assert_eq!(deaggregate(&aggregate(&[], &[], &[])), Some(vec![]));
    }
}
