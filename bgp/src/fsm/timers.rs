//! The FSM's timers (RFC 4271 §8.1.1, §10) as deadlines; the driver only
//! sees the earliest one.

use std::time::Instant;

/// Which timer expired (RFC 4271 events 9–13; IdleHold is the automatic
/// restart delay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    DelayOpen,
    IdleHold,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Timers {
    pub connect_retry: Option<Instant>,
    pub hold: Option<Instant>,
    pub keepalive: Option<Instant>,
    pub delay_open: Option<Instant>,
    pub idle_hold: Option<Instant>,
}

impl Timers {
    fn all(&self) -> [(Timer, Option<Instant>); 5] {
        [
            (Timer::Hold, self.hold),
            (Timer::Keepalive, self.keepalive),
            (Timer::DelayOpen, self.delay_open),
            (Timer::ConnectRetry, self.connect_retry),
            (Timer::IdleHold, self.idle_hold),
        ]
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.all().iter().filter_map(|(_, d)| *d).min()
    }

    /// The earliest timer due at `now`, cleared; ties go to the hold timer
    /// first, then keepalive, DelayOpen, ConnectRetry, IdleHold.
    pub fn take_expired(&mut self, now: Instant) -> Option<Timer> {
        let (timer, _) = self
            .all()
            .into_iter()
            .filter_map(|(t, d)| d.filter(|d| *d <= now).map(|d| (t, d)))
            .min_by_key(|(_, d)| *d)?;
        *self.slot(timer) = None;
        Some(timer)
    }

    pub fn slot(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::ConnectRetry => &mut self.connect_retry,
            Timer::Hold => &mut self.hold,
            Timer::Keepalive => &mut self.keepalive,
            Timer::DelayOpen => &mut self.delay_open,
            Timer::IdleHold => &mut self.idle_hold,
        }
    }

    pub fn clear(&mut self) {
        *self = Timers::default();
    }
}
