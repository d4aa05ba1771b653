//! Live log followers, bounded.
//!
//! A follower is one open `…/logs/stream` of a running task. Each followed
//! (run, task) has one broadcast channel, whose ring buffer
//! ([`FOLLOW_BUFFER`] lines) is allocated when the first follower arrives
//! and freed when the last one leaves: the [`Follower`] guard gives its
//! place back on drop, so a channel lives exactly as long as someone reads
//! it. Nothing creates a channel but [`Followers::follow`], which the HTTP
//! layer calls only for a task that exists and has not finished.
//!
//! Followers are limited per client and in total ([`FollowLimits`]), so an
//! open channel costs at most `total × FOLLOW_BUFFER` lines of memory,
//! whatever callers do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use trainyard_core::ids::RunId;

use super::{LogLine, LogStream};

/// Lines a follower may fall behind before it is told it lagged (it can
/// re-read the whole log). About 100 bytes each while nobody reads them.
pub const FOLLOW_BUFFER: usize = 256;

/// How many live log streams the scheduler serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowLimits {
    /// Open streams at most, all clients together (503 beyond).
    pub total: usize,
    /// Open streams at most per client address (429 beyond).
    pub per_client: usize,
    /// How often a quiet stream checks whether its task has finished (and
    /// then ends); also the longest a stream outlives its task.
    pub recheck: Duration,
}

impl Default for FollowLimits {
    fn default() -> Self {
        Self {
            total: 1024,
            per_client: 64,
            recheck: Duration::from_secs(15),
        }
    }
}

/// Why a follower was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    #[error(
        "your address already has {limit} live log streams open (the limit per client); \
         close some (browser tabs on task pages) or read whole logs with GET …/logs"
    )]
    ClientLimit { limit: usize },
    #[error(
        "the scheduler is serving its limit of {limit} live log streams; \
         try again shortly, or read the whole log with GET …/logs"
    )]
    TotalLimit { limit: usize },
}

type Key = (RunId, String);

/// Channels and counts; one lock, held only for map operations.
#[derive(Debug, Default)]
struct Book {
    /// One sender per followed (run, task); removed with its last follower.
    channels: HashMap<Key, broadcast::Sender<LogLine>>,
    /// Open streams per client key; an entry exists only while above zero,
    /// so the map is never larger than `total`.
    by_client: HashMap<IpAddr, usize>,
    /// Open streams, all clients.
    total: usize,
}

/// Every live follower of the scheduler's task logs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Followers {
    limits: FollowLimits,
    book: Arc<Mutex<Book>>,
}

impl Default for Followers {
    fn default() -> Self {
        Self::new(FollowLimits::default())
    }
}

impl Followers {
    pub fn new(limits: FollowLimits) -> Self {
        Self {
            limits,
            book: Arc::default(),
        }
    }

    pub fn limits(&self) -> FollowLimits {
        self.limits
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves plain maps behind; keep using them.
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A follower of (run, task) for `client`, within the limits.
    pub fn follow(&self, run: RunId, task: &str, client: IpAddr) -> Result<Follower, FollowError> {
        let mut book = self.book();
        if book.total >= self.limits.total {
            return Err(FollowError::TotalLimit {
                limit: self.limits.total,
            });
        }
        let mine = book.by_client.get(&client).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(FollowError::ClientLimit {
                limit: self.limits.per_client,
            });
        }
        let key = (run, task.to_owned());
        let rx = book
            .channels
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe();
        book.total += 1;
        *book.by_client.entry(client).or_insert(0) += 1;
        Ok(Follower {
            rx: Some(rx),
            key,
            client,
            book: self.book.clone(),
        })
    }

    /// Hands lines to the followers of (run, task), if it has any.
    pub fn publish(&self, run: RunId, task: &str, attempt: i32, lines: &[(LogStream, String)]) {
        let book = self.book();
        let Some(sender) = book.channels.get(&(run, task.to_owned())) else {
            return;
        };
        for (stream, line) in lines {
            // An error means no receiver: the last follower is leaving and
            // its guard removes the channel.
            let _ = sender.send(LogLine {
                run_id: run,
                task_id: task.to_owned(),
                attempt,
                stream: *stream,
                line: line.clone(),
            });
        }
    }

    /// (channels, open streams): what followers hold now.
    pub fn usage(&self) -> (usize, usize) {
        let book = self.book();
        (book.channels.len(), book.total)
    }
}

/// One open stream; gives its place (and, if last, the channel) back on drop.
#[derive(Debug)]
pub struct Follower {
    /// Always `Some` until drop, which takes it first so the channel's
    /// receiver count no longer includes this follower.
    rx: Option<broadcast::Receiver<LogLine>>,
    key: Key,
    client: IpAddr,
    book: Arc<Mutex<Book>>,
}

impl Follower {
    /// The next line; `Lagged(n)` when `n` lines were missed.
    pub async fn recv(&mut self) -> Result<LogLine, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut book = self
            .book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        book.total = book.total.saturating_sub(1);
        if let Some(n) = book.by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                book.by_client.remove(&self.client);
            }
        }
        // Subscriptions happen under this lock, so nobody joins in between.
        if book
            .channels
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            book.channels.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn channels_live_as_long_as_their_followers() {
        let f = Followers::default();
        let run = RunId::new();
        let a = f.follow(run, "train", ip("10.0.0.1")).unwrap();
        let b = f.follow(run, "train", ip("10.0.0.2")).unwrap();
        let c = f.follow(run, "eval", ip("10.0.0.1")).unwrap();
        assert_eq!(f.usage(), (2, 3));
        drop(a);
        assert_eq!(f.usage(), (2, 2));
        drop(b);
        drop(c);
        assert_eq!(f.usage(), (0, 0));
        assert!(f.book().by_client.is_empty());
    }

    #[test]
    fn followers_are_limited_per_client_and_in_total() {
        let f = Followers::new(FollowLimits {
            total: 3,
            per_client: 2,
            ..FollowLimits::default()
        });
        let run = RunId::new();
        let me = ip("10.0.0.1");
        let _a = f.follow(run, "a", me).unwrap();
        let b = f.follow(run, "b", me).unwrap();
        assert_eq!(
            f.follow(run, "c", me).unwrap_err(),
            FollowError::ClientLimit { limit: 2 }
        );
        let _c = f.follow(run, "c", ip("10.0.0.2")).unwrap();
        assert_eq!(
            f.follow(run, "d", ip("10.0.0.3")).unwrap_err(),
            FollowError::TotalLimit { limit: 3 }
        );
        drop(b);
        let _d = f.follow(run, "d", ip("10.0.0.3")).unwrap();
        // Refusals created nothing.
        assert_eq!(f.usage(), (3, 3));
    }

    #[tokio::test]
    async fn published_lines_reach_every_follower_of_the_task_only() {
        let f = Followers::default();
        let run = RunId::new();
        let mut a = f.follow(run, "train", ip("10.0.0.1")).unwrap();
        let mut other = f.follow(run, "eval", ip("10.0.0.1")).unwrap();
        f.publish(run, "train", 1, &[(LogStream::Stdout, "epoch 1".into())]);
        f.publish(run, "nobody", 1, &[(LogStream::Stdout, "lost".into())]);
        assert_eq!(a.recv().await.unwrap().line, "epoch 1");
        assert!(other.rx.as_mut().unwrap().try_recv().is_err());
        // Publishing for a task nobody follows creates no channel.
        assert_eq!(f.usage().0, 2);
    }
}
