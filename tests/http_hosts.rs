//! DNS rebinding, end to end: a `trainyard scheduler` process in open mode
//! (no API tokens, loopback) answers only requests addressed to loopback or
//! to a host given with `--allowed-host` / `TRAINYARD_ALLOWED_HOSTS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::Cluster;

/// `GET path` with this `Host` over a fresh connection: (status, whole response).
fn get(addr: &str, host: &str, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    (status, out)
}

#[tokio::test]
async fn an_open_scheduler_answers_loopback_and_allowed_hosts_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    let cluster = Cluster::start(
        dir,
        &[
            "--allowed-host",
            "trainyard.test",
            "--allowed-host",
            "ci.example:8443",
        ],
    )
    .await;
    let addr = cluster.addrs.http.clone();
    let port = addr.rsplit(':').next().unwrap().to_owned();

    let (status, text) = get(&addr, "evil.example", "/api/v1/dags");
    assert_eq!(status, 421, "{text}");
    assert!(
        text.contains("--allowed-host evil.example"),
        "the refusal says which flag allows the host: {text}"
    );
    let (status, text) = get(&addr, &format!("rebind.evil.example:{port}"), "/");
    assert_eq!(status, 421, "{text}");

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("trainyard.test:{port}"),
        "ci.example:8443".to_owned(),
    ] {
        let (status, text) = get(&addr, &host, "/api/v1/dags");
        assert_eq!(status, 200, "Host {host}: {text}");
    }
    let (status, _) = get(&addr, "ci.example:9999", "/api/v1/dags");
    assert_eq!(
        status, 421,
        "a host allowed with a port is allowed on that port only"
    );
}

#[tokio::test]
async fn allowed_hosts_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    let cluster = Cluster::start_with_env(
        dir,
        &[],
        vec![(
            "TRAINYARD_ALLOWED_HOSTS",
            "ci.example:8443, other.example".to_owned(),
        )],
    )
    .await;
    let addr = cluster.addrs.http.clone();
    for (host, want) in [
        ("ci.example:8443", 200),
        ("other.example", 200),
        ("evil.example", 421),
    ] {
        let (status, text) = get(&addr, host, "/api/v1/dags");
        assert_eq!(status, want, "Host {host}: {text}");
    }
}
