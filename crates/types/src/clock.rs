//! The one clock cairn's own timers read: lease expiry, auth token expiry, and the time the
//! leader stamps into commands. In the default build it is the system's (monotonic for
//! deadlines, wall for timestamps). In the test-only `failpoints` build the fault layer can
//! jump the wall clock forward or back and make both run fast or slow (`clock_offset_ms`, `clock_rate` in
//! [`crate::faults`]), which is how the chaos harness's `clock` nemesis reaches every timer that
//! decides safety here. (Raft's election and heartbeat timers run inside openraft on tokio's
//! clock; those are not skewed by this layer.)

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, for deadlines (the monotonic clock, as skewed by the fault layer).
#[inline]
pub fn now() -> Instant {
    #[cfg(feature = "failpoints")]
    let t = skew::now();
    #[cfg(not(feature = "failpoints"))]
    let t = Instant::now();
    t
}

/// Milliseconds since the Unix epoch, for timestamps (the wall clock, as skewed).
#[inline]
pub fn wall_ms() -> u64 {
    let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    #[cfg(feature = "failpoints")]
    let real = real + skew::drift_ms();
    real.max(0) as u64
}

/// How far [`now`] has moved from the real clock since `anchor`, for tests.
pub fn since(anchor: Instant) -> Duration {
    now().saturating_duration_since(anchor)
}

#[cfg(feature = "failpoints")]
mod skew {
    use std::sync::RwLock;
    use std::time::Instant;

    /// The skewed clock: from `real` (a real instant) it has run at `rate`, and reads `virt`
    /// there; the wall clock has `jump_ms` on top.
    struct Skew {
        real: Instant,
        virt: Instant,
        rate: f64,
        jump_ms: i64,
    }

    static SKEW: RwLock<Option<Skew>> = RwLock::new(None);

    /// The monotonic clock: rate skew only (a monotonic clock never jumps; NTP slews it).
    fn read(s: &Skew, real_now: Instant) -> Instant {
        s.virt + real_now.saturating_duration_since(s.real).mul_f64(s.rate)
    }

    pub fn now() -> Instant {
        let real = Instant::now();
        match &*SKEW.read().expect("clock lock") {
            Some(s) => read(s, real),
            None => real,
        }
    }

    /// The wall clock's difference from the real one, in ms: the rate's drift plus the jump.
    pub fn drift_ms() -> i64 {
        let real = Instant::now();
        match &*SKEW.read().expect("clock lock") {
            Some(s) => {
                let v = read(s, real);
                let drift = if v >= real {
                    v.duration_since(real).as_millis() as i64
                } else {
                    -(real.duration_since(v).as_millis() as i64)
                };
                drift + s.jump_ms
            }
            None => 0,
        }
    }

    /// Sets the jump and the rate from now on; the clock keeps its current reading (apart
    /// from the change of jump).
    pub fn set(jump_ms: i64, rate: f64) {
        let real = Instant::now();
        let mut g = SKEW.write().expect("clock lock");
        // Where the clock is now, without its jump: the new rate runs from there.
        let virt = match &*g {
            Some(s) => {
                let ran = real.saturating_duration_since(s.real).mul_f64(s.rate);
                s.virt + ran
            }
            None => real,
        };
        *g = Some(Skew { real, virt, rate, jump_ms });
    }
}

/// Sets the fault layer's skew (failpoints builds): a jump of `jump_ms` and a rate.
#[cfg(feature = "failpoints")]
pub fn set_skew(jump_ms: i64, rate: f64) {
    skew::set(jump_ms, rate);
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_runs_fast_and_a_jump_moves_it() {
        let t0 = now();
        set_skew(0, 2.0);
        std::thread::sleep(Duration::from_millis(100));
        let ran = since(t0);
        assert!(ran >= Duration::from_millis(190), "{ran:?}");
        let wall = wall_ms();
        set_skew(5_000, 1.0);
        assert!(wall_ms() >= wall + 5_000, "the wall clock jumps");
        assert!(since(t0) < Duration::from_millis(5_000), "the monotonic clock does not");
        set_skew(0, 1.0);
    }
}
