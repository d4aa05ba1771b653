//! A limit on failed logins per client address, so a token cannot be guessed
//! through the login form at network speed.
//!
//! Each client (see [`super::client::client_key`]) has a leaky bucket: a
//! login attempt puts one unit in, a successful one takes it back out, and
//! the bucket drains at [`LoginLimit::per_minute`] units a minute. A client
//! whose bucket holds [`LoginLimit::burst`] units is refused with 429 and
//! `Retry-After` until it has drained one, whether its token is right or not
//! (otherwise the limit would still answer the guess). Reserving the unit
//! before the token is checked keeps concurrent guesses within the limit.
//!
//! The map of buckets is bounded ([`LoginLimit::max_clients`]): a full map
//! first forgets buckets that have drained, then the emptiest one, so many
//! addresses cost memory up to the bound and no further. Time comes from the
//! injected [`Clock`].
//!
//! Why not `governor`: its keyed limiter charges every attempt with no way to
//! give a successful one back, its key map only shrinks when something calls
//! `retain_recent` (a background task to own), and it reads its own clock
//! type rather than the scheduler's [`Clock`]. What is needed here is a
//! hundred lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};

/// How many failed logins a client may make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoginLimit {
    /// Failures in a row allowed before the limit applies.
    pub burst: u32,
    /// Failures forgiven per minute after that.
    pub per_minute: u32,
    /// Clients remembered at most (each costs a few dozen bytes).
    pub max_clients: usize,
}

impl Default for LoginLimit {
    fn default() -> Self {
        Self {
            burst: 10,
            per_minute: 10,
            max_clients: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Units in the bucket at `at`.
    level: f64,
    at: DateTime<Utc>,
}

/// The failed-login buckets of every client; shared by all requests.
#[derive(Debug)]
pub struct LoginLimiter {
    limit: LoginLimit,
    clock: Arc<dyn Clock>,
    /// Client key → bucket; at most `limit.max_clients` entries.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A login attempt that took a unit from its client's allowance; give it
/// back with [`LoginLimiter::succeeded`] when the token was right.
#[derive(Debug)]
#[must_use = "a successful login gives its unit back with LoginLimiter::succeeded"]
pub struct LoginAttempt {
    client: IpAddr,
}

/// Refused: too many failed logins from this client.
#[derive(Debug, Clone, PartialEq)]
pub struct TooManyLogins {
    /// Until the client may try again.
    pub retry_after: Duration,
    pub limit: LoginLimit,
}

impl std::fmt::Display for TooManyLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Too many failed logins from your address (the limit is {} in a row, then {} a minute). \
             Try again in {} seconds, with a token given to the scheduler with --api-token.",
            self.limit.burst,
            self.limit.per_minute,
            self.retry_after.as_secs().max(1)
        )
    }
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(LoginLimit::default(), Arc::new(SystemClock))
    }
}

impl LoginLimiter {
    pub fn new(limit: LoginLimit, clock: Arc<dyn Clock>) -> Self {
        Self {
            limit,
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> LoginLimit {
        self.limit
    }

    /// Units drained per second.
    fn rate(&self) -> f64 {
        f64::from(self.limit.per_minute) / 60.0
    }

    fn drained(&self, b: Bucket, now: DateTime<Utc>) -> f64 {
        let secs = (now - b.at).num_milliseconds().max(0) as f64 / 1000.0;
        (b.level - secs * self.rate()).max(0.0)
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        // A panic while holding the lock leaves a plain map behind; keep using it.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a unit for a login attempt by `client`, or says how long it must wait.
    pub fn begin(&self, client: IpAddr) -> Result<LoginAttempt, TooManyLogins> {
        let now = self.clock.now();
        let mut buckets = self.buckets();
        let level = buckets.get(&client).map_or(0.0, |b| self.drained(*b, now));
        let burst = f64::from(self.limit.burst.max(1));
        if level + 1.0 > burst {
            let rate = self.rate();
            let wait = if rate > 0.0 {
                ((level + 1.0 - burst) / rate).ceil()
            } else {
                f64::from(u32::MAX)
            };
            return Err(TooManyLogins {
                retry_after: Duration::from_secs(wait.max(1.0) as u64),
                limit: self.limit,
            });
        }
        if !buckets.contains_key(&client) && buckets.len() >= self.limit.max_clients.max(1) {
            self.make_room(&mut buckets, now);
        }
        buckets.insert(
            client,
            Bucket {
                level: level + 1.0,
                at: now,
            },
        );
        Ok(LoginAttempt { client })
    }

    /// The attempt's token was right: its unit goes back.
    pub fn succeeded(&self, attempt: LoginAttempt) {
        let now = self.clock.now();
        let mut buckets = self.buckets();
        if let Some(b) = buckets.get(&attempt.client).copied() {
            let level = (self.drained(b, now) - 1.0).max(0.0);
            if level == 0.0 {
                buckets.remove(&attempt.client);
            } else {
                buckets.insert(attempt.client, Bucket { level, at: now });
            }
        }
    }

    /// Forgets drained buckets; if none has drained, the emptiest one.
    fn make_room(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: DateTime<Utc>) {
        buckets.retain(|_, b| self.drained(*b, now) > 0.0);
        if buckets.len() >= self.limit.max_clients.max(1) {
            let emptiest = buckets
                .iter()
                .min_by(|a, b| self.drained(*a.1, now).total_cmp(&self.drained(*b.1, now)))
                .map(|(k, _)| *k);
            if let Some(k) = emptiest {
                buckets.remove(&k);
            }
        }
    }

    /// Clients remembered now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limiter(limit: LoginLimit) -> (LoginLimiter, ManualClock) {
        let clock = ManualClock::new(DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap());
        (LoginLimiter::new(limit, Arc::new(clock.clone())), clock)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ten_failures_pass_the_eleventh_waits_six_seconds_then_one_more_passes() {
        let (l, clock) = limiter(LoginLimit::default());
        let me = ip("10.0.0.1");
        for _ in 0..10 {
            let _failed = l.begin(me).unwrap();
        }
        let refused = l.begin(me).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(6));
        assert!(refused.to_string().contains("6 seconds"), "{refused}");
        // Another address is not affected.
        let _other = l.begin(ip("10.0.0.2")).unwrap();
        clock.advance(chrono::Duration::seconds(6));
        let _one_more = l.begin(me).unwrap();
        assert!(l.begin(me).is_err());
    }

    #[test]
    fn successful_logins_do_not_count() {
        let (l, _clock) = limiter(LoginLimit::default());
        let me = ip("10.0.0.1");
        for _ in 0..100 {
            let a = l.begin(me).unwrap();
            l.succeeded(a);
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn many_addresses_never_grow_the_map_past_its_bound() {
        let limit = LoginLimit {
            max_clients: 100,
            ..LoginLimit::default()
        };
        let (l, clock) = limiter(limit);
        for i in 0..10_000u32 {
            let _failed = l.begin(IpAddr::V4(i.into())).unwrap();
            assert!(l.tracked() <= 100);
            if i % 1000 == 0 {
                clock.advance(chrono::Duration::seconds(1));
            }
        }
        assert_eq!(l.tracked(), 100);
        // Once they have drained, a new client's arrival forgets them all.
        clock.advance(chrono::Duration::minutes(5));
        let _fresh = l.begin(ip("192.0.2.1")).unwrap();
        assert_eq!(l.tracked(), 1);
    }
}
