//! Test harness: runs the real `deltadrive` binary (admin commands and `serve` on
//! 127.0.0.1 with an OS-chosen port) and talks to it over HTTP. Every server child is
//! killed on drop, also when a test panics.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]
// Tests match on (status, error body) directly; boxing it would only add noise here.
#![allow(clippy::result_large_err)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use deltadrive::chunking::{ChunkId, ChunkRef, Manifest, VerifiedChunk, payload};
use deltadrive::protocol::{
    ChangesResponse, CommitRequest, CommitResponse, CreateOp, ErrorBody, MissingResponse, Name,
    NodeId, NodeKind, NodeRecord, Op, SnapshotResponse, TxnId, Xattrs, manifest_id,
};
use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, Response};
use serde::de::DeserializeOwned;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_deltadrive");

/// Runs `deltadrive admin --data DATA ARGS...`, asserts success, returns stdout.
pub fn admin(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--data")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run deltadrive admin");
    assert!(
        out.status.success(),
        "admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Like [`admin`] but returns the exit status and stderr instead of asserting.
pub fn admin_status(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--data")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run deltadrive admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Adds a device and returns its token.
pub fn add_device(data: &Path, user: &str, device: &str) -> String {
    let token = admin(data, &["device", "add", user, device]);
    token.trim().to_owned()
}

/// A running `deltadrive serve`.
pub struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its data directory.
    pub data: PathBuf,
}

impl Server {
    /// Starts a server on `data` and waits until it has printed its address.
    pub fn start(data: &Path) -> Server {
        Server::start_at(data, "127.0.0.1:0")
    }

    /// Starts a server on `data` listening on `listen` (to come back on the same port).
    pub fn start_at(data: &Path, listen: &str) -> Server {
        Server::start_with(data, listen, &[])
    }

    /// Starts a server on `data` listening on `listen`, with these extra `serve` arguments.
    pub fn start_with(data: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::start_with_env(data, listen, extra, &[])
    }

    /// [`Server::start_with`] with these environment variables set for the server.
    pub fn start_with_env(
        data: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let log = File::create(data.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )))
        .expect("create log file");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(listen)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn deltadrive serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read address line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            _stdout: stdout,
            base: format!("http://{addr}"),
            data: data.to_path_buf(),
        }
    }

    /// The address it listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Starts the server again on the same data directory and address (after [`Server::kill9`]
    /// or [`Server::terminate`]; a running one is killed first), so mounts' URLs stay valid.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (data, addr) = (self.data.clone(), self.addr());
        *self = Server::start_at(&data, &addr);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait up to `timeout` for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> Option<bool> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data dir with users alice (devices laptop, phone; volume alice-docs) and bob
/// (device pc; volume bob-docs), and a server on it.
pub struct Fixture {
    /// Keeps the data directory alive.
    pub dir: tempfile::TempDir,
    /// The server.
    pub server: Server,
    /// alice's laptop.
    pub laptop: String,
    /// alice's phone.
    pub phone: String,
    /// bob's pc.
    pub bob: String,
}

/// Sets up the users, devices and volumes of [`Fixture`] and starts a server.
pub fn fixture() -> Fixture {
    fixture_with(&[])
}

/// [`fixture`] with these extra `serve` arguments.
pub fn fixture_with(serve_args: &[&str]) -> Fixture {
    fixture_with_env(serve_args, &[])
}

/// [`fixture_with`] with these environment variables set for the server.
pub fn fixture_with_env(serve_args: &[&str], env: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    admin(data, &["user", "add", "alice"]);
    admin(data, &["user", "add", "bob"]);
    let laptop = add_device(data, "alice", "laptop");
    let phone = add_device(data, "alice", "phone");
    let bob = add_device(data, "bob", "pc");
    admin(data, &["volume", "create", "alice", "alice-docs"]);
    admin(data, &["volume", "create", "bob", "bob-docs"]);
    let server = Server::start_with_env(data, "127.0.0.1:0", serve_args, env);
    Fixture {
        dir,
        server,
        laptop,
        phone,
        bob,
    }
}

/// An HTTP client bound to one server, token and volume.
#[derive(Clone)]
pub struct Client {
    /// The reqwest client (zstd on: it sends Accept-Encoding and decodes answers).
    pub http: Http,
    /// Server base URL.
    pub base: String,
    /// Bearer token.
    pub token: String,
    /// Volume name.
    pub vol: String,
}

impl Client {
    /// A client for `vol` with `token`.
    pub fn new(server: &Server, token: &str, vol: &str) -> Client {
        deltadrive::tls::install_provider();
        Client {
            http: Http::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            base: server.base.clone(),
            token: token.to_owned(),
            vol: vol.to_owned(),
        }
    }

    /// The same client on a new connection pool: for requests the server may answer before
    /// reading their whole body (oversize), after which it closes that connection.
    pub fn fresh(&self) -> Client {
        Client::new_at(&self.base, &self.token, &self.vol)
    }

    fn new_at(base: &str, token: &str, vol: &str) -> Client {
        deltadrive::tls::install_provider();
        Client {
            http: Http::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            base: base.to_owned(),
            token: token.to_owned(),
            vol: vol.to_owned(),
        }
    }

    /// `{base}/v1/volumes/{vol}/{rest}`
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v1/volumes/{}/{rest}", self.base, self.vol)
    }

    /// An authorized request builder.
    pub fn req(&self, method: reqwest::Method, url: &str) -> reqwest::blocking::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    /// Commits; Ok(answer) on 200, Err((status, error body)) otherwise.
    pub fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, (StatusCode, ErrorBody)> {
        let resp = self
            .req(reqwest::Method::POST, &self.url("commit"))
            .json(req)
            .send()
            .unwrap();
        decode(resp)
    }

    /// Commits these ops in a fresh transaction; panics unless applied.
    pub fn commit_ok(&self, ops: Vec<Op>) -> u64 {
        match self.commit(&txn(ops)) {
            Ok(r) => {
                assert!(!r.replayed);
                r.seq.0
            }
            Err((s, e)) => panic!("commit refused: {s} {e:?}"),
        }
    }

    /// Commits and expects a refusal with `status`; returns the error body.
    pub fn commit_err(&self, ops: Vec<Op>, status: u16) -> ErrorBody {
        match self.commit(&txn(ops)) {
            Ok(r) => panic!("commit applied as {r:?}, expected {status}"),
            Err((s, e)) => {
                assert_eq!(s.as_u16(), status, "{e:?}");
                e
            }
        }
    }

    /// Uploads one chunk of these bytes; returns its ref.
    pub fn put_chunk(&self, bytes: &[u8]) -> ChunkRef {
        let chunk = VerifiedChunk::new(bytes.to_vec());
        let resp = self
            .req(
                reqwest::Method::PUT,
                &self.url(&format!("chunks/{}", chunk.id())),
            )
            .body(chunk.encode(payload::DEFAULT_ZSTD_LEVEL))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 204, "{}", resp.text().unwrap_or_default());
        ChunkRef {
            id: chunk.id(),
            len: u32::try_from(bytes.len()).unwrap(),
        }
    }

    /// Which of `ids` the volume lacks, as the server answers.
    pub fn missing(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        let resp: MissingResponse = self
            .req(reqwest::Method::POST, &self.url("chunks/missing"))
            .json(&serde_json::json!({ "ids": ids }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        resp.missing
    }

    /// GET an endpoint under the volume and decode its JSON.
    pub fn get_json<T: DeserializeOwned>(&self, rest: &str) -> T {
        let resp = self
            .req(reqwest::Method::GET, &self.url(rest))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{rest}");
        resp.json().unwrap()
    }

    /// The volume's snapshot.
    pub fn snapshot(&self) -> SnapshotResponse {
        self.get_json("snapshot")
    }

    /// One node of the snapshot.
    pub fn node(&self, id: NodeId) -> Option<NodeRecord> {
        self.snapshot().nodes.into_iter().find(|n| n.node == id)
    }

    /// Changes after `after`, waiting up to `wait` seconds.
    pub fn changes(&self, after: u64, wait: u64) -> ChangesResponse {
        self.get_json(&format!("changes?after={after}&wait={wait}"))
    }
}

/// Decodes a JSON answer: the body on 2xx, the error body otherwise.
pub fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, (StatusCode, ErrorBody)> {
    let status = resp.status();
    if status.is_success() {
        Ok(resp.json().unwrap())
    } else {
        let body: ErrorBody = resp
            .json()
            .unwrap_or_else(|e| panic!("{status}: error body is not JSON: {e}"));
        Err((status, body))
    }
}

/// Expects an error answer with `status` and returns its body.
pub fn expect_err(resp: Response, status: u16) -> ErrorBody {
    let got = resp.status();
    let text = resp.text().unwrap();
    assert_eq!(got.as_u16(), status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body {text:?} is not JSON: {e}"))
}

/// A commit request with a fresh random transaction id.
pub fn txn(ops: Vec<Op>) -> CommitRequest {
    CommitRequest {
        format: 1,
        txn: TxnId::random(),
        ops,
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    deltadrive::chunking::seeded::seeded_bytes(len, seed)
}

/// A name.
pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A create op of a directory.
pub fn mkdir(node: NodeId, parent: NodeId, n: &str) -> Op {
    Op::Create(CreateOp {
        node,
        parent,
        name: name(n),
        kind: NodeKind::Dir,
        mode: 0o755,
        mtime: 1,
        xattrs: Xattrs::new(),
        manifest: None,
        manifest_id: None,
        target: None,
    })
}

/// A create op of a file with this manifest.
pub fn mkfile(node: NodeId, parent: NodeId, n: &str, manifest: Manifest) -> Op {
    Op::Create(CreateOp {
        node,
        parent,
        name: name(n),
        kind: NodeKind::File,
        mode: 0o644,
        mtime: 2,
        xattrs: Xattrs::new(),
        manifest_id: Some(manifest_id(&manifest)),
        manifest: Some(manifest),
        target: None,
    })
}

/// A manifest of these chunks.
pub fn manifest(chunks: &[ChunkRef]) -> Manifest {
    Manifest {
        chunks: chunks.to_vec(),
    }
}

/// The id of a chunk of these bytes.
pub fn cid(b: &[u8]) -> ChunkId {
    ChunkId::of(b)
}

/// Another device, committing through the real client (`deltadrive::remote::Remote`).
pub struct Device {
    /// Its client of alice-docs.
    pub remote: deltadrive::remote::Remote,
}

impl Device {
    /// A device of alice-docs on `server` with `token`.
    pub fn new(server: &Server, token: &str) -> Device {
        Device {
            remote: deltadrive::remote::Remote::new(&server.base, "alice-docs", token)
                .expect("remote"),
        }
    }

    /// Chunks `data` as the drive does and uploads every chunk; returns its manifest.
    pub fn upload(&self, data: &[u8]) -> Manifest {
        let manifest =
            deltadrive::chunking::chunk_bytes(deltadrive::chunking::ChunkerParams::default(), data);
        let chunks: Vec<_> = manifest
            .offsets()
            .map(|(off, c)| {
                let bytes = &data[off as usize..off as usize + c.len as usize];
                (c.id, payload::encode(bytes, 3))
            })
            .collect();
        self.remote.upload(chunks).expect("upload");
        manifest
    }

    /// Commits `ops` in a new transaction; returns its seq.
    pub fn commit(&self, ops: Vec<Op>) -> u64 {
        let req = CommitRequest {
            format: deltadrive::protocol::limits::COMMIT_FORMAT,
            txn: TxnId::random(),
            ops,
        };
        self.remote.commit(&req).expect("commit").seq.0
    }
}

/// A create op: a directory, a file with `manifest`, or a symlink to `target`.
pub fn create(
    node: NodeId,
    parent: NodeId,
    n: &str,
    kind: NodeKind,
    manifest: Option<Manifest>,
    target: Option<&str>,
) -> Op {
    Op::Create(CreateOp {
        node,
        parent,
        name: name(n),
        kind,
        mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
        mtime: 1_600_000_000_000_000_000,
        xattrs: Xattrs::new(),
        manifest_id: manifest.as_ref().map(Manifest::id),
        manifest,
        target: target.map(str::to_string),
    })
}
