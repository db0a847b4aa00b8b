//! The SQL of the Redshift sink, shared by both transports (the Data API's
//! BatchExecuteStatement and the PostgreSQL wire protocol).
//!
//! Owns: the `cafe_store_minute` DDL and the idempotent upsert: rows carry
//! the absolute counters of their (store, window) as DynamoDB holds them and
//! the row's `version` there (bumped by every change). They are staged in a
//! temporary table and merged in one statement whose update keeps, column by
//! column, whichever of the two versions is newer (`CASE WHEN version <`,
//! `GREATEST`), so the table equals DynamoDB however often, and in whatever
//! order, flushes are replayed: an older flush landing after a newer one
//! changes nothing.
//!
//! Why one MERGE and not a delete of older keys then an insert of absent
//! ones: under PostgreSQL's READ COMMITTED, a flush waiting on another's row
//! lock re-checks only the row it waited for. With delete-then-insert, the
//! newer flush's DELETE skipped the row the older one had just deleted, its
//! INSERT then saw the older one's new row and inserted nothing: the newer
//! version was lost and its pending mark cleared. A MERGE that waited
//! re-evaluates its SET expressions on the row as committed, so the
//! comparison is made against what is really there. Redshift's MERGE
//! (serializable isolation) takes the same statement: a temporary table as
//! source, no condition on `WHEN MATCHED`, no target alias. Each batch locks
//! the table before its merge, so flushes of one table take turns: Redshift
//! enforces no primary key, and under its SNAPSHOT isolation two flushes
//! inserting the same new key would both commit. Must not: run anything.
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

/// `MERGE` of the staged rows into `table`: a key absent is inserted; a key
/// present takes each column from the staged row only if the staged version
/// is newer (the expressions are evaluated on the row as committed, after
/// any lock wait), and the version becomes the greater of the two.
fn merge_statement(table: &str, stage: &str, columns: &str, stage_columns: &str) -> String {
    let newer = format!("{table}.version < {stage}.version");
    let sets: Vec<String> = Counters::NAMES
        .iter()
        .map(|n| format!("{n} = CASE WHEN {newer} THEN {stage}.{n} ELSE {table}.{n} END"))
        .chain(std::iter::once(format!("version = GREATEST({table}.version, {stage}.version)")))
        .collect();
    format!(
        "MERGE INTO {table} USING {stage} ON {table}.store = {stage}.store AND {table}.window_start = {stage}.window_start \
         WHEN MATCHED THEN UPDATE SET {} WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({stage_columns})",
        sets.join(", ")
    )
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
    let merge = merge_statement(table, &stage, &columns, &stage_columns);
    let mut batches = Vec::new();
    let mut inserts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let fixed = 4; // create stage, lock, merge, drop
    let flush_batch = |inserts: &mut Vec<String>, batches: &mut Vec<Vec<String>>| {
        if inserts.is_empty() {
            return;
        }
        let mut b = vec![format!("CREATE TEMP TABLE {stage} (LIKE {table})")];
        b.append(inserts);
        // Flushes of one table take turns: Redshift keeps no unique key, and
        // under SNAPSHOT isolation two flushes inserting the same new key
        // would both commit, leaving it twice.
        b.push(format!("LOCK {table}"));
        b.push(merge.clone());
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
        assert_eq!(stmts[2], "LOCK cafe_store_minute", "flushes of the table take turns");
        let merge = &stmts[3];
        assert!(merge.starts_with("MERGE INTO cafe_store_minute USING cafe_store_minute_stage ON"), "{merge}");
        assert!(
            merge.contains("orders = CASE WHEN cafe_store_minute.version < cafe_store_minute_stage.version THEN"),
            "a column changes only for a newer version: {merge}"
        );
        assert!(merge.contains("version = GREATEST(cafe_store_minute.version, cafe_store_minute_stage.version)"), "{merge}");
        assert!(merge.contains("WHEN NOT MATCHED THEN INSERT"), "absent keys come in: {merge}");
        for n in Counters::NAMES {
            assert!(merge.contains(&format!(" {n} = CASE")), "every counter is merged: {n}");
        }
        assert_eq!(stmts[4], "DROP TABLE cafe_store_minute_stage");
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
