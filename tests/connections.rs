//! The HTTP connections a client can hold are bounded (`src/listener.rs`):
//! slow headers, idle keep-alive connections and stalled bodies are cut off,
//! and past the connection cap a new connection gets a clear 503 while the
//! ones already open keep working. Raw sockets on loopback against the real
//! `mcpod` binary; every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Longest any read here waits: a connection mcpod should close but does not
/// fails the test instead of hanging it.
const READ_LIMIT: Duration = Duration::from_secs(20);

fn address(mcpod: &Mcpod) -> SocketAddr {
    mcpod
        .url
        .strip_prefix("http://")
        .expect("an http URL")
        .parse()
        .expect("a socket address")
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(READ_LIMIT)).unwrap();
    stream
}

/// Reads until mcpod closes the connection; what it sent before.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = vec![];
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "mcpod did not close the connection within {READ_LIMIT:?} ({e}); got: {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Reads one answer on a connection that stays open (`Content-Length` bodies only).
fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = vec![];
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "connection closed mid-answer: {text}");
        received.extend_from_slice(&buffer[..n]);
    }
}

/// One request on a fresh connection; the whole answer.
fn fetch(address: SocketAddr, path: &str) -> String {
    let mut stream = connect(address);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_until_closed(&mut stream)
}

/// A sample of `/metrics` (the first line starting with `series`).
fn metric(address: SocketAddr, series: &str) -> f64 {
    let text = fetch(address, "/metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let mcpod = Mcpod::start(
        &[],
        &["--header-timeout", "1s", "--keep-alive-timeout", "2s"],
    );
    let address = address(&mcpod);

    // Slowloris: headers begun and trickled, never finished. The timeout runs
    // from the connection's opening; more header lines do not extend it.
    let began = Instant::now();
    let mut slow = connect(address);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut trickle = slow.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for i in 0..40 {
            if write!(trickle, "x-slow-{i}: 1\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let answer = read_until_closed(&mut slow);
    assert!(
        answer.is_empty(),
        "no answer to unfinished headers: {answer}"
    );
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "closed by the header timeout, not before it ({:?})",
        began.elapsed()
    );
    trickler.join().unwrap();

    // A keep-alive connection is served, then closed once it idles.
    let mut idle = connect(address);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let answer = read_answer(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rest = read_until_closed(&mut idle);
    assert!(
        rest.is_empty(),
        "nothing more on an idle connection: {rest}"
    );

    assert_eq!(
        metric(address, "mcpod_http_timeouts_total{kind=\"header\"}"),
        1.0
    );
    assert_eq!(
        metric(address, "mcpod_http_timeouts_total{kind=\"keep_alive\"}"),
        1.0
    );
}

#[test]
fn a_body_shorter_than_its_length_is_answered_408_and_its_connection_closed() {
    let mcpod = Mcpod::start(
        &[("fixture.yaml", manifest("fixture", FIXTURE_IMAGE, ""))],
        &["--body-timeout", "1s"],
    );
    let address = address(&mcpod);

    let mut stream = connect(address);
    stream
        .write_all(
            b"POST /mcp/fixture HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Accept: application/json\r\nContent-Length: 200\r\n\r\n{\"jsonrpc\":\"2.0\",",
        )
        .unwrap();
    let answer = read_until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("--body-timeout"), "says why: {answer}");

    // The connection is gone on mcpod's side too: only the one asking remains.
    wait_until(
        Duration::from_secs(10),
        "the connection to be freed",
        || metric(address, "mcpod_http_connections_open") == 1.0,
    );
    assert_eq!(
        metric(address, "mcpod_http_timeouts_total{kind=\"body\"}"),
        1.0
    );
    assert!(
        containers_of(&mcpod.instance).is_empty(),
        "an unfinished request starts no server"
    );
}

#[test]
fn past_the_connection_cap_new_connections_get_503_until_others_close() {
    let mcpod = Mcpod::start(&[], &["--max-connections", "3"]);
    let address = address(&mcpod);

    // Three connections that say nothing hold the three places. mcpod accepts
    // in order, so the next connection is the fourth.
    let holders: Vec<TcpStream> = (0..3).map(|_| connect(address)).collect();
    let refused = fetch(address, "/health");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let lower = refused.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{refused}");
    assert!(lower.contains("retry-after: 1"), "{refused}");
    assert!(
        refused.contains("too many open connections (the limit is 3)"),
        "{refused}"
    );
    let again = fetch(address, "/health");
    assert!(again.starts_with("HTTP/1.1 503"), "still full: {again}");

    // Once they close, a fresh connection is served again.
    drop(holders);
    wait_until(
        Duration::from_secs(10),
        "/health on a fresh connection",
        || fetch(address, "/health").starts_with("HTTP/1.1 200"),
    );
    assert!(metric(address, "mcpod_http_connections_refused_total") >= 2.0);
    // One line for the burst of refusals, however many there were.
    let logs = mcpod.logs();
    assert_eq!(
        logs.matches("too many open connections: refusing").count(),
        1,
        "{logs}"
    );
}
