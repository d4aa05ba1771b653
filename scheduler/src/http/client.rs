//! Who is on the other end of the connection, as far as limits care: the
//! peer's IP address, from the `ConnectInfo` that [`super::serve`] attaches
//! to every request.
//!
//! Limits are kept per [`client_key`]: an IPv4 address, or the /64 network
//! of an IPv6 address (one host usually owns a whole /64, so counting single
//! v6 addresses would let one machine look like 2^64 clients). Forwarding
//! headers (`X-Forwarded-For`) are not trusted: anyone can send them.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// The peer address of the request; `None` when the request did not come
/// through a socket (router tests with `oneshot`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl ClientAddr {
    /// The key limits count this client under.
    pub fn key(self) -> IpAddr {
        client_key(self.0)
    }
}

/// An IPv4 address (also when mapped into IPv6), an IPv6 address's /64, or
/// `0.0.0.0` for requests without a peer address (all counted together).
pub fn client_key(addr: Option<IpAddr>) -> IpAddr {
    match addr {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(net))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(Some(a)), client_key(Some(b)));
        assert_ne!(client_key(Some(a)), client_key(Some(c)));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            client_key(Some(mapped)),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_key(None), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
}
