//! Wall-clock limits that stretch on slow machines, and waiting for conditions.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// `d` times `WORMHOLE_TIME_FACTOR` (default 1): wall-clock limits stretch on slow machines (the
/// VM lane runs under TCG, 3-10x slower) instead of failing there.
pub fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("WORMHOLE_TIME_FACTOR")
        .ok()
        .and_then(|f| f.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0);
    d.mul_f64(factor)
}

/// Calls `probe` every 50 ms until it returns `Some`, for at most `timeout` ([`scaled`]).
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit, at most `timeout` ([`scaled`]); kills it and returns `None` after
/// that.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let status = poll(timeout, || child.try_wait().expect("try_wait"));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}
