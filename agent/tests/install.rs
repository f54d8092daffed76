//! `systemd/install.sh` and the units: exercised in a root prefix (no system
//! command runs there), and the units checked by `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn install(args: &[&str]) -> Output {
    Command::new("sh")
        .arg(repo().join("systemd/install.sh"))
        .args(args)
        .output()
        .expect("run install.sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
}

const FP: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
const ID: &str = "inst_0123456789abcdef0123456789abcdef";
const TOKEN: &str = "oet_0123456789abcdef0123456789abcdef";

#[test]
fn install_writes_config_unit_and_binary_and_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let agent = env!("CARGO_BIN_EXE_outpost-agent");
    let args = [
        "--root",
        r,
        "--server",
        "https://cp.example.com:8443",
        "--install-id",
        ID,
        "--ca-fingerprint",
        FP,
        "--binary",
        agent,
        "--interval",
        "30s",
        "--log-file",
        "/var/log/app.log",
        "--journal-unit",
        "nginx.service",
        "--journal-unit",
        "camera.service",
    ];
    let out = install(&args);
    assert!(out.status.success(), "{}", text(&out));
    let etc = root.path().join("etc/outpost");
    let toml = std::fs::read_to_string(etc.join("agent.toml")).unwrap();
    assert!(toml.contains("interval = \"30s\""), "{toml}");
    assert!(
        toml.contains("journal-units = [\"nginx.service\", \"camera.service\"]"),
        "{toml}"
    );
    let env = std::fs::read_to_string(etc.join("agent.env")).unwrap();
    assert!(
        env.contains("OUTPOST_INSTALL_ID=inst_0123456789abcdef0123456789abcdef"),
        "{env}"
    );
    assert_eq!(
        mode(&etc.join("agent.env")),
        0o600,
        "the install ID is a secret"
    );
    assert_eq!(mode(&root.path().join("usr/bin/outpost-agent")), 0o755);
    assert!(
        root.path()
            .join("etc/systemd/system/outpost-agent.service")
            .exists()
    );
    // No system command ran in a root-prefix install; they are listed.
    let t = text(&out);
    assert!(
        t.contains("would run: systemctl enable outpost-agent.service"),
        "{t}"
    );
    assert!(t.contains("would run: useradd --system"), "{t}");

    // The agent accepts the file it wrote (unknown keys would be refused).
    let check = Command::new(agent)
        .args(["status", "--config"])
        .arg(etc.join("agent.toml"))
        .args(["--state-dir", root.path().join("state").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{}", text(&check)); // not enrolled

    // Again: the same result.
    let before = std::fs::read(etc.join("agent.toml")).unwrap();
    let again = install(&args);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(std::fs::read(etc.join("agent.toml")).unwrap(), before);

    // Uninstall keeps the state; --purge removes it.
    let state = root.path().join("var/lib/outpost-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("device.key"), "k").unwrap();
    let out = install(&["--root", r, "--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!etc.join("agent.toml").exists());
    assert!(!root.path().join("usr/bin/outpost-agent").exists());
    assert!(state.join("device.key").exists());
    let out = install(&["--root", r, "--uninstall", "--purge"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!state.exists());
}

#[test]
fn install_refuses_bad_input_with_a_clear_line() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    for (args, says) in [
        (vec!["--root", r], "--server is required"),
        (
            vec![
                "--root",
                r,
                "--server",
                "http://cp:8443",
                "--install-id",
                ID,
                "--ca-fingerprint",
                FP,
            ],
            "https://",
        ),
        (
            vec![
                "--root",
                r,
                "--server",
                "https://cp:8443",
                "--install-id",
                "x",
                "--ca-fingerprint",
                FP,
            ],
            "inst_",
        ),
        (vec!["--root", r, "--bogus"], "unknown option --bogus"),
        (
            vec![
                "--root",
                r,
                "--server",
                "https://cp:8443",
                "--install-id",
                ID,
                "--ca-fingerprint",
                FP,
                "--binary",
                "/nonexistent/agent",
            ],
            "does not exist",
        ),
    ] {
        let out = install(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
}

/// A typo'd argument stops the script before it changes anything, naming
/// the argument; openssl's colon form of the fingerprint is taken and
/// written as sha256:HEX.
#[test]
fn every_argument_format_is_checked_first() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let agent = env!("CARGO_BIN_EXE_outpost-agent");
    let base = |fp: &str, id: &str, server: &str| -> Vec<String> {
        [
            "--root",
            r,
            "--server",
            server,
            "--install-id",
            id,
            "--ca-fingerprint",
            fp,
            "--binary",
            agent,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let short_fp = &FP[..FP.len() - 1];
    let typo_fp = format!("{}g", &FP[..FP.len() - 1]);
    for (args, says) in [
        (
            base(short_fp, ID, "https://cp:8443"),
            "--ca-fingerprint must be",
        ),
        (
            base(&typo_fp, ID, "https://cp:8443"),
            "--ca-fingerprint must be",
        ),
        (
            base(FP, "inst_short", "https://cp:8443"),
            "--install-id must be",
        ),
        (base(FP, ID, "https://cp:8443/path"), "--server must be"),
        (base(FP, ID, "https://cp 8443"), "--server must be"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = install(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }
    let mut args = base(&"AB:".repeat(32)[..95], ID, "https://cp:8443");
    args.extend(["--interval".into(), "bogus".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = install(&args);
    assert!(text(&out).contains("--interval must be"), "{}", text(&out));
    let args = base(&"AB:".repeat(32)[..95], ID, "https://cp:8443");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = install(&args);
    assert!(out.status.success(), "{}", text(&out));
    let env = std::fs::read_to_string(root.path().join("etc/outpost/agent.env")).unwrap();
    assert!(
        env.contains(&format!(
            "OUTPOST_CA_FINGERPRINT=sha256:{}",
            "ab".repeat(32)
        )),
        "{env}"
    );
}

#[test]
fn help_is_the_usage_alone() {
    let out = install(&["--help"]);
    assert!(out.status.success());
    let t = text(&out);
    assert!(t.contains("--install-id inst_"), "{t}");
    assert!(t.contains("--no-wait"), "{t}");
    assert!(!t.contains("set -eu"), "{t}");
    // Piped, as `curl … | sh -s -- --help` runs it.
    let out = Command::new("sh")
        .args(["-s", "--", "--help"])
        .stdin(std::fs::File::open(repo().join("systemd/install.sh")).unwrap())
        .output()
        .unwrap();
    assert!(text(&out).contains("--install-id inst_"), "{}", text(&out));
}

#[test]
fn install_without_systemd_or_root_says_so() {
    if Path::new("/run/systemd/system").is_dir() {
        return; // a real systemd host: this path is not reachable safely
    }
    let out = install(&[
        "--server",
        "https://cp:8443",
        "--install-id",
        ID,
        "--ca-fingerprint",
        FP,
    ]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("systemd is not running") || t.contains("run as root"),
        "{t}"
    );
}

#[test]
fn dry_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let out = install(&[
        "--dry-run",
        "--root",
        root.path().to_str().unwrap(),
        "--server",
        "https://cp:8443",
        "--install-id",
        ID,
        "--ca-fingerprint",
        FP,
        "--binary",
        env!("CARGO_BIN_EXE_outpost-agent"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("would write"));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

/// `systemd-analyze verify` on both units (with ExecStart pointed at the
/// built binaries, which it requires to exist).
#[test]
fn systemd_units_verify_clean() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is needed (CI installs systemd)");
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_outpost-agent"));
    let cp = bin.with_file_name("outpost-control-plane");
    let mut units = Vec::new();
    for name in ["outpost-agent.service", "outpost-control-plane.service"] {
        let text = std::fs::read_to_string(repo().join("systemd").join(name))
            .unwrap()
            .replace("/usr/bin/outpost-agent", bin.to_str().unwrap())
            .replace("/usr/bin/outpost-control-plane", cp.to_str().unwrap_or(""));
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    if !cp.exists() {
        // Built by the workspace test run; alone, verify the agent's unit.
        units.pop();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "warnings: {}", text(&out));
}

/// `--enroll-token` (issue 19) goes where the install ID goes: the
/// root-only environment file, as OUTPOST_ENROLL_TOKEN.
#[test]
fn install_passes_an_enrollment_token_through() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let base = [
        "--root",
        r,
        "--server",
        "https://cp.example.com:8443",
        "--ca-fingerprint",
        FP,
        "--binary",
        env!("CARGO_BIN_EXE_outpost-agent"),
    ];
    let mut args = base.to_vec();
    args.extend(["--enroll-token", TOKEN, "--device-name", "line-3"]);
    let out = install(&args);
    assert!(out.status.success(), "{}", text(&out));
    let env_file = root.path().join("etc/outpost/agent.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains(&format!("OUTPOST_ENROLL_TOKEN={TOKEN}")),
        "{env}"
    );
    assert!(env.contains("OUTPOST_DEVICE_NAME=\"line-3\""), "{env}");
    assert!(!env.contains("OUTPOST_INSTALL_ID"), "{env}");
    assert_eq!(mode(&env_file), 0o600, "the token is a secret");

    let mut both = base.to_vec();
    both.extend(["--enroll-token", TOKEN, "--install-id", ID]);
    let out = install(&both);
    assert!(!out.status.success());
    assert!(text(&out).contains("not both"), "{}", text(&out));
    let mut bad = base.to_vec();
    bad.extend(["--enroll-token", "nope"]);
    let out = install(&bad);
    assert!(!out.status.success());
    assert!(text(&out).contains("oet_"), "{}", text(&out));
}

/// `--proxy` and `--no-proxy` reach the service as HTTPS_PROXY and NO_PROXY
/// in the 0600 env file; a bad proxy URL is refused without being echoed;
/// on an enrolled box (no install ID) they replace just their lines.
#[test]
fn install_passes_a_proxy_through_the_env_file() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let mut args = base_args(r);
    args.extend(
        [
            "--install-id",
            ID,
            "--proxy",
            "http://edge:pw%40x@proxy.lan:3128",
            "--no-proxy",
            "localhost,.lan,10.0.0.0/8",
        ]
        .map(String::from),
    );
    let out = install_owned(&args);
    assert!(out.status.success(), "{}", text(&out));
    let env_file = root.path().join("etc/outpost/agent.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains("HTTPS_PROXY=http://edge:pw%40x@proxy.lan:3128\n")
            && env.contains("NO_PROXY=localhost,.lan,10.0.0.0/8\n"),
        "{env}"
    );
    assert_eq!(mode(&env_file), 0o600, "the proxy's password is a secret");
    assert!(!text(&out).contains("pw%40x"), "{}", text(&out));

    // An enrolled box: a new proxy replaces the line, the rest stays.
    let state = root.path().join("var/lib/outpost-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("identity.json"), "{}").unwrap();
    let mut again = base_args(r);
    again.extend(["--proxy", "http://other:3128"].map(String::from));
    let out = install_owned(&again);
    assert!(out.status.success(), "{}", text(&out));
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("HTTPS_PROXY=http://other:3128\n"), "{env}");
    assert_eq!(env.matches("HTTPS_PROXY=").count(), 1, "{env}");
    assert!(env.contains(&format!("OUTPOST_INSTALL_ID={ID}")), "{env}");
    assert!(env.contains("NO_PROXY=localhost,.lan,10.0.0.0/8"), "{env}");

    for (flag, bad) in [
        ("--proxy", "http://edge:pw\"x@proxy.lan:3128"),
        ("--proxy", "http://proxy.lan:3128/path"),
        ("--proxy", "http://edge:secret word@proxy:1"),
        ("--no-proxy", "a b"),
    ] {
        let mut a = base_args(r);
        a.extend([flag, bad].map(String::from));
        let out = install_owned(&a);
        assert!(!out.status.success(), "{bad}");
        assert!(text(&out).contains(flag), "{}", text(&out));
        if flag == "--proxy" {
            assert!(
                !text(&out).contains("pw") && !text(&out).contains("secret"),
                "{}",
                text(&out)
            );
        }
    }
}

/// The base arguments of a `--root` install with the built agent.
fn base_args(root: &str) -> Vec<String> {
    [
        "--root",
        root,
        "--server",
        "https://cp.example.com:8443",
        "--ca-fingerprint",
        FP,
        "--binary",
        env!("CARGO_BIN_EXE_outpost-agent"),
        "--no-wait",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn install_owned(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    install(&args)
}

/// A value with a newline (or any control character) is refused before
/// anything is written, naming the option: grep matches line by line, so
/// `inst_…\nLD_PRELOAD=…` used to pass the format check and put a second
/// variable into agent.env (systemd's EnvironmentFile).
#[test]
fn argument_values_with_control_characters_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let smuggled = format!("{ID}\nLD_PRELOAD=/tmp/x.so");
    for (opt, value) in [
        ("--install-id", smuggled.as_str()),
        ("--enroll-token", &format!("{TOKEN}\nLD_PRELOAD=/tmp/x.so")),
        ("--device-name", "box\nLD_PRELOAD=/tmp/x.so"),
        ("--device-name", "box\rx"),
        ("--interval", "10s\nlog-level = \"trace\""),
        ("--journal-unit", "a.service\tb"),
        ("--log-file", "/var/log/a\u{1b}[2J"),
        ("--binary", "/tmp/a\nb"),
    ] {
        let mut args = base_args(r);
        if opt != "--install-id" && opt != "--enroll-token" {
            args.extend(["--install-id".into(), ID.into()]);
        }
        args.extend([opt.to_string(), value.to_string()]);
        let out = install_owned(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{opt} {value:?}: {}",
            text(&out)
        );
        let t = text(&out);
        assert!(
            t.contains(&format!("{opt} must not contain a control character")),
            "{opt} {value:?}: {t}"
        );
        assert!(!t.contains("LD_PRELOAD"), "the value is not echoed: {t}");
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "{opt}: nothing written"
        );
    }
}

/// --device-name has a format (1-128 characters, none of the characters a
/// shell or EnvironmentFile would read specially) and is written quoted, so
/// a name with a space arrives whole; error lines print the user's text as
/// is (dash's echo would turn `\c`, `\n` into escapes).
#[test]
fn device_name_is_checked_and_written_safely() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let long = "n".repeat(129);
    for bad in [
        "a\"b",
        "a'b",
        "a\\b",
        "$(id)",
        "`id`",
        "a$HOME",
        long.as_str(),
    ] {
        let mut args = base_args(r);
        args.extend(["--enroll-token".into(), TOKEN.into()]);
        args.extend(["--device-name".into(), bad.into()]);
        let out = install_owned(&args);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", text(&out));
        assert!(
            text(&out).contains("--device-name must be"),
            "{bad:?}: {}",
            text(&out)
        );
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "{bad:?}"
        );
    }
    let mut args = base_args(r);
    args.extend(["--enroll-token".into(), TOKEN.into()]);
    args.extend(["--device-name".into(), "line 3 # east".into()]);
    let out = install_owned(&args);
    assert!(out.status.success(), "{}", text(&out));
    let env = std::fs::read_to_string(root.path().join("etc/outpost/agent.env")).unwrap();
    assert!(
        env.contains("\nOUTPOST_DEVICE_NAME=\"line 3 # east\"\n"),
        "{env}"
    );

    // printf, not echo: a backslash in a refused value is printed as given.
    let mut args = base_args(r);
    args.extend(["--install-id".into(), ID.into()]);
    args.extend(["--interval".into(), "1\\c0s".into()]);
    let out = install_owned(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("(got '1\\c0s')"), "{}", text(&out));
}

/// A directory as an attacker would leave it where root runs the piped
/// one-liner (/tmp, say): an `outpost-agent`, a unit, and a file named `sh`
/// (so that `[ -f "$0" ]` holds for `sh -s`).
fn booby_trapped_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("outpost-agent");
    std::fs::write(&evil, "#!/bin/sh\necho evil\n").unwrap();
    std::fs::set_permissions(&evil, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("outpost-agent.service"),
        "[Service]\nExecStart=/tmp/evil\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("sh"), "").unwrap();
    dir
}

/// `install.sh` as a control plane serves it: DOWNLOAD_URL (here a file://
/// URL, which curl reads the same way) and a one-line DOWNLOAD_INDEX naming
/// a release tarball (scripts/release.sh's layout) with its SHA-256.
fn served_script(dist: &Path) -> String {
    let arch = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let name = format!("outpost-agent-0.0.1-{arch}");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_outpost-agent"),
        dir.join("outpost-agent"),
    )
    .unwrap();
    for f in ["install.sh", "outpost-agent.service"] {
        std::fs::copy(repo().join("systemd").join(f), dir.join(f)).unwrap();
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    let out = Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .args(["-I", "gzip -1", "-cf"])
        .arg(&tarball)
        .arg(&name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let sha = Command::new("sha256sum").arg(&tarball).output().unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    let sha = sha.split_whitespace().next().unwrap();
    let script = std::fs::read_to_string(repo().join("systemd/install.sh")).unwrap();
    assert!(script.contains("\nDOWNLOAD_URL=\"\"\n") && script.contains("\nDOWNLOAD_INDEX=\"\"\n"));
    script
        .replacen(
            "\nDOWNLOAD_URL=\"\"\n",
            &format!("\nDOWNLOAD_URL='file://{}'\n", dist.display()),
            1,
        )
        .replacen(
            "\nDOWNLOAD_INDEX=\"\"\n",
            &format!("\nDOWNLOAD_INDEX='{name}.tar.gz {arch} 0.0.1 {sha}'\n"),
            1,
        )
}

/// Runs `script` as `curl … | sh -s -- ARGS` does, from `cwd`.
fn piped(script: &str, cwd: &Path, args: &[String]) -> Output {
    use std::io::Write;
    let mut child = Command::new("sh")
        .arg("-s")
        .arg("--")
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Piped (`$0` is the shell), the script never takes `outpost-agent` or the
/// unit from the current directory: not piped bare (it refuses, naming what
/// to do), and not as a control plane serves it (the SHA-256-checked
/// tarball's binary and unit are installed). `--binary` still works piped
/// from a control plane: that binary, the tarball's unit.
#[test]
fn the_piped_script_ignores_files_in_the_current_directory() {
    let trap = booby_trapped_dir();
    let evil = std::fs::read(trap.path().join("outpost-agent")).unwrap();
    let agent = std::fs::read(env!("CARGO_BIN_EXE_outpost-agent")).unwrap();
    let unit = std::fs::read(repo().join("systemd/outpost-agent.service")).unwrap();
    let args = |root: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--root",
            root.to_str().unwrap(),
            "--server",
            "https://cp.example.com:8443",
            "--install-id",
            ID,
            "--ca-fingerprint",
            FP,
            "--no-wait",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // The bare script, piped: nothing to install from, and it says so.
    let root = tempfile::tempdir().unwrap();
    let bare = std::fs::read_to_string(repo().join("systemd/install.sh")).unwrap();
    let out = piped(&bare, trap.path(), &args(root.path(), &[]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no agent binary"), "{}", text(&out));
    assert!(!root.path().join("usr/bin/outpost-agent").exists());

    // Served by a control plane: the tarball's binary and unit.
    let dist = tempfile::tempdir().unwrap();
    let served = served_script(dist.path());
    let root = tempfile::tempdir().unwrap();
    let out = piped(&served, trap.path(), &args(root.path(), &[]));
    assert!(out.status.success(), "{}", text(&out));
    let installed = std::fs::read(root.path().join("usr/bin/outpost-agent")).unwrap();
    assert!(
        installed != evil,
        "installed the current directory's binary"
    );
    assert!(installed == agent, "not the tarball's binary");
    let installed_unit =
        std::fs::read(root.path().join("etc/systemd/system/outpost-agent.service")).unwrap();
    assert_eq!(installed_unit, unit, "not the tarball's unit");

    // Served, with --binary PATH: that binary, the tarball's unit.
    let other = tempfile::tempdir().unwrap();
    let mine = other.path().join("my-agent");
    std::fs::write(&mine, "#!/bin/sh\necho mine\n").unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = piped(
        &served,
        trap.path(),
        &args(root.path(), &["--binary", mine.to_str().unwrap()]),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.path().join("usr/bin/outpost-agent")).unwrap(),
        b"#!/bin/sh\necho mine\n"
    );
    assert_eq!(
        std::fs::read(root.path().join("etc/systemd/system/outpost-agent.service")).unwrap(),
        unit
    );

    // Served, with --binary URL (dry run: nothing is fetched but the
    // tarball for the unit): the URL is downloaded, the tarball's unit used.
    let root = tempfile::tempdir().unwrap();
    let out = piped(
        &served,
        trap.path(),
        &args(
            root.path(),
            &[
                "--dry-run",
                "--binary",
                "https://example.invalid/outpost-agent",
            ],
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("would run: curl -fsSL -o"), "{t}");
    assert!(t.contains("https://example.invalid/outpost-agent"), "{t}");
    assert!(!t.contains("/tmp/evil"), "{t}");
    assert!(t.contains("ExecStart=/usr/bin/outpost-agent"), "{t}");

    // The bare script piped with --binary: no unit to install, said so.
    let root = tempfile::tempdir().unwrap();
    let out = piped(
        &bare,
        trap.path(),
        &args(root.path(), &["--binary", mine.to_str().unwrap()]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("outpost-agent.service"),
        "{}",
        text(&out)
    );
    assert!(
        !root
            .path()
            .join("etc/systemd/system/outpost-agent.service")
            .exists()
    );
    assert!(
        !root.path().join("usr/bin/outpost-agent").exists(),
        "nothing installed"
    );
}

/// A stand-in agent whose `status --json` says it has enrolled and
/// connected, in the layout `outpost-agent status --json` prints.
fn connected_agent(dir: &Path) -> PathBuf {
    let p = dir.join("fake-agent");
    std::fs::write(
        &p,
        "#!/bin/sh\nprintf '{\\n  \"device_id\": \"dev_fake\",\\n  \"link\": \"connected\",\\n  \"last_error\": \"\"\\n}\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// The fleet enrollment token is multi-use: once the wait has seen the box
/// enrolled, its line leaves agent.env (the rest stays, still 0600); with
/// --no-wait it stays and the script says so.
#[test]
fn the_enrollment_token_is_removed_once_enrolled() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let bins = tempfile::tempdir().unwrap();
    let fake = connected_agent(bins.path());
    let args = |wait: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--root",
            r,
            "--server",
            "https://cp.example.com:8443",
            "--ca-fingerprint",
            FP,
            "--enroll-token",
            TOKEN,
            "--device-name",
            "line-3",
            "--binary",
            fake.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(wait.iter().map(|s| s.to_string()));
        a
    };
    let env_file = root.path().join("etc/outpost/agent.env");

    let out = install_owned(&args(&["--no-wait"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the enrollment token stays in"),
        "{}",
        text(&out)
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains(&format!("OUTPOST_ENROLL_TOKEN={TOKEN}")),
        "{env}"
    );

    let out = install_owned(&args(&["--wait", "--wait-timeout", "5"]));
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("enrolled as dev_fake, connected"), "{t}");
    assert!(t.contains("removed the enrollment token"), "{t}");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(!env.contains("OUTPOST_ENROLL_TOKEN"), "{env}");
    assert!(!env.contains(TOKEN), "{env}");
    assert!(
        env.contains("OUTPOST_SERVER=https://cp.example.com:8443\n"),
        "{env}"
    );
    assert!(env.contains("OUTPOST_DEVICE_NAME=\"line-3\"\n"), "{env}");
    assert!(env.contains("OUTPOST_CA_FINGERPRINT=sha256:"), "{env}");
    assert_eq!(mode(&env_file), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("etc/outpost"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "agent.env" && n != "agent.toml")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
