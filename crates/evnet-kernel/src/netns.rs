//! Named network namespaces, made and removed the way `ip netns add` and
//! `ip netns del` do it, without a process per namespace: a namespace is
//! a file under `/run/netns` with the namespace bind-mounted on it, and
//! `/run/netns` is a shared mount so other mount namespaces see it.
//!
//! Written over libc because it is four system calls; the two crates that
//! do it (netns-rs, rtnetlink's `NetworkNamespace`) fork or bring nix.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Makes `dir` a shared mount point (a bind mount of itself the first
/// time), as `ip netns add` does.
fn share(dir: &Path) -> io::Result<()> {
    let d = cstr(dir)?;
    let none = c"none";
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let shared = || unsafe { libc::mount(none.as_ptr(), d.as_ptr(), none.as_ptr(), libc::MS_SHARED | libc::MS_REC, std::ptr::null()) };
    if shared() == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // Not a mount point yet.
    // SAFETY: as above.
    check(unsafe { libc::mount(d.as_ptr(), d.as_ptr(), none.as_ptr(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) })?;
    check(shared())
}

/// Creates the named namespace `dir/name`. Fails with `AlreadyExists` if
/// the name is taken.
pub(crate) fn create(dir: &Path, name: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    share(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: unshare changes only this thread's namespace; the
            // thread ends right after.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            let src = c"/proc/thread-self/ns/net";
            let dst = cstr(&path)?;
            let none = c"none";
            // SAFETY: mount(2) with valid NUL-terminated strings.
            check(unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), none.as_ptr(), libc::MS_BIND, std::ptr::null()) })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// Removes the named namespace at `path` (it goes once nothing else holds
/// it). A missing one is not an error.
pub(crate) fn delete(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: umount2(2) with a valid NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (a file left behind); ENOENT: gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
