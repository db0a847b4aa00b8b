//! The order state machine of the contract.
//!
//! Owns: which status may follow which. Must not: store orders (the daemon's
//! `cafe-orders` sink does) or decide what a rejected transition costs.

use serde::Deserialize;

/// The life cycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Created by `order.placed`.
    Placed,
    /// Accepted by the store.
    Confirmed,
    /// Being made.
    Preparing,
    /// Ready for pick-up.
    Ready,
    /// Handed over; final.
    Completed,
    /// Cancelled; final.
    Cancelled,
}

impl OrderStatus {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Preparing => "preparing",
            OrderStatus::Ready => "ready",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Whether an order in `self` may move to `next`.
    pub fn may_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Placed, Confirmed | Cancelled)
                | (Confirmed, Preparing | Cancelled)
                | (Preparing, Ready | Cancelled)
                | (Ready, Completed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;

    #[test]
    fn legal_transitions_are_exactly_the_contracts() {
        let all = [Placed, Confirmed, Preparing, Ready, Completed, Cancelled];
        let legal = [
            (Placed, Confirmed), (Placed, Cancelled), (Confirmed, Preparing), (Confirmed, Cancelled),
            (Preparing, Ready), (Preparing, Cancelled), (Ready, Completed),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.may_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }
}
