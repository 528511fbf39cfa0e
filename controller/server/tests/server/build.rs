//! `POST /updates/build`: a recipe and its files as multipart, built and signed with the data directory's key; recipes that reach outside their parts are refused.

use std::fs;

use serde_json::json;

use crate::harness::*;

const BOUNDARY: &str = "molt-test-boundary-7f3a";

/// A part: name, extra headers, content.
type PartSpec<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8]);

/// A multipart body of these parts.
fn form(parts: &[PartSpec<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, headers, content) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        out.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n")
                .as_bytes(),
        );
        for (k, v) in *headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn send(c: &Controller, token: &str, body: &[u8]) -> Answer {
    request(
        "POST",
        &c.api("/updates/build"),
        Some(token),
        &[(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )],
        Some(body),
    )
}

const RECIPE: &str = r#"
version = "2.0.0"
compatible = "acme-gw"
comment = "built on the server"

[[files]]
source = "app"
destination = "/opt/app"

[after]
script = "scripts/after.sh"
"#;

#[test]
fn a_recipe_and_its_files_build_into_a_signed_update() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let body = form(&[
        ("recipe", &[], RECIPE.as_bytes()),
        (
            "app",
            &[("X-Molt-Type", "dir"), ("X-Molt-Mode", "0750")],
            b"",
        ),
        (
            "app/main.js",
            &[("X-Molt-Mode", "0755"), ("X-Molt-Mtime", "1700000000")],
            b"console.log(1)\n",
        ),
        ("app/lib/util.js", &[], b"module.exports = 2;\n"),
        ("app/current", &[("X-Molt-Type", "symlink")], b"main.js"),
        ("scripts/after.sh", &[], b"systemctl restart app\n"),
    ]);
    let a = send(&c, &token, &body);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let u = a.json();
    assert_eq!(u["version"], "2.0.0");
    assert_eq!(u["comment"], "built on the server");
    assert_eq!(u["recipe"]["after"]["script"], "systemctl restart app\n");

    // Signed with the data directory's key, and a device with that key accepts it.
    let stored = f
        .data()
        .join(format!("bundles/{}.bundle", u["blake3"].as_str().unwrap()));
    let public = molt_bundle::keys::read_public(&f.data().join("signing.pub")).unwrap();
    let decoded = molt_bundle::inspect::decode(&stored, &[public], true, None).unwrap();
    assert!(decoded.refusal.is_none(), "{:?}", decoded.refusal);
    let entries: Vec<(String, String, u32)> = decoded
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.kind.name().to_owned(), e.mode))
        .collect();
    assert!(
        entries.contains(&("opt/app".into(), "dir".into(), 0o750)),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("opt/app/main.js".into(), "file".into(), 0o755)),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("opt/app/current".into(), "symlink".into(), 0o777)),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e.0 == "opt/app/lib/util.js"),
        "{entries:?}"
    );
    let main = decoded
        .entries
        .iter()
        .find(|e| e.path == "opt/app/main.js")
        .unwrap();
    assert_eq!(main.mtime, 1_700_000_000);
    assert!(
        listing(&f.data().join("tmp")).is_empty(),
        "{:?}",
        listing(&f.data().join("tmp"))
    );

    // Deployable like an upload; without a comment of its own the deployment
    // shows the recipe's.
    one_test_device(&c, &token, "gw");
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": u["id"], "group": "test"}),
        201,
    );
    assert!(!u["comment"].as_str().unwrap().is_empty(), "{u}");
    assert_eq!(d["comment"], u["comment"]);
}

#[test]
fn recipes_cannot_reach_outside_their_parts() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    fs::write(f.path("outside.txt"), "secret").unwrap();
    let recipe = |source: &str| {
        format!(
            "version = \"3.0.0\"\ncompatible = \"acme-gw\"\n[[files]]\nsource = \"{source}\"\n\
             destination = \"/opt/x\"\n"
        )
    };
    let absolute = f.path("outside.txt").display().to_string();
    for (source, parts, want) in [
        (absolute.as_str(), vec![], "must be a relative path"),
        ("../signing.secret", vec![], "must be a relative path"),
        ("missing.txt", vec![], "names no uploaded part"),
        (
            "link",
            vec![("link", "/etc")],
            "leads through the symlink part",
        ),
    ] {
        let r = recipe(source);
        let mut all: Vec<PartSpec<'_>> = vec![("recipe", &[], r.as_bytes())];
        for (name, target) in &parts {
            all.push((name, &[("X-Molt-Type", "symlink")], target.as_bytes()));
        }
        let a = send(&c, &token, &form(&all));
        assert_eq!(a.status, 400, "{source}");
        assert!(a.error().contains(want), "{source}: {}", a.error());
    }
    let a = send(
        &c,
        &token,
        &form(&[("recipe", &[], recipe("x").as_bytes()), ("../x", &[], b"y")]),
    );
    a.refused(400, "relative path");
    let bad_destination = "version = \"3.0.0\"\ncompatible = \"acme-gw\"\n[[files]]\nsource = \"x\"\ndestination = \"/opt/../etc/x\"\n";
    let a = send(
        &c,
        &token,
        &form(&[
            ("recipe", &[], bad_destination.as_bytes()),
            ("x", &[], b"y"),
        ]),
    );
    assert_eq!(a.status, 400);
    assert!(
        a.error().starts_with("build failed: recipe: "),
        "{}",
        a.error()
    );
    assert!(
        !a.error().contains(&f.data().display().to_string()),
        "{}",
        a.error()
    );
    let a = send(&c, &token, &form(&[("x", &[], b"y")]));
    a.refused(400, "no `recipe` part");
    let a = send(&c, &token, &form(&[("recipe", &[], b"version = ")]));
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("recipe: "), "{}", a.error());
    let a = request(
        "POST",
        &c.api("/updates/build"),
        Some(&token),
        &[],
        Some(b"{}"),
    );
    a.refused(400, "multipart");

    assert_eq!(get_ok(&c.api("/updates"), &token), json!([]));
    assert!(listing(&f.data().join("tmp")).is_empty());
}

#[test]
fn without_a_signing_key_the_controller_builds_nothing_and_takes_signed_uploads() {
    let f = Fixture::new();
    let (k, public) = key(f.dir.path(), "release");
    // No key to verify uploads with: refused at start, with what to do.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_molt-controller"))
        .args([
            "serve",
            "--no-signing-key",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(f.data())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--trusted-key"), "{err}");

    let (c, token) = f.start(&["--no-signing-key", "--trusted-key", &public]);
    assert!(
        !f.data().join("signing.secret").exists(),
        "a private key was created"
    );
    // A server-side build: refused before the sources are read, saying what to do.
    let body = form(&[("recipe", &[], RECIPE.as_bytes())]);
    let a = send(&c, &token, &body);
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("molt bundle build"),
        "{}",
        a.text()
    );
    // A bundle signed elsewhere is accepted.
    let up = upload(&c, &token, &bundle(f.dir.path(), "3.0.0", &k));
    assert_eq!(up.status, 201, "{}", up.text());
}
