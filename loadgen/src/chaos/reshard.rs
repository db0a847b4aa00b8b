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

/// Held by each reshard from its choice of shards to the stream ACTIVE
/// again.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Splits (or merges) once, then waits until the stream is active again.
/// One at a time: Kinesis refuses a reshard while the stream is UPDATING
/// from the last (ResourceInUseException), and a profile's reshards may
/// fall within one another's (`repeat`, `--time-scale`).
pub async fn reshard(client: &aws_sdk_kinesis::Client, stream: &str, split: bool) -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
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
    active(client, stream).await
}

/// Waits up to 60 s for the stream to be ACTIVE.
async fn active(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = client.describe_stream_summary().stream_name(stream).send().await?;
        if summary.stream_description_summary().map(|d| d.stream_status()) == Some(&StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{stream} was not active within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two reshards of one stream at once, as a profile's `repeat` or a short
    /// `--time-scale` can start them, both happen: the second waits for the
    /// first's UPDATING to end instead of being refused (on the local
    /// stack's Kinesis, which keeps a stream UPDATING as Kinesis does;
    /// scripts/test.sh starts it).
    #[tokio::test]
    async fn two_reshards_at_once_both_happen_one_after_the_other() {
        std::env::var("AWS_ENDPOINT_URL_KINESIS").expect("the local stack's Kinesis (scripts/local-stack/stack.sh env)");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let client = aws_sdk_kinesis::Client::new(&sdk);
        let stream = format!("loadgen-reshard-{}-{}", std::process::id(), rand::random::<u32>());
        client.create_stream().stream_name(&stream).shard_count(2).send().await.expect("create stream");
        active(&client, &stream).await.expect("the new stream ACTIVE");
        let (a, b) = tokio::join!(reshard(&client, &stream, true), reshard(&client, &stream, true));
        a.expect("the first split");
        b.expect("the second split, after the first");
        assert_eq!(open_shards(&client, &stream).await.expect("shards").len(), 4);
        client.delete_stream().stream_name(&stream).send().await.expect("delete stream");
    }

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
