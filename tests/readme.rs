//! Every command README.md's "Two commands" section and `scripts/demo`'s banner tell a
//! newcomer to paste works, as printed, against the demo's own config (`config.toml`):
//! only the ports, the CA path and the config file moat ctl reads are the test's own.

use std::path::Path;
use std::process::{Command, Stdio};

use moat_test_support::*;

/// The commands an operator pastes: `(where it is printed, command)`.
fn printed_commands() -> Vec<(&'static str, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("## Two commands").unwrap();
    let end = start + readme[start..].find("\n## Commands").unwrap();
    let section = &readme[start..end];
    let mut found = Vec::new();
    for line in section.lines() {
        let line = line.trim();
        if line.starts_with("scripts/mongosh ") || line.starts_with(".venv/bin/python ") {
            found.push(("README.md", line.to_string()));
        }
    }
    // `target/release/moat ctl ...` in the prose (it may wrap across lines).
    let prose = section.replace('\n', " ");
    for part in prose.split('`').skip(1).step_by(2) {
        if part.starts_with("target/release/moat ctl ") {
            found.push(("README.md", part.to_string()));
        }
    }
    let demo = std::fs::read_to_string(repo().join("scripts/demo")).unwrap();
    let banner = demo.split("cat <<MSG").nth(1).unwrap();
    let banner = banner.split("\nMSG").next().unwrap();
    for line in banner.lines() {
        let line = line.trim();
        if line.starts_with("scripts/mongosh ") || line.starts_with(".venv/bin/python ") {
            found.push(("scripts/demo", line.to_string()));
        }
        if let Some(rest) = line.strip_prefix("$bin ctl ") {
            found.push(("scripts/demo", format!("target/release/moat ctl {rest}")));
        }
    }
    found
}

/// The demo's config.toml with the test's ports and files: `moat.toml` in `dir`.
fn demo_config(dir: &Path, mongo: &Mongo) -> String {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    moat::certgen::init(&moat::certgen::InitOptions {
        dir: certs.clone(),
        domain: "default".into(),
        hostnames: vec!["localhost".into()],
        ips: vec![],
        force: false,
    })
    .unwrap();
    let text = std::fs::read_to_string(repo().join("config.toml")).unwrap();
    let replaced = text
        .replace("\"127.0.0.1:27017\"", "\"127.0.0.1:0\"")
        .replace("\"127.0.0.1:27018\"", &format!("\"{}\"", mongo.addr()))
        .replace("\"127.0.0.1:9490\"", "\"127.0.0.1:0\"")
        .replace("\".demo/admin.sock\"", "\"admin.sock\"");
    assert_ne!(
        replaced, text,
        "config.toml no longer has the demo's addresses"
    );
    replaced
}

#[test]
fn every_command_the_readme_and_the_demo_print_works_as_printed() {
    let mut commands = printed_commands();
    assert!(commands.len() >= 8, "found only {commands:?}");
    // A newcomer tries the clients before switching to requireSSL: mode changes last.
    commands.sort_by_key(|(_, c)| c.contains(" mode set "));
    let mongo = Mongo::start();
    let dir = tempdir();
    let config = demo_config(dir.path(), &mongo);
    // The config refers to certs/ relative to itself: start moat next to them.
    std::fs::write(dir.path().join("moat.toml"), config).unwrap();
    let moat = Moat::start_in(dir);
    let ca = moat.dir.path().join("certs/ca.pem");
    let mut ran = 0;
    for (source, printed) in &commands {
        let cmd = printed
            .replace("27017", &moat.port().to_string())
            .replace("certs/ca.pem", ca.to_str().unwrap())
            .replace(
                "target/release/moat ctl ",
                &format!(
                    "{} ctl --config {} ",
                    moat_bin().display(),
                    moat.config_path().display()
                ),
            );
        let mongosh = printed.starts_with("scripts/mongosh");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(&cmd)
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if mongosh {
                // What a newcomer types at the prompt.
                stdin.write_all(b"db.runCommand({ping: 1})\n").unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let by_ip = printed.contains("127.0.0.1") && printed.contains("tls=true");
        if by_ip {
            assert!(
                !out.status.success(),
                "{source}: {printed}\nshould fail: {text}"
            );
            assert!(
                text.contains("IP address mismatch"),
                "{source}: {printed}\n{text}"
            );
        } else {
            assert!(out.status.success(), "{source}: {printed}\n{text}");
            if mongosh || printed.contains("ping") {
                assert!(
                    text.contains("ok: 1") || text.contains("'ok': 1"),
                    "{source}: {printed}\n{text}"
                );
            }
        }
        ran += 1;
    }
    assert_eq!(ran, commands.len());
    // The last printed command switched the mode.
    assert_eq!(moat.ctl_json(&["mode"])["mode"], "requireSSL");
}
