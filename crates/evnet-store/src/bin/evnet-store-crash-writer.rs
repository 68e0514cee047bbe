//! Writes keys into an [`EmbeddedStore`] from many tasks at once and prints
//! each key on stdout only after its transaction returned, so whoever reads
//! the output knows which writes were acknowledged. The crash test kills it
//! with SIGKILL mid-stream and checks that every printed key survived.
//!
//! Usage: `evnet-store-crash-writer PATH RUN WRITERS MAX_KEYS_PER_WRITER MAX_SECONDS`
//!
//! Writer `w` of run `RUN` puts key `crash/RUN/w/NNNNNNNN` (create-if-absent)
//! with value [`value_for`]`(key)` and, in the same transaction,
//! `crash/last/RUN/w` = `NNNNNNNN`, so a reader can also check that the two
//! ops of one transaction were persisted together. It stops after
//! `MAX_KEYS_PER_WRITER` keys per writer or `MAX_SECONDS`, whichever first.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use evnet_store::{Compare, EmbeddedStore, Store, Txn, TxnOp};

fn value_for(key: &str) -> Vec<u8> {
    format!("value of {key} / {}", "x".repeat(40)).into_bytes()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, run, writers, max_keys, max_seconds] = args.as_slice() else {
        bail!("usage: evnet-store-crash-writer PATH RUN WRITERS MAX_KEYS_PER_WRITER MAX_SECONDS");
    };
    let writers: usize = writers.parse().context("WRITERS")?;
    let max_keys: usize = max_keys.parse().context("MAX_KEYS_PER_WRITER")?;
    let deadline =
        Instant::now() + Duration::from_secs(max_seconds.parse().context("MAX_SECONDS")?);
    let run = run.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = std::sync::Arc::new(EmbeddedStore::open(path)?);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            let run = run.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..max_keys {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let key = format!("crash/{run}/{w}/{n:08}");
                    let txn = Txn {
                        compares: vec![Compare::ModRevision {
                            key: key.clone(),
                            revision: 0,
                        }],
                        ops: vec![
                            TxnOp::Put {
                                key: key.clone(),
                                value: value_for(&key),
                            },
                            TxnOp::Put {
                                key: format!("crash/last/{run}/{w}"),
                                value: format!("{n:08}").into_bytes(),
                            },
                        ],
                    };
                    let resp = store
                        .txn(txn)
                        .await
                        .with_context(|| format!("writing {key}"))?;
                    if !resp.succeeded {
                        bail!("{key} already existed; was this run id used before?");
                    }
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{key}")?;
                    out.flush()?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        anyhow::Ok(())
    })
}
