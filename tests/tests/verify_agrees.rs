//! `molt bundle verify` and a device agree: a full bundle that verifies installs on an empty device, and one a device refuses never verifies.
//!
//! Each case is built with the encoder's own checks switched off (as an attacker or
//! a buggy tool would), then given both to `molt bundle verify` and to
//! `molt-agent install` on a fresh device. The cases are the ones where the two used
//! to disagree: hardlinks the decoder's bounded policy cannot judge and path
//! components no filesystem can create; plus the symlink chain the old lexical check
//! let through while claiming to stop escapes (now accepted by both, as data).

use std::fs;
use std::path::Path;

use ed25519_dalek::SigningKey;
use molt_engine::bundle::encoder::EncoderOptions;
use molt_engine::bundle::Specials;
use molt_test_support::bundle::{build, dir, file, hardlink, symlink, Spec};
use molt_test_support::keys::{pub_hex, seeded};
use molt_test_support::{molt_with, root_or_skip, Device, BOARD};

/// A bundle's entries, in stream order.
type Entries = Vec<(String, Node)>;

enum Node {
    File(&'static [u8]),
    Dir,
    Symlink(String),
    Hardlink(&'static str),
}

/// A full bundle of `entries` (in the order given, unchecked), signed with `key`.
fn bundle(entries: &Entries, key: &SigningKey) -> Vec<u8> {
    let entries = entries
        .iter()
        .map(|(p, node)| match node {
            Node::File(c) => file(p, c),
            Node::Dir => dir(p),
            Node::Symlink(t) => symlink(p, t),
            Node::Hardlink(t) => hardlink(p, t),
        })
        .collect();
    build(&Spec {
        version: "2.0.0".into(),
        release: 2,
        compatible: BOARD.into(),
        comment: String::new(),
        entries,
        check_policy: false,
        specials: Specials {
            hardlinks: true,
            ..Specials::default()
        },
        keys: vec![key.clone()],
        chunk_size: EncoderOptions::default().chunk_size,
        ..Spec::default()
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn a_full_bundle_that_verifies_installs_and_one_a_device_refuses_does_not_verify() {
    if !root_or_skip() {
        return;
    }
    let key = seeded(9);
    let public = pub_hex(&key);
    let work = tempfile::tempdir().expect("tempdir");
    let pubfile = work.path().join("key.pub");
    fs::write(&pubfile, format!("{public}\n")).expect("key.pub");

    let app = |rest: Vec<(&str, Node)>| -> Entries {
        std::iter::once(("app".to_string(), Node::Dir))
            .chain(rest.into_iter().map(|(p, n)| (p.to_string(), n)))
            .collect()
    };
    let chain = format!("s/d/s/d/s/d/s/{}canary", "../".repeat(12));
    // (case, entries, None if both accept, else what verify must say)
    let cases: Vec<(&str, Entries, Option<&str>)> = vec![
        (
            "a hardlink to an earlier file, a link to that link, a symlink chain",
            app(vec![
                ("app/a", Node::File(b"x\n")),
                ("app/b", Node::Hardlink("app/a")),
                ("app/c", Node::Hardlink("app/b")),
                ("app/d", Node::Dir),
                ("app/d/s", Node::Symlink("..".into())),
                ("app/d/t", Node::Symlink(chain)),
                ("app/up", Node::Symlink("../../../../etc/shadow".into())),
            ]),
            None,
        ),
        (
            "a 255-byte name",
            app(vec![(
                format!("app/{}", "n".repeat(255)).leak(),
                Node::File(b"x"),
            )]),
            None,
        ),
        (
            "a hardlink to a missing file",
            app(vec![("app/evil", Node::Hardlink("app/a"))]),
            Some("not an earlier regular file"),
        ),
        (
            "a hardlink to a directory",
            app(vec![
                ("app/d", Node::Dir),
                ("app/evil", Node::Hardlink("app/d")),
            ]),
            Some("not a regular file"),
        ),
        (
            "a hardlink to a symlink",
            app(vec![
                ("app/a", Node::Symlink("/etc/shadow".into())),
                ("app/evil", Node::Hardlink("app/a")),
            ]),
            Some("not a regular file"),
        ),
        (
            "a hardlink through a symlink of the bundle",
            app(vec![
                ("app/l", Node::Symlink("/".into())),
                ("app/m", Node::Hardlink("app/l/etc/passwd")),
            ]),
            Some("not an earlier regular file"),
        ),
        (
            "a hardlink to a later file",
            app(vec![
                ("app/evil", Node::Hardlink("app/z")),
                ("app/z", Node::File(b"x")),
            ]),
            Some("sorting before the link"),
        ),
        (
            "a hardlink to a file under .molt/",
            vec![
                (".molt".into(), Node::Dir),
                (".molt/p".into(), Node::File(b"x")),
                ("app".into(), Node::Dir),
                ("app/evil".into(), Node::Hardlink(".molt/p")),
            ],
            Some("lies under `.molt/`"),
        ),
        (
            "a 256-byte name",
            app(vec![(
                format!("app/{}", "n".repeat(256)).leak(),
                Node::File(b"x"),
            )]),
            Some("longer than 255 bytes"),
        ),
    ];

    let mut problems = Vec::new();
    for (i, (name, entries, refusal)) in cases.iter().enumerate() {
        let file = work.path().join(format!("case-{i}.molt"));
        fs::write(&file, bundle(entries, &key)).expect("bundle");
        let v = molt_with(&["bundle", "verify", s(&file), "--key", s(&pubfile)], &[]);
        let said = format!("{}{}", v.stdout, v.stderr);
        let device = Device::new(&format!("case-{i}"), &public);
        let installed = device.install(&file);
        let device_said = format!("{}{}", installed.stdout, installed.stderr);
        println!(
            "{name}:\n  verify: {}\n  device: {}",
            said.trim(),
            device_said.lines().last().unwrap_or("").trim()
        );
        match refusal {
            None => {
                if v.code != Some(0) {
                    problems.push(format!("{name}: verify refused it: {said}"));
                }
                if installed.code != Some(0) {
                    problems.push(format!("{name}: the device refused it: {device_said}"));
                }
            }
            Some(want) => {
                if v.code != Some(1) || !said.contains(want) {
                    problems.push(format!(
                        "{name}: verify did not refuse with `{want}`: {said}"
                    ));
                }
                if installed.code == Some(0) {
                    problems.push(format!("{name}: the device installed it"));
                }
                // A fresh device starts on an empty snapshot; it must still be on it.
                let active = device.current().map(|c| device.data().join(c));
                if active.is_some_and(|a| a.join("app").exists()) {
                    problems.push(format!("{name}: the device switched to it"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
