//! The agent's spool reader over arbitrary bytes on disk (a torn write, a
//! flipped bit, a foreign file): it opens, reads what is good, and keeps
//! taking records — an appended record is read back after a reopen.
#![no_main]
use outpost_agent::spool::{Fsync, Spool, SpoolOptions};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // First byte: how much of the rest is the ledger (×4 bytes).
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (ledger, segment) = rest.split_at((usize::from(n) * 4).min(rest.len()));
    let base = std::path::Path::new("/dev/shm");
    let tmp = if base.is_dir() {
        tempfile::tempdir_in(base)
    } else {
        tempfile::tempdir()
    }
    .expect("a temp dir");
    let dir = tmp.path().join("spool");
    std::fs::create_dir(&dir).expect("the spool dir");
    if !ledger.is_empty() {
        std::fs::write(dir.join("ledger.json"), ledger).expect("ledger written");
    }
    std::fs::write(dir.join("00000000000000000001.seg"), segment).expect("segment written");
    let opts = SpoolOptions::bounded(1 << 20, Fsync::Never);
    let Ok(mut spool) = Spool::open(&dir, opts.clone(), 1) else {
        return;
    };
    let mut after = 0;
    while let Ok(batch) = spool.read_after(after, 64, 1 << 16) {
        match batch.last() {
            Some(&(seq, _)) => {
                assert!(seq > after, "seqs ascend");
                after = seq;
            }
            None => break,
        }
    }
    let seq = spool.next_seq();
    if spool.append(&[b"fuzz".as_slice()]).is_err() || spool.flush().is_err() {
        return;
    }
    drop(spool);
    let mut spool = Spool::open(&dir, opts, 1).expect("a spool it wrote reopens");
    let again = spool.read_after(seq - 1, 64, 1 << 16).expect("readable");
    assert_eq!(again.first(), Some(&(seq, b"fuzz".to_vec())), "the appended record survives");
});
