//! The rtnetlink connections [`crate::LinuxKernel`] applies ops through:
//! one per namespace, opened at the first op there and reused by the ops
//! after it, all of them driven by one runtime thread of the kernel's own.
//!
//! A netlink socket acts on the namespace it was created in, whichever
//! thread uses it later, so a connection is made by a short thread that
//! enters the namespace, creates the socket and leaves; every op after that
//! is a task on the runtime. (Before, each op paid a thread, a runtime and
//! a socket of its own.)
//!
//! A socket holds its namespace: a namespace deleted by hand would live on,
//! with its devices, for as long as evnet's socket there. So an instance
//! namespace's connection lasts only until [`Connections::release`] (the
//! end of a batch of ops), and one whose namespace file now names another
//! namespace (deleted and made again) is replaced before use. The host
//! namespace's connection lives as long as the kernel.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rtnetlink::Handle;

use crate::error::KernelError;
use crate::linux::inside;
use evnet_plan::Ns;

/// One namespace's connection: which namespace it was made in (the nsfs
/// inode behind the path then) and its handle. Dropping it does not cut
/// the connection: its task (which owns the socket) ends, closing the
/// socket, once the last handle is gone, so an op another thread has in
/// flight on it (the bandwidth loop's beside a reconcile pass) completes.
struct Conn {
    inode: (u64, u64),
    handle: Handle,
    lasting: bool,
}

/// The connections of one kernel (shared by its clones).
#[derive(Default)]
pub(crate) struct Connections {
    /// Made at the first op (a kernel that only observes has no thread).
    rt: std::sync::OnceLock<tokio::runtime::Runtime>,
    by_path: Mutex<HashMap<PathBuf, Conn>>,
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.by_path.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        // Not a blocking shutdown: the last clone of a kernel may go away
        // inside an async task, where a runtime may not wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.by_path.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Connections").field("open", &n).finish()
    }
}

fn inode_of(path: &Path, ns: &Ns) -> Result<(u64, u64), KernelError> {
    let m = std::fs::metadata(path).map_err(|source| KernelError::Namespace { ns: ns.to_string(), source })?;
    Ok((m.dev(), m.ino()))
}

impl Connections {
    fn rt(&self) -> Result<&tokio::runtime::Runtime, KernelError> {
        if let Some(rt) = self.rt.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("evnet-netlink")
            .enable_all()
            .build()?;
        // A clone racing this one may have set it first: either will do.
        let _ = self.rt.set(rt);
        Ok(self.rt.get().expect("set above"))
    }

    /// Runs `f` with the connection of the namespace at `path` (made now
    /// if there is none, or if the path names another namespace than when
    /// it was made). `lasting`: the host namespace, whose connection is
    /// kept past [`Connections::release`].
    pub(crate) fn run<T, F, Fut>(&self, path: &Path, ns: &Ns, lasting: bool, f: F) -> Result<T, KernelError>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, KernelError>> + Send + 'static,
    {
        let handle = self.handle(path, ns, lasting)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(handle);
        self.rt()?.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| Err(KernelError::Netlink { ns: ns.to_string(), message: "the netlink task panicked".into() }))
    }

    fn handle(&self, path: &Path, ns: &Ns, lasting: bool) -> Result<Handle, KernelError> {
        let inode = inode_of(path, ns)?;
        let mut by_path = self.by_path.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = by_path.get(path) {
            if c.inode == inode {
                return Ok(c.handle.clone());
            }
        }
        // None yet, or a stale one (dropped here, which closes it).
        by_path.remove(path);
        let c = self.connect(path, ns, inode, lasting)?;
        let handle = c.handle.clone();
        by_path.insert(path.to_path_buf(), c);
        Ok(handle)
    }

    /// Makes a connection inside the namespace at `path` (whose nsfs
    /// inode is `inode`), from a thread that enters it: setns changes only
    /// that thread, and the socket stays in the namespace it was made in.
    fn connect(&self, path: &Path, ns: &Ns, inode: (u64, u64), lasting: bool) -> Result<Conn, KernelError> {
        let rt = self.rt()?.handle().clone();
        inside(&path.to_path_buf(), ns, || {
            let _entered = rt.enter();
            // The third part, the unsolicited messages, is dropped:
            // with it and every handle gone the connection ends.
            let (conn, handle, _) = rtnetlink::new_connection()?;
            rt.spawn(conn);
            Ok(Conn { inode, handle, lasting })
        })
    }

    /// Closes every connection but the lasting ones.
    pub(crate) fn release(&self) {
        self.by_path.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, c| c.lasting);
    }

    /// Closes the connection of the namespace at `path`, if any (before the
    /// namespace is deleted, so the socket does not keep it alive).
    pub(crate) fn close(&self, path: &Path) {
        self.by_path.lock().unwrap_or_else(|e| e.into_inner()).remove(path);
    }
}
