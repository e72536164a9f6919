//! The DNS proxy's message path on arbitrary bytes: a query and an upstream reply go through
//! parse, decide, filter (CNAME chain, rebinding guard, cap), judge and encode. It must never
//! panic. Run (stable toolchain):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run dns_message -- -max_total_time=600
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The message path reads `Instant::now()`; it needs no runtime.
    let _ = egressd::dnsproxy::message_path(data);
});
