//! Planner benchmark for scripts/bench/planner.sh: `plan()` over a volume of ~100,000 nodes
//! with a few changes on each side (the everyday case), and over an initial sync (every node
//! new on the remote side: the worst case, 100,000 creates to order).
//!
//! Usage: plan_bench [RUNS]   (default 20; the median run is reported)

use std::time::Instant;

use deltadrive::chunking::ManifestId;
use deltadrive::protocol::{AccountName, Name, NodeId, Xattrs};
use deltadrive::sync::plan::{ConflictStamp, Content, Context, Entry, Tree, plan};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TOP: u128 = 100;
const SUB: u128 = 10;
const FILES: u128 = 99;

fn content(tag: u128) -> Content {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&tag.to_le_bytes());
    Content::File {
        manifest_id: ManifestId::from_bytes(b),
        size: 4096,
    }
}

fn entry(parent: u128, name: &str, content: Content) -> Res<Entry> {
    Ok(Entry {
        parent: NodeId::from_u128(parent),
        name: Name::new(name)?,
        mode: 0o644,
        mtime: 1_700_000_000_000_000_000,
        xattrs: Xattrs::new(),
        content,
    })
}

/// 100 top directories x 10 subdirectories x 99 files: 100,100 nodes.
fn volume() -> Res<Vec<(NodeId, Entry)>> {
    let mut out = Vec::new();
    let mut next = 1u128;
    for t in 0..TOP {
        let top = next;
        next += 1;
        out.push((
            NodeId::from_u128(top),
            entry(0, &format!("top{t}"), Content::Dir)?,
        ));
        for s in 0..SUB {
            let sub = next;
            next += 1;
            out.push((
                NodeId::from_u128(sub),
                entry(top, &format!("sub{s}"), Content::Dir)?,
            ));
            for f in 0..FILES {
                let id = next;
                next += 1;
                out.push((
                    NodeId::from_u128(id),
                    entry(sub, &format!("file{f}.txt"), content(id))?,
                ));
            }
        }
    }
    Ok(out)
}

fn median_ms(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() -> Res<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20)
        .max(1);
    let entries = volume()?;
    let t0 = Instant::now();
    let synced = Tree::from_entries(entries.clone())?;
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let nodes = synced.len();
    let file_ids: Vec<NodeId> = synced
        .iter()
        .filter(|(_, e)| matches!(e.content, Content::File { .. }))
        .map(|(id, _)| id)
        .collect();

    // A few changes each side: writes, renames, a conflict, a remote rm -rf of a subdirectory.
    let mut local = synced.clone();
    let mut remote = synced.clone();
    let mut changes = 0;
    for (i, id) in file_ids.iter().step_by(9001).enumerate() {
        local.set_content(*id, content(1_000_000 + i as u128))?;
        changes += 1;
    }
    for (i, id) in file_ids.iter().skip(17).step_by(19_001).enumerate() {
        local.move_node(*id, NodeId::ROOT, Name::new(format!("moved{i}.txt"))?)?;
        changes += 1;
    }
    for (i, id) in file_ids.iter().skip(5).step_by(9001).enumerate() {
        remote.set_content(*id, content(2_000_000 + i as u128))?;
        changes += 1;
    }
    // Both sides edit the same two files: two conflicted copies.
    for (i, id) in file_ids.iter().skip(3).take(2).enumerate() {
        local.set_content(*id, content(3_000_000 + i as u128))?;
        remote.set_content(*id, content(4_000_000 + i as u128))?;
        changes += 2;
    }
    let doomed = NodeId::from_u128(2); // top0/sub0 and its 99 files
    let kids: Vec<NodeId> = remote.children_of(doomed).map(|(_, id)| id).collect();
    for id in kids {
        remote.remove(id)?;
    }
    remote.remove(doomed)?;
    changes += 1;

    let ctx = Context::new(
        AccountName::new("bench")?,
        ConflictStamp::parse("2025-11-24 120000")?,
        1,
    );
    let mut few = Vec::new();
    let mut steps = (0, 0);
    for _ in 0..runs {
        let t = Instant::now();
        let p = plan(&local, &synced, &remote, &ctx)?;
        few.push(t.elapsed().as_secs_f64() * 1e3);
        steps = (p.to_local.len(), p.to_remote.len());
    }
    let plan_ms = median_ms(few);
    println!(
        "few changes: nodes={nodes} changes={changes} to_local={} to_remote={} median={plan_ms:.2} ms over {runs} runs",
        steps.0, steps.1
    );

    let mut same = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let p = plan(&synced, &synced, &synced, &ctx)?;
        same.push(t.elapsed().as_secs_f64() * 1e3);
        if !p.is_empty() {
            return Err("a plan over three equal trees is not empty".into());
        }
    }
    let scan_ms = median_ms(same);
    println!("no changes (the scan alone): nodes={nodes} median={scan_ms:.2} ms over {runs} runs");

    let empty = Tree::new();
    let initial_runs = runs.min(5);
    let mut initial = Vec::new();
    let mut creates = 0;
    for _ in 0..initial_runs {
        let t = Instant::now();
        let p = plan(&empty, &empty, &synced, &ctx)?;
        initial.push(t.elapsed().as_secs_f64() * 1e3);
        creates = p.to_local.len();
    }
    let initial_ms = median_ms(initial);
    println!(
        "initial sync: nodes={nodes} local creates={creates} median={initial_ms:.1} ms over {initial_runs} runs"
    );
    println!("tree build (Tree::from_entries, not part of plan): {build_ms:.1} ms");
    println!(
        "bench planner: nodes={nodes} changes={changes} plan_ms={plan_ms:.2} scan_ms={scan_ms:.2} initial_sync_ms={initial_ms:.1}"
    );
    Ok(())
}
