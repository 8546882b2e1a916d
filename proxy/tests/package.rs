//! The Debian package: `cargo xtask package` packs the `proxy` cargo built for these tests
//! (`--binary`, so the release build is not done twice), and the test unpacks the `.deb` into
//! a scratch root and checks what an operator gets: the binary runs and has the version,
//! the shipped configuration passes `check-config`, the man pages and completions are there,
//! the control data is sound, and `systemd-analyze verify` accepts the unit without a word.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use proxy_tests::{skip::skipped, tempdir::TempDir};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ has a parent")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

/// Builds the package with the xtask and returns its path (the last line xtask prints).
fn build_package() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = stdout(Command::new(cargo).current_dir(workspace_root()).args([
        "xtask",
        "package",
        "--binary",
        env!("CARGO_BIN_EXE_proxy"),
    ]));
    PathBuf::from(out.lines().last().expect("xtask printed the package path"))
}

fn non_empty(root: &Path, path: &str) -> Vec<u8> {
    let file = root.join(path.trim_start_matches('/'));
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(!bytes.is_empty(), "{path} is empty");
    bytes
}

#[test]
fn the_debian_package_installs_a_working_proxy_and_a_unit_systemd_accepts() {
    if !Path::new("/usr/bin/dpkg-deb").exists() {
        skipped("not a Debian system: no dpkg-deb to build or unpack a .deb with");
        return;
    }
    let deb = build_package();
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("xdp-proxy_{VERSION}_{}.deb", arch.trim())
    );
    assert!(
        deb.parent().unwrap().ends_with("debian"),
        "{}",
        deb.display()
    );

    // Control data.
    let field = |name: &str| {
        stdout(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "xdp-proxy");
    assert_eq!(field("Version"), VERSION);
    let depends = field("Depends");
    assert!(
        depends.contains("libc6 (>=") && depends.contains("adduser"),
        "Depends: {depends}"
    );
    assert!(!field("Description").is_empty());
    let scratch = TempDir::new("package").unwrap();
    let control = scratch.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/xdp-proxy/proxy.toml"]
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system --group --no-create-home"),
        "{postinst}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }

    // The files.
    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let proxy = root.join("usr/bin/proxy");
    assert_eq!(
        stdout(Command::new(&proxy).arg("--version")).trim(),
        format!("proxy {VERSION}")
    );
    let config = root.join("etc/xdp-proxy/proxy.toml");
    assert_eq!(
        std::fs::read(&config).unwrap(),
        std::fs::read(workspace_root().join("config/proxy.example.toml")).unwrap(),
        "the conffile is config/proxy.example.toml"
    );
    let checked = stdout(Command::new(&proxy).arg("check-config").arg(&config));
    assert!(checked.contains(": ok ("), "{checked}");

    non_empty(&root, "/usr/share/man/man1/proxy.1.gz");
    let page = stdout(
        Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man1/proxy.1.gz")),
    );
    assert!(page.contains(".TH proxy 1"), "{page}");
    assert!(page.contains("check\\-config"), "{page}");
    non_empty(&root, "/usr/share/man/man1/proxy-run.1.gz");
    for (path, shell_word) in [
        (
            "/usr/share/bash-completion/completions/proxy",
            "check-config",
        ),
        ("/usr/share/zsh/vendor-completions/_proxy", "#compdef proxy"),
        (
            "/usr/share/fish/vendor_completions.d/proxy.fish",
            "complete -c proxy",
        ),
    ] {
        let text = String::from_utf8(non_empty(&root, path)).unwrap();
        assert!(text.contains(shell_word), "{path}: {text}");
        assert!(
            !text.contains("generate-assets"),
            "{path} offers a hidden command"
        );
    }
    let copyright =
        String::from_utf8(non_empty(&root, "/usr/share/doc/xdp-proxy/copyright")).unwrap();
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        ) && copyright.contains("tokio "),
        "{copyright}"
    );

    verify_unit(&root);
}

/// `systemd-analyze verify` of the unpacked unit, with its paths into the scratch root (so
/// the ExecStart= binary checked is the packaged one) and MANPATH there (so
/// `Documentation=man:proxy(1)` is checked against the packaged page). Its complaints are
/// about the unit by name: there must be none.
fn verify_unit(root: &Path) {
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/xdp-proxy.service")).unwrap();
    assert!(
        unit.contains(
            "\nExecStart=/usr/bin/proxy run --config /etc/xdp-proxy/proxy.toml --log-format json\n"
        ),
        "{unit}"
    );
    for needed in [
        "\nUser=xdp-proxy\n",
        "\nType=notify\n",
        "\nNotifyAccess=all\n",
        "\nProtectSystem=strict\n",
        "\nRuntimeDirectory=xdp-proxy\n",
        "\nReadWritePaths=/sys/fs/bpf/xdp-proxy\n",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    let rooted = unit.replace(
        "/usr/bin/proxy",
        &root.join("usr/bin/proxy").display().to_string(),
    );
    let dir = root.parent().unwrap().join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("xdp-proxy.service");
    std::fs::write(&copy, rooted).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by `cargo xtask setup`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{stderr}",
        out.status
    );
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("xdp-proxy")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");
}
