//! Files that change under moat are applied without a signal: a Kubernetes Secret-style
//! symlink swap of certificate and key, a bad pair (kept out, named in the log), an edit of
//! the config file, and `[watch] enabled = false` (nothing is picked up until SIGHUP).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat::certgen::{issue, IssueOptions};
use moat_test_support::*;

/// A new certificate and key for `localhost` from the test CA: (cert, key) PEM files.
fn new_pair(pki: &Pki, name: &str) -> (PathBuf, PathBuf) {
    let f = issue(&IssueOptions {
        dir: pki.dir.path().to_path_buf(),
        domain: name.into(),
        hostnames: vec!["localhost".into()],
        ips: vec![],
        encrypt_key: None,
        force: true,
    })
    .unwrap();
    (f.cert, f.key)
}

/// A directory laid out as the kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`,
/// `tls.key -> ..data/tls.key`, `..data -> ..<version>`.
struct Secret {
    dir: PathBuf,
    version: Option<String>,
}

impl Secret {
    fn new(dir: &Path, cert: &Path, key: &Path) -> Secret {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = Secret {
            dir: dir.to_path_buf(),
            version: None,
        };
        s.put("..2026_a", cert, key);
        symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        s
    }

    /// The kubelet's update: a new version directory, `..data_tmp` pointing at it renamed
    /// over `..data` (one atomic step), the old version removed.
    fn put(&mut self, version: &str, cert: &Path, key: &Path) {
        let v = self.dir.join(version);
        std::fs::create_dir(&v).unwrap();
        std::fs::copy(cert, v.join("tls.crt")).unwrap();
        std::fs::copy(key, v.join("tls.key")).unwrap();
        symlink(version, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        if let Some(old) = self.version.replace(version.to_string()) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

fn config_for(upstream: &str, cert: &Path, key: &Path, sections: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "{upstream}"
[tls]
mode = "preferSSL"
[[tls.domains]]
name = "default"
hostnames = ["localhost"]
cert = "{}"
key = "{}"
{sections}
"#,
        cert.display(),
        key.display()
    ) + ALLOW_LOOPBACK
}

/// The serial a new handshake gets, once it is `want`; panics after `within`.
fn wait_for_serial(moat: &Moat, ca: &Path, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    wait_until(&format!("serial {want} served"), within, || {
        tls_connect(moat.addr, ca, "localhost").is_ok_and(|s| served_serial(&s) == want)
    });
    start.elapsed()
}

/// moat serving a Secret-style directory with the test CA's certificate, watching it.
/// The upstream and the directory live as long as the returned values.
fn watched_secret(sections: &str) -> (Mongo, Pki, tempfile::TempDir, Secret, Moat) {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    let secret = Secret::new(&dir.path().join("tls"), &pki.cert, &pki.key);
    let moat = Moat::start(&config_for(
        &mongo.addr(),
        &secret.cert(),
        &secret.key(),
        sections,
    ));
    moat.lines().wait_for("watching 3 files in", DEADLINE);
    (mongo, pki, dir, secret, moat)
}

#[test]
fn a_secret_symlink_swap_is_served_without_a_signal_and_a_bad_pair_is_kept_out() {
    let (_mongo, pki, _dir, mut secret, moat) = watched_secret("");
    let mut open = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    let first = file_serial(&pki.cert);
    assert_eq!(served_serial(&open), first);
    hello_over(&mut open, 1);

    let (cert, key) = new_pair(&pki, "second");
    let second = file_serial(&cert);
    assert_ne!(first, second);
    secret.put("..2026_b", &cert, &key);
    // About 0.2 s here (the debounce, then a reload); how fast is a benchmark's question.
    let took = wait_for_serial(&moat, &pki.ca, &second, DEADLINE);
    println!("the swapped certificate was served after {took:?}");
    moat.lines().wait_for("changed on disk: ", DEADLINE);
    moat.lines().wait_for("configuration reloaded", DEADLINE);
    hello_over(&mut open, 2); // the connection from before the swap keeps working

    // A pair that does not belong together: refused, named, the served one stays.
    let (cert3, _) = new_pair(&pki, "third");
    let (_, key4) = new_pair(&pki, "fourth");
    secret.put("..2026_c", &cert3, &key4);
    let failed = moat
        .lines()
        .wait_for("configuration reload failed", DEADLINE);
    let key_path = secret.key().display().to_string();
    assert!(failed.contains("tls.domains[0].key"), "{failed}");
    assert!(
        failed.contains(&format!("{key_path} does not belong")),
        "{failed}"
    );
    let s = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    assert_eq!(served_serial(&s), second, "the old pair stays in service");
    hello_over(&mut open, 3);

    // Fixed: applied; the failure was not retried meanwhile (nothing changed).
    let (cert5, key5) = new_pair(&pki, "fifth");
    secret.put("..2026_d", &cert5, &key5);
    wait_for_serial(&moat, &pki.ca, &file_serial(&cert5), DEADLINE);
    assert_eq!(moat.lines().count("configuration reload failed"), 1);
}

#[test]
fn an_edited_config_file_is_applied_without_a_signal() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    moat.lines().wait_for("watching ", DEADLINE);
    let path = moat.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    // As an editor saves: a new file renamed over the old one.
    let tmp = path.with_extension("toml.swp");
    std::fs::write(
        &tmp,
        text.replace("mode = \"preferSSL\"", "mode = \"requireSSL\""),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    moat.lines().wait_for(
        "SSL mode changed from preferSSL to requireSSL (reload)",
        DEADLINE,
    );
    assert_eq!(moat.ctl_json(&["mode"])["mode"], "requireSSL");

    // A second edit after moat wrote the file itself (`ctl mode set` persists) is applied
    // too, over the mode moat wrote.
    let (code, out, err) = moat.ctl(&["mode", "set", "allowSSL"]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("mode = \"allowSSL\""), "{text}");
    std::fs::write(
        &path,
        text.replace("handshake_timeout = \"5s\"", "handshake_timeout = \"6s\""),
    )
    .unwrap();
    moat.lines()
        .wait_for_nth("configuration reloaded", 2, DEADLINE);
    assert_eq!(moat.ctl_json(&["mode"])["mode"], "allowSSL");
}

#[test]
fn with_watch_disabled_a_change_waits_for_sighup() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    let secret = dir.path().join("tls");
    let mut s = Secret::new(&secret, &pki.cert, &pki.key);
    // Twins on the same files: one watching, one not.
    let watching = Moat::start(&config_for(&mongo.addr(), &s.cert(), &s.key(), ""));
    let off = Moat::start(&config_for(
        &mongo.addr(),
        &s.cert(),
        &s.key(),
        "[watch]\nenabled = false\n",
    ));
    watching.lines().wait_for("watching 3 files in", DEADLINE);
    off.lines().wait_for("file watching is off", DEADLINE);

    let (cert, key) = new_pair(&pki, "second");
    let second = file_serial(&cert);
    s.put("..2026_b", &cert, &key);
    wait_for_serial(&watching, &pki.ca, &second, DEADLINE);
    watching
        .lines()
        .wait_for("configuration reloaded", DEADLINE);
    let old = tls_connect(off.addr, &pki.ca, "localhost").unwrap();
    assert_eq!(served_serial(&old), file_serial(&pki.cert), "not picked up");
    assert_eq!(off.lines().count("changed on disk"), 0);
    assert_eq!(off.lines().count("configuration reloaded"), 0);

    off.proc.signal("HUP");
    wait_for_serial(&off, &pki.ca, &second, DEADLINE);
}

/// CPU time (user + system) `pid` has used, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    let hz = 100; // USER_HZ on Linux
    Duration::from_millis((f[0] + f[1]) * 1000 / hz)
}

#[test]
fn an_event_storm_in_the_watched_directory_costs_little_and_reloads_nothing() {
    let (_mongo, pki, _dir, mut secret, moat) =
        watched_secret("[metrics]\nlisten = \"127.0.0.1:0\"");
    let metrics = moat_metrics_addr(&moat);
    let before = cpu_time(moat.proc.child.id());
    // Some 30,000 events that all count (`..` names; the watched name itself replaced by
    // the same bytes), none of them a change.
    let version = secret.dir.join("..2026_a");
    let cert = std::fs::read(version.join("tls.crt")).unwrap();
    for i in 0..5_000 {
        let junk = secret.dir.join(format!("..storm{i}"));
        std::fs::write(&junk, b"x").unwrap();
        std::fs::remove_file(&junk).unwrap();
        std::fs::write(version.join("tls.crt.new"), &cert).unwrap();
        std::fs::rename(version.join("tls.crt.new"), version.join("tls.crt")).unwrap();
    }
    let (new_cert, new_key) = new_pair(&pki, "second");
    secret.put("..2026_b", &new_cert, &new_key);
    wait_for_serial(&moat, &pki.ca, &file_serial(&new_cert), DEADLINE);
    let used = cpu_time(moat.proc.child.id()) - before;
    println!("moat used {used:?} of CPU through the storm");
    // A reload per event would be minutes of CPU; debounced and fingerprinted it is the
    // cost of reading the events.
    assert!(used < Duration::from_secs(5), "{used:?}");
    // The counter moves before the new certificate is served; log lines are written
    // asynchronously and may still be on their way.
    assert_eq!(
        metric(metrics, r#"moat_config_reloads_total{result="ok"}"#),
        1.0,
        "only the swap"
    );
}
