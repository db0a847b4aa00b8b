//! The SQL of the Redshift sink, shared by both transports (the Data API's
//! BatchExecuteStatement and the PostgreSQL wire protocol).
//!
//! Owns: the `cafe_store_minute` DDL and the idempotent upsert: rows carry
//! the absolute counters of their (store, window) as DynamoDB holds them and
//! the row's `version` there (bumped by every change), so staging them in a
//! temporary table, deleting the matching keys whose version is older and
//! inserting the keys now absent, in one transaction, leaves the table equal
//! to DynamoDB however often, and in whatever order, flushes are replayed:
//! an older flush landing after a newer one changes nothing. Two flushes of
//! one new key at once collide on the key (PostgreSQL: unique violation;
//! Redshift: serializable isolation violation); the loser is retried. Must
//! not: run anything.
//!
//! Limits honoured: at most 40 statements per batch and 100 KB per statement
//! (the Data API's), so a large flush becomes several batches, each a whole
//! transaction on its own keys. The Data API's batches take no parameters,
//! so values are literals: store ids are validated to `[A-Za-z0-9._-]` by the
//! contract, windows are formatted here and counters are integers; quotes
//! are escaped anyway.

use pipeline::window::{Counters, WindowId};

/// One row as DynamoDB holds it: its key, absolute counters and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRow {
    /// (store, window).
    pub id: WindowId,
    /// Absolute counters.
    pub counters: Counters,
    /// The DynamoDB row's `version`: how many changes it has had.
    pub version: i64,
}

/// The table the contract names.
pub const TABLE: &str = "cafe_store_minute";
/// Most statements in one batch (Data API BatchExecuteStatement).
pub const MAX_STATEMENTS: usize = 40;
/// Most bytes in one statement (Data API).
pub const MAX_STATEMENT_BYTES: usize = 100_000;

/// `CREATE TABLE IF NOT EXISTS` for `cafe_store_minute` (PostgreSQL and Redshift).
pub fn create_table(table: &str) -> String {
    let counters: Vec<String> = Counters::NAMES.iter().map(|n| format!("{n} BIGINT NOT NULL DEFAULT 0")).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (store VARCHAR(32) NOT NULL, window_start TIMESTAMP NOT NULL, {}, version BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (store, window_start))",
        counters.join(", ")
    )
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `2026-11-22T08:15:00Z` -> `'2026-11-22 08:15:00'`.
fn timestamp(window: &str) -> String {
    literal(&window.trim_end_matches('Z').replace('T', " "))
}

fn row_values(row: &MirrorRow) -> String {
    let nums: Vec<String> = row.counters.values().iter().map(i64::to_string).collect();
    format!("({}, {}, {}, {})", literal(&row.id.store), timestamp(&row.id.window), nums.join(", "), row.version)
}

/// The batches that upsert `rows` into `table`; each batch is one
/// transaction's statements.
/// `rows` must hold each key once.
pub fn upsert_batches(table: &str, rows: &[MirrorRow]) -> Vec<Vec<String>> {
    let stage = format!("{table}_stage");
    let columns = format!("store, window_start, {}, version", Counters::NAMES.join(", "));
    let stage_columns = format!("{stage}.store, {stage}.window_start, {}, {stage}.version", {
        let c: Vec<String> = Counters::NAMES.iter().map(|n| format!("{stage}.{n}")).collect();
        c.join(", ")
    });
    let head = format!("INSERT INTO {stage} ({columns}) VALUES ");
    let mut batches = Vec::new();
    let mut inserts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let fixed = 4; // create stage, delete, insert, drop
    let flush_batch = |inserts: &mut Vec<String>, batches: &mut Vec<Vec<String>>| {
        if inserts.is_empty() {
            return;
        }
        let mut b = vec![format!("CREATE TEMP TABLE {stage} (LIKE {table})")];
        b.append(inserts);
        b.push(format!(
            "DELETE FROM {table} USING {stage} WHERE {table}.store = {stage}.store AND {table}.window_start = {stage}.window_start AND {table}.version < {stage}.version"
        ));
        b.push(format!(
            "INSERT INTO {table} ({columns}) SELECT {stage_columns} FROM {stage} LEFT JOIN {table} ON {table}.store = {stage}.store AND {table}.window_start = {stage}.window_start WHERE {table}.store IS NULL"
        ));
        b.push(format!("DROP TABLE {stage}"));
        batches.push(b);
    };
    for row in rows {
        let v = row_values(row);
        if !cur.is_empty() && cur.len() + 2 + v.len() > MAX_STATEMENT_BYTES {
            inserts.push(std::mem::take(&mut cur));
            if inserts.len() + fixed >= MAX_STATEMENTS {
                flush_batch(&mut inserts, &mut batches);
            }
        }
        if cur.is_empty() {
            cur.push_str(&head);
        } else {
            cur.push_str(", ");
        }
        cur.push_str(&v);
    }
    if !cur.is_empty() {
        inserts.push(cur);
    }
    flush_batch(&mut inserts, &mut batches);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(store: &str, minute: u32) -> MirrorRow {
        MirrorRow {
            id: WindowId { store: store.into(), window: format!("2026-11-22T08:{minute:02}:00Z") },
            counters: Counters { orders: i64::from(minute), revenue_cents: 100, ..Counters::default() },
            version: 3,
        }
    }

    #[test]
    fn one_small_flush_is_one_transaction() {
        let b = upsert_batches(TABLE, &[row("s1", 1), row("s'2", 2)]);
        assert_eq!(b.len(), 1);
        let stmts = &b[0];
        assert_eq!(stmts.len(), 5);
        assert!(stmts[0].starts_with("CREATE TEMP TABLE cafe_store_minute_stage"));
        assert!(stmts[1].contains("('s1', '2026-11-22 08:01:00', 1, 0, 100,"), "{}", stmts[1]);
        assert!(stmts[1].contains(", 0, 3), ('s''2'"), "the version is last: {}", stmts[1]);
        assert!(stmts[1].contains("'s''2'"), "quotes are escaped: {}", stmts[1]);
        assert!(stmts[2].starts_with("DELETE FROM cafe_store_minute USING"));
        assert!(
            stmts[2].ends_with("cafe_store_minute.version < cafe_store_minute_stage.version"),
            "only older rows go: {}",
            stmts[2]
        );
        assert!(stmts[3].ends_with("WHERE cafe_store_minute.store IS NULL"), "only absent keys come in: {}", stmts[3]);
    }

    #[test]
    fn large_flushes_respect_the_data_api_limits() {
        let rows: Vec<_> = (0..100_000).map(|i| row(&format!("store-{i}"), (i % 60) as u32)).collect();
        let batches = upsert_batches(TABLE, &rows);
        assert!(batches.len() > 1);
        let mut inserted = 0;
        for b in &batches {
            assert!(b.len() <= MAX_STATEMENTS, "{}", b.len());
            for s in b {
                assert!(s.len() <= MAX_STATEMENT_BYTES, "{}", s.len());
                if s.starts_with("INSERT INTO cafe_store_minute_stage") {
                    inserted += s.matches("('store-").count();
                }
            }
        }
        assert_eq!(inserted, rows.len());
    }

    #[test]
    fn the_ddl_has_every_contract_counter() {
        let ddl = create_table(TABLE);
        for n in Counters::NAMES {
            assert!(ddl.contains(&format!("{n} BIGINT")), "{n}");
        }
        assert!(ddl.contains("version BIGINT"));
    }
}
