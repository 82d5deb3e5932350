//! Small helpers for the CLI tools: endpoints and gRPC channels to etcd v3 servers.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// `host:port` or `http://host:port` -> `http://host:port`.
pub fn normalize(ep: &str) -> String {
    let ep = ep.trim();
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

pub fn parse_endpoints(list: &str) -> Vec<String> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(normalize).collect()
}

/// TLS settings for `https://` endpoints, with etcdctl's flag names.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA bundle that verifies the servers' certificates (https:// endpoints).
    #[arg(long, env = "ETCDCTL_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate, for servers started with --client-cert-auth.
    #[arg(long, env = "ETCDCTL_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// Client certificate's key.
    #[arg(long, env = "ETCDCTL_KEY")]
    pub key: Option<std::path::PathBuf>,
}

static TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> = std::sync::OnceLock::new();

impl TlsArgs {
    /// Makes every later [`channel`] to an `https://` endpoint use these settings.
    pub fn install(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let mut cfg = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.cacert {
            cfg = cfg.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => cfg = cfg.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => anyhow::bail!("--cert and --key go together"),
        }
        let _ = TLS.set(cfg);
        Ok(())
    }
}

/// A lazily connected channel with short connect timeouts, so a dead endpoint fails fast, over a
/// TCP stream whose small frames share writes ([`cairn_raft::tcp`]).
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(url.to_string())?;
    if url.starts_with("https://") {
        let tls = TLS.get().cloned().unwrap_or_default();
        ep = ep.tls_config(tls)?;
    }
    // `lazy_channel` bounds connecting: 500 ms for TCP, 2 s with a TLS handshake.
    let ep = ep.http2_keep_alive_interval(Duration::from_secs(5)).keep_alive_timeout(Duration::from_secs(3));
    Ok(cairn_raft::tcp::lazy_channel(&ep))
}
