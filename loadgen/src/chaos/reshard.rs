//! Splits and merges of the orders stream, straight to Kinesis (not
//! through the proxy): the daemon must notice the new shards, finish each
//! parent before its children, and lose nothing across the change.
//!
//! Owns: choosing the shards and the hash key, and waiting until the stream
//! is active again. Must not: judge what the daemon did.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_kinesis::types::{Shard, StreamStatus};

/// The stream a chaos run reshards.
pub struct Stream {
    /// A client straight to Kinesis.
    pub client: aws_sdk_kinesis::Client,
    /// The stream's name.
    pub name: String,
}

/// An open shard: id and hash key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    id: String,
    start: u128,
    end: u128,
}

fn open(shard: &Shard) -> Option<Open> {
    let ended = shard.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some();
    let range = shard.hash_key_range()?;
    let start = range.starting_hash_key().parse().ok()?;
    let end = range.ending_hash_key().parse().ok()?;
    (!ended).then(|| Open { id: shard.shard_id().to_owned(), start, end })
}

/// The stream's open shards, by hash key.
pub async fn open_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<Vec<Open>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match token.take() {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let resp = req.send().await.with_context(|| format!("listing the shards of {stream}"))?;
        out.extend(resp.shards().iter().filter_map(open));
        match resp.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    out.sort_by_key(|s| s.start);
    Ok(out)
}

/// The widest shard and the hash key that halves it.
fn to_split(shards: &[Open]) -> Option<(&Open, u128)> {
    let widest = shards.iter().filter(|s| s.end > s.start).max_by_key(|s| s.end - s.start)?;
    Some((widest, widest.start + (widest.end - widest.start) / 2 + 1))
}

/// The two adjacent shards with the narrowest joint range.
fn to_merge(shards: &[Open]) -> Option<(&Open, &Open)> {
    shards
        .windows(2)
        .filter(|w| w[0].end.checked_add(1) == Some(w[1].start))
        .min_by_key(|w| w[1].end - w[0].start)
        .map(|w| (&w[0], &w[1]))
}

/// Splits (or merges) once, then waits until the stream is active again.
pub async fn reshard(client: &aws_sdk_kinesis::Client, stream: &str, split: bool) -> anyhow::Result<()> {
    let shards = open_shards(client, stream).await?;
    if split {
        let (shard, key) = to_split(&shards).context("no shard to split")?;
        client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(&shard.id)
            .new_starting_hash_key(key.to_string())
            .send()
            .await
            .with_context(|| format!("splitting {} of {stream}", shard.id))?;
    } else {
        let (a, b) = to_merge(&shards).context("no two adjacent open shards to merge")?;
        client
            .merge_shards()
            .stream_name(stream)
            .shard_to_merge(&a.id)
            .adjacent_shard_to_merge(&b.id)
            .send()
            .await
            .with_context(|| format!("merging {} and {} of {stream}", a.id, b.id))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = client.describe_stream_summary().stream_name(stream).send().await?;
        if summary.stream_description_summary().map(|d| d.stream_status()) == Some(&StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{stream} was not active again within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128) -> Open {
        Open { id: id.into(), start, end }
    }

    #[test]
    fn the_widest_shard_is_split_in_the_middle() {
        let all = [shard("a", 0, 99), shard("b", 100, u128::MAX)];
        let (s, key) = to_split(&all).expect("a shard");
        assert_eq!(s.id, "b");
        assert_eq!(key, 100 + (u128::MAX - 100) / 2 + 1);
        assert_eq!(to_split(&[shard("a", 0, 9)]).map(|(_, k)| k), Some(5));
        assert!(to_split(&[shard("one-key", 7, 7)]).is_none());
    }

    #[test]
    fn only_adjacent_shards_are_merged_the_narrowest_first() {
        let all = [shard("a", 0, 99), shard("b", 100, 149), shard("c", 150, 999), shard("d", 2000, 3000)];
        let (x, y) = to_merge(&all).expect("a pair");
        assert_eq!((x.id.as_str(), y.id.as_str()), ("a", "b"));
        assert!(to_merge(&[shard("a", 0, 99), shard("d", 2000, 3000)]).is_none());
        assert!(to_merge(&[shard("a", 0, u128::MAX)]).is_none());
    }
}
