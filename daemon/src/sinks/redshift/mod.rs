//! The Redshift sink: `cafe_store_minute`, one row per (store, window),
//! equal to the DynamoDB aggregate row. This release has its SQL (`sql`);
//! the transports and the flush loop come with the menu path.

pub mod postgres;
pub mod sql;
