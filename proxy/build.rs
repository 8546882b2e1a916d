//! Builds the XDP program (`proxy-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! OUT_DIR for `include_bytes!`. Two routes, picked by what is installed:
//! - Debian: `rustc-web` + prebuilt BPF `core` (`libstd-rust-web-dev-bpf`), no build-std;
//! - standard: rustup nightly with `rust-src`, `-Z build-std=core`.
//!
//! Force one with `PROXY_EBPF_ROUTE=debian|nightly`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const SETUP_HINT: &str = "run `cargo xtask setup` (as root) to install the eBPF toolchain";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Debian,
    Nightly,
}

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("proxy/ has a parent")?
        .to_path_buf();
    for p in [
        "proxy-ebpf/src",
        "proxy-ebpf/Cargo.toml",
        "proxy-ebpf/proxy-common/src",
        "proxy-ebpf/proxy-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=PROXY_EBPF_ROUTE");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let linker =
        find_bpf_linker().with_context(|| format!("bpf-linker not found: {SETUP_HINT}"))?;
    let route = pick_route()?;
    let target_dir = out_dir.join("ebpf-target");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = match route {
        Route::Debian => {
            let mut c = Command::new(&cargo);
            c.env("RUSTC", DEBIAN_RUSTC)
                // aya-ebpf and the program use unstable features (the program: atomic
                // intrinsics); allow them for those two crates only.
                .env("RUSTC_BOOTSTRAP", "aya_ebpf,proxy_ebpf");
            c
        }
        Route::Nightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
    };
    // Cargo exports its own compiler, flags and wrappers to build scripts; they belong to
    // the host build, not this one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_BOOTSTRAP",
    ] {
        if !(route == Route::Debian && (var == "RUSTC" || var == "RUSTC_BOOTSTRAP")) {
            cmd.env_remove(var);
        }
    }
    cmd.current_dir(&root)
        .args(["build", "--package", "proxy-ebpf", "--release"])
        // The benchmark programs go into the same object: one object to build and embed;
        // the loader loads `proxy_xdp` only, and the bench programs only for benches.
        .args(["--features", "bench"])
        .args(["--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        // BTF lets the verifier print source lines and bpftool show map types.
        // bpf-linker's default --bpf-expand-memcpy-in-order makes LLVM emit memset/memmove
        // as calls to byte loops the verifier walks byte by byte; plain expansion inlines them.
        // cpu v3: 32-bit jumps and ALU, smaller and faster code (kernel 5.1+).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
                "-Clink-arg=--disable-expand-memcpy-in-order",
                "-Ctarget-cpu=v3",
            ]
            .join("\x1f"),
        );
    if route == Route::Nightly {
        cmd.args(["-Z", "build-std=core"]);
    }
    let status = cmd
        .status()
        .with_context(|| format!("failed to run cargo for the eBPF crate ({route:?} route)"))?;
    if !status.success() {
        bail!("building proxy-ebpf failed ({route:?} route); if the toolchain is missing, {SETUP_HINT}");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/proxy-ebpf");
    std::fs::copy(&obj, out_dir.join("proxy-ebpf.o"))
        .with_context(|| format!("eBPF object missing at {}", obj.display()))?;
    println!("cargo:rustc-env=PROXY_EBPF_ROUTE_USED={route:?}");
    Ok(())
}

fn pick_route() -> Result<Route> {
    match env::var("PROXY_EBPF_ROUTE").as_deref() {
        Ok("debian") => return Ok(Route::Debian),
        Ok("nightly") => return Ok(Route::Nightly),
        Ok(other) if !other.is_empty() => {
            bail!("PROXY_EBPF_ROUTE={other} is not one of `debian`, `nightly`")
        }
        _ => {}
    }
    if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).is_dir() {
        return Ok(Route::Debian);
    }
    if nightly_has_rust_src() {
        return Ok(Route::Nightly);
    }
    bail!(
        "no eBPF toolchain: need either Debian's rustc-web + libstd-rust-web-dev-bpf, \
         or a rustup nightly with rust-src; {SETUP_HINT}"
    )
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
}

fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
