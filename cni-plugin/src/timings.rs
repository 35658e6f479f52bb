//! Where one invocation's time goes, for latency breakdowns (`cni-bench
//! --timings`, run by `bench/cni.sh` with `CNI_BENCH_TIMINGS=1`).
//!
//! Off unless the environment has `FELIX_CNI_TIMINGS`; then each step's
//! wall time is printed on stderr as one line when the process ends:
//! `felix-cni timings: start=0.812 netns=0.031 … total=2.914` (ms). When
//! the variable's value is the caller's spawn time in nanoseconds since the
//! Unix epoch, `start` is the time from spawn to `main` (exec, dynamic
//! loading); the realtime clock is the one both processes can read
//! without coordination.
//!
//! One process runs one verb on one thread, so the steps are kept in a
//! process-wide list; marking a step costs one clock read when on and one
//! atomic load when off.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable that turns timings on.
pub const ENV: &str = "FELIX_CNI_TIMINGS";
/// The prefix of the stderr line.
pub const LINE_PREFIX: &str = "felix-cni timings:";

static ON: AtomicBool = AtomicBool::new(false);
static STEPS: Mutex<Option<Steps>> = Mutex::new(None);

struct Steps {
    started: Instant,
    last: Instant,
    spawn_to_main: Option<Duration>,
    steps: Vec<(&'static str, Duration)>,
}

/// Starts the clock when `value` (the variable's value) is set; a value
/// that is a spawn time in ns since the epoch also gives `start`.
pub fn start(value: Option<&str>) {
    let Some(value) = value else {
        return;
    };
    let now = Instant::now();
    let spawn_to_main = value.trim().parse::<u128>().ok().and_then(|spawned| {
        let main = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let ns = main.checked_sub(spawned)?;
        Some(Duration::from_nanos(u64::try_from(ns).ok()?))
    });
    *STEPS.lock().unwrap_or_else(PoisonError::into_inner) = Some(Steps {
        started: now,
        last: now,
        spawn_to_main,
        steps: Vec::new(),
    });
    ON.store(true, Ordering::Relaxed);
}

/// Ends the step `name`: the time since the previous mark (or the start).
/// The same name marked twice adds up.
pub fn mark(name: &'static str) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let now = Instant::now();
    if let Some(steps) = STEPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        let took = now.duration_since(steps.last);
        steps.last = now;
        match steps.steps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += took,
            None => steps.steps.push((name, took)),
        }
    }
}

/// The stderr line (`None` when timings are off): `start` first when
/// known, each step in the order first marked, then `rest` (since the
/// last mark) and `total` (since [`start`]).
pub fn line() -> Option<String> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let guard = STEPS.lock().unwrap_or_else(PoisonError::into_inner);
    let steps = guard.as_ref()?;
    let now = Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = LINE_PREFIX.to_owned();
    if let Some(d) = steps.spawn_to_main {
        let _ = write!(out, " start={:.3}", ms(d));
    }
    for (name, d) in &steps.steps {
        let _ = write!(out, " {name}={:.3}", ms(*d));
    }
    let _ = write!(
        out,
        " rest={:.3} total={:.3}",
        ms(now.duration_since(steps.last)),
        ms(now.duration_since(steps.started))
    );
    Some(out)
}

/// Parses a line made by [`line`] into (step, ms) pairs; `None` for any
/// other line.
pub fn parse_line(line: &str) -> Option<Vec<(String, f64)>> {
    let rest = line.trim().strip_prefix(LINE_PREFIX)?;
    rest.split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    // One test: the clock is process-wide.
    #[test]
    fn steps_add_up_and_the_line_parses_back() {
        assert_eq!(line(), None, "off until started");
        mark("ignored");
        let spawned = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            - 2_000_000;
        start(Some(&spawned.to_string()));
        mark("a");
        std::thread::sleep(Duration::from_millis(3));
        mark("b");
        mark("a");
        let text = line().unwrap();
        let pairs = parse_line(&text).unwrap();
        let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["start", "a", "b", "rest", "total"], "{text}");
        let get = |n: &str| pairs.iter().find(|(k, _)| k == n).unwrap().1;
        assert!(get("start") >= 2.0, "{text}");
        assert!(get("b") >= 3.0, "{text}");
        let steps = get("a") + get("b") + get("rest");
        assert!((get("total") - steps).abs() < 0.01, "{text}");
        assert_eq!(parse_line("something else"), None);
    }
}
