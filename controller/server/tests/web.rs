//! The web UI over plain HTTP, without a browser: login and its cookie, pages that need a session, CSRF refusals, the recipe form's build-and-deploy, and escaping of hostile names, comments and log lines.
//!
//! The browser itself (headless Chromium) drives the UI in tests/tests/web.rs.

// The server tests' harness; this binary uses only part of it.
#[allow(dead_code)]
#[path = "server/harness.rs"]
mod harness;

use std::io::Read;
use std::time::Duration;

use harness::*;
use serde_json::json;

/// A browser-like client: no automatic redirects (the tests look at them), a cookie
/// jar of one cookie.
struct Browser {
    base: String,
    agent: ureq::Agent,
    cookie: Option<String>,
}

/// An HTML answer.
struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    content_type: String,
    body: String,
}

impl Browser {
    fn new(c: &Controller) -> Browser {
        Browser::with_agent(c, ureq::AgentBuilder::new())
    }

    fn with_agent(c: &Controller, builder: ureq::AgentBuilder) -> Browser {
        Browser {
            base: c.url.clone(),
            // No pooled connections: the server closes a connection whose request
            // body it refused unread (a cross-site post), and a POST that ureq sent
            // on such a connection fails with "Unexpected EOF" instead of being
            // retried, as a browser would. A new connection per request is what
            // the tests mean.
            agent: builder
                .redirects(0)
                .timeout(Duration::from_secs(60))
                .max_idle_connections(0)
                .build(),
            cookie: None,
        }
    }

    fn send(&mut self, req: ureq::Request, body: Option<(&str, Vec<u8>)>) -> Page {
        let req = match &self.cookie {
            Some(c) => req.set("Cookie", c),
            None => req,
        };
        let res = match body {
            Some((ct, b)) => req.set("Content-Type", ct).send_bytes(&b),
            None => req.call(),
        };
        let res = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        let set_cookie = res.header("set-cookie").map(str::to_owned);
        if let Some(sc) = &set_cookie {
            let pair = sc.split(';').next().unwrap_or("").trim().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let page = Page {
            status: res.status(),
            location: res.header("location").map(str::to_owned),
            set_cookie,
            content_type: res.header("content-type").unwrap_or("").to_owned(),
            body: {
                let mut s = String::new();
                res.into_reader().read_to_string(&mut s).unwrap();
                s
            },
        };
        page
    }

    fn get(&mut self, path: &str) -> Page {
        let req = self.agent.get(&format!("{}{path}", self.base));
        self.send(req, None)
    }

    /// A form POST with the browser's `Origin`.
    fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_from(path, fields, Some(&self.base.clone()))
    }

    fn post_from(&mut self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut req = self.agent.post(&format!("{}{path}", self.base));
        if let Some(o) = origin {
            req = req.set("Origin", o);
        }
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            req,
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
    }

    /// A multipart POST: (name, file name if a file, content).
    fn post_multipart(&mut self, path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Page {
        const B: &str = "web-test-boundary-93a1";
        let mut body = Vec::new();
        for (name, file, content) in parts {
            body.extend_from_slice(format!("--{B}\r\n").as_bytes());
            let disp = match file {
                Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
                None => format!("form-data; name=\"{name}\""),
            };
            body.extend_from_slice(format!("Content-Disposition: {disp}\r\n\r\n").as_bytes());
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        let req = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Origin", &self.base);
        self.send(
            req,
            Some((&format!("multipart/form-data; boundary={B}"), body)),
        )
    }

    /// Sends the new-update form: the session's form token `csrf`, then `fields`.
    fn submit_update(&mut self, csrf: &str, fields: &[(&str, Option<&str>, &[u8])]) -> Page {
        let mut parts = vec![("csrf", None, csrf.as_bytes())];
        parts.extend_from_slice(fields);
        self.post_multipart("/updates/new", &parts)
    }

    /// Logs in with `token`; the page answered.
    fn login(&mut self, token: &str) -> Page {
        self.post("/login", &[("token", token), ("next", "/")])
    }

    /// The session's form token, read from a page's hidden field.
    fn csrf(&mut self) -> String {
        let page = self.get("/groups");
        let at = page
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field");
        let rest = &page.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Page {
    /// Asserts the answer's status is `status` and its body holds every one of `needles`;
    /// a failure shows the body.
    fn assert_says(&self, status: u16, needles: &[&str]) {
        assert_eq!(self.status, status, "{}", self.body);
        for needle in needles {
            assert!(
                self.body.contains(needle),
                "lacks {needle:?}: {}",
                self.body
            );
        }
    }
}

/// Percent-encoding for a form body.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn login_sets_a_session_cookie_and_a_wrong_token_is_401() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let mut b = Browser::new(&c);

    let form = b.get("/login");
    form.assert_says(200, &["Operator token"]);
    assert!(
        form.content_type.starts_with("text/html"),
        "{}",
        form.content_type
    );

    let wrong = b.login("mop_not-the-token");
    wrong.assert_says(401, &["That is not the operator token."]);
    assert!(wrong.content_type.starts_with("text/html"));
    assert!(wrong.set_cookie.is_none());

    let ok = b.login(&token);
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location.as_deref(), Some("/"));
    let cookie = ok.set_cookie.unwrap();
    for attr in ["molt_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP cookie marked Secure: {cookie}"
    );
    // Only the hash is stored: the secret itself is nowhere in the database.
    let secret = b
        .cookie
        .clone()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let db = std::fs::read(f.data().join("molt.db")).unwrap_or_default();
    let wal = std::fs::read(f.data().join("molt.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the session secret is stored in clear"
        );
    }

    let home = b.get("/");
    home.assert_says(200, &["Recent updates", "No updates deployed yet"]);
    assert_eq!(b.get("/assets/style.css").status, 200);

    // Logout ends the session on the server, not only in this browser.
    let old = b.cookie.clone();
    let csrf = b.csrf();
    let out = b.post("/logout", &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    b.cookie = old;
    let after = b.get("/");
    assert_eq!(after.status, 303);
    assert_eq!(after.location.as_deref(), Some("/login"));
}

#[test]
fn pages_need_a_session() {
    let f = Fixture::new();
    let (c, _) = f.start(&[]);
    let mut b = Browser::new(&c);
    for path in [
        "/",
        "/groups",
        "/devices",
        "/updates/new",
        "/deployments/1",
        "/deployments/table",
    ] {
        let p = b.get(path);
        assert_eq!(p.status, 303, "GET {path}");
        let to = p.location.unwrap();
        assert!(to.starts_with("/login"), "GET {path} -> {to}");
    }
    assert_eq!(
        b.get("/devices?group=x").location.as_deref(),
        Some("/login?next=/devices%3Fgroup%3Dx")
    );
    let p = b.post("/groups", &[("csrf", "x"), ("name", "g")]);
    assert_eq!(p.status, 303);
    assert_eq!(p.location.as_deref(), Some("/login"));
    // A made-up cookie is no session.
    b.cookie = Some("molt_session=00ff".into());
    assert_eq!(b.get("/groups").status, 303);
    // Unknown paths: a page outside the API, the JSON error inside it.
    let missing = b.get("/no/such/page");
    assert_eq!(missing.status, 404);
    assert!(
        missing.content_type.starts_with("text/html"),
        "{}",
        missing.content_type
    );
    let missing = b.get("/api/v1/no/such/route");
    assert_eq!(missing.status, 404);
    assert!(
        missing.content_type.starts_with("application/json"),
        "{}",
        missing.content_type
    );
    // The API is not opened by the web UI: it still wants its bearer token.
    assert_eq!(b.get("/api/v1/groups").status, 401);
}

#[test]
fn cross_site_posts_are_refused() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let mut b = Browser::new(&c);
    assert_eq!(b.login(&token).status, 303);
    let csrf = b.csrf();

    let wrong = b.post("/groups", &[("csrf", "0123"), ("name", "evil1")]);
    wrong.assert_says(403, &["does not match this session"]);
    let missing = b.post("/groups", &[("name", "evil2")]);
    assert_eq!(missing.status, 403);
    let elsewhere = b.post_from(
        "/groups",
        &[("csrf", &csrf), ("name", "evil3")],
        Some("http://evil.example"),
    );
    elsewhere.assert_says(403, &["cross-site form post refused"]);
    // Login is guarded too (a site cannot log a browser into its own session).
    let login = b.post_from("/login", &[("token", &token)], Some("http://evil.example"));
    assert_eq!(login.status, 403);
    // The multipart form checks its token before storing any file.
    let up = b.post_multipart(
        "/updates/new",
        &[
            ("files1", Some("a.txt"), b"x"),
            ("csrf", None, csrf.as_bytes()),
        ],
    );
    assert_eq!(up.status, 403, "{}", up.body);
    assert!(listing(&f.data().join("tmp")).is_empty());

    let groups = get_ok(&c.api("/groups"), &token);
    assert_eq!(groups, json!([]), "a refused post changed something");
    let ok = b.post("/groups", &[("csrf", &csrf), ("name", "test")]);
    assert_eq!(ok.status, 303, "{}", ok.body);
    let groups = get_ok(&c.api("/groups"), &token);
    assert_eq!(groups[0]["name"], "test");
}

#[test]
fn https_marks_the_cookie_secure() {
    let f = Fixture::new();
    let (c, token, config) = f.start_https();
    let mut b = Browser::with_agent(&c, ureq::AgentBuilder::new().tls_config(config));
    let ok = b.login(&token);
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert!(ok.set_cookie.unwrap().contains("; Secure"));
}

#[test]
fn the_recipe_form_builds_deploys_and_keeps_input_on_errors() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let dev = one_test_device(&c, &token, "gw-1");
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let form = b.get("/updates/new");
    for stage in [
        "1. General details",
        "2. Before update",
        "3. Files and directories",
        "4. Install dependencies",
        "5. After update",
        "6. Rollback",
    ] {
        assert!(form.body.contains(stage), "{stage} missing");
    }

    // A bad version: the form again, with the message and the input kept.
    let bad = b.submit_update(
        &csrf,
        &[
            ("version", None, b"not a version!"),
            ("group", None, b"test"),
            ("comment", None, b"keep me <please>"),
            ("dest1", None, b"/opt/app/hello.txt"),
            ("files1", Some("hello.txt"), b"hello\n"),
            ("after_run", None, b"echo after"),
        ],
    );
    bad.assert_says(
        400,
        &[
            "build failed",
            "keep me &lt;please&gt;",
            "value=\"/opt/app/hello.txt\"",
            "echo after</textarea>",
        ],
    );

    let ok = b.submit_update(
        &csrf,
        &[
            ("version", None, b"1.0.0"),
            ("group", None, b"test"),
            ("comment", None, b"from the form"),
            ("dest1", None, b"/opt/app/hello.txt"),
            ("files1", Some("hello.txt"), b"hello\n"),
            ("dest2", None, b"/srv/site/"),
            ("dir2", Some("site/index.html"), b"<h1>hi</h1>\n"),
            ("dir2", Some("site/css/a.css"), b"h1{}\n"),
            ("after_run", None, b"echo after"),
            ("rollback_revert", None, b"on"),
        ],
    );
    assert_eq!(ok.status, 303, "{}", ok.body);
    let to = ok.location.unwrap();
    assert!(to.starts_with("/?created="), "{to}");
    let ups = get_ok(&c.api("/updates"), &token);
    let recipe = &ups[0]["recipe"];
    assert_eq!(ups[0]["version"], "1.0.0");
    assert_eq!(
        ups[0]["compatible"], "acme-gw",
        "taken from the group's device"
    );
    assert_eq!(recipe["after"]["script"], "echo after", "{recipe}");
    let deps = get_ok(&c.api("/deployments"), &token);
    assert_eq!(deps[0]["group"], "test");
    assert_eq!(deps[0]["comment"], "from the form");
    let offer = poll(&c, &dev, None);
    assert!(offer.to_string().contains("install"), "{offer}");
    let home = b.get(&to);
    assert!(home.body.contains("Deployment 1 created"), "{}", home.body);

    // The same version again: refused by the store, with its message.
    let again = b.submit_update(
        &csrf,
        &[("version", None, b"1.0.0"), ("group", None, b"test")],
    );
    again.assert_says(409, &["version 1.0.0 exists already"]);
    // An empty group is refused before a version is used up.
    b.post("/groups", &[("csrf", &csrf), ("name", "empty")]);
    let empty = b.submit_update(
        &csrf,
        &[("version", None, b"1.0.1"), ("group", None, b"empty")],
    );
    empty.assert_says(400, &["group `empty` has no devices"]);
    assert_eq!(
        get_ok(&c.api("/updates"), &token).as_array().unwrap().len(),
        1
    );
}

#[test]
fn hostile_names_comments_and_logs_are_escaped() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let dev = one_test_device(&c, &token, "<script>alert('device')</script>");
    let key = molt_bundle::keys::read_secret(&f.data().join("signing.secret")).unwrap();
    let bundle = bundle(f.dir.path(), "1.0.0", &key);
    let up = upload(&c, &token, &bundle).json();
    let comment = "<img src=x onerror=alert('comment')>";
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": up["id"], "group": "test", "comment": comment}),
        201,
    );
    let id = d["id"].as_u64().unwrap();
    poll(&c, &dev, None);
    let log = "</pre><script>alert('log')</script>\n";
    assert_eq!(report(&c, &dev, id, 1, "downloading", log).status, 200);

    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let pages = [
        b.get("/").body,
        b.get("/deployments/table").body,
        b.get(&format!("/deployments/{id}")).body,
        b.get("/devices").body,
    ];
    for (i, html) in pages.iter().enumerate() {
        for raw in ["<script>alert", "<img src=x", "</pre><script>"] {
            assert!(
                !html.contains(raw),
                "page {i} carries `{raw}` unescaped:\n{html}"
            );
        }
    }
    // Each page shows its hostile text, escaped.
    for (page, escaped) in [
        (0, "&lt;img src=x onerror=alert('comment')&gt;"),
        (2, "&lt;/pre&gt;&lt;script&gt;alert('log')&lt;/script&gt;"),
        (3, "&lt;script&gt;alert('device')&lt;/script&gt;"),
    ] {
        assert!(pages[page].contains(escaped), "{}", pages[page]);
    }

    // A crafted link cannot show an abort's result for a deployment nobody aborted.
    let spoof = b.get(&format!("/deployments/{id}?abort=sent")).body;
    assert!(!spoof.contains("Abort sent"), "{spoof}");

    // Abort without JavaScript: a confirmation page first, then the result.
    let path = format!("/deployments/{id}/abort");
    let ask = b.post(&path, &[("csrf", &csrf)]);
    ask.assert_says(200, &["Yes, abort"]);
    let live = b.get(&format!("/deployments/{id}/live")).body;
    assert!(live.contains("class=\"abort\""), "not aborted yet: {live}");
    let done = b.post(&path, &[("csrf", &csrf), ("confirmed", "yes")]);
    // Post/redirect/get: a reload cannot send the abort again.
    assert_eq!(done.status, 303, "{}", done.body);
    let to = done.location.unwrap();
    assert_eq!(to, format!("/deployments/{id}?abort=sent"));
    let done = b.get(&to);
    done.assert_says(200, &["Abort sent", &dev.id]);
    // The abort's address typed or reloaded: the details page, not an API answer.
    let typed = b.get(&path);
    assert_eq!(typed.status, 303);
    assert_eq!(
        typed.location.as_deref(),
        Some(format!("/deployments/{id}").as_str())
    );
    let live = b.get(&format!("/deployments/{id}/live")).body;
    assert!(live.contains("Aborted at"), "{live}");
    assert!(
        !live.contains("class=\"abort\""),
        "Abort still offered: {live}"
    );

    // A hostile group name is refused by the API's own rule, and echoed escaped.
    let g = b.post(
        "/groups",
        &[("csrf", &csrf), ("name", "<b onmouseover=x>g</b>")],
    );
    g.assert_says(
        400,
        &["group name `&lt;b onmouseover=x&gt;g&lt;/b&gt;` must be"],
    );
    assert!(!g.body.contains("<b onmouseover"));
}

#[test]
fn a_device_is_removed_from_the_devices_page_after_a_confirmation() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let dev = one_test_device(&c, &token, "gw-web");
    poll(&c, &dev, None);
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let list = b.get("/devices").body;
    let path = format!("/devices/{}/remove", dev.id);
    assert!(list.contains(&format!("action=\"{path}\"")), "{list}");
    assert!(
        list.contains("data-confirm=\"Remove device gw-web"),
        "{list}"
    );

    // Without JavaScript: a confirmation page, and nothing removed yet.
    let ask = b.post(&path, &[("csrf", &csrf)]);
    ask.assert_says(200, &["Yes, remove"]);
    assert!(b.get("/devices").body.contains("gw-web"));
    // Confirmed: post/redirect/get back to the list, which says so.
    let done = b.post(&path, &[("csrf", &csrf), ("confirmed", "yes")]);
    assert_eq!(done.status, 303, "{}", done.body);
    let to = done.location.unwrap();
    assert_eq!(to, format!("/devices?removed={}", dev.id));
    let after = b.get(&to).body;
    assert!(
        after.contains("removed: its credential is refused"),
        "{after}"
    );
    assert!(!after.contains("gw-web"), "{after}");
    let polled = post(
        &c.api("/device/poll"),
        &dev.cred,
        json!({"compatible": "acme-gw", "agent_version": "0.1.0", "active_version": "factory"}),
    );
    assert_eq!(polled.status, 401);
    // Without the form token: refused, as every form.
    assert_eq!(b.post(&path, &[("confirmed", "yes")]).status, 403);
}

#[test]
fn small_things_a_browser_notices() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let t = group(&c, &token, "solo");
    enroll(&c, &t, "gw-1", "acme-gw");
    let mut b = Browser::new(&c);
    // The icon every page load asks for, before and after login.
    let icon = b.get("/favicon.ico");
    assert_eq!(icon.status, 200);
    assert!(
        icon.content_type.starts_with("image/svg+xml"),
        "{}",
        icon.content_type
    );
    b.login(&token);
    // "1 device", not "1 devices".
    let form = b.get("/updates/new").body;
    assert!(form.contains("solo (1 device)"), "{form}");
    // The group name's pattern compiles under the `v` flag browsers use for it (with a
    // bare `-` in the class it did not, and the browser's check silently did nothing).
    let groups = b.get("/groups").body;
    let at = groups.find("pattern=\"").expect("a pattern attribute") + "pattern=\"".len();
    let pattern = &groups[at..at + groups[at..].find('"').unwrap()];
    assert_eq!(pattern, r"[A-Za-z0-9._\-]+");
    let js = format!(
        "const r = new RegExp('^(?:' + {pattern:?} + ')$', 'v'); \
         if (!r.test('prod-1.a_b') || r.test('bad name')) process.exit(3);"
    );
    match std::process::Command::new("node")
        .args(["-e", &js])
        .output()
    {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => println!("node not installed: the pattern was checked as text only"),
    }
}

#[test]
fn without_a_signing_key_the_form_says_builds_are_off() {
    let f = Fixture::new();
    let (_, public) = key(f.dir.path(), "release");
    let (c, token) = f.start(&["--no-signing-key", "--trusted-key", &public]);
    one_test_device(&c, &token, "gw-1");
    let mut b = Browser::new(&c);
    b.login(&token);
    let form = b.get("/updates/new").body;
    assert!(form.contains("server-side builds are off"), "{form}");
    // Submitted anyway: the form again, saying why (not a session refusal page).
    let csrf = b.csrf();
    let sent = b.submit_update(
        &csrf,
        &[("version", None, b"1.0.0"), ("group", None, b"test")],
    );
    sent.assert_says(409, &["server-side builds are off"]);
}

#[test]
fn wrong_hardware_is_refused_before_the_build_uses_up_the_version() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    one_test_device(&c, &token, "gw-1");
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let send = |b: &mut Browser, compatible: &[u8]| {
        b.submit_update(
            &csrf,
            &[
                ("version", None, b"1.0.0"),
                ("compatible", None, compatible),
                ("group", None, b"test"),
                ("dest1", None, b"/opt/app/hello.txt"),
                ("files1", Some("hello.txt"), b"hello\n"),
            ],
        )
    };
    let wrong = send(&mut b, b"other-board");
    // The second needle is the input kept.
    wrong.assert_says(400, &["nothing was built", "value=\"other-board\""]);
    assert_eq!(get_ok(&c.api("/updates"), &token), json!([]));
    // Fixed and sent again: the same version is still free.
    let ok = send(&mut b, b"acme-gw");
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(get_ok(&c.api("/updates"), &token)[0]["version"], "1.0.0");
}

#[test]
fn a_refused_form_comes_back_exactly_as_typed() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    one_test_device(&c, &token, "gw-1");
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    // A comment one byte over 64 KiB, then every other kind of field after it.
    let long = "c".repeat(64 * 1024 + 1);
    let send = |b: &mut Browser, comment: &[u8]| {
        b.submit_update(
            &csrf,
            &[
                ("version", None, b"1.0.0"),
                ("group", None, b"test"),
                ("compatible", None, b"acme-gw"),
                ("kind", None, b"full"),
                ("comment", None, comment),
                ("before_run", None, b"echo before"),
                ("dest1", None, b"/opt/app/hello.txt"),
                ("files1", Some("hello.txt"), b"hello\n"),
                ("apt", None, b"jq\ncurl"),
                ("after_run", None, b"echo after"),
                ("health_run", None, b"true"),
                ("health_attempts", None, b"7"),
                ("health_interval", None, b"11"),
                ("health_timeout", None, b"13"),
                ("rollback_revert", None, b"on"),
                ("rollback_run", None, b"echo back"),
                ("rollback_reboot", None, b"on"),
            ],
        )
    };
    let refused = send(&mut b, long.as_bytes());
    assert_eq!(
        refused.status,
        413,
        "{}",
        &refused.body[..2000.min(refused.body.len())]
    );
    let page = &refused.body;
    assert!(
        page.contains("field `comment` is 65537 bytes"),
        "no reason given"
    );
    for kept in [
        format!(">{long}</textarea>").as_str(),
        "value=\"1.0.0\"",
        "<option value=\"test\" selected>",
        "value=\"acme-gw\"",
        "<option value=\"full\" selected>",
        "echo before</textarea>",
        "value=\"/opt/app/hello.txt\"",
        "jq\ncurl</textarea>",
        "echo after</textarea>",
        "value=\"7\"",
        "value=\"11\"",
        "value=\"13\"",
        "echo back</textarea>",
        "name=\"rollback_revert\" value=\"on\" checked",
        "name=\"rollback_reboot\" value=\"on\" checked",
    ] {
        assert!(
            page.contains(kept),
            "lost `{}`",
            &kept[..kept.len().min(60)]
        );
    }
    assert_eq!(get_ok(&c.api("/updates"), &token), json!([]));
    // Shortened and sent again: deployed with revert and reboot as they were ticked.
    let ok = send(&mut b, b"short");
    assert_eq!(ok.status, 303, "{}", ok.body);
    let recipe = &get_ok(&c.api("/updates"), &token)[0]["recipe"];
    assert_eq!(recipe["rollback"]["revert"], true, "{recipe}");
    assert_eq!(recipe["rollback"]["reboot"], true, "{recipe}");
}

#[test]
fn a_long_comment_is_clipped_in_the_list_and_whole_on_its_page() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    one_test_device(&c, &token, "gw-1");
    let key = molt_bundle::keys::read_secret(&f.data().join("signing.secret")).unwrap();
    let up = upload(&c, &token, &bundle(f.dir.path(), "1.0.0", &key)).json();
    let comment = "word ".repeat(600);
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": up["id"], "group": "test", "comment": comment}),
        201,
    );
    let mut b = Browser::new(&c);
    b.login(&token);
    let list = b.get("/deployments/table").body;
    assert!(!list.contains(&comment), "the whole comment is in the row");
    assert!(list.contains(&format!("{}…", &comment[..160])), "{list}");
    assert!(
        list.contains(&format!(
            "href=\"/deployments/{}\" title=\"the whole comment\"",
            d["id"]
        )),
        "{list}"
    );
    let page = b.get(&format!("/deployments/{}", d["id"])).body;
    assert!(
        page.contains(&comment),
        "the details page lacks the whole comment"
    );
}

#[test]
fn a_halted_deployment_shows_its_waves_and_why_and_resumes_from_its_page() {
    let Stored {
        f: _data,
        c,
        token,
        update,
        ..
    } = stored("3.0.0");
    let devs = enrolled(&c, &token, "fleet", 3, "gw");
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": update, "group": "fleet",
               "plan": {"canaries": ["gw-1"], "waves": ["100%"], "halt_at": "1",
                        "soak_secs": 600}}),
        201,
    );
    let dep = d["id"].as_u64().unwrap();
    assert_eq!(poll(&c, &devs[1], None)["action"], "install");
    assert_eq!(
        report(&c, &devs[1], dep, 1, "failed", "<b>boom</b>\n").status,
        200
    );

    let mut b = Browser::new(&c);
    b.login(&token);
    let path = format!("/deployments/{dep}");
    let page = b.get(&path);
    page.assert_says(
        200,
        &[
            "badge s-halted",
            "the canaries (1 canary, 100%); soak 10m; halts at 1 failure in all",
            "Halted by its plan: </strong>1 of 3 devices in all failed; the plan halts at 1",
            &format!("action=\"/deployments/{dep}/resume\""),
            "<th scope=\"col\">Wave</th>",
            "<td class=\"wave\">canary</td>",
        ],
    );
    assert!(!page.body.contains("<b>boom</b>"), "logs are escaped");
    // The form token is required, as for every form.
    assert_eq!(b.post(&format!("{path}/resume"), &[]).status, 403);
    let csrf = b.csrf();
    let done = b.post(&format!("{path}/resume"), &[("csrf", &csrf)]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some(path.as_str()));
    let after = b.get(&path);
    after.assert_says(200, &["wave 1 of 1"]);
    assert!(!after.body.contains("Halted by its plan"), "{}", after.body);
    // Resuming what is not halted says so on a page, not in a raw error.
    b.post(&format!("{path}/resume"), &[("csrf", &csrf)])
        .assert_says(409, &["is not halted"]);
}

#[test]
fn the_forms_rollout_fields_make_a_phased_deployment_and_bad_ones_build_nothing() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let t = group(&c, &token, "test");
    let devs: Vec<Dev> = (1..=3)
        .map(|i| enroll(&c, &t, &format!("gw-{i}"), "acme-gw"))
        .collect();
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let form = b.get("/updates/new");
    form.assert_says(
        200,
        &[
            "Rollout (optional)",
            "name=\"plan_waves\"",
            "name=\"plan_canaries\"",
            "name=\"plan_halt_scope\"",
            "the target group's default plan",
        ],
    );
    let send = |b: &mut Browser, plan: &[(&str, Option<&str>, &[u8])]| {
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![
            ("version", None, b"1.0.0"),
            ("group", None, b"test"),
            ("comment", None, b"phased from the form"),
            ("dest1", None, b"/opt/app/hello.txt"),
            ("files1", Some("hello.txt"), b"hello\n"),
        ];
        parts.extend_from_slice(plan);
        b.submit_update(&csrf, &parts)
    };

    // Each bad value comes back as typed, with the field named, and builds nothing.
    let hostile = "<script>alert('waves')</script>";
    for (field, value, says) in [
        ("plan_waves", hostile, "rollout plan, waves: "),
        (
            "plan_waves",
            "10%,50%",
            "rollout plan, waves: the last wave must be 100%",
        ),
        (
            "plan_success",
            "101%",
            "rollout plan, success_percent: 101 is more than 100",
        ),
        ("plan_soak", "soon", "rollout plan, soak: &quot;soon&quot;"),
        ("plan_halt_at", "0", "rollout plan, halt at: &quot;0&quot;"),
        (
            "plan_halt_scope",
            "group",
            "rollout plan, halt scope: &quot;group&quot;",
        ),
        (
            "plan_canaries",
            "gw-9",
            "canaries: &quot;gw-9&quot; is not a device of this deployment",
        ),
    ] {
        let page = send(&mut b, &[(field, None, value.as_bytes())]);
        page.assert_says(400, &[says, "phased from the form"]);
        if field != "plan_halt_scope" {
            let kept = format!("name=\"{field}\" value=\"{}\"", html_escape(value));
            assert!(page.body.contains(&kept), "{field} not kept: {}", page.body);
        }
        assert!(!page.body.contains(hostile), "{field}: not escaped");
        assert_eq!(
            get_ok(&c.api("/updates"), &token),
            json!([]),
            "{field}: an update was built"
        );
    }

    // Good values: a phased deployment, the canary by name.
    let ok = send(
        &mut b,
        &[
            ("plan_waves", None, b"50%, 100%"),
            ("plan_canaries", None, b"gw-2"),
            ("plan_success", None, b"95%"),
            ("plan_soak", None, b"10m"),
            ("plan_halt_at", None, b"1"),
            ("plan_halt_scope", None, b"wave"),
            ("plan_abort_in_flight", None, b"on"),
        ],
    );
    assert_eq!(ok.status, 303, "{}", ok.body);
    let deps = get_ok(&c.api("/deployments"), &token);
    let plan = &deps[0]["rollout"]["plan"];
    assert_eq!(
        plan,
        &json!({"waves": ["50%", "100%"], "canaries": ["gw-2"], "success_percent": 95,
                "soak_secs": 600, "halt_at": "1", "halt_scope": "wave",
                "abort_in_flight": true}),
        "{deps}"
    );
    // Only the canary is offered the update first.
    assert_eq!(poll(&c, &devs[1], None)["action"], "install");
    assert_ne!(poll(&c, &devs[0], None)["action"], "install");
    let dep = deps[0]["id"].as_u64().unwrap();
    b.get(&format!("/deployments/{dep}")).assert_says(
        200,
        &[
            "the canaries (1 canary, 50%, 100%)",
            "<td class=\"wave\">canary</td>",
        ],
    );
}

/// What maud makes of a value inside an attribute.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[test]
fn the_forms_empty_rollout_fields_take_the_groups_default_plan() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let t = group(&c, &token, "test");
    for i in 1..=2 {
        enroll(&c, &t, &format!("gw-{i}"), "acme-gw");
    }
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let set_canary = |b: &mut Browser, canary: &str| {
        let saved = b.post(
            "/groups",
            &[
                ("csrf", &csrf),
                ("set", "plan"),
                ("name", "test"),
                ("plan_canaries", canary),
                ("pick_up_joiners", "on"),
            ],
        );
        assert_eq!(saved.status, 303, "{}", saved.body);
    };
    let send = |b: &mut Browser| {
        b.submit_update(
            &csrf,
            &[
                ("version", None, b"1.0.0"),
                ("group", None, b"test"),
                ("dest1", None, b"/opt/app/hello.txt"),
                ("files1", Some("hello.txt"), b"hello\n"),
                // The select's default alone is no plan of the form's own.
                ("plan_halt_scope", None, b"overall"),
            ],
        )
    };
    // The group's default plan names a canary no longer in it: refused before the
    // build, like a canary typed into the form.
    set_canary(&mut b, "gw-9");
    send(&mut b).assert_says(
        400,
        &["canaries: &quot;gw-9&quot; is not a device of this deployment: nothing was built"],
    );
    assert_eq!(get_ok(&c.api("/updates"), &token), json!([]));
    set_canary(&mut b, "gw-1");
    let sent = send(&mut b);
    assert_eq!(sent.status, 303, "{}", sent.body);
    let deps = get_ok(&c.api("/deployments"), &token);
    assert_eq!(
        deps[0]["rollout"]["plan"]["canaries"],
        json!(["gw-1"]),
        "{deps}"
    );
}

#[test]
fn deploy_to_others_from_a_halted_deployment_asks_first() {
    let Stored {
        f: _data,
        c,
        token,
        update,
        ..
    } = stored("3.0.0");
    let devs = enrolled(&c, &token, "fleet", 2, "gw");
    let p = group(&c, &token, "production");
    for i in 0..3 {
        enroll(&c, &p, &format!("prod-{i}"), "acme-gw");
    }
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": update, "group": "fleet",
               "plan": {"canaries": ["gw-1"], "waves": ["100%"], "halt_at": "1"}}),
        201,
    );
    let dep = d["id"].as_u64().unwrap();
    poll(&c, &devs[1], None);
    assert_eq!(report(&c, &devs[1], dep, 1, "failed", "boom\n").status, 200);

    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    let path = format!("/deployments/{dep}/deploy-to-others");
    b.get(&path).assert_says(
        200,
        &[
            &format!("Deployment {dep} halted: 1 of 2 devices in all failed; the plan halts at 1."),
            "Deploy its update to another group anyway?",
            "name=\"confirmed\" value=\"yes\" required",
            "production (3 devices; default plan: all at once)",
            "name=\"plan_waves\"",
        ],
    );
    // Not confirmed: refused, the form as typed, nothing deployed.
    let refused = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("group", "production"),
            ("plan_waves", "34%,100%"),
        ],
    );
    refused.assert_says(
        409,
        &[
            "Tick “Yes, deploy it anyway”",
            "nothing was deployed",
            "value=\"production\" selected",
            "name=\"plan_waves\" value=\"34%,100%\"",
        ],
    );
    assert_eq!(
        get_ok(&c.api("/deployments"), &token)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Without the form token: 403, as for every form.
    assert_eq!(
        b.post(&path, &[("group", "production"), ("confirmed", "yes")])
            .status,
        403
    );
    // A bad plan, confirmed: refused with the field named.
    b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("group", "production"),
            ("confirmed", "yes"),
            ("plan_halt_at", "-1"),
        ],
    )
    .assert_says(400, &["rollout plan, halt at: &quot;-1&quot;"]);
    assert_eq!(
        get_ok(&c.api("/deployments"), &token)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Confirmed, with a plan: deployed in waves.
    let sent = b.post(
        &path,
        &[
            ("csrf", &csrf),
            ("group", "production"),
            ("confirmed", "yes"),
            ("plan_waves", "34%,100%"),
        ],
    );
    assert_eq!(sent.status, 303, "{}", sent.body);
    let deps = get_ok(&c.api("/deployments"), &token);
    assert_eq!(deps[0]["group"], "production");
    assert_eq!(deps[0]["rollout"]["plan"]["waves"], json!(["34%", "100%"]));

    // From a deployment that neither failed nor halted, no question.
    let other = deps[0]["id"].as_u64().unwrap();
    let page = b.get(&format!("/deployments/{other}/deploy-to-others"));
    assert!(!page.body.contains("name=\"confirmed\""), "{}", page.body);
}

#[test]
fn a_groups_default_plan_is_set_from_the_groups_page() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    one_test_device(&c, &token, "gw-1");
    let mut b = Browser::new(&c);
    b.login(&token);
    let csrf = b.csrf();
    b.get("/groups").assert_says(
        200,
        &[
            "<td class=\"plan\">all at once</td>",
            "picked up",
            "Save test",
        ],
    );
    let fields = [
        ("csrf", csrf.as_str()),
        ("set", "plan"),
        ("name", "test"),
        ("plan_canaries", "gw-1"),
        ("plan_waves", "10%,100%"),
        ("plan_soak", "10m"),
        ("plan_halt_at", "2"),
    ];
    // The form token is required.
    assert_eq!(b.post("/groups", &fields[1..]).status, 403);
    let saved = b.post("/groups", &fields);
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(saved.location.as_deref(), Some("/groups?saved=test"));
    let g = &get_ok(&c.api("/groups"), &token)[0];
    assert_eq!(
        g["default_plan"],
        json!({"waves": ["10%", "100%"], "canaries": ["gw-1"], "success_percent": 0,
               "soak_secs": 600, "halt_at": "2", "halt_scope": "overall",
               "abort_in_flight": false}),
        "{g}"
    );
    // Unticked: joiners are no longer picked up.
    assert_eq!(g["pick_up_joiners"], false, "{g}");
    b.get("/groups?saved=test").assert_says(
        200,
        &[
            "default plan and joiners saved",
            "1 canary, 10%, 100%; soak 10m; halts at 2 failures in all",
            "not picked up",
            // The form shows the stored plan to edit.
            "name=\"plan_waves\" value=\"10%,100%\"",
            "name=\"plan_soak\" value=\"10m\"",
        ],
    );

    // A bad value: the page again with the form as typed and open, nothing saved.
    let bad = b.post(
        "/groups",
        &[
            ("csrf", &csrf),
            ("set", "plan"),
            ("name", "test"),
            ("plan_waves", "100%,10%"),
            ("plan_success", "<b>lots</b>"),
            ("pick_up_joiners", "on"),
        ],
    );
    bad.assert_says(
        400,
        &[
            "group `test`: rollout plan, success: &quot;&lt;b&gt;lots&lt;/b&gt;&quot;: a share",
            "name=\"plan_waves\" value=\"100%,10%\"",
            "value=\"&lt;b&gt;lots&lt;/b&gt;\"",
            "<details class=\"group-plan\" open",
        ],
    );
    assert!(!bad.body.contains("<b>lots</b>"));
    let g = &get_ok(&c.api("/groups"), &token)[0];
    assert_eq!(g["default_plan"]["waves"], json!(["10%", "100%"]), "{g}");
    // A group that does not exist: 404 on the page, not a raw error.
    b.post(
        "/groups",
        &[("csrf", &csrf), ("set", "plan"), ("name", "nope")],
    )
    .assert_says(404, &["group `nope`"]);
    // All empty and ticked: back to all at once, joiners picked up.
    let reset = b.post(
        "/groups",
        &[
            ("csrf", &csrf),
            ("set", "plan"),
            ("name", "test"),
            ("pick_up_joiners", "on"),
        ],
    );
    assert_eq!(reset.status, 303, "{}", reset.body);
    let g = &get_ok(&c.api("/groups"), &token)[0];
    assert_eq!(g["default_plan"]["waves"], json!(["100%"]), "{g}");
    assert_eq!(g["pick_up_joiners"], true, "{g}");
}
