//! Counters of what the proxy did with each request, so that a test or chaos scenario can
//! check that its faults actually fired (a rule on a misspelt operation never does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::FaultKind;

/// Counts for one operation, or for all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests sent to the upstream, delayed ones included.
    pub forwarded: u64,
    /// Forwarded requests the upstream did not answer (answered 502 by the proxy).
    pub upstream_errors: u64,
    pub throttle: u64,
    pub error: u64,
    pub server_error: u64,
    pub latency: u64,
    pub late_answer: u64,
    pub reset: u64,
    pub black_hole: u64,
}

/// Counters since the proxy started; [`crate::Proxy::clear`] does not reset them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub total: Counts,
    /// Keyed by operation name ("unknown" when the request named none).
    pub operations: BTreeMap<String, Counts>,
    /// The most requests of each operation the proxy held at once, from
    /// arrival to answer (a delay included): how many calls a client
    /// really had outstanding together.
    #[serde(default)]
    pub peak_in_flight: BTreeMap<String, u64>,
    /// Requests of each operation held now.
    #[serde(default)]
    pub in_flight: BTreeMap<String, u64>,
}

/// One thing that happened to a request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Forwarded,
    UpstreamError,
    Fault(FaultKind),
}

impl Counts {
    fn add(&mut self, event: Event) {
        let counter = match event {
            Event::Forwarded => &mut self.forwarded,
            Event::UpstreamError => &mut self.upstream_errors,
            Event::Fault(FaultKind::Throttle) => &mut self.throttle,
            Event::Fault(FaultKind::Error) => &mut self.error,
            Event::Fault(FaultKind::ServerError) => &mut self.server_error,
            Event::Fault(FaultKind::Latency) => &mut self.latency,
            Event::Fault(FaultKind::LateAnswer) => &mut self.late_answer,
            Event::Fault(FaultKind::Reset) => &mut self.reset,
            Event::Fault(FaultKind::BlackHole) => &mut self.black_hole,
        };
        *counter += 1;
    }
}

impl Stats {
    /// A request of `operation` arrived.
    pub(crate) fn enter(&mut self, operation: &str) {
        let now = self.in_flight.entry(operation.to_owned()).or_default();
        *now += 1;
        let now = *now;
        let peak = self.peak_in_flight.entry(operation.to_owned()).or_default();
        *peak = (*peak).max(now);
    }

    /// A request of `operation` was answered or abandoned.
    pub(crate) fn leave(&mut self, operation: &str) {
        if let Some(now) = self.in_flight.get_mut(operation) {
            *now = now.saturating_sub(1);
        }
    }

    pub(crate) fn record(&mut self, operation: &str, event: Event) {
        self.total.add(event);
        match self.operations.get_mut(operation) {
            Some(counts) => counts.add(event),
            None => {
                let mut counts = Counts::default();
                counts.add(event);
                self.operations.insert(operation.to_owned(), counts);
            }
        }
    }
}
