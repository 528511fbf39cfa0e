//! The operator web UI in a real headless Chromium (through chromedriver): log in, create an update with a file and an after command, deploy it to a group with a running agent, watch it reach Success, deploy to others, abort another deployment mid-download; a wrong login is refused.
//!
//! The browser twin of flow.rs and resilience.rs. A screenshot of every page is
//! saved as `target/web-screenshots/NN-name.png` for a person to look at.
//! Without `chromium` and `chromedriver` (Debian packages, installed by .ci/run)
//! the test prints why it is skipped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use molt_engine::testing::noise;
use molt_test_support::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(180);

/// An executable on `PATH`, if there is one.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// chromedriver in its own process group: dropping it kills the group (chromedriver
/// and the Chromium it started) by the group's id, even when the test failed.
struct Driver {
    proc: Proc,
    url: String,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        // A free port: bound, read and released (chromedriver binds it right after).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_for(Duration::from_secs(30), "chromedriver to listen", || {
            ureq::get(&status).call().ok()
        });
        Driver {
            proc: Proc::new("chromedriver", child),
            url,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pid = self.proc.pid();
        if pid != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        self.proc.kill9();
    }
}

/// The browser session and where its screenshots go.
struct Ui {
    c: Client,
    base: String,
    shots: PathBuf,
    n: usize,
}

impl Ui {
    async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    async fn path(&self) -> String {
        let u = self.c.current_url().await.expect("current url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    async fn source(&self) -> String {
        self.c.source().await.expect("page source")
    }

    async fn css(&self, css: &str) -> fantoccini::elements::Element {
        match self.c.find(Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) => panic!(
                "no `{css}` on {}: {e}\n{}",
                self.path().await,
                self.source().await
            ),
        }
    }

    /// The deployment id the page is redirected to (`/?created=ID`) after a form was
    /// sent (a build takes a moment: the click returns before the answer).
    async fn created(&self, what: &str) -> u64 {
        let start = Instant::now();
        loop {
            let path = self.path().await;
            if let Some(id) = path.strip_prefix("/?created=").and_then(|s| s.parse().ok()) {
                return id;
            }
            let page = self.source().await;
            assert!(
                !page.contains("class=\"notice error\"") && start.elapsed() < LONG,
                "{what} failed ({path}):\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self.css(css).await;
        el.clear().await.ok();
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into `{css}`: {e}"));
    }

    async fn click(&self, css: &str) {
        self.css(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    /// Clicks `css`, which loads another page (a link, a form's button), and waits
    /// until that page has loaded: WebDriver's click may return while a form's POST
    /// and its redirect are still on the way. The old document is marked first; the
    /// new one is the first without the mark.
    async fn navigate(&self, css: &str) {
        self.c
            .execute("window.__moltOld = true;", vec![])
            .await
            .expect("mark the old page");
        self.click(css).await;
        let start = Instant::now();
        loop {
            let loaded = self
                .value_of("return window.__moltOld !== true && document.readyState === 'complete';")
                .await
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if loaded {
                return;
            }
            let failed = format!("clicking `{css}` loaded no new page; still on ");
            next_round(start, Duration::from_millis(100), &failed, self.path()).await;
        }
    }

    /// What the JavaScript `script` returns in the page, or `None` if it failed (the
    /// callers then assume a default: not loaded yet, a usual page height).
    async fn value_of(&self, script: &str) -> Option<serde_json::Value> {
        self.c.execute(script, vec![]).await.ok()
    }

    /// Saves the page as `NN-name.png`.
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        // The whole page, not only the window: the window is made as tall as the
        // page for the shot (WebDriver screenshots show the viewport only).
        let height = self
            .value_of("window.scrollTo(0, 0); return document.documentElement.scrollHeight;")
            .await
            .and_then(|v| v.as_u64())
            .unwrap_or(1000);
        let height = u32::try_from(height).unwrap_or(4000).clamp(700, 4000);
        self.c.set_window_size(1280, height + 90).await.ok();
        let png = self.c.screenshot().await.expect("screenshot");
        self.c.set_window_size(1280, 1100).await.ok();
        let path = self.shots.join(format!("{:02}-{name}.png", self.n));
        fs::write(&path, png).expect("write screenshot");
        println!("screenshot {}", path.display());
    }

    /// Waits until deployment `id`'s row in the recent-updates table (app.js refreshes
    /// it) has a `data-state` that satisfies `ok`; returns the row's selector.
    async fn wait_row(&self, id: u64, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let row = format!("#recent tr[data-deployment=\"{id}\"]");
        self.wait_attr(&row, "data-state", what, ok).await;
        row
    }

    /// Waits until `css` matches an element whose `attr` satisfies `ok`.
    async fn wait_attr(&self, css: &str, attr: &str, what: &str, ok: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            if let Ok(el) = self.c.find(Locator::Css(css)).await {
                if let Ok(Some(v)) = el.attr(attr).await {
                    if ok(&v) {
                        return;
                    }
                }
            }
            let failed = format!("timed out waiting for {what}; page:\n");
            next_round(start, Duration::from_millis(250), &failed, self.source()).await;
        }
    }
}

/// Asserts the controller says deployment `id` is in `state`; a failure shows the
/// deployment and what `device`'s agent printed.
fn assert_state(ctl: &Controller, id: u64, state: &str, device: &Device) {
    let d = ctl.get(&format!("/api/v1/deployments/{id}"));
    assert_eq!(d["state"], state, "{d:#}\n{}", device.output());
}

/// Ends one round of a wait begun at `start`: past [`LONG`] it fails with `failed` and
/// then what `shown` says (a future, so the page is read only then); else it sleeps
/// `every` before the next look.
async fn next_round(
    start: Instant,
    every: Duration,
    failed: &str,
    shown: impl std::future::Future<Output = String>,
) {
    if start.elapsed() >= LONG {
        panic!("{failed}{}", shown.await);
    }
    tokio::time::sleep(every).await;
}

fn enrollment_token(ctl: &Controller, group: &str) -> String {
    ctl.get("/api/v1/groups")
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == group)
        .and_then(|g| g["enrollment_token"].as_str())
        .unwrap_or_else(|| panic!("group {group} not listed"))
        .to_string()
}

/// Fills and submits the new-update form for one file; returns the new deployment's id.
async fn new_update(
    ui: &mut Ui,
    version: &str,
    group: &str,
    file: &Path,
    dest: &str,
    after: &str,
    shot: Option<&str>,
) -> u64 {
    fill_update(ui, version, group, file, dest, after).await;
    if let Some(name) = shot {
        ui.shot(name).await;
    }
    ui.click("form.recipe .submit button").await;
    ui.created("the new-update form").await
}

/// Fills the new-update form for one file, leaving it unsent.
async fn fill_update(
    ui: &mut Ui,
    version: &str,
    group: &str,
    file: &Path,
    dest: &str,
    after: &str,
) {
    ui.goto("/updates/new").await;
    ui.fill("#version", version).await;
    ui.css("#group")
        .await
        .select_by_value(group)
        .await
        .expect("choose the group");
    // Full: the test devices start empty, and a patch writes only what it names
    // (the parents of /opt/app/… must exist already, docs/recipe.md).
    ui.css("#kind")
        .await
        .select_by_value("full")
        .await
        .expect("choose the kind");
    ui.fill("#comment", &format!("{version} from the browser"))
        .await;
    ui.fill("#dest1", dest).await;
    ui.css("#files1")
        .await
        .send_keys(file.to_str().expect("utf-8 path"))
        .await
        .expect("choose the file");
    ui.fill("#after_run", after).await;
}

#[test]
fn the_operator_flow_in_a_headless_browser() {
    if !root_or_skip() {
        return;
    }
    let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
        println!(
            "skipped: needs `chromium` and `chromedriver` on PATH \
             (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(flow(&chromium, &chromedriver));
}

async fn flow(chromium: &Path, chromedriver: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("controller");
    let ctl = Controller::start(&data, &["--poll-interval", "1"]);
    // Devices trust the key the controller signs server-side builds with.
    let public = fs::read_to_string(data.join("signing.pub"))
        .expect("signing.pub")
        .trim()
        .to_string();
    // 256 KiB/s: the 4 MiB update of the abort takes about 16 s through it.
    let link = SlowLink::new(&ctl.url, 256 * 1024);
    link.throttle.store(false, Ordering::Relaxed);
    let mut devices = Vec::new();
    for (group, url) in [
        ("test", ctl.url.clone()),
        ("production", ctl.url.clone()),
        ("field", link.url.clone()),
    ] {
        ctl.molt(&["groups", "create", group]).ok();
        let mut d = Device::new(&format!("{group}-1"), &public);
        d.enroll(&url, &enrollment_token(&ctl, group));
        d.run();
        devices.push(d);
    }
    // A group of two for the phased deployment: a canary that fails, and one that
    // must never start.
    ctl.molt(&["groups", "create", "fleet"]).ok();
    let fleet_token = enrollment_token(&ctl, "fleet");
    let fleet: Vec<Device> = (1..=2)
        .map(|i| {
            let mut d = Device::new(&format!("fleet-{i}"), &public);
            d.enroll(&ctl.url, &fleet_token);
            d.run();
            d
        })
        .collect();

    let shots = workspace().join("target/web-screenshots");
    let _ = fs::remove_dir_all(&shots);
    fs::create_dir_all(&shots).unwrap();
    let driver = Driver::start(chromedriver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100"],
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium");
    let mut ui = Ui {
        c: client,
        base: ctl.url.clone(),
        shots,
        n: 0,
    };

    // Not logged in: every page leads to the login form.
    ui.goto("/").await;
    assert!(ui.path().await.starts_with("/login"), "{}", ui.path().await);
    ui.shot("login").await;

    // A wrong token is refused.
    ui.fill("#token", "mop_0000000000000000").await;
    ui.navigate("section.login button").await;
    let page = ui.source().await;
    assert!(page.contains("That is not the operator token."), "{page}");
    assert!(ui.path().await.starts_with("/login"));
    ui.shot("login-refused").await;

    ui.fill("#token", &ctl.token).await;
    ui.navigate("section.login button").await;
    assert_eq!(ui.path().await, "/");
    assert!(ui.source().await.contains("No updates deployed yet"));
    ui.shot("recent-updates-empty").await;

    ui.goto("/groups").await;
    let page = ui.source().await;
    for g in ["test", "production", "field"] {
        assert!(page.contains(g), "group {g} not on the groups page");
    }
    ui.shot("groups").await;
    ui.goto("/devices").await;
    // The agents have polled: their status, versions and last-seen time are shown.
    let page = ui.source().await;
    for d in &devices {
        assert!(page.contains(&d.name), "{} not on the devices page", d.name);
    }
    ui.shot("devices").await;

    // A new update: a file and an after command, deployed to `test`.
    let hello = tmp.path().join("hello.txt");
    fs::write(&hello, "hello from the browser\n").unwrap();
    let first = new_update(
        &mut ui,
        "1.0.0",
        "test",
        &hello,
        "/opt/app/hello.txt",
        "echo after $MOLT_NEW_VERSION",
        Some("new-update-form"),
    )
    .await;
    assert!(ui
        .source()
        .await
        .contains(&format!("Deployment {first} created")));
    // The table refreshes by itself (app.js): no reload until it shows Success.
    let row = ui
        .wait_row(first, "the deployment to finish", |s| s != "in_progress")
        .await;
    assert_state(&ctl, first, "success", &devices[0]);
    let cell = ui
        .css(&format!("{row} td.status"))
        .await
        .text()
        .await
        .unwrap();
    assert!(cell.contains("1 success"), "{cell}");
    ui.shot("recent-updates-success").await;
    assert_eq!(
        devices[0].read("opt/app/hello.txt").as_deref(),
        Some("hello from the browser\n")
    );
    assert_eq!(
        devices[1].read("opt/app/hello.txt"),
        None,
        "production got it early"
    );

    // Details: per-device status and the after command's output in the log.
    ui.navigate(&format!(
        "{row} td.actions a[href=\"/deployments/{first}\"]"
    ))
    .await;
    ui.click("section.logs details summary").await;
    let log = ui
        .css("section.logs details pre")
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("after 1.0.0"), "{log}");
    assert!(
        ui.c.find(Locator::Css("form.abort")).await.is_err(),
        "a finished deployment offers Abort"
    );
    ui.shot("deployment-details").await;

    // Deploy to others, from the recent-updates row.
    ui.goto("/").await;
    ui.navigate(&format!(
        "{row} td.actions a[href=\"/deployments/{first}/deploy-to-others\"]"
    ))
    .await;
    ui.css("#other-group")
        .await
        .select_by_value("production")
        .await
        .unwrap();
    ui.shot("deploy-to-others").await;
    ui.click("form.others .submit button").await;
    let second = ui.created("deploy to others").await;
    assert_ne!(second, first);
    ui.wait_row(second, "deploy to others to finish", |s| s != "in_progress")
        .await;
    assert_state(&ctl, second, "success", &devices[1]);
    ui.shot("recent-updates-deployed-to-others").await;
    assert_eq!(
        devices[1].read("opt/app/hello.txt").as_deref(),
        Some("hello from the browser\n")
    );

    // Another deployment, aborted from its details page while the device downloads.
    let big = tmp.path().join("data.bin");
    // Incompressible, so the bundle is as large as its data and slow to fetch through the throttled link.
    fs::write(&big, noise(1, 4 << 20)).unwrap();
    link.throttle.store(true, Ordering::Relaxed);
    let third = new_update(
        &mut ui,
        "2.0.0",
        "field",
        &big,
        "/opt/app/data.bin",
        "echo never",
        None,
    )
    .await;
    ui.goto(&format!("/deployments/{third}")).await;
    ui.wait_attr(
        "#devices tbody tr",
        "data-state",
        "the device to start downloading",
        |s| s == "downloading",
    )
    .await;
    ui.shot("deployment-downloading").await;
    ui.click("form.abort button").await;
    let question = ui.c.get_alert_text().await.expect("a confirm() dialog");
    assert!(question.contains("Abort deployment"), "{question}");
    ui.c.accept_alert().await.unwrap();
    ui.wait_attr("div.notice.ok", "role", "the abort's result", |_| true)
        .await;
    let page = ui.source().await;
    assert!(page.contains("Abort sent"), "{page}");
    assert!(page.contains("Aborted: "), "{page}");
    ui.shot("deployment-abort-sent").await;
    ui.wait_attr(
        "#devices tbody tr",
        "data-state",
        "the device to stop",
        |s| !["downloading", "installing"].contains(&s),
    )
    .await;
    // Full speed again only now: the download must not finish before the device
    // hears the abort on its next poll.
    link.throttle.store(false, Ordering::Relaxed);
    assert_state(&ctl, third, "aborted", &devices[2]);
    ui.shot("deployment-aborted").await;
    assert_eq!(devices[2].read("opt/app/data.bin"), None);
    assert_eq!(devices[2].current().as_deref(), Some(Path::new("slots/a")));

    ui.goto("/").await;
    ui.wait_row(third, "the table to show the abort", |s| s == "aborted")
        .await;
    ui.shot("recent-updates-final").await;

    // A phased deployment from the form: the canary's health check fails, the plan
    // halts before the other wave, and the page shows the waves and why.
    fill_update(
        &mut ui,
        "3.0.0",
        "fleet",
        &hello,
        "/opt/app/hello.txt",
        "echo phased",
    )
    .await;
    ui.fill("#health_run", "false").await;
    ui.fill("#health_attempts", "1").await;
    ui.fill("#health_interval", "1").await;
    ui.fill("#plan_waves", "50%,100%").await;
    ui.fill("#plan_canaries", "fleet-1").await;
    ui.fill("#plan_halt_at", "1").await;
    ui.shot("new-update-rollout").await;
    ui.click("form.recipe .submit button").await;
    let phased = ui.created("the phased deployment").await;
    ui.goto(&format!("/deployments/{phased}")).await;
    // app.js refreshes the page's live part until the halt shows with its Resume.
    ui.wait_attr(
        "div.notice.error form.resume",
        "action",
        "the plan to halt",
        |_| true,
    )
    .await;
    assert_state(&ctl, phased, "halted", &fleet[0]);
    let page = ui.source().await;
    for needle in [
        "the canaries (1 canary, 50%, 100%); halts at 1 failure in all",
        "Halted by its plan",
        "<td class=\"wave\">canary</td>",
        "<td class=\"wave\">2</td>",
    ] {
        assert!(page.contains(needle), "lacks {needle:?}:\n{page}");
    }
    let never = ctl.get(&format!("/api/v1/deployments/{phased}"));
    let states: Vec<&str> = never["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["state"].as_str())
        .collect();
    assert!(
        states.contains(&"pending"),
        "the second wave started: {never:#}"
    );
    ui.shot("deployment-halted").await;
    assert_eq!(fleet[1].read("opt/app/hello.txt"), None);

    // Deploy to others from it asks first; the browser does not send the form unticked.
    ui.navigate(&format!(
        "a.button[href=\"/deployments/{phased}/deploy-to-others\"]"
    ))
    .await;
    let page = ui.source().await;
    assert!(
        page.contains(&format!(
            "Deployment {phased} halted: 1 of 2 devices in all failed"
        )),
        "{page}"
    );
    ui.css("#other-group")
        .await
        .select_by_value("production")
        .await
        .unwrap();
    ui.click("form.others .submit button").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ui.path().await,
        format!("/deployments/{phased}/deploy-to-others")
    );
    ui.shot("deploy-to-others-confirm").await;
    assert_eq!(
        ctl.get("/api/v1/deployments").as_array().map(Vec::len),
        Some(4),
        "deployed without the confirmation"
    );

    // A group's default plan, set on the groups page.
    ui.goto("/groups").await;
    ui.click("details.group-plan:has(input[name=\"name\"][value=\"fleet\"]) summary")
        .await;
    ui.fill("#g-fleet-plan_canaries", "fleet-1").await;
    ui.fill("#g-fleet-plan_waves", "50%,100%").await;
    ui.fill("#g-fleet-plan_soak", "10m").await;
    ui.fill("#g-fleet-plan_halt_at", "1").await;
    ui.navigate("details.group-plan[open] .submit button").await;
    assert_eq!(ui.path().await, "/groups?saved=fleet");
    let page = ui.source().await;
    assert!(
        page.contains("1 canary, 50%, 100%; soak 10m; halts at 1 failure in all"),
        "{page}"
    );
    let plan = &ctl
        .get("/api/v1/groups")
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == "fleet")
        .expect("fleet")["default_plan"]
        .clone();
    assert_eq!(plan["canaries"], json!(["fleet-1"]), "{plan}");
    ui.click("details.group-plan:has(input[name=\"name\"][value=\"fleet\"]) summary")
        .await;
    ui.shot("groups-default-plan").await;

    // Logging out ends the session: the pages lead to the login form again.
    ui.navigate("form.logout button").await;
    ui.goto("/groups").await;
    assert!(ui.path().await.starts_with("/login"), "{}", ui.path().await);

    ui.c.close().await.ok();
    drop(driver);
}
