//! The `[metrics]` section: where the node serves its Prometheus metrics and health checks.
//!
//! Parsing and validation only; the endpoint itself is `node::metrics`. It opens no socket.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// Where the metrics endpoint listens when the config does not say: loopback only, on the
/// port the OpenTelemetry Prometheus exporter uses by convention.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// The node's metrics and health endpoint (`[metrics]`): plain HTTP, no authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsConfig {
    /// Where it listens; `None` when it is off (`enabled = false` or `listen = ""`).
    pub(crate) listen: Option<SocketAddr>,
    /// Whether `listen` was written in the file. An address written there that cannot be bound
    /// stops the node at start; the default one, when taken (another node on the host), is
    /// given up with a warning, so that an upgrade never stops a node for want of metrics.
    pub(crate) explicit: bool,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            listen: Some(DEFAULT_METRICS_LISTEN),
            explicit: false,
        }
    }
}

impl MetricsConfig {
    /// What an operator should know: an endpoint reachable from other hosts has no
    /// authentication.
    pub(crate) fn warning(&self) -> Option<String> {
        let addr = self.listen?;
        (!addr.ip().is_loopback()).then(|| {
            format!(
                "metrics.listen = \"{addr}\" is not a loopback address: the metrics and health \
                 endpoint has no authentication and anyone who reaches it can read the node's \
                 queues and peers; firewall it"
            )
        })
    }
}

/// `[metrics]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    enabled: Option<bool>,
    listen: Option<String>,
}

/// Validates `[metrics]`. Errors are `(key, reason)`.
pub(super) fn metrics(raw: Option<RawMetrics>) -> Result<MetricsConfig, (String, String)> {
    let Some(raw) = raw else {
        return Ok(MetricsConfig::default());
    };
    let err = |key: &str, reason: String| Err((key.to_owned(), reason));
    let listen = match raw.listen.as_deref().map(str::trim) {
        None => None,
        Some("") => {
            return match raw.enabled {
                Some(true) => err(
                    "metrics.listen",
                    "is empty (the endpoint off) while metrics.enabled = true: give an address \
                     such as \"127.0.0.1:9464\""
                        .into(),
                ),
                _ => Ok(MetricsConfig {
                    listen: None,
                    explicit: true,
                }),
            };
        }
        Some(v) => Some(v.parse::<SocketAddr>().map_err(|e| {
            (
                "metrics.listen".to_owned(),
                format!(
                    "{v:?} is not a TCP address like 127.0.0.1:9464 ({e}); \"\" turns the \
                     endpoint off"
                ),
            )
        })?),
    };
    match (raw.enabled, listen) {
        (Some(false), Some(addr)) => err(
            "metrics.enabled",
            format!("is false but metrics.listen = \"{addr}\" is set: remove one of them"),
        ),
        (Some(false), None) => Ok(MetricsConfig {
            listen: None,
            explicit: true,
        }),
        (_, Some(addr)) => Ok(MetricsConfig {
            listen: Some(addr),
            explicit: true,
        }),
        (_, None) => Ok(MetricsConfig::default()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::super::tests::GOOD;
    use super::*;

    fn parse(section: &str) -> Result<MetricsConfig, (String, String)> {
        Config::parse(&format!("{GOOD}\n[metrics]\n{section}\n"), Path::new("/")).map(|c| c.metrics)
    }

    #[test]
    fn the_endpoint_is_on_and_loopback_by_default() {
        let c = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(!c.metrics.explicit);
        assert_eq!(c.metrics.warning(), None);
        assert_eq!(parse("").unwrap(), MetricsConfig::default());
        assert_eq!(parse("enabled = true").unwrap(), MetricsConfig::default());
    }

    #[test]
    fn an_address_can_be_chosen_or_the_endpoint_turned_off() {
        let c = parse("listen = \"127.0.0.1:9500\"").unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:9500".parse().unwrap()));
        assert!(c.explicit);
        let c = parse("listen = \"[::1]:0\"").unwrap();
        assert_eq!(c.listen, Some("[::1]:0".parse().unwrap()));
        assert_eq!(c.warning(), None);
        for off in [
            "listen = \"\"",
            "enabled = false",
            "enabled = false\nlisten = \"\"",
        ] {
            let c = parse(off).unwrap();
            assert_eq!(c.listen, None, "{off}");
            assert_eq!(c.warning(), None);
        }
    }

    #[test]
    fn a_remote_address_is_allowed_only_as_written_and_warned_about() {
        let c = parse("listen = \"0.0.0.0:9464\"").unwrap();
        assert_eq!(c.listen, Some("0.0.0.0:9464".parse().unwrap()));
        let w = c.warning().expect("a warning");
        assert!(w.contains("no authentication"), "{w}");
        assert!(
            parse("listen = \"192.0.2.7:9464\"")
                .unwrap()
                .warning()
                .is_some()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let (key, reason) = parse("listen = \"localhost:9464\"").unwrap_err();
        assert_eq!(key, "metrics.listen");
        assert!(reason.contains("not a TCP address"), "{reason}");
        let (key, _) = parse("listen = \"127.0.0.1\"").unwrap_err();
        assert_eq!(key, "metrics.listen");
        let (key, reason) = parse("enabled = false\nlisten = \"127.0.0.1:9464\"").unwrap_err();
        assert_eq!(key, "metrics.enabled");
        assert!(reason.contains("remove one"), "{reason}");
        let (key, _) = parse("enabled = true\nlisten = \"\"").unwrap_err();
        assert_eq!(key, "metrics.listen");
        let (key, reason) = parse("port = 9464").unwrap_err();
        assert!(key.contains("[metrics]"), "{key}");
        assert!(reason.contains("unknown field"), "{reason}");
        let (key, _) = parse("enabled = \"yes\"").unwrap_err();
        assert!(key.contains("[metrics]"), "{key}");
    }
}
