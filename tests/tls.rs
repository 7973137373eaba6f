//! TLS on real parts: `serve --tls-cert/--tls-key` with certificates made at test time; mounts
//! that sync over https trusting a private CA (`--ca-file`) or the system store; a certificate
//! from another CA refused in one line; plain http off loopback refused in one line; a client
//! that never finishes its handshake let go.

mod common;
mod support;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::sync::{VOLUME, token_file};
use common::{Mount, UnmountGuard, bin, deltadrive, wait_until};
use deltadrive::remote::{ConnectOptions, Remote, RemoteError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Certificates made for one test: a CA, a server certificate it signed for localhost and
/// 127.0.0.1, and an unrelated CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: String,
    cert: String,
    key: String,
    other_ca: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = ca("deltadrive test CA");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&key, &ours)
        .expect("server certificate");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path.to_str().expect("utf-8 path").to_owned()
    };
    Pki {
        ca: write("ca.pem", ours.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        other_ca: write("other-ca.pem", ca("another CA").pem()),
        _dir: dir,
    }
}

/// A fixture whose server speaks HTTPS with `pki`'s certificate.
fn https_fixture(pki: &Pki) -> support::Fixture {
    support::fixture_with(&["--tls-cert", &pki.cert, "--tls-key", &pki.key])
}

/// The fixture server's port.
fn port(fx: &support::Fixture) -> String {
    let addr = fx.server.addr();
    addr.rsplit(':').next().expect("port").to_owned()
}

/// `deltadrive mount` of a fresh mountpoint with these arguments (and environment), not
/// asserting success; the guard unmounts it if it did mount.
fn try_mount(args: &[&str], env: &[(&str, &str)]) -> (Output, UnmountGuard, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    let out = Command::new(bin())
        .arg("mount")
        .arg(&mountpoint)
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run deltadrive mount");
    (out, UnmountGuard(mountpoint), dir)
}

/// Asserts a failed command printed exactly one line on stderr, and returns it.
fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "it succeeded: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    stderr
}

#[test]
fn two_mounts_sync_over_https_with_a_private_ca() {
    let pki = pki();
    let fx = https_fixture(&pki);
    let server = format!("https://localhost:{}", port(&fx));
    let tokens = tempfile::tempdir().unwrap();
    let mount = |device: &str, token: &str| {
        let dir = tokens.path().join(device);
        std::fs::create_dir(&dir).unwrap();
        let file = token_file(&dir, token);
        Mount::with_args(&[
            "--server",
            &server,
            "--volume",
            VOLUME,
            "--token-file",
            &file,
            "--ca-file",
            &pki.ca,
        ])
    };
    let laptop = mount("laptop", &fx.laptop);
    let phone = mount("phone", &fx.phone);
    let content = common::random_bytes(7, 3 << 20);
    std::fs::write(laptop.path("over-tls.bin"), &content).unwrap();
    let arrived = phone.path("over-tls.bin");
    wait_until(Duration::from_secs(60), || {
        std::fs::read(&arrived).is_ok_and(|got| got == content)
    });
    assert_eq!(laptop.status()["server"], serde_json::json!(server));

    // Mounted again without flags, the state remembers the CA (and the rest): it syncs.
    let mut laptop = laptop;
    laptop.umount();
    std::fs::remove_file(&pki.ca).expect("the CA file goes away");
    laptop.set_args(&[]);
    laptop.mount();
    std::fs::write(laptop.path("again.txt"), b"again").unwrap();
    let arrived = phone.path("again.txt");
    wait_until(Duration::from_secs(60), || {
        std::fs::read(&arrived).is_ok_and(|got| got == b"again")
    });
}

#[test]
fn the_system_ca_store_is_trusted_without_ca_file() {
    let pki = pki();
    let fx = https_fixture(&pki);
    let server = format!("https://127.0.0.1:{}", port(&fx));
    let tokens = tempfile::tempdir().unwrap();
    let file = token_file(tokens.path(), &fx.laptop);
    let args = [
        "--server",
        &server,
        "--volume",
        VOLUME,
        "--token-file",
        &file,
    ];
    // The system store, as OpenSSL-style tools read it: SSL_CERT_FILE replaces the machine's.
    let (out, guard, _dir) = try_mount(&args, &[("SSL_CERT_FILE", &pki.ca)]);
    assert!(out.status.success(), "mount failed: {out:?}");
    assert!(common::is_mounted(&guard.0));
    let umount = deltadrive(&["umount", guard.0.to_str().unwrap()]);
    assert!(umount.status.success(), "umount failed: {umount:?}");
    // A store without our CA: refused in one line.
    let (out, guard, _dir) = try_mount(&args, &[("SSL_CERT_FILE", &pki.other_ca)]);
    let line = one_line_failure(&out);
    assert!(line.contains("not trusted (unknown issuer)"), "{line}");
    assert!(!common::is_mounted(&guard.0));
}

#[test]
fn a_certificate_from_another_ca_fails_the_mount_in_one_line() {
    let pki = pki();
    let fx = https_fixture(&pki);
    let server = format!("https://localhost:{}", port(&fx));
    let tokens = tempfile::tempdir().unwrap();
    let file = token_file(tokens.path(), &fx.laptop);
    let (out, guard, _dir) = try_mount(
        &[
            "--server",
            &server,
            "--volume",
            VOLUME,
            "--token-file",
            &file,
            "--ca-file",
            &pki.other_ca,
        ],
        &[],
    );
    let line = one_line_failure(&out);
    assert!(
        line.contains("the server's certificate is not trusted (unknown issuer)")
            && line.contains("--ca-file"),
        "{line}"
    );
    assert!(!common::is_mounted(&guard.0));
    // The same refusal, typed, from the library.
    let options = ConnectOptions {
        ca_file: Some(PathBuf::from(&pki.other_ca)),
        insecure_http: false,
    };
    let remote = Remote::with_options(&server, VOLUME, &fx.laptop, &options).unwrap();
    let err = remote.volumes().unwrap_err();
    assert!(matches!(err, RemoteError::Tls { .. }), "{err:?}");
    assert!(!err.is_retryable());
}

#[test]
fn plain_http_off_loopback_is_refused_in_one_line_before_any_connection() {
    let tokens = tempfile::tempdir().unwrap();
    let file = token_file(tokens.path(), "ddt_unused");
    // 192.0.2.1 is TEST-NET-1: refused before a connection would ever be tried.
    let args = [
        "--server",
        "http://192.0.2.1:1",
        "--volume",
        VOLUME,
        "--token-file",
        &file,
    ];
    let started = Instant::now();
    let (out, guard, _dir) = try_mount(&args, &[]);
    let line = one_line_failure(&out);
    assert!(
        line.contains("plain http to another machine")
            && line.contains("in the clear")
            && line.contains("--insecure-http"),
        "{line}"
    );
    assert!(!common::is_mounted(&guard.0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it tried to connect"
    );
}

#[test]
fn https_to_a_plain_http_server_says_so() {
    let fx = support::fixture();
    let server = format!("https://127.0.0.1:{}", port(&fx));
    let remote = Remote::new(&server, VOLUME, &fx.laptop).unwrap();
    let err = remote.volumes().unwrap_err();
    assert!(matches!(err, RemoteError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string().contains("does the server serve HTTPS"),
        "{err}"
    );
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_let_go() {
    let pki = pki();
    let fx = support::fixture_with(&[
        "--tls-cert",
        &pki.cert,
        "--tls-key",
        &pki.key,
        "--max-connections",
        "1",
    ]);
    // Takes the only connection slot and sends nothing.
    let mut stalled = TcpStream::connect(fx.server.addr()).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = stalled.read(&mut buf);
    let waited = started.elapsed();
    // Closed by the server (end of stream or reset) within the header timeout (10 s).
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "after {waited:?}: {read:?}"
    );
    assert!(
        (Duration::from_secs(8)..Duration::from_secs(20)).contains(&waited),
        "closed after {waited:?}"
    );
    // The slot is free again: a real client gets through.
    let options = ConnectOptions {
        ca_file: Some(PathBuf::from(&pki.ca)),
        insecure_http: false,
    };
    let server = format!("https://localhost:{}", port(&fx));
    let remote = Remote::with_options(&server, VOLUME, &fx.laptop, &options).unwrap();
    let volumes = remote.volumes().unwrap();
    assert!(volumes.iter().any(|v| v.name.as_str() == VOLUME));
}

#[test]
fn serve_refuses_an_unusable_certificate_in_one_line() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (data, missing) = (dir.path().join("data"), dir.path().join("missing.pem"));
    let serve = |cert: &str, key: &str| {
        Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(["--tls-cert", cert, "--tls-key", key])
            .output()
            .expect("run deltadrive serve")
    };
    let line = one_line_failure(&serve(missing.to_str().unwrap(), &pki.key));
    assert!(line.contains("missing.pem"), "{line}");
    // A key file given as the certificate: no certificate in it.
    let line = one_line_failure(&serve(&pki.key, &pki.key));
    assert!(line.contains("no PEM certificate"), "{line}");
}
