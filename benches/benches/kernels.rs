//! The kernels: each path's CPU work per event alone, without I/O or the
//! stages around it (`kernels/`: decoding, fraud scoring, applying order
//! events, the menu stage), in one executable.
//!
//! One executable, not one per file: the release profile links each bench
//! with thin LTO across everything it uses, criterion included, and four
//! links of about 35 to 50 s each (on the 2-core host of
//! docs/performance.md) were a third of `scripts/bench.sh`'s rebuild after
//! a commit. Criterion's ids (`group/function`) are those of the files
//! that were four benches.

/// The daemon's allocator (daemon/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "kernels/decode.rs"]
mod decode;
#[path = "kernels/fraud.rs"]
mod fraud;
#[path = "kernels/menu.rs"]
mod menu;
#[path = "kernels/orders.rs"]
mod orders;

fn main() {
    decode::benches();
    fraud::benches();
    orders::benches();
    menu::benches();
    criterion::Criterion::default().configure_from_args().final_summary();
    if benches::measuring() {
        menu::ratio_to_openssl();
    }
}
