//! Real programs in a real mount: git, SQLite in WAL mode, tar, cp -a.

mod common;

use std::fs;
use std::path::Path;

use common::{Mount, sh};

#[test]
fn git_init_commit_fsck() {
    let m = Mount::new();
    let repo = m.path("repo");
    fs::create_dir(&repo).unwrap();
    sh(
        "git init -q -b main . && git config user.email t@example.com && git config user.name Test",
        &repo,
    );
    for round in 0..5 {
        for i in 0..20 {
            fs::write(
                repo.join(format!("file{i}.txt")),
                format!("round {round} file {i}\n").repeat(round + 1),
            )
            .unwrap();
        }
        fs::create_dir_all(repo.join(format!("dir{round}/nested"))).unwrap();
        fs::write(
            repo.join(format!("dir{round}/nested/data.bin")),
            common::random_bytes(round as u64, 50_000),
        )
        .unwrap();
        sh(
            &format!("git add -A && git commit -q -m 'round {round}'"),
            &repo,
        );
    }
    sh(
        "git mv file0.txt renamed.txt && git rm -q file1.txt && git commit -q -m cleanup && git gc -q",
        &repo,
    );
    sh("git fsck --full --strict", &repo);
    let log = sh("git log --oneline | wc -l", &repo);
    assert_eq!(log.trim(), "6");
    let status = sh("git status --porcelain", &repo);
    assert!(status.is_empty(), "clean work tree: {status}");
    // A clone out of the drive matches.
    let outside = tempfile::tempdir().unwrap();
    sh(
        &format!(
            "git clone -q {} {}/clone",
            repo.display(),
            outside.path().display()
        ),
        outside.path(),
    );
    sh("git fsck --full", &outside.path().join("clone"));
}

#[test]
fn sqlite_wal_inserts_and_integrity_check() {
    let m = Mount::new();
    let db = m.path("test.db");
    let script = "PRAGMA journal_mode=WAL;\n\
        CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);\n\
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)\n\
        INSERT INTO t(v, b) SELECT 'row ' || i, randomblob(200) FROM n;\n\
        BEGIN; UPDATE t SET v = v || ' updated' WHERE id % 7 = 0; COMMIT;\n\
        DELETE FROM t WHERE id % 11 = 0;\n";
    fs::write(m.path("script.sql"), script).unwrap();
    sh(
        &format!("sqlite3 {} < script.sql", db.display()),
        &m.mountpoint,
    );
    // Thousands of separate transactions, each its own WAL commit.
    let mut inserts = String::from("PRAGMA journal_mode=WAL;\n");
    for i in 0..2000 {
        inserts.push_str(&format!("INSERT INTO t(v) VALUES ('single {i}');\n"));
    }
    fs::write(m.path("inserts.sql"), inserts).unwrap();
    sh(
        &format!("sqlite3 {} < inserts.sql", db.display()),
        &m.mountpoint,
    );
    let check = sh(
        &format!(
            "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
            db.display()
        ),
        &m.mountpoint,
    );
    let expected = 5000 - 5000 / 11 + 2000;
    assert_eq!(check.trim(), format!("ok\n{expected}"));
    assert!(m.path("test.db-wal").exists() || m.path("test.db").exists());
}

/// Equal texts, or a panic naming the first line that differs (not the whole listing).
fn assert_same_lines(a: &str, b: &str, what: &str) {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        assert_eq!(x, y, "{what}: line {i} differs");
    }
    assert_eq!(
        a.lines().count(),
        b.lines().count(),
        "{what}: line counts differ"
    );
}

fn make_source_tree(root: &Path) {
    // Thousands of files across a few hundred directories, with modes and symlinks.
    for d in 0..120 {
        let dir = root.join(format!("pkg{d:03}/sub{}", d % 7));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..25 {
            let size = (d * 131 + f * 977) % 20_000;
            fs::write(
                dir.join(format!("mod{f:02}.py")),
                common::random_bytes((d * 100 + f) as u64, size),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(
            format!("sub{}/mod00.py", d % 7),
            root.join(format!("pkg{d:03}/link.py")),
        )
        .unwrap();
    }
    sh(
        "chmod 0755 pkg000/sub0/mod01.py && chmod 0600 pkg001/sub1/mod02.py",
        root,
    );
}

#[test]
fn tar_extract_thousands_of_files_byte_identical() {
    let m = Mount::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    sh(
        &format!(
            "tar cf {}/tree.tar -C {} .",
            work.path().display(),
            src.display()
        ),
        work.path(),
    );
    let dest = m.path("extracted");
    fs::create_dir(&dest).unwrap();
    sh(
        &format!(
            "tar xf {}/tree.tar -C {}",
            work.path().display(),
            dest.display()
        ),
        work.path(),
    );
    // tar keeps whole-second mtimes.
    let listing = |dir: &Path| sh("find . -printf '%y %m %s %Ts %l %p\\n' | sort", dir);
    let a = listing(&src);
    let b = listing(&dest);
    assert_eq!(a.lines().count(), 120 * 27 + 120 + 1);
    assert_same_lines(&a, &b, "listings (kind, mode, size, mtime, target)");
    let sums = |dir: &Path| sh("find . -type f -print0 | sort -z | xargs -0 sha256sum", dir);
    assert_same_lines(&sums(&src), &sums(&dest), "content hashes");
    // And reading it all back with tar gives the same archive members.
    let relisted = sh(
        &format!("tar cf - -C {} . | tar tvf - | sort", dest.display()),
        work.path(),
    );
    let original = sh(
        &format!("tar tvf {}/tree.tar | sort", work.path().display()),
        work.path(),
    );
    assert_same_lines(&relisted, &original, "tar listings");
}

#[test]
fn cp_a_preserves_symlinks_modes_and_xattrs() {
    let m = Mount::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/file"), b"content").unwrap();
    fs::write(src.join("a/b/exec"), b"#!/bin/sh\n").unwrap();
    sh(
        "chmod 0750 a/b/exec && chmod 0700 a/b && ln -s ../file a/b/up && ln -s /etc/hostname abs",
        &src,
    );
    sh(
        "setfattr -n user.origin -v tested a/file && setfattr -n user.dir -v yes a/b",
        &src,
    );
    sh(
        "touch -h -d '2001-02-03 04:05:06' a/b/up && touch -d '2010-01-01' a/file",
        &src,
    );
    let dest = m.path("copy");
    sh(
        &format!("cp -a {} {}", src.display(), dest.display()),
        work.path(),
    );
    let listing = |dir: &Path| sh("find . -printf '%y %m %s %T@ %l %p\\n' | sort", dir);
    assert_same_lines(&listing(&src), &listing(&dest), "cp -a listing");
    let xattrs = |dir: &Path| sh("getfattr -R -d -m user. . 2>/dev/null | sort", dir);
    let x = xattrs(&dest);
    assert!(x.contains("user.origin=\"tested\""), "{x}");
    assert_eq!(xattrs(&src), x);
    // And back out again.
    let back = work.path().join("back");
    sh(
        &format!("cp -a {} {}", dest.display(), back.display()),
        work.path(),
    );
    assert_same_lines(
        &listing(&src),
        &listing(&back),
        "listing after copying back",
    );
}
