//! Concurrent committers and long-poll wake-ups against a real `deltadrive serve`.

mod support;

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use deltadrive::protocol::{ErrorCode, NodeId, Op, Seq, SetAttrsOp, TxnId, XattrValue, Xattrs};
use support::{Client, add_device, fixture, mkdir, txn};

const CLIENTS: usize = 8;
const SUCCESSES_EACH: usize = 12;

fn count_of(x: &Xattrs) -> u64 {
    x.get("user.count")
        .map(|v| String::from_utf8(v.0.clone()).unwrap().parse().unwrap())
        .unwrap_or(0)
}

fn with_count(n: u64) -> Xattrs {
    let mut x = Xattrs::new();
    x.insert("user.count".into(), XattrValue(n.to_string().into_bytes()));
    x
}

#[test]
fn eight_committers_get_gapless_seqs_no_lost_update_and_retries_apply_once() {
    let f = fixture();
    let counter = NodeId::random();
    let setup = Client::new(&f.server, &f.laptop, "alice-docs");
    assert_eq!(
        setup.commit_ok(vec![mkdir(counter, NodeId::ROOT, "counter")]),
        1
    );
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let token = add_device(f.dir.path(), "alice", &format!("dev{i}"));
            Client::new(&f.server, &token, "alice-docs")
        })
        .collect();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let results = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let conflicts = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (barrier, results, conflicts) =
                (barrier.clone(), results.clone(), conflicts.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut done = 0;
                while done < SUCCESSES_EACH {
                    // Read-modify-write of one shared node, plus a private node per commit.
                    let node = c.node(counter).unwrap();
                    let next = count_of(&node.xattrs) + 1;
                    let req = txn(vec![
                        Op::SetAttrs(SetAttrsOp {
                            node: counter,
                            base: node.version,
                            mode: None,
                            mtime: None,
                            xattrs: Some(with_count(next)),
                        }),
                        mkdir(NodeId::random(), NodeId::ROOT, &format!("c{i}-{done}")),
                    ]);
                    match c.commit(&req) {
                        Ok(r) => {
                            assert!(!r.replayed);
                            results.lock().unwrap().push((r.seq.0, next));
                            done += 1;
                            if done % 4 == 0 {
                                // The answer "was lost": the retry must not apply again.
                                let again = c.commit(&req).unwrap();
                                assert_eq!(again.seq, r.seq);
                                assert!(again.replayed);
                            }
                        }
                        Err((status, e)) => {
                            assert_eq!((status.as_u16(), e.code), (409, ErrorCode::Stale), "{e:?}");
                            assert_eq!(e.stale[0].node, counter);
                            *conflicts.lock().unwrap() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut results = results.lock().unwrap().clone();
    results.sort();
    let total = (CLIENTS * SUCCESSES_EACH) as u64;
    let seqs: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (2..=total + 1).collect::<Vec<_>>(),
        "gapless, each seq once"
    );
    // No lost update: commit k (in seq order) wrote count k, and the final count is the total.
    for (k, (_, count)) in results.iter().enumerate() {
        assert_eq!(*count, k as u64 + 1);
    }
    let final_node = setup.node(counter).unwrap();
    assert_eq!(count_of(&final_node.xattrs), total);
    assert_eq!(final_node.version, Seq(total + 1));
    let mut log = Vec::new();
    let mut after = 0;
    loop {
        let page = setup.changes(after, 0);
        log.extend(page.changes.iter().map(|c| c.seq.0));
        after = page.changes.last().map_or(after, |c| c.seq.0);
        if !page.more {
            assert_eq!(page.head, Seq(total + 1));
            break;
        }
    }
    assert_eq!(log, (1..=total + 1).collect::<Vec<_>>());
    let snap = setup.snapshot();
    assert_eq!(
        snap.nodes.len(),
        2 + CLIENTS * SUCCESSES_EACH,
        "root, counter, one dir per commit"
    );
    println!(
        "{CLIENTS} committers: {total} commits applied, {} refused as stale",
        conflicts.lock().unwrap()
    );
}

#[test]
fn a_long_poll_wakes_when_another_device_commits() {
    let f = fixture();
    let waiter = Client::new(&f.server, &f.laptop, "alice-docs");
    let committer = Client::new(&f.server, &f.phone, "alice-docs");
    // Nothing to wait for: answers empty once `wait` has passed.
    let t = Instant::now();
    let empty = waiter.changes(0, 1);
    assert!(empty.changes.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    let rounds = 20;
    let sent_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let sent = sent_at.clone();
    let poller = std::thread::spawn(move || {
        let mut got = Vec::new();
        for after in 0..rounds {
            let page = waiter.changes(after, 30);
            let now = Instant::now();
            assert_eq!(page.changes.len(), 1, "round {after}");
            assert_eq!(page.changes[0].seq, Seq(after + 1));
            assert_eq!(page.changes[0].device.as_str(), "phone");
            got.push(now);
        }
        got
    });
    for i in 0..rounds {
        std::thread::sleep(Duration::from_millis(60));
        sent.lock().unwrap().push(Instant::now());
        let req = deltadrive::protocol::CommitRequest {
            format: 1,
            txn: TxnId::random(),
            ops: vec![mkdir(NodeId::random(), NodeId::ROOT, &format!("d{i}"))],
        };
        committer.commit(&req).unwrap();
    }
    let got = poller.join().unwrap();
    let sent = sent_at.lock().unwrap();
    let mut lat: Vec<Duration> = got
        .iter()
        .zip(sent.iter())
        .map(|(g, s)| g.saturating_duration_since(*s))
        .collect();
    // Every wake-up came from the commit, far inside the 30 s wait.
    assert!(lat.iter().all(|l| *l < Duration::from_secs(10)));
    lat.sort();
    println!(
        "long-poll wake-up after commit start: p50 {:.2} ms, max {:.2} ms over {rounds} rounds",
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
}
