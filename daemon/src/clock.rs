//! The daemon's one clock: Unix seconds, the unit of every token lifetime,
//! backoff deadline and idle timer. In production it is the wall clock, so
//! a machine that slept through an expiry or an auto-lock deadline sees it
//! passed when it wakes. In-process tests use a clock that follows tokio's
//! (`tokio::time::pause` / `advance`), so timers can be driven without waiting.

/// Where the daemon reads the time from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The wall clock (`SystemTime`).
    Wall,
    /// Starts at the wall clock and then moves with `tokio::time::Instant`;
    /// with tokio's time paused it moves only when the test advances it.
    Tokio {
        /// Unix seconds when the clock was made.
        wall: i64,
        /// tokio's instant at the same moment.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's time from now on (tests). Must be made
    /// inside the runtime whose clock it follows.
    pub fn following_tokio() -> Clock {
        Clock::Tokio {
            wall: latchkey_client::unix_now(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Nanoseconds since the Unix epoch now: for what needs finer steps
    /// than a second (the rate limits' buckets). The same clock as
    /// [`Clock::now`]; 0 for a wall clock set before 1970.
    pub fn now_nanos(&self) -> u64 {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match self {
            Clock::Wall => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, nanos),
            Clock::Tokio { wall, start } => {
                let base = u64::try_from(*wall)
                    .unwrap_or(0)
                    .saturating_mul(1_000_000_000);
                base.saturating_add(nanos(tokio::time::Instant::now().duration_since(*start)))
            }
        }
    }

    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        match self {
            Clock::Wall => latchkey_client::unix_now(),
            Clock::Tokio { wall, start } => {
                let elapsed = tokio::time::Instant::now().duration_since(*start);
                wall.saturating_add(i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
            }
        }
    }
}
