//! The command line and configuration errors, as an operator meets them.

use std::path::Path;
use std::process::{Command, Output};

use moat_test_support::*;

fn moat(args: &[&str]) -> Output {
    Command::new(moat_bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo().join("tests/config").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn valid_config_fixtures_load() {
    for path in fixtures("valid") {
        if let Err(e) = moat::config::load(&path) {
            panic!("{} should load:\n{e}", path.display());
        }
    }
}

#[test]
fn invalid_config_fixtures_fail_with_file_line_column_and_key() {
    for path in fixtures("invalid") {
        let src = std::fs::read_to_string(&path).unwrap();
        let expect = src
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()));
        let err = match moat::config::load(&path) {
            Ok(_) => panic!("{} should fail", path.display()),
            Err(e) => e.to_string(),
        };
        // A position, when given, directly follows the file name.
        let starts_with_position = expect.chars().next().is_some_and(|c| c.is_ascii_digit());
        let want = if starts_with_position {
            format!("{}:{expect}", path.display())
        } else {
            expect.to_string()
        };
        assert!(
            err.contains(&want),
            "{}:\n  want: {want}\n  got:  {err}",
            path.display()
        );
    }
}

fn write_config(dir: &Path, pki: &Pki, cert: &Path, key: &Path) -> std::path::PathBuf {
    let _ = pki;
    let path = dir.join("moat.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:27018\"\n\
             [tls]\nmode = \"preferSSL\"\n[[tls.domains]]\nname = \"d\"\nhostnames = [\"localhost\"]\n\
             cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_accepts_a_good_config_and_its_certificates() {
    let pki = Pki::new();
    let dir = tempdir();
    let cfg = write_config(dir.path(), &pki, &pki.cert, &pki.key);
    let o = moat(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("OK"), "{}", text(&o));
}

#[test]
fn check_names_a_missing_certificate_file_with_its_key_and_position() {
    let pki = Pki::new();
    let dir = tempdir();
    let missing = dir.path().join("nope.pem");
    let cfg = write_config(dir.path(), &pki, &missing, &pki.key);
    let o = moat(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let want = format!(
        "{}:10:8: tls.domains[0].cert: cannot read {}: No such file",
        cfg.display(),
        missing.display()
    );
    assert!(text(&o).contains(&want), "want {want}\ngot {}", text(&o));
    // Said once: the error's causes are not printed again after it.
    assert_eq!(text(&o).matches(&want).count(), 1, "got {}", text(&o));
}

#[test]
fn check_refuses_a_key_that_does_not_match_the_certificate() {
    let pki = Pki::new();
    let other = Pki::new();
    let dir = tempdir();
    let cfg = write_config(dir.path(), &pki, &pki.cert, &other.key);
    let o = moat(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("tls.domains[0].key:") && text(&o).contains("does not belong to"),
        "{}",
        text(&o)
    );
}

#[test]
fn check_refuses_a_certificate_file_that_holds_no_certificate() {
    let pki = Pki::new();
    let dir = tempdir();
    // The key file where the certificate should be.
    let cfg = write_config(dir.path(), &pki, &pki.key, &pki.key);
    let o = moat(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("holds no `BEGIN CERTIFICATE` block"),
        "{}",
        text(&o)
    );
}

#[test]
fn run_with_a_bad_config_exits_one_without_serving() {
    let o = moat(&["run", "--config", "/nonexistent/moat.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("/nonexistent/moat.toml: cannot read config file"),
        "{}",
        text(&o)
    );
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(moat(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(moat(&["run", "--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn certs_init_writes_a_pki_and_will_not_overwrite_it() {
    let dir = tempdir();
    let d = dir.path().join("certs");
    let d = d.to_str().unwrap();
    let o = moat(&[
        "certs",
        "init",
        "--dir",
        d,
        "--hostnames",
        "localhost,db.moat.test",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["ca.pem", "ca-key.pem", "default.pem", "default-key.pem"] {
        assert!(Path::new(d).join(f).exists(), "{f}");
    }
    let o = moat(&["certs", "init", "--dir", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

#[test]
fn the_harness_runs_the_moat_binary_cargo_built_for_these_tests() {
    // moat_test_support finds the binary from the test executable's path, as a library
    // cannot see CARGO_BIN_EXE_moat: both must name the same file.
    assert_eq!(moat_bin(), Path::new(env!("CARGO_BIN_EXE_moat")));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_warns_about_a_private_key_others_can_read_and_not_about_a_private_one() {
    let pki = Pki::new();
    let dir = tempdir();
    let cfg = write_config(dir.path(), &pki, &pki.cert, &pki.key);
    let check = || moat(&["check", "--config", cfg.to_str().unwrap()]);

    set_mode(&pki.key, 0o600);
    let o = check();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("readable by"), "{}", text(&o));

    for (mode, who) in [
        (0o640, "readable by its group (mode 0640)"),
        (0o604, "readable by all users (mode 0604)"),
        (0o644, "readable by its group and all users (mode 0644)"),
    ] {
        set_mode(&pki.key, mode);
        let o = check();
        // A warning, not an error: moat still runs with such a key.
        assert!(o.status.success(), "{}", text(&o));
        let want = format!(
            "warning: {}:11:7: tls.domains[0].key: {} is {who}: make it private to moat's user (chmod 600)",
            cfg.display(),
            pki.key.display()
        );
        assert!(text(&o).contains(&want), "want {want}\ngot {}", text(&o));
    }
}

#[test]
fn check_warns_about_an_admin_socket_directory_others_can_write() {
    let pki = Pki::new();
    let dir = tempdir();
    set_mode(&pki.key, 0o600);
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let cfg = write_config(dir.path(), &pki, &pki.cert, &pki.key);
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text_cfg + "[admin]\nsocket = \"run/admin.sock\"\n").unwrap();
    let check = || moat(&["check", "--config", cfg.to_str().unwrap()]);

    set_mode(&run, 0o700);
    let o = check();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("can be written by"), "{}", text(&o));

    for (mode, who) in [
        (0o770, "its group (mode 0770)"),
        (0o1777, "its group and all users (mode 1777)"),
    ] {
        set_mode(&run, mode);
        let o = check();
        assert!(o.status.success(), "{}", text(&o));
        let want = format!(
            "warning: {}:13:10: admin.socket: {} can be written by {who}: they could put their own socket",
            cfg.display(),
            run.display()
        );
        assert!(text(&o).contains(&want), "want {want}\ngot {}", text(&o));
    }
}
