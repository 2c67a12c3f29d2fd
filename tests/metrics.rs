//! The metrics and health endpoint of a running node: HTTP answers, a strictly parsed
//! Prometheus text exposition, counters and histograms that move with real traffic, queue
//! depths that show unread messages, and readiness that drops while the node shuts down.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{SendAndWait, TestNet, within};
use enlace::{Draft, Precedence, SubmitError, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn liaison(body: &str) -> pb::LiaisonMessage {
    pb::LiaisonMessage {
        body: Some(enlace::payloads::text("en", body)),
        ..Default::default()
    }
}

/// An HTTP answer: status, headers (names in lowercase), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Sends `request` as it is and reads the answer to the end (the endpoint closes).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> Answer {
    within("an HTTP answer", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("a header line");
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect::<BTreeMap<_, _>>();
        let length: usize = headers["content-length"].parse().unwrap();
        if !request.starts_with(b"HEAD ") {
            assert_eq!(body.len(), length, "Content-Length matches the body");
        }
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await
}

/// One sample of an exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether some sample is named `name` with labels including `labels`.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            Err(format!("bad value {s:?}"))
        }
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` (the braces included), with `\\`, `\"` and `\n` escapes.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut out = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if !is_label_name(&name) {
            return Err(format!("bad label name {name:?}"));
        }
        if chars.next() != Some('"') {
            return Err(format!("label {name} value not quoted"));
        }
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated label value")? {
                '"' => break,
                '\\' => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                '\n' => return Err("newline in label value".into()),
                c => value.push(c),
            }
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        match chars.next() {
            None => break,
            Some(',') if chars.peek().is_some() => {}
            other => return Err(format!("expected ',' after a label, got {other:?}")),
        }
    }
    Ok(out)
}

/// Parses the Prometheus text format (0.0.4) strictly: every line a `# HELP`, a `# TYPE` or a
/// sample; each family typed once, before its samples; names and labels well formed; no series
/// twice; histograms with cumulative buckets ending at `+Inf` equal to `_count`, and `_sum`.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            match kind {
                "HELP" => {
                    if helps.insert(name.to_owned(), ()).is_some() {
                        return Err(at("HELP twice".into()));
                    }
                }
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at(format!("bad type {t:?}")));
                    }
                    if samples
                        .iter()
                        .any(|s: &Sample| family(&s.name, &types) == name)
                    {
                        return Err(at("TYPE after samples".into()));
                    }
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at("TYPE twice".into()));
                    }
                }
                _ => return Err(at("a comment that is neither HELP nor TYPE".into())),
            }
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value = parse_value(value).map_err(at)?;
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i..]).map_err(at)?),
            None => (series, BTreeMap::new()),
        };
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let fam = family(name, &types);
        let Some(kind) = types.get(fam) else {
            return Err(at(format!("sample of {fam} without a TYPE")));
        };
        if kind == "histogram" && name == fam {
            return Err(at(
                "a histogram sample without _bucket, _sum or _count".into()
            ));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("a bucket without le".into()));
        }
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(at("a series twice".into()));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(Exposition { samples })
}

/// The family a sample belongs to: its name, or for a histogram's series the name without
/// `_bucket`, `_sum` or `_count`.
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    name
}

fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), String> {
    for (fam, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == format!("{fam}_bucket")) {
            let mut key = s.labels.clone();
            let le = parse_value(&key.remove("le").unwrap())?;
            series
                .entry(format!("{key:?}"))
                .or_default()
                .push((le, s.value));
        }
        for (key, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{fam}{key}: buckets are not cumulative"));
            }
            let Some(&(f64::INFINITY, inf)) = buckets.last() else {
                return Err(format!("{fam}{key}: no +Inf bucket"));
            };
            let labels_of = |name: String| {
                samples
                    .iter()
                    .find(|s| s.name == name && format!("{:?}", s.labels) == key)
                    .map(|s| s.value)
            };
            if labels_of(format!("{fam}_count")) != Some(inf) {
                return Err(format!("{fam}{key}: _count is not the +Inf bucket"));
            }
            if labels_of(format!("{fam}_sum")).is_none() {
                return Err(format!("{fam}{key}: no _sum"));
            }
        }
    }
    Ok(())
}

/// Scrapes `/metrics` and parses it strictly.
async fn scrape(addr: SocketAddr) -> Exposition {
    let a = get(addr, "/metrics").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        a.headers
    );
    parse_exposition(&a.body).unwrap_or_else(|e| panic!("{e}\n{}", a.body))
}

/// Scrapes until `done` holds, for up to 10 s.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = scrape(addr).await;
        if done(&e) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn metrics_addr(net: &TestNet, node: &str) -> SocketAddr {
    net.node(node).metrics_addr().expect("the endpoint is on")
}

#[test]
fn the_parser_refuses_malformed_expositions() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\n\
                h_count 2\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(e.sum("a_total", &[("x", "1")]), 3.0);
    for bad in [
        "a_total 3\n",                                               // no TYPE
        "# TYPE a_total counter\na_total 3",                         // no final newline
        "# TYPE a_total counter\na_total{x=\"1} 3\n",                // unterminated
        "# TYPE a_total counter\na_total{x=1} 3\n",                  // unquoted
        "# TYPE a_total counter\na_total{x=\"1\",} 3\n",             // trailing comma
        "# TYPE a_total counter\na_total three\n",                   // bad value
        "# TYPE a_total counter\na_total 1\na_total 2\n",            // series twice
        "# TYPE a_total counter\n\na_total 1\n",                     // empty line
        "# TYPE a_total counter\n# TYPE a_total gauge\na_total 1\n", // TYPE twice
        "# TYPE 1a counter\n1a 1\n",                                 // bad name
        "# TYPE a counter\n# EOF\n",                                 // OpenMetrics only
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", // count differs
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_health_checks_and_refuses_the_rest() {
    let net = TestNet::mesh(&["dea"]).await;
    let addr = metrics_addr(&net, "dea-1");
    assert!(addr.ip().is_loopback(), "{addr}");
    // Planned as port 0 on loopback: the node bound a free port there.
    assert_eq!(net.net.nodes["dea-1"].metrics.map(|a| a.port()), Some(0));
    assert_ne!(addr.port(), 0);

    let health = get(addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(get(addr, "/").await.status, 404);
    assert_eq!(get(addr, "/metricsz").await.status, 404);
    let post = raw_http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    assert_eq!(raw_http(addr, b"hello there\r\n\r\n").await.status, 400);
    assert_eq!(
        raw_http(addr, b"GET /metrics HTTP/1.1\r\nbroken\r\n\r\n")
            .await
            .status,
        400
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(raw_http(addr, huge.as_bytes()).await.status, 431);
    let head = raw_http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    let e = scrape(addr).await;
    assert!(e.has("enlace_messages_accepted_total", &[("node", "dea-1")]));
    assert!(e.has("enlace_certificate_not_after_timestamp_seconds", &[]));
    assert!(e.sum("enlace_certificate_not_after_timestamp_seconds", &[]) > 1.7e9);
    assert!(e.has("enlace_crl_next_update_timestamp_seconds", &[]));
    assert!(
        e.has("enlace_log_records", &[]),
        "the delivery log's place is there"
    );
    assert!(
        e.has("enlace_log_pending_records", &[]),
        "and how far its writer lags"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_metrics_section_the_endpoint_binds_loopback() {
    let mut net = TestNet::mesh(&["dea"]).await;
    let node = net.nodes.remove("dea-1").unwrap();
    node.stop().await;
    // The config as an operator writes it without a [metrics] section.
    let path = net.net.config_path("dea-1");
    let text = std::fs::read_to_string(&path).unwrap();
    let planned = format!(
        "[metrics]\nlisten = \"{}\"\n",
        net.net.nodes["dea-1"].metrics.unwrap()
    );
    assert!(text.contains(&planned), "{text}");
    std::fs::write(&path, text.replace(&planned, "")).unwrap();
    let config = net.net.config("dea-1").unwrap();
    assert_eq!(
        config.metrics_listen(),
        Some(enlace::config::DEFAULT_METRICS_LISTEN)
    );
    assert!(enlace::config::DEFAULT_METRICS_LISTEN.ip().is_loopback());
    let node = net.net.start("dea-1").await.unwrap();
    // The default port may be held by something else on this machine: then the node runs
    // without the endpoint (and says so); whenever it binds, it binds loopback.
    if let Some(addr) = node.metrics_addr() {
        assert_eq!(addr, enlace::config::DEFAULT_METRICS_LISTEN);
        assert_eq!(get(addr, "/healthz").await.status, 200);
    }
    net.nodes.insert("dea-1".into(), node);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_move_with_traffic() {
    const N: usize = 5;
    let net = TestNet::mesh(&["dea", "pgr"]).await;
    let (dea, pgr) = (metrics_addr(&net, "dea-1"), metrics_addr(&net, "pgr-1"));
    let reader = net.subscriber("pgr", "duty-desk").await;
    let sender = net.client("dea", "duty-desk").await;
    let (dea0, pgr0) = (scrape(dea).await, scrape(pgr).await);

    let mut inbox = reader.inbox().unwrap();
    for i in 0..N {
        let p = if i == 0 {
            Precedence::Flash
        } else {
            Precedence::Routine
        };
        sender
            .submit(
                Draft::new(&liaison(&format!("note {i}")))
                    .to("pgr")
                    .precedence(p),
            )
            .await
            .unwrap();
    }
    for _ in 0..N {
        let d = within("a delivery", inbox.next())
            .await
            .expect("a delivery");
        d.ack().await.unwrap();
    }
    // A submission for an agency nobody serves is refused.
    let code = match sender.submit(Draft::new(&liaison("lost")).to("fbi")).await {
        Err(SubmitError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let code = code
        .as_str_name()
        .trim_start_matches("REFUSAL_CODE_")
        .to_owned();

    let n = N as f64;
    let delta = |now: &Exposition, before: &Exposition, name: &str, labels: &[(&str, &str)]| {
        now.sum(name, labels) - before.sum(name, labels)
    };
    // Acknowledgements are recorded after the client wrote them: wait for them.
    let pgr1 = scrape_until(pgr, "pgr-1 to count the acknowledgements", |e| {
        delta(e, &pgr0, "enlace_messages_acknowledged_total", &[]) >= n
    })
    .await;
    let dea1 = scrape_until(dea, "dea-1 to count the refusal", |e| {
        delta(
            e,
            &dea0,
            "enlace_messages_refused_total",
            &[("code", &code)],
        ) >= 1.0
    })
    .await;

    let accepted = "enlace_messages_accepted_total";
    assert_eq!(delta(&dea1, &dea0, accepted, &[("source", "client")]), n);
    assert_eq!(
        delta(
            &dea1,
            &dea0,
            accepted,
            &[("source", "client"), ("precedence", "FLASH")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &dea1,
            &dea0,
            "enlace_messages_forwarded_total",
            &[("peer", "pgr-1")]
        ),
        n
    );
    assert_eq!(
        delta(
            &dea1,
            &dea0,
            "enlace_messages_refused_total",
            &[("code", &code)]
        ),
        1.0
    );
    assert_eq!(delta(&pgr1, &pgr0, accepted, &[("source", "peer")]), n);
    assert_eq!(
        delta(&pgr1, &pgr0, "enlace_messages_delivered_total", &[]),
        n
    );
    assert_eq!(
        delta(&pgr1, &pgr0, "enlace_messages_acknowledged_total", &[]),
        n
    );
    assert!(dea1.sum("enlace_connections_total", &[("outcome", "accepted")]) >= 1.0);

    // Histograms: end-to-end latency at the addressee's node, residence at both.
    let e2e = "enlace_end_to_end_latency_seconds_count";
    let routine = [("precedence", "ROUTINE"), ("stage", "acknowledged")];
    assert_eq!(delta(&pgr1, &pgr0, e2e, &routine), n - 1.0);
    let flash = [("precedence", "FLASH"), ("stage", "delivered")];
    assert_eq!(delta(&pgr1, &pgr0, e2e, &flash), 1.0);
    let forwarded = [("stage", "forwarded")];
    assert_eq!(
        delta(&dea1, &dea0, "enlace_residence_seconds_count", &forwarded),
        n
    );
    assert!(pgr1.sum("enlace_end_to_end_latency_seconds_sum", &routine) > 0.0);
    assert!(dea1.sum("enlace_store_fsync_seconds_count", &[]) >= n);
    assert!(dea1.sum("enlace_store_commit_batch_size_count", &[]) >= 1.0);
    // The link between them is up, on both sides.
    let up = [("peer", "pgr-1"), ("state", "up")];
    assert_eq!(dea1.sum("enlace_peer_link_up", &up), 1.0);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_shows_unread_messages_and_readiness_drops_at_shutdown() {
    let mut net = TestNet::mesh_with_limits(&["dea", "pgr"], &["shutdown_grace_ms = 10000"]).await;
    let pgr = metrics_addr(&net, "pgr-1");
    let sender = net.client("dea", "duty-desk").await;
    for i in 0..3 {
        sender
            .submit(Draft::new(&liaison(&format!("unread {i}"))).to("pgr"))
            .await
            .unwrap();
    }
    let lane = [("queue", "mailbox:pgr"), ("precedence", "ROUTINE")];
    let e = scrape_until(pgr, "three unread copies in pgr's inbox", |e| {
        e.sum("enlace_queue_depth", &lane) == 3.0
    })
    .await;
    assert_eq!(
        e.sum(
            "enlace_queue_depth",
            &[("queue", "mailbox:pgr"), ("precedence", "FLASH")]
        ),
        0.0
    );
    assert!(e.sum("enlace_queue_oldest_age_seconds", &lane) >= 0.0);
    assert!(e.has("enlace_queue_depth", &[("queue", "outbox:dea-1")]));

    // Read two: the depth follows.
    let reader = net.subscriber("pgr", "duty-desk").await;
    let mut inbox = reader.inbox().unwrap();
    for _ in 0..3 {
        within("a delivery", inbox.next())
            .await
            .unwrap()
            .ack()
            .await
            .unwrap();
    }
    scrape_until(pgr, "pgr's inbox to empty", |e| {
        e.sum("enlace_queue_depth", &lane) == 0.0
    })
    .await;
    reader.client.close().await;

    // Another copy nobody reads holds the node in its drain: not ready, still alive.
    sender
        .submit(Draft::new(&liaison("held")).to("pgr"))
        .await
        .unwrap();
    scrape_until(pgr, "the held copy", |e| {
        e.sum("enlace_queue_depth", &lane) == 1.0
    })
    .await;
    let node = net.nodes.remove("pgr-1").unwrap();
    let stopping = tokio::spawn(node.stop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let not_ready = loop {
        let a = get(pgr, "/readyz").await;
        if a.status == 503 {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready while shutting down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        not_ready.body.contains("shutting down"),
        "{}",
        not_ready.body
    );
    assert_eq!(get(pgr, "/healthz").await.status, 200);
    // `enlace health`, the probe a container without a shell runs, says the same.
    let health = |ready: bool| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_enlace"));
        c.args(["health", "--addr", &pgr.to_string()]);
        if ready {
            c.arg("--ready");
        }
        c.output()
    };
    let alive = health(false).await.unwrap();
    assert!(alive.status.success(), "{alive:?}");
    let ready = health(true).await.unwrap();
    assert_eq!(ready.status.code(), Some(1), "{ready:?}");
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("503")
            && String::from_utf8_lossy(&ready.stderr).contains("shutting down"),
        "{ready:?}"
    );
    stopping.abort();
    net.stop().await;
}
