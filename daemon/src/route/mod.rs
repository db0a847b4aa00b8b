//! Routing by event type: every event goes to its handler, whatever input
//! it came from (the contract's "any input accepts any event type").
//!
//! Owns: the two stages between any source and the sinks. `decide`: one
//! hop onto the CPU pool per batch (`decide.rs`: decoding, fraud scoring,
//! menu digests). `write`: payments and menu items to their DynamoDB
//! writes, order events through the state machine against stored state
//! (`apply_orders.rs`), then every rejection, the decide stage's and the
//! state machine's, to the rejected queue. It returns one [`Outcome`] per
//! input, in order, once every write the batch caused is known. Must not:
//! spawn tasks, make channels, or acknowledge anything: sources do that
//! from the outcomes (an SQS delete in FIFO order per group, a Kinesis
//! checkpoint).

pub mod apply_orders;
pub mod apply_payments;
pub mod decide;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use pipeline::decided::RejectedEvent;
use pipeline::event::{Event, Rejection};
use pipeline::fraud::{FraudEngine, Rules};
use pipeline::orders::ShardPos;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use apply_orders::{Fate, apply_orders};
pub use apply_orders::{OrderCache, OrderCaches, OrderHasher, OrderStore};
use apply_payments::apply_payments;
pub use apply_payments::{FraudStateCache, StateTraffic};
pub use decide::{Decided, Input, Position, Unscored, Work};

use crate::bridge::CpuPool;
use crate::internal_events::{
    BatchStaged, EventLatency, EventRejected, EventsOut, FraudHistorySize, FraudStateUsed, InternalEvent, MenuImageWritten,
    OrderStatesRead, PaymentDecided, Stage, StageFinished, StagePanicked,
};
use crate::metrics::Metrics;
use crate::sinks::WriteOutcome;
use crate::sinks::dynamodb::DynamoDbSink;
use crate::sinks::rejected::RejectedSink;

/// What became of one input, for its source's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its writes are durable now.
    Written,
    /// Its writes were durable before (a replay): nothing changed.
    Duplicate,
    /// It breaks the contract and is durably in the rejected queue.
    Rejected,
    /// Not durable: give it back to its source.
    Failed,
}

impl Outcome {
    /// Whether the source may acknowledge it.
    pub fn is_done(self) -> bool {
        self != Outcome::Failed
    }

    /// The label value of `cafe_pipeline_events_total{outcome}`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// A batch after the decide stage.
#[derive(Debug)]
pub struct DecidedBatch {
    /// The inputs, in arrival order.
    pub inputs: Vec<Input>,
    /// What was decided about each, in the same order.
    pub decided: Vec<Decided>,
    /// When the batch left the decide stage.
    pub decided_at: Instant,
}

/// Where payments are scored (`[fraud] state`).
#[derive(Debug, Clone)]
pub enum Scoring {
    /// In the decide stage, against this process's history (the engine
    /// keeps its own copy of the rules; a reload sets it).
    Process(Arc<Mutex<FraudEngine>>),
    /// In the write stage, against the history every instance shares, by
    /// the rules in [`Tunables`].
    Shared {
        /// Key states this process read or wrote.
        cache: Arc<FraudStateCache>,
    },
}

/// What a reload (SIGHUP) may change while batches run: the work factors
/// and the fraud rules. Each batch takes the values in force when it
/// starts and keeps them to its end.
#[derive(Debug)]
pub struct Tunables {
    current: std::sync::RwLock<Arc<Tuned>>,
}

/// One set of the values in [`Tunables`].
#[derive(Debug)]
pub struct Tuned {
    /// Work factors.
    pub work: Work,
    /// How long a partial batch of an SQS input waits for more
    /// (`pipeline.linger_ms`).
    pub linger: std::time::Duration,
    /// The fraud rules (the shared state's; the in-process engine has its own).
    pub rules: Arc<Rules>,
}

impl Tunables {
    /// Starting with `tuned`.
    pub fn new(tuned: Tuned) -> Self {
        Tunables { current: std::sync::RwLock::new(Arc::new(tuned)) }
    }

    /// The values in force.
    pub fn get(&self) -> Arc<Tuned> {
        Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// From the next batch on, `tuned`.
    pub fn set(&self, tuned: Tuned) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tuned);
    }
}

/// Everything the two stages use: the sinks, the CPU pool, the fraud scoring.
#[derive(Debug, Clone)]
pub struct Router {
    /// Payments, menu items, the fraud state and the aggregates of all but
    /// orders.
    pub dynamodb: DynamoDbSink,
    /// Orders and their aggregate rows: the DynamoDB sink in the daemon.
    pub orders: Arc<dyn OrderStore>,
    /// Rejected events.
    pub rejected: RejectedSink,
    /// The one CPU pool.
    pub pool: CpuPool,
    /// Fraud scoring, shared by every input.
    pub scoring: Scoring,
    /// Work factors and the shared state's rules, which a reload may change.
    pub tunables: Arc<Tunables>,
    /// Order transactions written at once by one batch.
    pub sink_concurrency: usize,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

impl Router {
    /// From the next batch on, these work factors and fraud rules (a
    /// reload). The in-process engine gets `engine_rules` on the CPU pool,
    /// where its lock is taken; its history stays. Returns whether it
    /// applied; when not, nothing changed.
    pub async fn retune(&self, tuned: Tuned, engine_rules: Rules) -> bool {
        // The engine first: when it fails, nothing has changed.
        if let Scoring::Process(engine) = &self.scoring {
            let engine = Arc::clone(engine);
            let set = self.pool.run(move || engine.lock().unwrap_or_else(|e| e.into_inner()).set_rules(engine_rules));
            if set.await.is_err() {
                return false;
            }
        }
        self.tunables.set(tuned);
        true
    }

    /// Whether payments are scored in the decide stage (`[fraud] state =
    /// "process"`): then a shard's batches must be decided one at a time,
    /// in shard order, for the fraud history to see its payments in order.
    pub fn scores_in_decide(&self) -> bool {
        matches!(self.scoring, Scoring::Process(_))
    }

    /// The decide stage: one hop onto the CPU pool for the whole batch.
    pub async fn decide(&self, inputs: Vec<Input>) -> DecidedBatch {
        let started = Instant::now();
        BatchStaged { stage: Stage::Decide, events: inputs.len() }.emit(&self.metrics);
        let inputs = Arc::new(inputs);
        let engine = match &self.scoring {
            Scoring::Process(engine) => Some(Arc::clone(engine)),
            Scoring::Shared { .. } => None,
        };
        let (work, batch) = (self.tunables.get().work, Arc::clone(&inputs));
        let decided_at = now_rfc3339();
        // The engine's lock is taken on the pool only, never on a runtime worker.
        let decided = self
            .pool
            .run(move || {
                let decided = decide::decide_batch(&batch, engine.as_deref(), work, &decided_at);
                let keys = engine.map(|e| e.lock().unwrap_or_else(|e| e.into_inner()).tracked_keys());
                (decided, keys)
            })
            .await;
        StageFinished { stage: Stage::Decide, elapsed: started.elapsed() }.emit(&self.metrics);
        let inputs = Arc::try_unwrap(inputs).unwrap_or_else(|shared| (*shared).clone());
        let decided = match decided {
            Ok((d, keys)) => {
                if let Some(keys) = keys {
                    FraudHistorySize { keys }.emit(&self.metrics);
                }
                d
            }
            Err(e) => {
                // A bug, not bad input (decoding never panics on input): give
                // the inputs back rather than lose them.
                StagePanicked { stage: Stage::Decide, events: inputs.len(), message: &e.to_string() }.emit(&self.metrics);
                inputs.iter().map(|_| Decided::Failed).collect()
            }
        };
        DecidedBatch { inputs, decided, decided_at: Instant::now() }
    }

    /// The write stage for one decided batch from `source`: the inputs back
    /// with an outcome for each, in order, once every write is known.
    /// `orders` caches order states between batches where that is valid (a
    /// leased shard).
    ///
    /// A panic inside (a bug: no input can cause one) fails the whole batch
    /// instead of ending the stage's task, which would stall its input for
    /// good: every outcome is `Failed`, so the source gives the batch back
    /// or retries it, and the order cache, which may hold what the
    /// panicking write left half done, is emptied.
    pub async fn write(&self, source: &str, batch: DecidedBatch, orders: &OrderCache) -> (Vec<Input>, Vec<Outcome>) {
        StageFinished { stage: Stage::QueueToWrite, elapsed: batch.decided_at.elapsed() }.emit(&self.metrics);
        let DecidedBatch { inputs, decided, .. } = batch;
        match crate::bridge::catch_panic(self.write_batch(source, &inputs, decided, orders)).await {
            Ok(outcomes) => (inputs, outcomes),
            Err(crate::bridge::Panicked(message)) => {
                StagePanicked { stage: Stage::Write, events: inputs.len(), message: &message }.emit(&self.metrics);
                orders.clear();
                // What the write had set aside goes as it would have.
                let gone = orders.take_gone();
                if !gone.is_empty() {
                    self.pool.drop_on_pool(gone);
                }
                let failed = vec![Outcome::Failed; inputs.len()];
                (inputs, failed)
            }
        }
    }

    /// The outcomes of one batch's writes (see [`Router::write`]).
    async fn write_batch(&self, source: &str, inputs: &[Input], decided: Vec<Decided>, orders: &OrderCache) -> Vec<Outcome> {
        let started = Instant::now();
        let mut outcomes = vec![Outcome::Failed; inputs.len()];
        let (mut payments, mut payment_at) = (Vec::new(), Vec::new());
        let (mut unscored, mut unscored_at) = (Vec::new(), Vec::new());
        let (mut menus, mut menu_at) = (Vec::new(), Vec::new());
        let (mut order_events, mut order_at): (Vec<Arc<Event>>, Vec<usize>) = (Vec::new(), Vec::new());
        let mut rejections: Vec<(usize, Rejection)> = Vec::new();
        for (i, d) in decided.into_iter().enumerate() {
            match d {
                Decided::Payment(p) => {
                    payments.push(*p);
                    payment_at.push(i);
                }
                Decided::Unscored(u) => {
                    unscored.push(*u);
                    unscored_at.push(i);
                }
                Decided::Menu(m) => {
                    menus.push(*m);
                    menu_at.push(i);
                }
                Decided::Order(e) => {
                    order_events.push(e);
                    order_at.push(i);
                }
                Decided::Rejected(r) => rejections.push((i, r)),
                Decided::Failed => {}
            }
        }
        let applied_at = now_rfc3339();
        let order_refs: Vec<&Event> = order_events.iter().map(|e| &**e).collect();
        // A shard's events are judged at their position in the stream
        // (replays give the first pass's answers); a queue's messages
        // have none.
        let order_pos: Vec<Option<&ShardPos>> = order_at.iter().map(|&i| inputs[i].position.shard_pos()).collect();
        let metrics = &self.metrics;
        let shared = async {
            match &self.scoring {
                Scoring::Shared { cache } if !unscored.is_empty() => {
                    let decided_at = now_rfc3339();
                    let n = unscored.len();
                    let mut traffic = StateTraffic::default();
                    let rules = Arc::clone(&self.tunables.get().rules);
                    let out =
                        apply_payments(&self.dynamodb, unscored, &rules, cache, &self.pool, &decided_at, &mut traffic).await;
                    FraudStateUsed { payments: n, traffic }.emit(metrics);
                    out
                }
                // Unscored payments with no shared state: a bug; given back.
                _ => (vec![None; unscored.len()], vec![WriteOutcome::Failed; unscored.len()]),
            }
        };
        let (payment_out, (scored, scored_out), menu_out, order_fates) = tokio::join!(
            self.dynamodb.write_payments(&payments),
            shared,
            self.dynamodb.write_menu(&menus, &applied_at),
            apply_orders(&*self.orders, &order_refs, &order_pos, orders, &applied_at, self.sink_concurrency, |count| {
                OrderStatesRead { source, count }.emit(metrics);
            }),
        );

        let now = OffsetDateTime::now_utc();
        let mut latencies: Vec<f64> = Vec::with_capacity(inputs.len());
        // An event time ahead of the clock (within the bound allowed) counts as 0.
        let mut latency = |t: OffsetDateTime| latencies.push((now - t).as_seconds_f64().max(0.0));
        for ((&i, p), o) in payment_at.iter().zip(&payments).zip(payment_out) {
            outcomes[i] = from_write(o);
            if o == WriteOutcome::Written {
                PaymentDecided { decision: p.decision }.emit(metrics);
                latency(p.event_time);
            }
        }
        for ((&i, p), o) in unscored_at.iter().zip(&scored).zip(scored_out) {
            outcomes[i] = from_write(o);
            if let (WriteOutcome::Written, Some(p)) = (o, p) {
                PaymentDecided { decision: p.decision }.emit(metrics);
                latency(p.event_time);
            }
        }
        for ((&i, m), o) in menu_at.iter().zip(&menus).zip(menu_out) {
            outcomes[i] = from_write(o);
            if o == WriteOutcome::Written {
                MenuImageWritten { bytes: m.digest.image_bytes as u64, hash_ok: m.digest.image_ok }.emit(metrics);
                latency(m.event_time);
            }
        }
        for (&i, fate) in order_at.iter().zip(order_fates) {
            match fate {
                Fate::Applied(t) => {
                    outcomes[i] = Outcome::Written;
                    latency(t);
                }
                Fate::Repeat => outcomes[i] = Outcome::Duplicate,
                Fate::Rejected(r) => rejections.push((i, r)),
                Fate::Failed => {}
            }
        }

        EventLatency { source, seconds: &latencies }.emit(metrics);

        // Rejections are durable before their inputs count as done.
        if !rejections.is_empty() {
            rejections.sort_by_key(|(i, _)| *i);
            let events: Vec<RejectedEvent> = rejections.iter().map(|(i, r)| rejected_event(&inputs[*i], r, source)).collect();
            let sent = self.rejected.send(&events).await;
            for ((i, r), o) in rejections.iter().zip(sent) {
                outcomes[*i] = match o {
                    WriteOutcome::Written => {
                        EventRejected { reason: r.reason }.emit(metrics);
                        Outcome::Rejected
                    }
                    // Sent before (a redelivery or a replay): not again.
                    WriteOutcome::Duplicate => Outcome::Duplicate,
                    WriteOutcome::Failed => Outcome::Failed,
                };
            }
        }
        for outcome in [Outcome::Written, Outcome::Duplicate, Outcome::Rejected, Outcome::Failed] {
            let count = outcomes.iter().filter(|&&o| o == outcome).count() as u64;
            EventsOut { source, outcome, count }.emit(metrics);
        }
        StageFinished { stage: Stage::Write, elapsed: started.elapsed() }.emit(metrics);
        // Decoded on the pool: freed there. An event a shard's part still
        // holds for a retry is only let go of here (the part hands it to the
        // pool when it is durable): no job for that. The payments scored
        // here against the shared history were made on this worker: they
        // stay. The orders that left the cache in this write (finished,
        // pushed out) go with them: their histories hold strings the pool
        // decoded, and a pushed-out order is cold (docs/performance.md).
        order_events.retain(|e| Arc::strong_count(e) == 1);
        let gone = orders.take_gone();
        if !(payments.is_empty() && menus.is_empty() && order_events.is_empty() && gone.is_empty()) {
            self.pool.drop_on_pool((payments, menus, order_events, gone));
        }
        outcomes
    }

    /// Frees what a source kept of a written batch: its order events on
    /// the CPU pool, which decoded them (`CpuPool::drop_on_pool`), with the
    /// batch's inputs when it has order events (their bytes and positions,
    /// a shard's: off its one serial task, which frees them one by one);
    /// the rest here (a source's copy of a boxed payment or menu item was
    /// made on this worker, from the decide stage's).
    pub fn free_decided(&self, inputs: Vec<Input>, decided: Vec<Decided>) {
        let events: Vec<Arc<Event>> = decided
            .into_iter()
            .filter_map(|d| match d {
                Decided::Order(e) => Some(e),
                _ => None,
            })
            .collect();
        if !events.is_empty() {
            self.pool.drop_on_pool((inputs, events));
        }
    }

    /// Frees a shard's order cache when its task ends: up to
    /// `order_cache_size` orders with their histories, freed on the CPU
    /// pool, not on the runtime worker the other shards' tasks share.
    pub fn free_cache(&self, cache: OrderCache) {
        self.pool.drop_on_pool(cache);
    }

    /// Both stages, one after the other (a shard's batch).
    pub async fn process(&self, source: &str, inputs: Vec<Input>, orders: &OrderCache) -> (Vec<Input>, Vec<Outcome>) {
        let batch = self.decide(inputs).await;
        self.write(source, batch, orders).await
    }
}

fn from_write(o: WriteOutcome) -> Outcome {
    match o {
        WriteOutcome::Written => Outcome::Written,
        WriteOutcome::Duplicate => Outcome::Duplicate,
        WriteOutcome::Failed => Outcome::Failed,
    }
}

/// The rejected queue's copy of `input`: its bytes as received.
fn rejected_event(input: &Input, r: &Rejection, source: &str) -> RejectedEvent {
    RejectedEvent {
        body: input.data.to_vec(),
        reason: r.reason.code(),
        detail: r.detail.clone(),
        source: source.to_owned(),
        position: input.position.to_string(),
    }
}

/// What the tests of more than one module share.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    /// Orders in memory, each written only at the version its write read
    /// (as the table's condition does): what the shard made durable. With
    /// its second field set, every write panics instead (a store's bug).
    #[derive(Debug, Default)]
    pub(crate) struct MemoryOrders(pub(crate) std::sync::Mutex<HashMap<String, pipeline::orders::OrderState>>, pub(crate) bool);

    impl crate::route::OrderStore for MemoryOrders {
        fn read_orders<'a>(
            &'a self,
            ids: &'a [String],
        ) -> futures::future::BoxFuture<'a, Result<HashMap<String, pipeline::orders::OrderState>, crate::aws::AwsError>> {
            let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let found = ids.iter().filter_map(|id| Some((id.clone(), held.get(id)?.clone()))).collect();
            Box::pin(std::future::ready(Ok(found)))
        }

        fn write_orders<'a>(
            &'a self,
            writes: &'a [pipeline::decided::OrderChange],
            _: &'a str,
            _: usize,
        ) -> futures::future::BoxFuture<'a, Vec<crate::sinks::dynamodb::order_items::OrderWriteOutcome>> {
            use crate::sinks::dynamodb::order_items::OrderWriteOutcome;
            assert!(!self.1, "the store's bug");
            let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let outcomes = writes
                .iter()
                .map(|w| {
                    if held.get(&w.order_id).map(|s| s.history.len()) != w.before {
                        return OrderWriteOutcome::Conflict;
                    }
                    held.insert(w.order_id.clone(), w.after.clone());
                    OrderWriteOutcome::Written
                })
                .collect();
            Box::pin(std::future::ready(outcomes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router whose sinks refuse every call (nothing listens on their
    /// port): its writes fail, and it still frees what it was handed.
    fn refusing_router() -> Router {
        let metrics = Arc::new(Metrics::new());
        let fraud = pipeline::fraud::FraudConfig::default();
        Router {
            dynamodb: crate::sinks::dynamodb::refusing_sink(),
            orders: Arc::new(crate::sinks::dynamodb::refusing_sink()),
            rejected: crate::sinks::rejected::refusing_sink(),
            pool: CpuPool::new(1, Arc::clone(&metrics)).expect("a pool"),
            scoring: Scoring::Process(Arc::new(Mutex::new(FraudEngine::new(fraud.clone()).expect("engine")))),
            tunables: Arc::new(Tunables::new(Tuned {
                work: Work { fraud_work_factor: 1, menu_json_rounds: 1, max_future_secs: 300 },
                linger: std::time::Duration::from_millis(1),
                rules: Arc::new(Rules::new(fraud).expect("rules")),
            })),
            sink_concurrency: 1,
            metrics,
        }
    }

    fn orders(batch: &str) -> Vec<Input> {
        let ts = now_rfc3339();
        (0..3)
            .map(|k| {
                let body = format!(
                    r#"{{"v":1,"id":"{batch}-{k}","type":"order.status","ts":"{ts}","store":"s1","data":{{"order_id":"{batch}-{k}","status":"confirmed"}}}}"#
                );
                Input { data: body.into_bytes(), position: Position::Text(format!("{batch}-{k}")) }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_written_batch_s_events_go_to_the_pool_to_be_freed_when_its_last_holder_lets_go() {
        let router = refusing_router();
        let kept_by_a_part = router.decide(orders("a")).await;
        let alone = router.decide(orders("b")).await;
        assert!(kept_by_a_part.decided.iter().all(|d| matches!(d, Decided::Order(_))), "{:?}", kept_by_a_part.decided);
        // A shard's part keeps its decided events for a retry: the write
        // stage lets go of its references without handing anything over.
        let kept = kept_by_a_part.decided.clone();
        let (_, outcomes) = router.write("orders", kept_by_a_part, &OrderCache::new(3)).await;
        assert!(outcomes.iter().all(|o| *o == Outcome::Failed), "the sinks refuse: {outcomes:?}");
        assert_eq!(router.pool.handed_to_free(), 0, "the part still holds the events");
        // The part, durable, lets go of the last references.
        router.free_decided(Vec::new(), kept);
        assert_eq!(router.pool.handed_to_free(), 1, "handed to the pool");
        // A batch no part holds: the write stage hands its events over.
        router.write("orders", alone, &OrderCache::new(3)).await;
        assert_eq!(router.pool.handed_to_free(), 2, "handed to the pool by the write stage");
        // A shard's order cache, when its task ends.
        router.free_cache(OrderCache::new(3));
        assert_eq!(router.pool.handed_to_free(), 3, "the cache handed to the pool");
    }

    /// The orders that leave the cache in a write (here one placed and
    /// cancelled in the batch) are freed on the CPU pool with the batch's
    /// events, not on the runtime worker that wrote them, even when a
    /// shard's part still holds the events.
    #[tokio::test]
    async fn the_orders_that_leave_the_cache_in_a_write_are_freed_on_the_pool() {
        let router = Router { orders: Arc::new(testing::MemoryOrders::default()), ..refusing_router() };
        let ts = now_rfc3339();
        let event = |id: &str, kind: &str, data: &str| Input {
            data: format!(r#"{{"v":1,"id":"{id}","type":"{kind}","ts":"{ts}","store":"s1","data":{data}}}"#).into_bytes(),
            position: Position::Text(id.to_owned()),
        };
        let batch = router
            .decide(vec![
                event(
                    "e1",
                    "order.placed",
                    r#"{"order_id":"o1","customer_id":"c","channel":"web","items":[{"sku":"a","qty":1,"unit_price_cents":250}],"total_cents":250}"#,
                ),
                event("e2", "order.status", r#"{"order_id":"o1","status":"cancelled"}"#),
            ])
            .await;
        let kept = batch.decided.clone();
        let cache = OrderCache::new(3);
        let (_, outcomes) = router.write("orders", batch, &cache).await;
        assert_eq!(outcomes, [Outcome::Written, Outcome::Written]);
        assert!(cache.is_empty() && cache.take_gone().is_empty(), "the cancelled order left the cache and was handed on");
        assert_eq!(router.pool.handed_to_free(), 1, "its state handed to the pool (the events are the part's)");
        drop(kept);
    }

    /// A write that panics (a bug) fails its batch and empties the cache,
    /// and what the cache had set aside still goes to the CPU pool, as
    /// after a write that ends.
    #[tokio::test]
    async fn a_write_that_panics_hands_what_the_cache_set_aside_to_the_pool() {
        let panics_on_write = testing::MemoryOrders(std::sync::Mutex::default(), true);
        let router = Router { orders: Arc::new(panics_on_write), ..refusing_router() };
        let state = || pipeline::orders::OrderState {
            store: "s1".into(),
            status: pipeline::orders::OrderStatus::Placed,
            total_cents: 250,
            item_count: 1,
            history: Vec::new(),
        };
        let cache = OrderCache::new(1);
        cache.put("x1", Some(state()));
        // Pushes x1 out: set aside.
        cache.put("x2", Some(state()));
        let ts = now_rfc3339();
        let placed = Input {
            data: format!(
                r#"{{"v":1,"id":"e1","type":"order.placed","ts":"{ts}","store":"s1","data":{{"order_id":"o1","customer_id":"c","channel":"web","items":[{{"sku":"a","qty":1,"unit_price_cents":250}}],"total_cents":250}}}}"#
            )
            .into_bytes(),
            position: Position::Text("e1".into()),
        };
        let batch = router.decide(vec![placed]).await;
        let (_, outcomes) = router.write("orders", batch, &cache).await;
        assert_eq!(outcomes, [Outcome::Failed], "the panicking write fails its batch");
        assert!(cache.is_empty(), "the cache emptied");
        assert!(cache.take_gone().is_empty(), "what was set aside was handed on");
        assert_eq!(router.pool.handed_to_free(), 1, "handed to the pool");
    }
}
