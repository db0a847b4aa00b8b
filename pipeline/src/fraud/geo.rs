//! The IP-to-country table of the `geo` rule.
//!
//! Owns: parsing the configured CIDR networks, flattening nested ones so the
//! innermost wins, and the lookup (one binary search). Must not: know the
//! rule's weight or any payment.

use std::net::IpAddr;

use super::config::{ConfigProblem, IpRange};

/// The IP-to-country table as disjoint, sorted segments: nested networks are
/// flattened at build time so that the innermost network wins and a lookup
/// is one binary search. IPv4 lives in its own table.
#[derive(Debug, Clone, Default)]
pub(super) struct GeoTable {
    v4: Vec<(u128, u128, [u8; 2])>,
    v6: Vec<(u128, u128, [u8; 2])>,
}

impl GeoTable {
    pub(super) fn build(ranges: &[IpRange], problems: &mut Vec<ConfigProblem>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let field = format!("ip_ranges[{i}]");
            let country: [u8; 2] = match r.country.as_bytes() {
                [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => [*a, *b],
                _ => {
                    problems.push(ConfigProblem {
                        field: format!("{field}.country"),
                        why: format!("{:?} is not 2 upper-case letters", r.country),
                    });
                    continue;
                }
            };
            match parse_cidr(&r.cidr) {
                Some((IpAddr::V4(a), len)) if len <= 32 => v4.push(network(u128::from(u32::from(a)), len, 32, country)),
                Some((IpAddr::V6(a), len)) if len <= 128 => v6.push(network(u128::from(a), len, 128, country)),
                _ => problems.push(ConfigProblem {
                    field: format!("{field}.cidr"),
                    why: format!("{:?} is not an IPv4 or IPv6 network like 203.0.113.0/24", r.cidr),
                }),
            }
        }
        GeoTable { v4: flatten(v4), v6: flatten(v6) }
    }

    pub(super) fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let (table, x) = match ip {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => (&self.v4, u128::from(u32::from(v4))),
                None => (&self.v6, u128::from(a)),
            },
        };
        let end = table.partition_point(|(lo, _, _)| *lo <= x);
        table[..end].last().filter(|(_, hi, _)| x <= *hi).map(|(_, _, c)| *c)
    }
}

/// The address range of a network of prefix `len` in a `bits`-wide space.
fn network(addr: u128, len: u32, bits: u32, country: [u8; 2]) -> (u128, u128, [u8; 2]) {
    let host_bits = bits - len;
    let host_mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    let lo = addr & !host_mask;
    (lo, lo | host_mask, country)
}

/// Turns CIDR networks (nested or disjoint, never partly overlapping) into
/// disjoint segments where the innermost network decides the country.
fn flatten(mut nets: Vec<(u128, u128, [u8; 2])>) -> Vec<(u128, u128, [u8; 2])> {
    // Outer networks first when two start at the same address.
    nets.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = Vec::new();
    let mut stack: Vec<(u128, [u8; 2])> = Vec::new();
    // Next address not yet emitted; None once past the top of the space.
    let mut cursor: Option<u128> = Some(0);
    let emit = |cursor: &mut Option<u128>, upto: u128, country: [u8; 2], out: &mut Vec<_>| {
        if let Some(from) = *cursor
            && from <= upto
        {
            out.push((from, upto, country));
            *cursor = upto.checked_add(1);
        }
    };
    for (lo, hi, country) in nets {
        while let Some(&(top_hi, top_c)) = stack.last() {
            if top_hi >= lo {
                break;
            }
            emit(&mut cursor, top_hi, top_c, &mut out);
            stack.pop();
        }
        if let Some(&(_, top_c)) = stack.last()
            && lo > 0
        {
            emit(&mut cursor, lo - 1, top_c, &mut out);
        }
        cursor = Some(lo);
        stack.push((hi, country));
    }
    while let Some((top_hi, top_c)) = stack.pop() {
        emit(&mut cursor, top_hi, top_c, &mut out);
    }
    out
}

pub(super) fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, len) = s.split_once('/')?;
    Some((addr.parse().ok()?, len.parse().ok()?))
}
