//! Threads that live in the host namespace the agent manages
//! (`--host-netns`): the DHCP and metadata services open their sockets
//! there.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Starts thread `name` inside the namespace at `netns` (None: the
/// agent's own): it enters the namespace, runs `setup` there and then
/// `run` with what `setup` made. Returns once the thread has entered the
/// namespace and set up, with the error of either if one failed.
pub(crate) fn spawn<S>(
    name: &str,
    netns: Option<PathBuf>,
    setup: impl FnOnce() -> io::Result<S> + Send + 'static,
    run: impl FnOnce(S) + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    let file = netns.as_ref().map(std::fs::File::open).transpose()?;
    let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
        if let Some(f) = &file {
            // SAFETY: setns on a valid fd; it affects this thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(io::Error::last_os_error()));
                return;
            }
        }
        drop(file);
        match setup() {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                run(s);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }
    })?;
    ready.recv().map_err(|_| io::Error::other(format!("the thread {name} ended at its start")))??;
    Ok(handle)
}
