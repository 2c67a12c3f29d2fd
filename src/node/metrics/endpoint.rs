//! The metrics and health endpoint: a small HTTP/1.1 responder on the TCP listener of
//! `metrics.listen`.
//!
//! One request per connection, then the connection is closed: `GET /metrics` (the Prometheus
//! text format), `GET /healthz` (liveness: `200 ok` while the process serves), `GET /readyz`
//! (readiness: `200 ready` while the node takes new work, else `503` and why: shutting down, or
//! its store failed). `HEAD` is answered as `GET` without the body. Anything else is `404`, a
//! method other than `GET` or `HEAD` `405`, a malformed request `400`, a head over
//! [`MAX_HEAD`] bytes `431`, and a request not complete within [`TIMEOUT`] `408`.
//!
//! What it does not do: keep connections alive, read request bodies, speak TLS, or
//! authenticate anyone. It is bound to loopback by default; see `deploy/README.md`. What a
//! client can make it hold is bounded: [`MAX_CONNECTIONS`] connections at once (more are closed
//! unanswered), each with at most [`MAX_HEAD`] bytes, for at most [`TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{CONTENT_TYPE, QueueReading, Reading};
use crate::node::state::Node;
use crate::node::trust;

/// The longest request head read, request line and headers; a longer one is answered `431`.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// How long a connection has to send its request head, and then to read the answer.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; further ones are closed unanswered until one ends.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    Ready,
}

/// A request the endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    route: Route,
    /// `HEAD`: the answer's head only.
    head_only: bool,
}

/// Why a request is not served, as the status answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    Timeout,
    TooLarge,
}

impl Reject {
    fn status(self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest => (400, "Bad Request"),
            Reject::NotFound => (404, "Not Found"),
            Reject::MethodNotAllowed => (405, "Method Not Allowed"),
            Reject::Timeout => (408, "Request Timeout"),
            Reject::TooLarge => (431, "Request Header Fields Too Large"),
        }
    }
}

/// Where a request head ends (the index after its empty line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Whether `s` is an HTTP token (a method or a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads a complete request head: the request line, then header lines, each ending in CRLF
/// (or a bare LF), then an empty line. Headers are checked for form and otherwise ignored.
fn parse(head: &[u8]) -> Result<Request, Reject> {
    let text = std::str::from_utf8(head).map_err(|_| Reject::BadRequest)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(Reject::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::BadRequest);
    };
    if !is_token(method) || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Reject::BadRequest);
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Reject::BadRequest);
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        let name = header.split_once(':').map(|(name, _)| name);
        if !name.is_some_and(is_token) {
            return Err(Reject::BadRequest);
        }
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Reject::MethodNotAllowed),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        "/readyz" => Route::Ready,
        _ => return Err(Reject::NotFound),
    };
    Ok(Request { route, head_only })
}

/// An answer, closing the connection.
fn response(status: (u16, &str), content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let (code, reason) = status;
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves the endpoint until the task is aborted (at the end of the node's shutdown, so that
/// `/readyz` answers `503` while the node drains).
pub(in crate::node) async fn serve(node: Arc<Node>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Over the limit, the connection is dropped (closed) unanswered.
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        continue;
                    };
                    let node = node.clone();
                    answering.spawn(async move {
                        answer(&node, stream).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(node = %node.config.name, error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
        }
    }
}

/// Reads one request from `stream` and answers it, all within [`TIMEOUT`] each way.
async fn answer(node: &Node, mut stream: TcpStream) {
    let request = match tokio::time::timeout(TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(request)) => Ok(request),
        Ok(Err(None)) => return, // The client went away.
        Ok(Err(Some(reject))) => Err(reject),
        Err(_) => Err(Reject::Timeout),
    };
    let bytes = match request {
        Ok(Request { route, head_only }) => {
            let (status, content_type, body) = route_answer(node, route);
            response(status, content_type, &body, head_only)
        }
        Err(reject) => {
            let (code, reason) = reject.status();
            let body = format!("{code} {reason}\n");
            response(reject.status(), "text/plain; charset=utf-8", &body, false)
        }
    };
    let _ = tokio::time::timeout(TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads up to the end of the request head. `Err(None)`: the client closed or failed first.
async fn read_head(stream: &mut TcpStream) -> Result<Request, Option<Reject>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err((!buf.is_empty()).then_some(Reject::BadRequest));
        }
        // Look again only where the end could be: the new bytes and the 3 before them.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            if from + end > MAX_HEAD {
                return Err(Some(Reject::TooLarge));
            }
            return parse(&buf[..from + end]).map_err(Some);
        }
        if buf.len() >= MAX_HEAD {
            return Err(Some(Reject::TooLarge));
        }
    }
}

/// The answer to a request that is served: status, content type and body.
fn route_answer(node: &Node, route: Route) -> ((u16, &'static str), &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match route {
        Route::Health => ((200, "OK"), TEXT, "ok\n".into()),
        Route::Ready => match node.refusing_new_work() {
            None => ((200, "OK"), TEXT, "ready\n".into()),
            Some(why) => (
                (503, "Service Unavailable"),
                TEXT,
                format!("{}\n", why.reason),
            ),
        },
        Route::Metrics => match node.events().metrics() {
            Some(m) => ((200, "OK"), CONTENT_TYPE, m.render(reading(node))),
            None => ((404, "Not Found"), TEXT, "no metrics\n".into()),
        },
    }
}

/// What the gauges show now.
fn reading(node: &Node) -> Reading {
    let queues = node
        .ledger
        .queues()
        .iter()
        .map(|q| QueueReading {
            name: q.name().to_owned(),
            lanes: q.depths(),
            dead_letters: q.dead_letter_count(),
        })
        .collect();
    let own = node.own();
    let (certificates, crls) = trust::expiries(&own.tls);
    Reading {
        queues,
        links: node.links.snapshot(),
        certificates,
        crls,
        store: node.ledger.store_stats(),
        log_pending: node.events().log().map_or(0, |l| l.pending()),
        now: SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Result<Request, Reject> {
        let end = head_end(head.as_bytes()).expect("a complete head");
        assert_eq!(end, head.len(), "{head:?}");
        parse(head.as_bytes())
    }

    #[test]
    fn the_three_paths_are_served_to_get_and_head() {
        let get = |route| {
            Ok(Request {
                route,
                head_only: false,
            })
        };
        assert_eq!(
            parsed("GET /metrics HTTP/1.1\r\nHost: localhost:9464\r\nAccept: */*\r\n\r\n"),
            get(Route::Metrics)
        );
        assert_eq!(parsed("GET /healthz HTTP/1.0\r\n\r\n"), get(Route::Health));
        assert_eq!(
            parsed("GET /readyz?verbose=1 HTTP/1.1\n\n"),
            get(Route::Ready)
        );
        assert_eq!(
            parsed("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Ok(Request {
                route: Route::Metrics,
                head_only: true
            })
        );
    }

    #[test]
    fn everything_else_is_refused_with_its_status() {
        assert_eq!(parsed("GET / HTTP/1.1\r\n\r\n"), Err(Reject::NotFound));
        assert_eq!(
            parsed("GET /metrics/x HTTP/1.1\r\n\r\n"),
            Err(Reject::NotFound)
        );
        assert_eq!(
            parsed("POST /metrics HTTP/1.1\r\n\r\n"),
            Err(Reject::MethodNotAllowed)
        );
        for bad in [
            "GET /metrics\r\n\r\n",
            "GET /metrics HTTP/2\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "G(T /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            "GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert_eq!(parsed(bad), Err(Reject::BadRequest), "{bad:?}");
        }
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nX: \xff\r\n\r\n"),
            Err(Reject::BadRequest)
        );
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    }

    #[test]
    fn answers_close_the_connection_and_head_has_no_body() {
        let text = String::from_utf8(response((200, "OK"), "text/plain", "ok\n", false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nok\n"), "{text}");
        let head = String::from_utf8(response((200, "OK"), "text/plain", "ok\n", true)).unwrap();
        assert!(head.ends_with(
            "Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
        let refused = String::from_utf8(response(
            Reject::MethodNotAllowed.status(),
            "text/plain",
            "",
            false,
        ))
        .unwrap();
        assert!(refused.contains("Allow: GET, HEAD\r\n"), "{refused}");
    }
}
