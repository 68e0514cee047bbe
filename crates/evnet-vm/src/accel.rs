//! Choosing KVM or TCG.
//!
//! `/dev/kvm` may exist and open while KVM guests still hang at boot
//! (nested virtualization), so [`Accel::Auto`] believes KVM only after a
//! probe boot with it reached the exec channel's readiness within
//! [`KVM_PROBE_BOUND`]. The verdict is cached in the guest directory
//! (file `accel`, `kvm` or `tcg`) so the probe is paid once per image
//! (`scripts/build-guest.sh` removes it with each new image; delete it to
//! probe again).

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::image::GuestImage;
use crate::process::start;
use crate::spec::{Accel, VmSpec};

/// The environment variable that overrides [`Accel::Auto`]: `kvm` or `tcg`
/// (`auto` or unset: probe).
pub const ACCEL_ENV: &str = "EVNET_VM_ACCEL";
/// How long a KVM probe boot may take to reach the exec channel. A working
/// KVM boots the guest in about a second; TCG, in a few.
pub const KVM_PROBE_BOUND: Duration = Duration::from_secs(8);
/// The probe's verdict's file in the guest directory.
pub const ACCEL_CACHE: &str = "accel";

/// KVM or TCG for `accel`: [`Accel::Kvm`] and [`Accel::Tcg`] as they are;
/// [`Accel::Auto`] as `$EVNET_VM_ACCEL` says when set, else TCG when
/// `/dev/kvm` cannot be opened read-write, else the cached verdict of the
/// KVM probe, else a probe boot (up to [`KVM_PROBE_BOUND`]) whose verdict
/// is cached.
pub fn resolve_accel(accel: Accel, image: &GuestImage) -> Result<Accel> {
    if accel != Accel::Auto {
        return Ok(accel);
    }
    if let Some(v) = std::env::var_os(ACCEL_ENV) {
        let v = v.to_string_lossy();
        match Accel::parse(&v) {
            Some(Accel::Auto) => {}
            Some(a) => return Ok(a),
            None if v.is_empty() => {}
            None => return Err(Error::Invalid { what: "EVNET_VM_ACCEL", value: v.into_owned(), why: "kvm, tcg or auto" }),
        }
    }
    if !kvm_usable() {
        return Ok(Accel::Tcg);
    }
    let cache = image.dir().map(|d| d.join(ACCEL_CACHE));
    if let Some(a) = cache.as_deref().and_then(read_verdict) {
        return Ok(a);
    }
    let verdict = if probe_kvm(image) { Accel::Kvm } else { Accel::Tcg };
    if let Some(c) = &cache {
        // Best effort: an unwritable guest directory means probing again.
        let tmp = c.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, verdict.name()).is_ok() {
            let _ = std::fs::rename(&tmp, c);
        }
    }
    Ok(verdict)
}

fn read_verdict(path: &Path) -> Option<Accel> {
    Accel::parse(&std::fs::read_to_string(path).ok()?).filter(|a| *a != Accel::Auto)
}

/// Whether `/dev/kvm` opens read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Boots the guest with KVM and no NIC: does it answer on the exec channel
/// within [`KVM_PROBE_BOUND`]?
fn probe_kvm(image: &GuestImage) -> bool {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("evnet-kvm-probe-{}-{nanos:x}", std::process::id()));
    let mut spec = VmSpec::new("evnet-kvm-probe", image.clone(), &dir);
    spec.accel = Accel::Kvm;
    let ok = match start(spec, None) {
        Ok(mut vm) => {
            let ok = vm.connect_exec(KVM_PROBE_BOUND).is_ok();
            let _ = vm.kill();
            ok
        }
        Err(_) => false,
    };
    let _ = std::fs::remove_dir_all(&dir);
    ok
}
