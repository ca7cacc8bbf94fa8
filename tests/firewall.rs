//! The allowlist from real sockets bound to different loopback sources (127.0.0.2 vs
//! 127.0.0.3, ::1), the dual-stack mapped case, security groups from an inventory file,
//! live rule management through `moat ctl`, and PROXY protocol v1/v2. A recording
//! upstream shows that refused connections never reach it.

use std::io::Write;
use std::process::Command;

use moat_test_support::*;

/// moat in front of `up`, with `firewall` (a `[firewall]`/`[[firewall.rules]]` block) and
/// `listen` extra keys.
fn moat(up: &str, listen_addr: &str, listen: &str, firewall: &str) -> Moat {
    Moat::start(&format!(
        "[listen]\naddress = \"{listen_addr}\"\nhandshake_timeout = \"5s\"\n{listen}\n\
         [upstream]\naddress = \"{up}\"\n{ADMIN}\n{firewall}\n"
    ))
}

fn rule(cidr: &str) -> String {
    format!("[[firewall.rules]]\ncidr = \"{cidr}\"\ndescription = \"test {cidr}\"\n")
}

/// moat in front of an echoing upstream, with the rule `127.0.0.2/32` only.
fn moat_allowing_2(up: &Recorder) -> Moat {
    moat(
        &up.addr.to_string(),
        "127.0.0.1:0",
        "",
        &rule("127.0.0.2/32"),
    )
}

/// Whether a connection from `src` is relayed to the upstream.
fn admits(m: &Moat, src: &str) -> bool {
    let mut s = tcp_from(src, m.addr).unwrap();
    echo_ok(&mut s)
}

#[test]
fn cidr_rule_admits_its_source_and_refuses_others_before_reading() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let mut ok = tcp_from("127.0.0.2", m.addr).unwrap();
    assert!(echo_ok(&mut ok), "127.0.0.2 is allowed");
    assert_eq!(up.seen(), 1);

    let mut refused = tcp_from("127.0.0.3", m.addr).unwrap();
    let _ = refused.write_all(b"ping");
    assert!(closed_without_reply(&mut refused), "127.0.0.3 is refused");
    let line = m
        .lines()
        .wait_for("connection refused from 127.0.0.3:", DEADLINE);
    assert!(
        line.contains("I ACCESS   [listener]")
            && line.ends_with("no firewall rule allows this source"),
        "{line}"
    );
    assert_eq!(
        up.seen(),
        1,
        "the refused connection never reached the upstream"
    );
    assert_eq!(m.lines().count("connection accepted from 127.0.0.3"), 0);
}

#[test]
fn ipv6_rules_apply_to_ipv6_clients() {
    let up = Recorder::start();
    let allowed = moat(&up.addr.to_string(), "[::1]:0", "", &rule("::1/128"));
    let mut s = tcp_from("::1", allowed.addr).unwrap();
    assert!(echo_ok(&mut s));
    let v4_only = moat(&up.addr.to_string(), "[::1]:0", "", &rule("127.0.0.0/8"));
    let mut s = tcp_from("::1", v4_only.addr).unwrap();
    assert!(closed_without_reply(&mut s));
    v4_only
        .lines()
        .wait_for("connection refused from [::1]:", DEADLINE);
}

#[test]
fn dual_stack_listener_matches_ipv4_mapped_clients_as_ipv4() {
    let up = Recorder::start();
    // [::] also accepts IPv4 clients; the kernel reports them as ::ffff:a.b.c.d.
    let m = moat(
        &up.addr.to_string(),
        "[::]:0",
        "",
        &format!("{}{}", rule("127.0.0.2/32"), rule("::ffff:127.0.0.4/128")),
    );
    let port = m.port();
    let to = |src: &str| tcp_from(src, format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let mut s = to("127.0.0.2");
    assert!(echo_ok(&mut s), "mapped 127.0.0.2 matches the IPv4 rule");
    m.lines()
        .wait_for("connection accepted from 127.0.0.2:", DEADLINE);
    let mut s = to("127.0.0.3");
    assert!(
        closed_without_reply(&mut s),
        "mapped 127.0.0.3 matches no rule"
    );
    m.lines()
        .wait_for("connection refused from 127.0.0.3:", DEADLINE);
    let mut s = to("127.0.0.4");
    assert!(
        echo_ok(&mut s),
        "a rule written in mapped form matches the IPv4 client"
    );
}

#[test]
fn default_allow_admits_sources_no_rule_matches() {
    let up = Recorder::start();
    let m = moat(
        &up.addr.to_string(),
        "127.0.0.1:0",
        "",
        "[firewall]\ndefault = \"allow\"\n",
    );
    let mut s = tcp_from("127.0.0.9", m.addr).unwrap();
    assert!(echo_ok(&mut s));
    let deny = moat(
        &up.addr.to_string(),
        "127.0.0.1:0",
        "",
        "[firewall]\ndefault = \"deny\"\n",
    );
    deny.lines()
        .wait_for("every connection will be refused", DEADLINE);
    let mut s = tcp_from("127.0.0.9", deny.addr).unwrap();
    assert!(closed_without_reply(&mut s));
}

fn inventory(addrs: &[&str]) -> String {
    let ips: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{\"PrivateIpAddress\": \"{a}\"}}"))
        .collect();
    format!(
        r#"{{"NetworkInterfaces": [
            {{"OwnerId": "123456789012", "Groups": [{{"GroupId": "sg-0a1b2c3d", "GroupName": "apps"}}],
              "PrivateIpAddresses": [{}]}},
            {{"OwnerId": "999999999999", "Groups": [{{"GroupId": "sg-0a1b2c3d"}}],
              "PrivateIpAddress": "127.0.0.8"}}
        ]}}"#,
        ips.join(",")
    )
}

#[test]
fn security_group_rules_follow_the_inventory_without_a_restart() {
    let up = Recorder::start();
    let dir = tempdir();
    let inv = dir.path().join("interfaces.json");
    std::fs::write(&inv, inventory(&["127.0.0.2"])).unwrap();
    let fw = format!(
        "[firewall]\n[[firewall.rules]]\nsecurity_group = \"sg-0a1b2c3d\"\naccount = \"123456789012\"\n\
         description = \"app servers\"\n[firewall.security_groups]\ninventory = \"{}\"\nrefresh = \"100ms\"\n",
        inv.display()
    );
    let m = moat(&up.addr.to_string(), "127.0.0.1:0", "", &fw);
    assert!(admits(&m, "127.0.0.2"));
    assert!(!admits(&m, "127.0.0.3"));
    assert!(!admits(&m, "127.0.0.8"), "same group id, other account");

    write_atomically(&inv, inventory(&["127.0.0.3"]));
    m.lines()
        .wait_for_nth("security-group rules allow", 2, DEADLINE);
    assert!(admits(&m, "127.0.0.3"), "added to the group");
    assert!(!admits(&m, "127.0.0.2"), "removed from the group");

    write_atomically(&inv, "{ corrupt");
    m.lines().wait_for(
        "unusable, keeping the last good one (2 interfaces)",
        DEADLINE,
    );
    assert!(admits(&m, "127.0.0.3"), "the last good inventory stays");

    // moat check reports a file it cannot use.
    let (code, err) = moat_check(&m.config_path());
    assert_eq!(code, Some(1));
    assert!(
        err.contains("firewall.security_groups.inventory")
            && err.contains("describe-network-interfaces"),
        "{err}"
    );
}

/// `moat ctl rules add --cidr 127.0.0.3/32 --description "office VPN"`: (code, out, err).
fn add_office_vpn(m: &Moat) -> (i32, String, String) {
    m.ctl(&[
        "rules",
        "add",
        "--cidr",
        "127.0.0.3/32",
        "--description",
        "office VPN",
    ])
}

#[test]
fn a_rule_added_through_ctl_applies_to_the_next_connection_and_is_saved() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    assert!(!admits(&m, "127.0.0.3"));

    let (code, out, err) = add_office_vpn(&m);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("added r") && out.contains("127.0.0.3/32: office VPN"),
        "{out}"
    );
    assert!(admits(&m, "127.0.0.3"), "applies to the next connection");
    let saved = std::fs::read_to_string(m.config_path()).unwrap();
    assert!(
        saved.contains("cidr = \"127.0.0.3/32\"\ndescription = \"office VPN\""),
        "{saved}"
    );
}

#[test]
fn rules_list_shows_every_rule_as_json_and_as_a_table() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let (code, out, err) = add_office_vpn(&m);
    assert_eq!(code, 0, "{out}{err}");

    let list = m.ctl_json(&["rules", "list"]);
    let rules = list["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    let office = rules.iter().find(|r| r["value"] == "127.0.0.3/32").unwrap();
    assert_eq!(office["kind"], "cidr");
    assert_eq!(office["description"], "office VPN");
    let (_, table, _) = m.ctl(&["rules", "list"]);
    assert!(
        table.starts_with("ID") && table.contains("2 rule(s); sources no rule matches: deny"),
        "{table}"
    );
}

#[test]
fn a_duplicate_rule_and_a_cidr_with_host_bits_are_refused() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let (code, out, err) = add_office_vpn(&m);
    assert_eq!(code, 0, "{out}{err}");

    let (code, dup, _) = m.ctl(&[
        "rules",
        "add",
        "--cidr",
        "127.0.0.3/32",
        "--description",
        "again",
    ]);
    assert_eq!(code, 1, "{dup}");
    let (code, _, err) = m.ctl(&[
        "rules",
        "add",
        "--cidr",
        "127.0.0.3/24",
        "--description",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean 127.0.0.0/24"), "{err}");
}

#[test]
fn a_removed_rule_no_longer_admits_and_leaves_the_file() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let (code, out, err) = add_office_vpn(&m);
    assert_eq!(code, 0, "{out}{err}");
    let list = m.ctl_json(&["rules", "list"]);
    let office = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"] == "127.0.0.3/32")
        .unwrap();

    let id = office["id"].as_str().unwrap();
    let (code, out, _) = m.ctl(&["rules", "remove", id]);
    assert_eq!(code, 0);
    assert!(out.starts_with("removed"), "{out}");
    assert!(!admits(&m, "127.0.0.3"));
    assert!(!std::fs::read_to_string(m.config_path())
        .unwrap()
        .contains("127.0.0.3/32"));
}

#[test]
fn rules_export_prints_the_rules_as_config() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let (_, exported, _) = m.ctl(&["rules", "export"]);
    assert!(
        exported.contains("[[firewall.rules]]\ncidr = \"127.0.0.2/32\""),
        "{exported}"
    );
}

#[test]
fn rules_copy_merges_another_deployments_rules_into_the_running_ones() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let other = tempdir();
    let other_cfg = other.path().join("other-deployment.toml");
    std::fs::write(
        &other_cfg,
        format!("[listen]\naddress = \"127.0.0.1:27017\"\n[upstream]\naddress = \"127.0.0.1:27018\"\n{}{}", rule("127.0.0.2/32"), rule("127.0.0.4/32")),
    )
    .unwrap();
    let (code, out, err) = m.ctl(&["rules", "copy", "--from", other_cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 added, 1 skipped (already allowed), 0 removed"),
        "{out}"
    );
    assert!(admits(&m, "127.0.0.4"));
}

#[test]
fn rules_copy_with_replace_swaps_the_running_rules_for_an_export() {
    let up = Recorder::start();
    let m = moat(
        &up.addr.to_string(),
        "127.0.0.1:0",
        "",
        &format!("{}{}", rule("127.0.0.2/32"), rule("127.0.0.4/32")),
    );
    let other = tempdir();
    let export_file = other.path().join("export.toml");
    std::fs::write(&export_file, rule("127.0.0.5/32")).unwrap();
    let (code, out, _) = m.ctl(&[
        "rules",
        "copy",
        "--from",
        export_file.to_str().unwrap(),
        "--replace",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("1 added, 0 skipped (already allowed), 2 removed"),
        "{out}"
    );
    assert!(admits(&m, "127.0.0.5") && !admits(&m, "127.0.0.2") && !admits(&m, "127.0.0.4"));
    let saved = std::fs::read_to_string(m.config_path()).unwrap();
    assert!(
        saved.contains("127.0.0.5/32") && !saved.contains("127.0.0.2/32"),
        "{saved}"
    );
}

#[test]
fn a_rule_added_with_no_persist_changes_the_running_rules_only() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    let (code, _, _) = m.ctl(&[
        "rules",
        "add",
        "--cidr",
        "127.0.0.6/32",
        "--description",
        "tmp",
        "--no-persist",
    ]);
    assert_eq!(code, 0);
    assert!(admits(&m, "127.0.0.6"));
    assert!(!std::fs::read_to_string(m.config_path())
        .unwrap()
        .contains("127.0.0.6"));
}

/// A PROXY v2 header for a TCP/IPv4 client.
fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&27017u16.to_be_bytes());
    h
}

#[test]
fn proxy_protocol_is_read_from_trusted_senders_only() {
    let up = Recorder::start();
    // 127.0.0.5 is the load balancer; clients 203.0.113.9 and 127.0.0.6 are allowed.
    let m = moat(
        &up.addr.to_string(),
        "127.0.0.1:0",
        "proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.5/32\"]",
        &format!("{}{}", rule("203.0.113.9/32"), rule("127.0.0.6/32")),
    );
    let via_lb = |header: &[u8]| {
        let mut s = tcp_from("127.0.0.5", m.addr).unwrap();
        s.write_all(header).unwrap();
        s
    };

    // v1 from the trusted balancer: the real client is judged and logged.
    let mut s = via_lb(b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 27017\r\n");
    assert!(
        echo_ok(&mut s),
        "the header is consumed, the rest forwarded"
    );
    m.lines()
        .wait_for("connection accepted from 203.0.113.9:51000", DEADLINE);
    // v2 naming a client no rule allows: refused, logged with the real address.
    let mut s = via_lb(&proxy_v2([198, 51, 100, 7], 40000));
    assert!(closed_without_reply(&mut s));
    m.lines().wait_for(
        "connection refused from 198.51.100.7:40000: no firewall rule",
        DEADLINE,
    );
    // v2 naming an allowed client.
    let mut s = via_lb(&proxy_v2([203, 0, 113, 9], 40001));
    assert!(echo_ok(&mut s));
    let seen = up.seen();

    // The balancer must send a header; a malformed one is refused too.
    let mut s = via_lb(b"ping");
    assert!(closed_without_reply(&mut s));
    m.lines()
        .wait_for("no PROXY protocol header where one is required", DEADLINE);
    let mut s = via_lb(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n");
    assert!(closed_without_reply(&mut s));
    m.lines().wait_for("malformed PROXY v1 header", DEADLINE);

    // Anyone else sending a header is refused, even when the firewall allows them.
    let mut s = tcp_from("127.0.0.6", m.addr).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 27017\r\nping")
        .unwrap();
    assert!(closed_without_reply(&mut s));
    m.lines().wait_for(
        "PROXY protocol header from a source not in listen.proxy_protocol_from",
        DEADLINE,
    );
    assert_eq!(
        up.seen(),
        seen,
        "refused connections never reached the upstream"
    );
    // ...while the same client without a header is served directly.
    let mut s = tcp_from("127.0.0.6", m.addr).unwrap();
    assert!(echo_ok(&mut s));
}

#[test]
fn a_flood_of_refusals_is_logged_at_a_bounded_rate_with_a_summary() {
    let up = Recorder::start();
    let m = moat_allowing_2(&up);
    for _ in 0..300 {
        let mut s = tcp_from("127.0.0.3", m.addr).unwrap();
        assert!(closed_without_reply(&mut s));
    }
    let summary = m
        .lines()
        .wait_for("more connections were refused in the last second", DEADLINE);
    assert!(summary.contains(" W ACCESS"), "{summary}");
    let logged = m.lines().count("connection refused from 127.0.0.3");
    assert!(logged < 300, "{logged} lines for 300 refusals");
    assert_eq!(up.seen(), 0);
}

#[test]
fn pymongo_from_an_allowed_source_works_and_from_another_is_refused() {
    let mongo = Mongo::start();
    let m = moat(&mongo.addr(), "127.0.0.1:0", "", &rule("127.0.0.2/32"));
    // pymongo has no source-address option: bind the socket first (TESTING.md).
    let script = |src: &str| {
        format!(
            "import socket, sys\n\
             real = socket.socket.connect\n\
             def connect(self, addr):\n    self.bind(('{src}', 0))\n    return real(self, addr)\n\
             socket.socket.connect = connect\n\
             sys.argv = ['client.py', '{}', 'insert_find']\n\
             exec(open('{}').read())\n",
            uri("127.0.0.1", m.port(), ""),
            repo().join("tests/py/client.py").display()
        )
    };
    let run = |src: &str| {
        let out = Command::new(python())
            .arg("-c")
            .arg(script(src))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = run("127.0.0.2");
    assert!(ok, "{out}");
    let (ok, out) = run("127.0.0.3");
    assert!(!ok, "{out}");
    m.lines()
        .wait_for("connection refused from 127.0.0.3:", DEADLINE);
}

#[test]
fn rule_edits_merge_with_what_was_written_into_the_file_by_hand() {
    let up = Recorder::start();
    // Watching off: the hand edits below stay unapplied until ctl (tests/watch.rs has the
    // watcher applying them by itself).
    let firewall = format!("{}[watch]\nenabled = false\n", rule("127.0.0.2/32"));
    let m = moat(&up.addr.to_string(), "127.0.0.1:0", "", &firewall);
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.config_path())
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let occurrences = |needle: &str| {
        std::fs::read_to_string(m.config_path())
            .unwrap()
            .matches(needle)
            .count()
    };
    // The operator writes a rule by hand; moat has not reloaded. Adding the same rule with
    // ctl applies it and leaves the file valid, with the rule once.
    append(&rule("127.0.0.3/32"));
    let (code, out, err) = m.ctl(&[
        "rules",
        "add",
        "--cidr",
        "127.0.0.3/32",
        "--description",
        "ctl",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(occurrences("cidr = \"127.0.0.3/32\""), 1);
    let (code, err) = moat_check(&m.config_path());
    assert_eq!(code, Some(0), "the file still loads: {err}");

    // A hand-written rule survives a merge copy from another deployment.
    append(&rule("127.0.0.4/32"));
    let other = tempdir();
    let other_cfg = other.path().join("other.toml");
    std::fs::write(&other_cfg, rule("127.0.0.5/32")).unwrap();
    let (code, out, err) = m.ctl(&["rules", "copy", "--from", other_cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        occurrences("cidr = \"127.0.0.4/32\""),
        1,
        "the hand-written rule stays"
    );
    assert_eq!(occurrences("cidr = \"127.0.0.5/32\""), 1);
    assert_eq!(moat_check(&m.config_path()).0, Some(0));
}
