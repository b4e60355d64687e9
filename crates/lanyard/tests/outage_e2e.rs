//! The datastore goes away under a running server on PostgreSQL, and comes back.
//! The server reaches PostgreSQL through a loopback TCP relay the test can cut (so
//! the shared PostgreSQL other tests use keeps running): while it is cut, `GET
//! /ready` answers 503 at once naming the datastore, admin calls fail fast with a
//! clear error, and both recover by themselves when the relay is restored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PgDb, ServerProc, TD};

/// A TCP relay to `target`; while `cut`, it drops every connection (open and new).
struct Relay {
    addr: String,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    from.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if flag.load(Ordering::SeqCst) {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, cut }
    }
}

/// `GET /ready`: (status, body, how long it took).
fn ready(http_addr: &str) -> (u16, String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(http_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body, start.elapsed())
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datastore_outage_is_reported_at_once_and_recovers_by_itself() {
    let db = PgDb::create().await;
    // postgres://user:pw@HOST:PORT/db → the same through the relay.
    let (scheme_user, rest) = db.url.rsplit_once('@').unwrap();
    let (hostport, dbname) = rest.split_once('/').unwrap();
    let relay = Relay::start(hostport.to_string());
    let url = format!("{scheme_user}@{}/{dbname}", relay.addr);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), Some(&url), None);
    let entry = |path: &str| {
        server.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://{TD}{path}"),
            "--parent-id",
            &format!("spiffe://{TD}/lanyard/agent/n1"),
            "--selector",
            "unix:uid:1000",
            "--owner",
            "team-a",
            "--environment",
            "test",
        ])
    };
    assert_eq!(ready(&server.http_addr).0, 200);
    assert!(entry("/before").status.success());

    relay.cut.store(true, Ordering::SeqCst);
    wait_for("/ready to report the outage", || {
        ready(&server.http_addr).0 == 503
    });
    let (status, body, took) = ready(&server.http_addr);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("datastore=unreachable"), "{body}");
    // Answered from the probe's last result, not after a database timeout (the
    // bound is generous for a loaded 2-core machine; it took 5 s and more before).
    assert!(took < Duration::from_secs(2), "/ready took {took:?}");
    let start = Instant::now();
    let o = entry("/during");
    let took = start.elapsed();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("datastore is unreachable") && err.contains("nothing was read or changed"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the write took {took:?} to fail"
    );

    relay.cut.store(false, Ordering::SeqCst);
    wait_for("/ready to recover", || ready(&server.http_addr).0 == 200);
    wait_for("writes to work again", || entry("/after").status.success());
    let list = server.ok(&["entry", "list"]);
    assert!(
        list.contains("/before") && list.contains("/after") && !list.contains("/during"),
        "{list}"
    );
    drop(server);
    db.drop_db().await;
}
