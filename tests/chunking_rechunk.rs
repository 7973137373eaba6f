//! Incremental re-chunking of a real file: same result as whole-file chunking, and its cost
//! (bytes read) follows the size of the edit, not of the file.

use deltadrive::chunking::seeded::seeded_bytes;
use std::cell::Cell;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use deltadrive::chunking::{ChunkerParams, ReadAt, chunk_file, rechunk};

/// A file that counts the bytes read through it.
struct Counting<'a> {
    file: &'a File,
    read: Cell<u64>,
}

impl ReadAt for Counting<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = ReadAt::read_at(self.file, buf, offset)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

const MIB: u64 = 1 << 20;

fn file_of(len: u64, seed: u64) -> File {
    let mut f = tempfile::tempfile().unwrap();
    for i in 0..len / MIB {
        f.write_all(&seeded_bytes(MIB as usize, seed ^ i)).unwrap();
    }
    f
}

#[test]
fn one_byte_overwrite_in_64_mib_reads_a_few_chunks() {
    let p = ChunkerParams::default();
    let f = file_of(64 * MIB, 1);
    let prev = chunk_file(p, &f).unwrap();
    let at = 32 * MIB + 12_345;
    let mut byte = [0u8];
    ReadAt::read_exact_at(&f, &mut byte, at).unwrap();
    f.write_all_at(&[!byte[0]], at).unwrap();

    let counting = Counting {
        file: &f,
        read: Cell::new(0),
    };
    let edit = at..at + 1;
    let new = rechunk(p, &prev, &counting, 64 * MIB, std::slice::from_ref(&edit)).unwrap();
    assert_eq!(new, chunk_file(p, &f).unwrap());
    assert_ne!(new, prev);
    assert!(
        counting.read.get() < MIB,
        "read {} bytes",
        counting.read.get()
    );
}

#[test]
fn append_of_1_mib_reads_about_1_mib() {
    let p = ChunkerParams::default();
    let mut f = file_of(16 * MIB, 2);
    let prev = chunk_file(p, &f).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(&seeded_bytes(MIB as usize, 99)).unwrap();

    let counting = Counting {
        file: &f,
        read: Cell::new(0),
    };
    let new = rechunk(p, &prev, &counting, 17 * MIB, &[]).unwrap();
    assert_eq!(new, chunk_file(p, &f).unwrap());
    // The appended MiB, the old last chunk, and at most one read-ahead window.
    let bound = MIB + 64 * 1024 + 4 * 64 * 1024;
    assert!(
        counting.read.get() <= bound,
        "read {} bytes",
        counting.read.get()
    );
    assert!(counting.read.get() >= MIB);
}

#[test]
fn scattered_writes_and_truncation_match_whole_file() {
    let p = ChunkerParams::default();
    let f = file_of(8 * MIB, 3);
    let prev = chunk_file(p, &f).unwrap();
    let writes = [
        (100u64, 10usize),
        (3 * MIB, 70_000),
        (3 * MIB + 200_000, 5),
        (7 * MIB, 1),
    ];
    for (i, &(at, len)) in writes.iter().enumerate() {
        f.write_all_at(&seeded_bytes(len, 1000 + i as u64), at)
            .unwrap();
    }
    f.set_len(7 * MIB + 500).unwrap();
    let dirty: Vec<_> = writes
        .iter()
        .map(|&(at, len)| at..at + len as u64)
        .collect();
    let new = rechunk(p, &prev, &f, 7 * MIB + 500, &dirty).unwrap();
    assert_eq!(new, chunk_file(p, &f).unwrap());
}
