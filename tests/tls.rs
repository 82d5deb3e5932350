//! TLS on client and peer traffic with etcd's flags: a 3-member cluster whose client and peer
//! URLs are all `https://`, with client certificates required on both, driven by `etcdctl`
//! with `--cacert/--cert/--key`. Certificates are made here (rcgen). Clients without a
//! certificate, with one from another CA, or speaking plain HTTP are refused, and nothing they
//! sent is stored.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A CA, and `names` certificates it signs (for 127.0.0.1 and localhost), written as
/// `<prefix>ca.pem`, `<prefix><name>.pem`, `<prefix><name>-key.pem`.
fn make_pki(dir: &Path, prefix: &str, names: &[&str]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{prefix}cairn test CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{prefix}ca.pem")), ca_cert.pem()).unwrap();
    for n in names {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, *n);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{prefix}{n}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{prefix}{n}-key.pem")), key.serialize_pem()).unwrap();
    }
}

use cairn_testkit::cluster::free_port;

struct Members {
    children: Vec<Child>,
    client_urls: Vec<String>,
    peer_urls: Vec<String>,
    /// `rediss://` listeners' ports.
    redis_ports: Vec<u16>,
    _data: tempfile::TempDir,
}

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_tls_cluster(pki: &Pki) -> Members {
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let redis_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=https://127.0.0.1:{p}")).collect();
    let mut children = Vec::new();
    let mut client_urls = Vec::new();
    let mut peer_urls = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let client = format!("https://127.0.0.1:{c}");
        let peer = format!("https://127.0.0.1:{p}");
        let log = std::fs::File::create(data.path().join(format!("m{i}.log"))).unwrap();
        let child = Command::new(binary())
            .args(["server", "--name", &format!("m{i}")])
            .arg(format!("--data-dir={}", data.path().join(format!("m{i}")).display()))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--listen-redis-urls", &format!("rediss://127.0.0.1:{}", redis_ports[i])])
            .arg(format!("--cert-file={}", pki.path("server.pem").display()))
            .arg(format!("--key-file={}", pki.path("server-key.pem").display()))
            .arg(format!("--trusted-ca-file={}", pki.path("ca.pem").display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", pki.path("server.pem").display()))
            .arg(format!("--peer-key-file={}", pki.path("server-key.pem").display()))
            .arg(format!("--peer-trusted-ca-file={}", pki.path("ca.pem").display()))
            .arg("--peer-client-cert-auth")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        children.push(child);
        client_urls.push(client);
        peer_urls.push(peer);
    }
    Members { children, client_urls, peer_urls, redis_ports, _data: data }
}

fn ctl(endpoints: &[String], tls: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--command-timeout=5s", "--dial-timeout=2s"])
        .args(tls)
        .args(args)
        .output()
        .expect("etcdctl")
}

fn tls_args(pki: &Pki, cert: &str) -> Vec<String> {
    vec![
        format!("--cacert={}", pki.path("ca.pem").display()),
        format!("--cert={}", pki.path(&format!("{cert}.pem")).display()),
        format!("--key={}", pki.path(&format!("{cert}-key.pem")).display()),
    ]
}

#[test]
fn client_and_peer_traffic_over_tls_with_client_certificates() {
    let pki = Pki { dir: tempfile::tempdir().unwrap() };
    make_pki(pki.dir.path(), "", &["server", "client"]);
    make_pki(pki.dir.path(), "other-", &["client"]);
    let m = start_tls_cluster(&pki);
    let good = tls_args(&pki, "client");

    // The cluster forms over TLS peer links and answers a client with a valid certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = ctl(&m.client_urls, &good, &["put", "secure", "v1"]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no TLS cluster: {}", stderr(&o));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every member has it (serializable reads: each member's own state, replicated over TLS).
    for ep in &m.client_urls {
        let o = ctl(std::slice::from_ref(ep), &good, &["get", "secure", "--consistency=s", "--print-value-only"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = stdout(&o);
        while out.trim() != "v1" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            out = stdout(&ctl(
                std::slice::from_ref(ep),
                &good,
                &["get", "secure", "--consistency=s", "--print-value-only"],
            ));
        }
        assert_eq!(out.trim(), "v1", "member {ep}");
    }

    // No client certificate: refused.
    let ca_only = vec![format!("--cacert={}", pki.path("ca.pem").display())];
    let o = ctl(&m.client_urls, &ca_only, &["put", "secure", "no-cert"]);
    assert!(!o.status.success(), "a client without a certificate was served: {}", stdout(&o));
    // A certificate from another CA: refused.
    let mut other = tls_args(&pki, "other-client");
    other[0] = format!("--cacert={}", pki.path("ca.pem").display());
    let o = ctl(&m.client_urls, &other, &["put", "secure", "other-ca"]);
    assert!(!o.status.success(), "a client with a foreign certificate was served: {}", stdout(&o));
    // Plain HTTP to a TLS port: refused.
    let plain: Vec<String> = m.client_urls.iter().map(|u| u.replace("https://", "http://")).collect();
    let o = ctl(&plain, &[], &["put", "secure", "plain"]);
    assert!(!o.status.success(), "plain HTTP was served on a TLS port: {}", stdout(&o));
    // Nothing the refused clients sent was stored.
    let o = ctl(&m.client_urls, &good, &["get", "secure", "--print-value-only"]);
    assert_eq!(stdout(&o).trim(), "v1");

    // rediss://: Redis clients over TLS with a client certificate (the client traffic's flags).
    let redis = |port: u16, tls: &[String], args: &[&str]| -> Output {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(tls)
            .args(args)
            .output()
            .expect("redis-cli is installed (Debian redis-tools)")
    };
    let redis_tls = |cert: &str| -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            pki.path("ca.pem").display().to_string(),
            "--cert".into(),
            pki.path(&format!("{cert}.pem")).display().to_string(),
            "--key".into(),
            pki.path(&format!("{cert}-key.pem")).display().to_string(),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = redis(m.redis_ports[0], &redis_tls("client"), &["SET", "tls-key", "tls-value"]);
        if stdout(&o).trim() == "OK" {
            break;
        }
        assert!(Instant::now() < deadline, "no Redis over TLS: {} {}", stdout(&o), stderr(&o));
        std::thread::sleep(Duration::from_millis(300));
    }
    for port in &m.redis_ports {
        let o = redis(*port, &redis_tls("client"), &["GET", "tls-key"]);
        assert_eq!(stdout(&o).trim(), "tls-value", "rediss on port {port}: {}", stderr(&o));
    }
    // Plain RESP to a rediss:// port, TLS without a client certificate, and a certificate from
    // another CA: no answer, and nothing stored.
    let o = redis(m.redis_ports[1], &[], &["SET", "tls-key", "plain"]);
    assert_ne!(stdout(&o).trim(), "OK", "plain RESP was served on a rediss:// port");
    let ca_only = vec!["--tls".to_string(), "--cacert".into(), pki.path("ca.pem").display().to_string()];
    let o = redis(m.redis_ports[1], &ca_only, &["SET", "tls-key", "no-cert"]);
    assert_ne!(stdout(&o).trim(), "OK", "a Redis client without a certificate was served");
    let mut foreign = redis_tls("other-client");
    foreign[2] = pki.path("ca.pem").display().to_string();
    let o = redis(m.redis_ports[1], &foreign, &["SET", "tls-key", "other-ca"]);
    assert_ne!(stdout(&o).trim(), "OK", "a Redis client with a foreign certificate was served");
    let o = redis(m.redis_ports[2], &redis_tls("client"), &["GET", "tls-key"]);
    assert_eq!(stdout(&o).trim(), "tls-value");

    // cairn's own tools take etcdctl's TLS flags.
    let o =
        Command::new(binary()).args(["status", "--endpoints", &m.client_urls.join(",")]).args(&good).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("| 3.5.0 ").count(), 3, "every member answers over TLS: {}", stdout(&o));

    // With auth enabled, a forwarded request that names its user but carries no token is
    // believed only because the peer connection presented a certificate the peer CA signed.
    for args in [&["user", "add", "root:pw"][..], &["user", "grant-role", "root", "root"], &["auth", "enable"]] {
        let o = ctl(&m.client_urls, &good, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let o = ctl(&m.client_urls[..1], &good, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("endpoint status JSON");
    let cluster = status[0]["Status"]["header"]["cluster_id"].as_u64().expect("cluster id");
    let accepted = tokio::runtime::Runtime::new().unwrap().block_on(forward_without_token(&pki, &m.peer_urls, cluster));
    assert_eq!(accepted, (1, 1), "exactly the leader ran the certificate-authenticated forward, each way");
    let o = ctl(&m.client_urls, &good, &["--user=root:pw", "get", "by-member", "--print-value-only"]);
    assert_eq!(stdout(&o).trim(), "trusted", "{}", stderr(&o));
}

/// Sends every member a forwarded put for root without root's token, over peer TLS with a
/// certificate the peer CA signed, as a `Peer/Forward` call and as a batch on the range
/// transport (members forward that way now); how many ran it each way (only the leader runs
/// forwarded requests).
async fn forward_without_token(pki: &Pki, peer_urls: &[String], cluster: u64) -> (usize, usize) {
    use cairn_proto::peer::{
        forward_request::Request as Fq, forward_result::Result as R, peer_client::PeerClient,
        ranges_client::RangesClient, ForwardBatchReply, ForwardBatchRequest, ForwardRequest, RangeBatchRequest,
        RangeMessage,
    };
    use prost::Message;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |n: &str| std::fs::read(pki.path(n)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("client.pem"), read("client-key.pem")));
    let (mut accepted, mut batched) = (0, 0);
    for url in peer_urls {
        let ch = Endpoint::from_shared(url.clone()).unwrap().tls_config(tls.clone()).unwrap().connect().await;
        let ch = ch.expect("peer TLS with a client certificate");
        let mut p = PeerClient::new(ch.clone());
        let put = cairn_proto::etcdserverpb::PutRequest {
            key: "by-member".into(),
            value: "trusted".into(),
            ..Default::default()
        };
        let fwd = ForwardRequest {
            request: Some(Fq::Put(put)),
            auth_revision: Some(u64::MAX),
            auth_user: "root".into(),
            ..Default::default()
        };
        let mut req = tonic::Request::new(fwd.clone());
        req.metadata_mut().insert("x-etcd-cluster-id", format!("{cluster:x}").parse().unwrap());
        match p.forward(req).await {
            Ok(_) => accepted += 1,
            Err(s) => assert!(s.message().contains("not leader"), "only 'not leader' may refuse it: {s:?}"),
        }
        // Message kind 8 of the meta group (u64::MAX): a forwarded batch.
        let data = ForwardBatchRequest { requests: vec![fwd] }.encode_to_vec();
        let msg = RangeMessage { group: u64::MAX, kind: 8, data: data.into() };
        let mut req = tonic::Request::new(RangeBatchRequest { messages: vec![msg], ttl_ms: 0 });
        req.metadata_mut().insert("x-etcd-cluster-id", format!("{cluster:x}").parse().unwrap());
        let reply = RangesClient::new(ch).batch(req).await.expect("a batch on the range transport").into_inner();
        assert_eq!(reply.results.len(), 1, "{reply:?}");
        assert_eq!(reply.results[0].error, "", "the meta group takes forwarded batches");
        let data = &reply.results[0].data;
        match ForwardBatchReply::decode(&data[..]).expect("a forwarded batch's answer").results[0].result.clone() {
            Some(R::Reply(_)) => batched += 1,
            Some(R::Error(e)) => assert!(e.message.contains("not leader"), "only 'not leader' may refuse it: {e:?}"),
            None => panic!("an empty result"),
        }
    }
    (accepted, batched)
}

#[test]
fn https_urls_without_certificates_are_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let p = free_port();
    let o = Command::new(binary())
        .args(["server", "--name", "x"])
        .arg(format!("--data-dir={}", data.path().join("x").display()))
        .args(["--listen-client-urls", &format!("https://127.0.0.1:{p}")])
        .args(["--advertise-client-urls", &format!("https://127.0.0.1:{p}")])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--cert-file"), "{err}");
    // A rediss:// listener needs them too.
    let o = Command::new(binary())
        .args(["server", "--name", "x"])
        .arg(format!("--data-dir={}", data.path().join("y").display()))
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{p}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{p}")])
        .args(["--listen-redis-urls", &format!("rediss://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rediss://") && err.contains("--cert-file"), "{err}");
}
