//! Where the guest's kernel and initramfs are.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable naming the guest directory.
pub const GUEST_DIR_ENV: &str = "EVNET_GUEST_DIR";

/// The guest's kernel and initramfs, as `scripts/build-guest.sh` writes
/// them (`vmlinuz`, `initramfs.cpio.gz`, by default in `target/guest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Debian's cloud kernel.
    pub kernel: PathBuf,
    /// The busybox initramfs with the virtio-net modules, iperf3, `/init`
    /// and the exec channel.
    pub initramfs: PathBuf,
}

impl GuestImage {
    /// The kernel's file name in a guest directory.
    pub const KERNEL: &'static str = "vmlinuz";
    /// The initramfs's file name in a guest directory.
    pub const INITRAMFS: &'static str = "initramfs.cpio.gz";

    /// The image in `dir` (whether or not it exists).
    pub fn in_dir(dir: impl AsRef<Path>) -> GuestImage {
        let dir = dir.as_ref();
        GuestImage { kernel: dir.join(Self::KERNEL), initramfs: dir.join(Self::INITRAMFS) }
    }

    /// Whether both files exist.
    pub fn exists(&self) -> bool {
        self.kernel.is_file() && self.initramfs.is_file()
    }

    /// The directory holding the kernel: where the KVM probe's verdict is
    /// cached (`accel`, see [`crate::Accel`]).
    pub fn dir(&self) -> Option<&Path> {
        self.kernel.parent()
    }

    /// Finds the image: in `$EVNET_GUEST_DIR` when it is set (and only
    /// there), else in `<dir of the current executable>/../guest` or
    /// `/../../guest`, so a test binary in `target/debug/deps/` and a binary
    /// in `target/debug/` both find `target/guest`. The error names
    /// `scripts/build-guest.sh`.
    pub fn locate() -> Result<GuestImage> {
        let exe = std::env::current_exe().ok();
        let dirs = candidates(std::env::var_os(GUEST_DIR_ENV), exe.as_deref());
        dirs.iter()
            .map(GuestImage::in_dir)
            .find(GuestImage::exists)
            .ok_or_else(|| Error::ImageMissing {
                searched: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            })
    }
}

/// The directories [`GuestImage::locate`] looks in, in order.
fn candidates(env: Option<OsString>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let Some(bin) = exe.and_then(Path::parent) else { return Vec::new() };
    [bin.parent(), bin.parent().and_then(Path::parent)]
        .into_iter()
        .flatten()
        .map(|d| d.join("guest"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_alone() {
        let c = candidates(Some("/srv/g".into()), Some(Path::new("/r/target/debug/deps/t-1")));
        assert_eq!(c, vec![PathBuf::from("/srv/g")]);
    }

    #[test]
    fn test_binaries_and_binaries_both_find_target_guest() {
        let deps = candidates(None, Some(Path::new("/r/target/debug/deps/boot-1f")));
        assert_eq!(deps, vec![PathBuf::from("/r/target/debug/guest"), PathBuf::from("/r/target/guest")]);
        let bin = candidates(Some("".into()), Some(Path::new("/r/target/debug/evnet")));
        assert_eq!(bin, vec![PathBuf::from("/r/target/guest"), PathBuf::from("/r/guest")]);
    }

    #[test]
    fn a_missing_image_names_the_build_script() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!GuestImage::in_dir(dir.path()).exists());
        let err = Error::ImageMissing { searched: dir.path().display().to_string() };
        assert!(err.to_string().contains("scripts/build-guest.sh"));
    }
}
