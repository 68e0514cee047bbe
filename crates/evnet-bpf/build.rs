//! Compiles the tc programs in `bpf/` with clang (`-target bpf`) into
//! `OUT_DIR`, where `src/lib.rs` embeds them. Debian: `clang llvm
//! libbpf-dev` (scripts/setup.sh installs them).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = std::env::var("EVNET_BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for name in ["evnet", "harness"] {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-Ibpf")
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("running {clang} to build {src}: {e} (install clang, llvm and libbpf-dev: scripts/setup.sh)"));
        assert!(status.success(), "{clang} failed on {src}");
    }
    println!("cargo:rerun-if-changed=bpf/evnet.h");
    println!("cargo:rerun-if-env-changed=EVNET_BPF_CLANG");
}
