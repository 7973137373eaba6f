//! A mounted drive against a server that lies: a tampering proxy in the test stands between
//! a real `deltadrive serve` and the mount and rewrites the server's answers. The drive must
//! set aside what it cannot use, go on with the rest, and back off instead of hammering.

mod common;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use deltadrive::chunking::{ChunkRef, EditOp, Manifest, ManifestEdit, ManifestId};
use deltadrive::protocol::{
    AccountName, Change, ChangesResponse, CreateOp, MoveOp, NodeId, NodeKind, Op, Seq,
    SnapshotResponse, TxnId, WriteOp, manifest_id,
};

use common::sync::{Synced, synced_mount, wait_for};
use support::{Device, create};

/// What the proxy rewrites.
#[derive(Clone)]
enum Rule {
    /// Files whose manifest is `original` are described with `lie` instead.
    Manifest { original: ManifestId, lie: Manifest },
    /// After the real head, the change log goes on with these transactions.
    Tail { real_head: u64, txns: Vec<Vec<Op>> },
    /// The head is said to be `extra` past the real one, with no changes to show for it, and
    /// long-polls past the real head are answered at once.
    Head { real_head: u64, extra: u64 },
}

/// One request the proxy passed on.
struct Seen {
    path: String,
    body: Vec<u8>,
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    rule: Rule,
    seen: Mutex<Vec<Seen>>,
}

/// A tampering proxy on 127.0.0.1, stopped when dropped.
struct ProxyHandle {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ProxyHandle {
    fn start(upstream: &str, rule: Rule) -> ProxyHandle {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        deltadrive::tls::install_provider();
        let proxy = Arc::new(Proxy {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            rule,
            seen: Mutex::default(),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        ProxyHandle {
            proxy,
            addr,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen so far whose path contains `part` (and whose body contains `body`).
    fn count(&self, part: &str, body: &str) -> usize {
        let seen = self
            .proxy
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.iter()
            .filter(|s| {
                s.path.contains(part)
                    && (body.is_empty() || String::from_utf8_lossy(&s.body).contains(body))
            })
            .count()
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn query_u64(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

async fn forward(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    proxy
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            path: format!("{path}?{query}"),
            body: body.to_vec(),
        });
    let after = query_u64(&query, "after").unwrap_or(0);
    if path.ends_with("/changes") {
        match &proxy.rule {
            Rule::Tail { real_head, .. } | Rule::Head { real_head, .. } if after >= *real_head => {
                return past_the_head(&proxy.rule, after, query_u64(&query, "wait")).await;
            }
            _ => {}
        }
    }
    let mut headers = HeaderMap::new();
    for name in ["authorization", "content-type", "content-encoding"] {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    let url = format!("{}{}", proxy.upstream, parts.uri);
    let answer = match proxy
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let mut bytes = answer.bytes().await.unwrap_or_default();
    if status == StatusCode::OK {
        if path.ends_with("/snapshot") {
            bytes = tamper_snapshot(&proxy.rule, &bytes);
        } else if path.ends_with("/changes") {
            bytes = tamper_changes(&proxy.rule, &bytes);
        }
    }
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert("content-type", ct);
    }
    resp
}

/// The changes after the real head, as the lie has them; an empty answer waits as a
/// long-poll would.
async fn past_the_head(rule: &Rule, after: u64, wait: Option<u64>) -> Response {
    let (changes, head) = match rule {
        Rule::Tail { real_head, txns } => (
            fake_changes(*real_head, txns)
                .into_iter()
                .filter(|c| c.seq.0 > after)
                .collect::<Vec<_>>(),
            real_head + txns.len() as u64,
        ),
        Rule::Head { real_head, extra } => (Vec::new(), real_head + extra),
        Rule::Manifest { .. } => (Vec::new(), after),
    };
    if changes.is_empty() && !matches!(rule, Rule::Head { .. }) {
        tokio::time::sleep(Duration::from_secs(wait.unwrap_or(0).min(25))).await;
    }
    let page = ChangesResponse {
        head: Seq(head),
        changes,
        more: false,
    };
    axum::Json(page).into_response()
}

fn fake_changes(real_head: u64, txns: &[Vec<Op>]) -> Vec<Change> {
    txns.iter()
        .enumerate()
        .map(|(i, ops)| Change {
            seq: Seq(real_head + 1 + i as u64),
            device: AccountName::new("laptop".to_owned()).expect("name"),
            txn: TxnId::random(),
            time_ms: 0,
            ops: ops.clone(),
        })
        .collect()
}

fn tamper_snapshot(rule: &Rule, bytes: &Bytes) -> Bytes {
    let Rule::Manifest { original, lie } = rule else {
        return bytes.clone();
    };
    let mut snap: SnapshotResponse = serde_json::from_slice(bytes).expect("snapshot JSON");
    for n in &mut snap.nodes {
        if n.manifest_id == Some(*original) {
            n.manifest = Some(lie.clone());
            n.manifest_id = Some(manifest_id(lie));
            n.size = lie.size();
        }
    }
    Bytes::from(serde_json::to_vec(&snap).expect("encode"))
}

fn tamper_changes(rule: &Rule, bytes: &Bytes) -> Bytes {
    let mut page: ChangesResponse = serde_json::from_slice(bytes).expect("changes JSON");
    match rule {
        Rule::Manifest { original, lie } => {
            for op in page.changes.iter_mut().flat_map(|c| c.ops.iter_mut()) {
                if let Op::Create(c) = op
                    && c.manifest_id == Some(*original)
                {
                    c.manifest = Some(lie.clone());
                    c.manifest_id = Some(manifest_id(lie));
                }
            }
        }
        Rule::Tail { real_head, txns } => {
            if !page.more {
                page.changes.extend(fake_changes(*real_head, txns));
                page.head = Seq(real_head + txns.len() as u64);
            }
        }
        Rule::Head { extra, .. } => page.head = Seq(page.head.0 + extra),
    }
    Bytes::from(serde_json::to_vec(&page).expect("encode"))
}

/// A file create op for `data`, uploaded first.
fn create_file(device: &Device, node: NodeId, name: &str, data: &[u8]) -> Op {
    let manifest = device.upload(data);
    create(
        node,
        NodeId::ROOT,
        name,
        NodeKind::File,
        Some(manifest),
        None,
    )
}

fn set_aside(m: &Synced) -> Vec<serde_json::Value> {
    m.status()["set_aside"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One file's manifest says its 16-byte chunk is 999 bytes (the server in front of the
/// proxy would refuse such a commit; the proxy makes an old or hostile server's answer).
/// The drive sets that file aside, shows it in `status`, retries it with a growing pause,
/// and applies every other file; a new version of the file ends the wait.
#[test]
fn a_file_whose_content_cannot_be_rebuilt_is_set_aside_and_the_rest_applies() {
    let fx = support::fixture();
    let laptop = Device::new(&fx.server, &fx.laptop);
    let bad = NodeId::random();
    let small = common::random_bytes(7, 16);
    let bad_op = create_file(&laptop, bad, "bad.bin", &small);
    let Op::Create(CreateOp {
        manifest: Some(original),
        ..
    }) = &bad_op
    else {
        panic!("a file create");
    };
    let chunk = original.chunks[0];
    assert_eq!(chunk.len, 16);
    let lie = Manifest {
        chunks: vec![ChunkRef {
            id: chunk.id,
            len: 999,
        }],
    };
    let proxy = ProxyHandle::start(
        &fx.server.base,
        Rule::Manifest {
            original: manifest_id(original),
            lie,
        },
    );
    // The bad file comes first, in the same transaction as the others.
    let mut ops = vec![bad_op];
    let goods: Vec<Vec<u8>> = (0..20)
        .map(|i| common::random_bytes(100 + i, 3000 + i as usize * 1000))
        .collect();
    for (i, data) in goods.iter().enumerate() {
        ops.push(create_file(
            &laptop,
            NodeId::random(),
            &format!("good-{i}.txt"),
            data,
        ));
    }
    let created = laptop.commit(ops);

    let phone = synced_mount(&proxy.url(), "phone", &fx.phone);
    wait_for(&[&phone], Duration::from_secs(60), "the good files", || {
        goods.iter().enumerate().all(|(i, data)| {
            std::fs::read(phone.path(&format!("good-{i}.txt"))).is_ok_and(|b| b == *data)
        })
    });
    wait_for(
        &[&phone],
        Duration::from_secs(30),
        "bad.bin set aside",
        || set_aside(&phone).len() == 1,
    );
    let entry = &set_aside(&phone)[0];
    assert_eq!(entry["path"], "/bad.bin", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("16"), "{reason}");
    assert!(
        !phone.path("bad.bin").exists(),
        "no file without its content"
    );
    assert!(
        phone.status()["idle"].as_bool().unwrap_or(false) || phone.status()["last_error"].is_null(),
        "the rest is in sync: {}",
        phone.status()
    );

    // Retried with backoff (1 s, 2 s, 4 s, ...), not every cycle.
    let started = Instant::now();
    let before = proxy.count("/chunks/fetch", &chunk.id.to_string());
    std::thread::sleep(Duration::from_secs(8));
    let fetches = proxy.count("/chunks/fetch", &chunk.id.to_string()) - before;
    let attempts = set_aside(&phone)[0]["attempts"].as_u64().unwrap_or(0);
    assert!(
        (1..=5).contains(&fetches),
        "{fetches} fetches of the bad chunk in {:?}",
        started.elapsed()
    );
    assert!((2..=6).contains(&attempts), "{attempts} attempts");

    // A new version of the file (not tampered with) ends the wait.
    let fixed = common::random_bytes(8, 20);
    let manifest = laptop.upload(&fixed);
    laptop.commit(vec![Op::Write(WriteOp {
        node: bad,
        base: Seq(created),
        edit: ManifestEdit {
            ops: manifest.chunks.iter().map(|c| EditOp::Insert(*c)).collect(),
        },
        size: manifest.size(),
        manifest_id: manifest_id(&manifest),
    })]);
    wait_for(&[&phone], Duration::from_secs(30), "the fixed file", || {
        std::fs::read(phone.path("bad.bin")).is_ok_and(|b| b == fixed)
            && set_aside(&phone).is_empty()
    });
}

/// The change log goes on, past the real head, with changes that do not form a tree:
/// create p, create q in p, move p into q. The drive reloads its remote tree once, then
/// reports the volume in `status` and backs off; it does not fetch the snapshot again and
/// again (it did about every 90 ms).
#[test]
fn a_change_log_that_is_not_a_tree_is_reported_and_not_hammered() {
    let fx = support::fixture();
    let laptop = Device::new(&fx.server, &fx.laptop);
    let op = create_file(&laptop, NodeId::random(), "real.txt", b"real");
    let real_head = laptop.commit(vec![op]);
    let (p, q) = (NodeId::random(), NodeId::random());
    let txns = vec![
        vec![create(p, NodeId::ROOT, "p", NodeKind::Dir, None, None)],
        vec![create(q, p, "q", NodeKind::Dir, None, None)],
        vec![Op::Move(MoveOp {
            node: p,
            base: Seq(real_head + 1),
            new_parent: q,
            new_name: support::name("p"),
        })],
    ];
    let proxy = ProxyHandle::start(&fx.server.base, Rule::Tail { real_head, txns });
    let phone = synced_mount(&proxy.url(), "phone", &fx.phone);
    wait_for(
        &[&phone],
        Duration::from_secs(30),
        "the error in status",
        || {
            phone.status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("does not apply"))
        },
    );
    let snapshots = proxy.count("/snapshot", "");
    std::thread::sleep(Duration::from_secs(10));
    let status = phone.status();
    assert!(status["retry_in_ms"].as_u64().is_some(), "{status}");
    let human = common::deltadrive(&["status", phone.mountpoint.to_str().expect("utf-8")]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("does not apply") && human.contains("(next attempt in"),
        "{human}"
    );
    assert!(!status["idle"].as_bool().unwrap_or(true), "{status}");
    assert!(
        snapshots <= 2,
        "{snapshots} snapshots before the error showed"
    );
    assert_eq!(proxy.count("/snapshot", ""), snapshots, "no snapshot since");
    // The engine's pulls (no long-poll wait) over 10 s of 1, 2, 4, 8 s pauses.
    let pulls = proxy.count("wait=0", "");
    assert!(pulls <= 10, "{pulls} pulls");
    let errors = phone.log().matches("does not apply").count();
    assert!(errors <= 8, "{errors} error lines");
}

/// The server says its head is five commits past what its change log holds, and answers
/// long-polls at once. The drive keeps asking for changes that never come; after one free
/// retry it backs off and says so, and its long-poll backs off too.
#[test]
fn a_head_that_runs_ahead_of_the_change_log_backs_off() {
    let fx = support::fixture();
    let laptop = Device::new(&fx.server, &fx.laptop);
    let op = create_file(&laptop, NodeId::random(), "real.txt", b"real");
    let real_head = laptop.commit(vec![op]);
    let proxy = ProxyHandle::start(
        &fx.server.base,
        Rule::Head {
            real_head,
            extra: 5,
        },
    );
    let phone = synced_mount(&proxy.url(), "phone", &fx.phone);
    wait_for(
        &[&phone],
        Duration::from_secs(30),
        "the stall in status",
        || {
            phone.status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no progress"))
        },
    );
    let (pulls, polls) = (proxy.count("wait=0", ""), proxy.count("wait=25", ""));
    std::thread::sleep(Duration::from_secs(10));
    let pulls = proxy.count("wait=0", "") - pulls;
    let polls = proxy.count("wait=25", "") - polls;
    assert!(pulls <= 8, "{pulls} pulls in 10 s");
    assert!(polls <= 8, "{polls} long-polls in 10 s");
    // What the server does hold still arrived.
    assert_eq!(
        std::fs::read(phone.path("real.txt")).expect("read"),
        b"real"
    );
}
