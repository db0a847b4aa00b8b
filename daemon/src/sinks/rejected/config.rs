//! `[rejected]`: where events that break the contract go.
//!
//! Owns: the rejected sink's settings and their checks.

use serde::{Deserialize, Serialize};

/// `[rejected]`: where events that break the contract go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejectedConfig {
    /// Queue name or URL.
    pub queue: String,
}

impl Default for RejectedConfig {
    fn default() -> Self {
        RejectedConfig { queue: "cafe-rejected".into() }
    }
}

impl RejectedConfig {
    /// Problems of `[rejected]` as (dotted field, why).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.queue.trim().is_empty() {
            out.push(("rejected.queue".to_owned(), "must not be empty".to_owned()));
        }
        if self.queue.ends_with(".fifo") {
            // Rejections are sent without a MessageGroupId: a FIFO queue
            // would refuse every one, and stall the inputs behind them.
            out.push(("rejected.queue".to_owned(), format!("{:?} must be a standard queue, not FIFO", self.queue)));
        }
        out
    }
}
