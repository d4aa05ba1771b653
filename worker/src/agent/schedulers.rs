//! The scheduler replicas a worker was given (`--scheduler a,b,c`) and
//! which one it dials next, so a worker follows a failover without a load
//! balancer.
//!
//! A *round* tries every URL at most once, starting from the one that
//! worked last (its "home"). Within a round the next URL is dialled at
//! once: after a refused or failed connection, and after a standby's "not
//! the leader" — whose leader hint is dialled first when it names one of
//! the configured URLs. Only after a whole round without a leader does the
//! agent back off (its capped exponential back-off) and start over.
//!
//! Why a hint outside the list is ignored: the worker sends its join token
//! and session credential to whatever it dials, so following an address a
//! server hands out would let anything that can answer on a replica's port
//! (or a misconfigured replica) collect them, and a TLS certificate check
//! is only as good as the name dialled. The operator's list is the
//! authority on where the worker's secrets may go; the hint only reorders it.

use tonic::transport::{ClientTlsConfig, Endpoint, Uri};
use tracing::warn;

use super::dial::{self, DialError};

/// What the agent does after a failed dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Dial the (new) current URL at once: the round is not over.
    Now,
    /// Every URL failed in this round: back off, then start over.
    BackOff,
}

/// One configured scheduler URL.
#[derive(Debug, Clone)]
struct Target {
    /// As normalised (`http://` added to a bare `host:port`).
    url: String,
    endpoint: Endpoint,
}

/// The configured scheduler URLs, in order, and where the agent stands.
#[derive(Debug, Clone)]
pub(super) struct Schedulers {
    targets: Vec<Target>,
    /// Dialled next (or connected now).
    current: usize,
    /// Where a round starts: the URL that connected last.
    home: usize,
    /// Which URLs this round has tried.
    tried: Vec<bool>,
}

/// A list with an empty entry (a stray comma is a typo worth reporting,
/// not a URL to skip silently).
fn empty_entry(raw: &str) -> DialError {
    DialError::BadUrl {
        url: raw.to_owned(),
        reason: "the list of scheduler URLs has an empty entry (comma-separated, e.g. \
                 http://sched-a:50051,http://sched-b:50051)"
            .into(),
    }
}

/// Scheme and authority, lower-cased: what makes two URLs the same replica.
fn identity(uri: &Uri) -> Option<(String, String)> {
    Some((
        uri.scheme_str()?.to_ascii_lowercase(),
        uri.authority()?.as_str().to_ascii_lowercase(),
    ))
}

impl Schedulers {
    /// Checks every URL (each error names the bad one) and builds its endpoint.
    pub fn new(urls: &[String], tls: Option<&ClientTlsConfig>) -> Result<Self, DialError> {
        if urls.is_empty() {
            return Err(DialError::BadUrl {
                url: String::new(),
                reason: "no scheduler URL given (--scheduler)".into(),
            });
        }
        if urls.iter().any(|u| u.trim().is_empty()) {
            return Err(empty_entry(&urls.join(",")));
        }
        let targets = urls
            .iter()
            .map(|u| {
                Ok(Target {
                    url: dial::normalise_url(u),
                    endpoint: dial::endpoint(u, tls)?,
                })
            })
            .collect::<Result<Vec<_>, DialError>>()?;
        let n = targets.len();
        Ok(Self {
            targets,
            current: 0,
            home: 0,
            tried: vec![false; n],
        })
    }

    /// The URL dialled next (or connected now).
    pub fn url(&self) -> &str {
        self.targets
            .get(self.current)
            .map_or("", |t| t.url.as_str())
    }

    pub fn endpoint(&self) -> Option<Endpoint> {
        self.targets.get(self.current).map(|t| t.endpoint.clone())
    }

    /// Every configured URL, comma-separated (for logs).
    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
        urls.join(",")
    }

    /// The configured URL naming the same replica as `hint`, if any.
    fn position(&self, hint: &str) -> Option<usize> {
        let hint: Uri = dial::normalise_url(hint).parse().ok()?;
        let want = identity(&hint)?;
        self.targets
            .iter()
            .position(|t| identity(t.endpoint.uri()).as_ref() == Some(&want))
    }

    fn start_round(&mut self) {
        self.tried.iter_mut().for_each(|t| *t = false);
        self.current = self.home;
    }

    /// The dial of the current URL failed with `e` (not fatal): moves on.
    pub fn failed(&mut self, e: &DialError) -> Next {
        if let Some(t) = self.tried.get_mut(self.current) {
            *t = true;
        }
        if let DialError::NotLeader {
            leader: Some(hint),
            url,
            ..
        } = e
        {
            match self.position(hint) {
                Some(i) if !self.tried[i] => {
                    self.current = i;
                    return Next::Now;
                }
                Some(_) => {}
                None => warn!(
                    replica = %url, leader = %hint,
                    "a standby names a leader that is not among this worker's --scheduler URLs; \
                     not dialling it (add it to --scheduler to follow it)"
                ),
            }
        }
        // A dial that hung (a frozen replica) should not open the next round.
        if matches!(e, DialError::TimedOut { .. }) && self.home == self.current {
            self.home = (self.current + 1) % self.targets.len();
        }
        let n = self.targets.len();
        if let Some(i) = (1..n)
            .map(|step| (self.current + step) % n)
            .find(|&i| !self.tried[i])
        {
            self.current = i;
            return Next::Now;
        }
        self.start_round();
        Next::BackOff
    }

    /// Registered with the current URL: it is where the next round starts.
    pub fn connected(&mut self) {
        self.home = self.current;
        self.tried.iter_mut().for_each(|t| *t = false);
    }

    /// The stream to the current scheduler ended. `stalled`: it stopped
    /// acknowledging heartbeats (frozen or cut off), so the others come
    /// first; otherwise (it closed the stream: a restart, or it stepped
    /// down and now answers "not the leader") it is asked again first.
    pub fn stream_ended(&mut self, stalled: bool) {
        if stalled && self.targets.len() > 1 {
            self.home = (self.current + 1) % self.targets.len();
        }
        self.start_round();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// As `AgentOptions::new` splits `--scheduler`.
    fn split_urls(raw: &str) -> Vec<String> {
        raw.split(',').map(|u| u.trim().to_owned()).collect()
    }

    fn list(urls: &str) -> Schedulers {
        Schedulers::new(&split_urls(urls), None).unwrap()
    }

    fn refused(url: &str) -> DialError {
        DialError::Call {
            call: "Register",
            status: tonic::Status::unavailable(format!("{url} refused")),
        }
    }

    fn standby(url: &str, leader: Option<&str>) -> DialError {
        DialError::NotLeader {
            url: url.into(),
            leader: leader.map(str::to_owned),
            message: "not the leader: standby".into(),
        }
    }

    #[test]
    fn urls_are_split_trimmed_and_each_checked() {
        assert!(matches!(
            Schedulers::new(&split_urls("http://a:1,,b:2"), None),
            Err(DialError::BadUrl { .. })
        ));
        let bad = Schedulers::new(&split_urls("http://a:1,http://[::1"), None);
        match bad {
            Err(DialError::BadUrl { url, .. }) => assert_eq!(url, "http://[::1"),
            other => panic!("{other:?}"),
        }
        let s = list("a:1, https://b:2");
        assert_eq!(s.describe(), "http://a:1,https://b:2");
    }

    #[test]
    fn a_round_tries_each_url_once_then_backs_off_and_starts_over() {
        let mut s = list("a:1,b:2,c:3");
        assert_eq!(s.url(), "http://a:1");
        assert_eq!(s.failed(&refused("a")), Next::Now);
        assert_eq!(s.url(), "http://b:2");
        assert_eq!(s.failed(&standby("http://b:2", None)), Next::Now);
        assert_eq!(s.url(), "http://c:3");
        assert_eq!(s.failed(&refused("c")), Next::BackOff);
        assert_eq!(s.url(), "http://a:1");
        // One URL: every failure is a whole round.
        let mut one = list("a:1");
        assert_eq!(one.failed(&refused("a")), Next::BackOff);
        assert_eq!(one.url(), "http://a:1");
    }

    #[test]
    fn a_hint_naming_a_configured_url_is_dialled_next() {
        let mut s = list("http://a:1,http://b:2,http://C:3");
        // a is a standby that knows the leader is c (case and trailing
        // slash do not matter).
        assert_eq!(
            s.failed(&standby("http://a:1", Some("http://c:3/"))),
            Next::Now
        );
        assert_eq!(s.url(), "http://C:3");
        s.connected();
        // c dies: its round starts at c, then goes on in order.
        s.stream_ended(false);
        assert_eq!(s.url(), "http://C:3");
        assert_eq!(s.failed(&refused("c")), Next::Now);
        assert_eq!(s.url(), "http://a:1");
        // a hints at c again, already tried this round: on to b.
        assert_eq!(
            s.failed(&standby("http://a:1", Some("http://c:3"))),
            Next::Now
        );
        assert_eq!(s.url(), "http://b:2");
    }

    #[test]
    fn a_hint_outside_the_list_is_not_followed() {
        let mut s = list("a:1,b:2");
        assert_eq!(
            s.failed(&standby("http://a:1", Some("http://evil:9"))),
            Next::Now
        );
        assert_eq!(s.url(), "http://b:2");
    }

    #[test]
    fn a_stalled_scheduler_goes_last() {
        let mut s = list("a:1,b:2");
        s.connected();
        s.stream_ended(true);
        assert_eq!(s.url(), "http://b:2");
        assert_eq!(s.failed(&refused("b")), Next::Now);
        assert_eq!(s.url(), "http://a:1");
        // A hung dial moves the next round's start past it, too.
        let mut s = list("a:1,b:2");
        assert_eq!(
            s.failed(&DialError::TimedOut {
                url: "http://a:1".into(),
                after: std::time::Duration::from_secs(10)
            }),
            Next::Now
        );
        assert_eq!(s.failed(&refused("b")), Next::BackOff);
        assert_eq!(s.url(), "http://b:2");
    }
}
