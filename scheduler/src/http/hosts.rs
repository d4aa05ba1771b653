//! DNS-rebinding protection for open mode: which `Host` names the HTTP server
//! answers when no API tokens are configured.
//!
//! Without tokens anyone who can reach the port is an operator. On loopback
//! that is only this machine, except for one path in: a web page whose DNS
//! name first resolves to the attacker and then to `127.0.0.1` (DNS
//! rebinding). The browser then sends the page's own name as `Host` and
//! `Origin`, so the same-origin check passes; only the `Host` gives it away.
//! In open mode the server therefore answers only requests addressed to a
//! loopback name or address (`localhost`, `127.0.0.0/8`, `[::1]`, any port)
//! or to a name the operator allowed with `--allowed-host`. Everything else
//! gets 421 Misdirected Request with a message that names the refused host
//! and the flag that allows it.
//!
//! A request without any host (HTTP/1.0 without `Host`) is served: browsers
//! always send one, so such a request cannot come from a rebinding page, and
//! old probes (`nc`, some load balancers) send none.
//!
//! With tokens, the token is what protects the API (a rebinding page does
//! not have it), and the host is not checked.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use axum::http::{HeaderMap, Uri, header};

/// A `--allowed-host` value: a host name or address, with or without a port,
/// or `*` for any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// `*`: every host (turns the protection off).
    Any,
    /// This host on any port.
    Host(String),
    /// This host on this port only.
    HostPort(String, u16),
}

#[derive(Debug, thiserror::Error)]
#[error(
    "--allowed-host {value:?}: {reason}; give a host name or address as the browser's address bar shows it, \
     e.g. `trainyard.internal`, `trainyard.internal:8080`, `10.0.0.5` or `[fd00::5]`"
)]
pub struct BadAllowedHost {
    value: String,
    reason: &'static str,
}

impl FromStr for AllowedHost {
    type Err = BadAllowedHost;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let value = raw.trim();
        let bad = |reason| BadAllowedHost {
            value: raw.to_owned(),
            reason,
        };
        if value == "*" {
            return Ok(Self::Any);
        }
        if value.is_empty() {
            return Err(bad("it is empty"));
        }
        if value.contains("://") || value.contains('/') {
            return Err(bad("it is a URL; give only the host"));
        }
        let (host, port) = split_host(value).ok_or_else(|| bad("it is not HOST or HOST:PORT"))?;
        let host = normalize(host);
        if host.is_empty() || !host.chars().all(is_host_char) {
            return Err(bad("it has characters a host name cannot have"));
        }
        match port {
            None => Ok(Self::Host(host)),
            Some(p) => p
                .parse()
                .map(|p| Self::HostPort(host, p))
                .map_err(|_| bad("its port is not a number from 0 to 65535")),
        }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Host(h) => f.write_str(h),
            Self::HostPort(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Parses `TRAINYARD_ALLOWED_HOSTS`: comma-separated `--allowed-host` values.
pub fn parse_allowed_hosts(raw: &str) -> Result<Vec<AllowedHost>, BadAllowedHost> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(AllowedHost::from_str)
        .collect()
}

/// Letters, digits, `-`, `.`, `_` (seen in container names), and what an
/// IPv6 literal needs (`:`, `[`, `]`, hex digits are letters).
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '[' | ']')
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalize(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// `host[:port]` → (host, port); IPv6 literals keep their brackets.
fn split_host(value: &str) -> Option<(&str, Option<&str>)> {
    if value.starts_with('[') {
        let end = value.find(']')?;
        let (host, rest) = value.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match value.rsplit_once(':') {
        // A bare IPv6 address without brackets is not a valid Host.
        Some((host, _)) if host.contains(':') => None,
        Some((host, port)) => Some((host, Some(port))),
        None => Some((value, None)),
    }
}

/// Whether `host` (without port, normalized) names this machine's loopback.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return Ipv6Addr::from_str(v6).is_ok_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        });
    }
    Ipv4Addr::from_str(host).is_ok_and(|ip| IpAddr::V4(ip).is_loopback())
}

/// The hosts an open-mode server answers: loopback plus the allowed ones.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    allowed: Vec<AllowedHost>,
}

/// A request's host was refused; the message says which and what allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedHost {
    /// The host as sent (printable, shortened).
    pub shown: String,
    /// The name to pass to `--allowed-host` to allow it.
    pub suggestion: String,
}

impl fmt::Display for RefusedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this scheduler has no API tokens, so it only answers requests addressed to \
             localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding); this one was \
             addressed to Host {:?}. If you reach the scheduler under that name, start it \
             with --allowed-host {} (or TRAINYARD_ALLOWED_HOSTS), or give it API tokens \
             (--api-token).",
            self.shown, self.suggestion
        )
    }
}

impl HostPolicy {
    pub fn new(allowed: Vec<AllowedHost>) -> Self {
        Self { allowed }
    }

    pub fn allowed(&self) -> &[AllowedHost] {
        &self.allowed
    }

    /// Checks the request's `Host` header and, when the request line names
    /// one (absolute form, or HTTP/2's `:authority`), that host too.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), RefusedHost> {
        if let Some(raw) = headers.get(header::HOST) {
            self.check_one(raw.as_bytes())?;
        }
        if let Some(authority) = uri.authority() {
            self.check_one(authority.as_str().as_bytes())?;
        }
        Ok(())
    }

    fn check_one(&self, raw: &[u8]) -> Result<(), RefusedHost> {
        let refused = || {
            let text = String::from_utf8_lossy(raw);
            let shown: String = text.chars().take(100).collect();
            let suggestion = std::str::from_utf8(raw)
                .ok()
                .and_then(split_host)
                .map(|(h, _)| normalize(h))
                .filter(|h| !h.is_empty() && h.chars().all(is_host_char))
                .unwrap_or_else(|| "HOST".to_owned());
            RefusedHost { shown, suggestion }
        };
        let text = std::str::from_utf8(raw).map_err(|_| refused())?;
        // `user@host` is not a valid Host; refuse rather than guess.
        if text.contains('@') {
            return Err(refused());
        }
        let (host, port) = split_host(text.trim()).ok_or_else(refused)?;
        let host = normalize(host);
        let port: Option<u16> = match port {
            Some(p) => Some(p.parse().map_err(|_| refused())?),
            None => None,
        };
        if is_loopback(&host) {
            return Ok(());
        }
        let allowed = self.allowed.iter().any(|a| match a {
            AllowedHost::Any => true,
            AllowedHost::Host(h) => *h == host,
            AllowedHost::HostPort(h, p) => *h == host && port == Some(*p),
        });
        if allowed { Ok(()) } else { Err(refused()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(policy: &HostPolicy, host: &str) -> Result<(), RefusedHost> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        policy.check(&Uri::from_static("/api/v1/dags"), &headers)
    }

    #[test]
    fn loopback_names_and_addresses_pass_with_or_without_a_port() {
        let open = HostPolicy::default();
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(check(&open, host), Ok(()), "{host}");
        }
    }

    #[test]
    fn other_hosts_are_refused_and_the_message_names_the_host_and_the_flag() {
        let open = HostPolicy::default();
        for host in [
            "evil.example",
            "rebind.evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.5:8080",
            "[::2]:8080",
            "0.0.0.0:8080",
            "127.1:8080",
            "localhost:notaport",
            "user@localhost",
            "",
        ] {
            let err = check(&open, host).expect_err(host);
            let message = err.to_string();
            assert!(message.contains("--allowed-host"), "{message}");
            assert!(message.contains(&format!("{:?}", host)), "{message}");
        }
        let err = check(&open, "Rebind.Evil.Example:8080").unwrap_err();
        assert_eq!(err.suggestion, "rebind.evil.example");
    }

    #[test]
    fn allowed_hosts_match_by_name_or_by_name_and_port() {
        let policy =
            HostPolicy::new(parse_allowed_hosts("trainyard.internal, gpu-box:8080").unwrap());
        assert_eq!(check(&policy, "trainyard.internal"), Ok(()));
        assert_eq!(check(&policy, "Trainyard.Internal:9999"), Ok(()));
        assert_eq!(check(&policy, "gpu-box:8080"), Ok(()));
        assert!(check(&policy, "gpu-box:8081").is_err());
        assert!(check(&policy, "gpu-box").is_err());
        assert!(check(&policy, "evil.example").is_err());
        let any = HostPolicy::new(vec![AllowedHost::Any]);
        assert_eq!(check(&any, "evil.example"), Ok(()));
    }

    #[test]
    fn an_absolute_request_target_is_checked_as_well_as_host() {
        let open = HostPolicy::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let uri = Uri::from_static("http://evil.example/api/v1/dags");
        assert!(open.check(&uri, &headers).is_err());
        // No host at all (HTTP/1.0): nothing a browser would send; served.
        assert_eq!(
            open.check(&Uri::from_static("/healthz"), &HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn allowed_host_flags_refuse_urls_and_junk() {
        assert_eq!(
            "Example.COM.".parse::<AllowedHost>().unwrap(),
            AllowedHost::Host("example.com".into())
        );
        assert_eq!(
            "[fd00::5]:8080".parse::<AllowedHost>().unwrap(),
            AllowedHost::HostPort("[fd00::5]".into(), 8080)
        );
        for bad in [
            "http://example.com",
            "example.com/x",
            "",
            "a b",
            "host:99999",
            "fd00::5",
        ] {
            let err = bad.parse::<AllowedHost>().expect_err(bad);
            assert!(err.to_string().contains("--allowed-host"), "{err}");
        }
    }
}
