//! What to acknowledge once every outcome of a batch is known.
//!
//! Owns: FIFO hold-back. A FIFO group's messages must be acknowledged in
//! order: once a message of a group is not done, no later message of that
//! group in the batch is deleted either, whatever its outcome (written, a
//! repeat, rejected): they are all made visible again and come back after
//! it, in order, and what was already durable is then a no-op. Messages
//! without a group (a standard queue) are acknowledged one by one.

use std::collections::HashSet;

use super::Ack;
use crate::route::Outcome;

/// A received message's acknowledgement handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Handle for delete and visibility changes.
    pub receipt_handle: String,
    /// FIFO MessageGroupId, if any.
    pub group: Option<String>,
    /// When this daemon received it (its time in flight runs from here).
    pub received_at: std::time::Instant,
}

/// The acknowledgement of each message, in arrival order.
pub fn acks(receipts: Vec<Receipt>, outcomes: &[Outcome]) -> Vec<Ack> {
    let mut held: HashSet<String> = HashSet::new();
    receipts
        .into_iter()
        .zip(outcomes.iter().copied().chain(std::iter::repeat(Outcome::Failed)))
        .map(|(Receipt { receipt_handle, group, .. }, outcome)| {
            let done = match group {
                Some(g) if held.contains(&g) => false,
                Some(g) if !outcome.is_done() => {
                    held.insert(g);
                    false
                }
                _ => outcome.is_done(),
            };
            if done { Ack::Done { receipt_handle } } else { Ack::Retry { receipt_handle } }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, group: Option<&str>) -> Receipt {
        Receipt { receipt_handle: id.into(), group: group.map(Into::into), received_at: std::time::Instant::now() }
    }

    fn done(acks: &[Ack]) -> Vec<bool> {
        acks.iter().map(|a| matches!(a, Ack::Done { .. })).collect()
    }

    #[test]
    fn after_a_failure_its_group_is_held_back_whatever_the_outcomes_but_other_groups_are_not() {
        use Outcome::*;
        let receipts = vec![
            r("1", Some("g1")),
            r("2", Some("g1")),
            r("3", Some("g2")),
            r("4", Some("g1")),
            r("5", None),
            r("6", Some("g1")),
            r("7", None),
            r("8", Some("g2")),
        ];
        // 2 failed; 4 (a rejection) and 6 (written) come after it in g1.
        let outcomes = [Written, Failed, Rejected, Rejected, Failed, Duplicate, Written, Duplicate];
        let acks = acks(receipts, &outcomes);
        assert_eq!(done(&acks), vec![true, false, true, false, false, false, true, true]);
    }

    #[test]
    fn a_missing_outcome_is_a_failure() {
        let acks = acks(vec![r("1", None), r("2", None)], &[Outcome::Written]);
        assert_eq!(done(&acks), vec![true, false]);
    }
}
