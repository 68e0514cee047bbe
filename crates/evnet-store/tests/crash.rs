//! Kills a real writer process with SIGKILL mid-stream and checks that every
//! write it acknowledged is on disk, three times over on the same file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use evnet_store::{EmbeddedStore, Store};

const WRITERS: usize = 16;
/// Acknowledged keys to wait for before killing the writer.
const ACKS_BEFORE_KILL: usize = 1_500;
const SIGKILL: i32 = 9;

fn value_for(key: &str) -> Vec<u8> {
    format!("value of {key} / {}", "x".repeat(40)).into_bytes()
}

/// Spawns the writer, waits for `ACKS_BEFORE_KILL` acknowledged keys, kills
/// it with SIGKILL and returns every key it acknowledged.
fn run_and_kill(path: &std::path::Path, run: usize) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evnet-store-crash-writer"))
        .arg(path)
        .arg(run.to_string())
        .arg(WRITERS.to_string())
        // Far more than it can write before the kill, and a time bound.
        .arg("1000000")
        .arg("60")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                // A line cut short by the kill was never fully acknowledged.
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => {
                    let key = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
                    if tx.send(key).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(key) => acked.push(key),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "run {run}: only {} acknowledged keys before {err:?}",
                    acked.len()
                );
            }
        }
    }
    // Child::kill sends SIGKILL to this child's PID.
    child.kill().expect("kill the writer");
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "run {run}: the writer must die by SIGKILL mid-stream, not finish ({status})"
    );
    reader.join().unwrap();
    // Keys printed before the kill are acknowledged too.
    acked.extend(rx.try_iter());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut all_acked: Vec<String> = Vec::new();

    for run in 0..3 {
        let acked = run_and_kill(&path, run);
        assert!(acked.len() >= ACKS_BEFORE_KILL);
        all_acked.extend(acked.iter().cloned());

        let store = EmbeddedStore::open(&path).expect("reopen after the crash");
        for key in &all_acked {
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} is missing"));
            assert_eq!(kv.value, value_for(key), "{key} has the wrong value");
            assert_eq!(kv.version, 1);
        }

        // Each writer's two keys were persisted together: its "last" marker
        // is at least its newest acknowledged key, and names a key that exists.
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        for key in &acked {
            let (prefix, n) = key.rsplit_once('/').unwrap();
            let writer = prefix
                .strip_prefix(&format!("crash/{run}/"))
                .unwrap()
                .to_owned();
            let entry = newest.entry(writer).or_default();
            if n > entry.as_str() {
                *entry = n.to_owned();
            }
        }
        let lasts = store.range(&format!("crash/last/{run}/")).await.unwrap();
        for kv in &lasts.kvs {
            let writer = kv.key.rsplit('/').next().unwrap();
            let last = String::from_utf8(kv.value.clone()).unwrap();
            if let Some(acked_newest) = newest.get(writer) {
                assert!(
                    last >= *acked_newest,
                    "writer {writer}: last marker {last} behind acknowledged {acked_newest}"
                );
            }
            let key = format!("crash/{run}/{writer}/{last}");
            assert!(
                store.get(&key).await.unwrap().is_some(),
                "marker names {key}, which is missing"
            );
        }
        for writer in newest.keys() {
            assert!(
                lasts
                    .kvs
                    .iter()
                    .any(|kv| kv.key.ends_with(&format!("/{writer}"))),
                "writer {writer} acknowledged keys but has no marker"
            );
        }

        // Revisions: one per write, all in order; the store continues after them.
        let keys = store.range(&format!("crash/{run}/")).await.unwrap();
        assert!(keys.kvs.len() >= acked.len());
        let revision = store.current_revision().await.unwrap();
        let max_mod = store
            .range("crash/")
            .await
            .unwrap()
            .kvs
            .iter()
            .map(|kv| kv.mod_revision)
            .max()
            .unwrap();
        assert_eq!(
            revision, max_mod,
            "the persisted revision is that of the newest write"
        );
        drop(store);
    }
}
