//! A small WebDriver client (the W3C protocol over HTTP with reqwest) driving
//! real headless Chromium through `chromedriver`, for the dashboard tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian installs them (`apt-get install chromium chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Why the browser tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    for p in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} is missing (apt-get install -y chromium chromium-driver)"
            ));
        }
    }
    None
}

/// A running chromedriver on a free loopback port.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub async fn start(log: &Path) -> Result<Self> {
        let port = crate::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting chromedriver")?;
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = client()?;
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && r.status().is_success()
            {
                return Ok(driver);
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not answer /status within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// One headless Chromium window.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    shots: PathBuf,
    name: String,
}

/// A reference to an element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Opens a browser whose screenshots go to `shots` as `<name>-<step>.png`.
    pub async fn open(driver: &Driver, shots: &Path, name: &str) -> Result<Self> {
        let profile = tempfile::tempdir()?.keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let http = client()?;
        let resp: Value = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let Some(id) = resp["value"]["sessionId"].as_str() else {
            bail!("chromedriver did not start a session: {resp}");
        };
        std::fs::create_dir_all(shots)?;
        Ok(Self {
            http,
            base: format!("{}/session/{id}", driver.url),
            shots: shots.to_owned(),
            name: name.to_owned(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("WebDriver {path}: {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Resizes the window (CSS pixels), e.g. to a narrow laptop split.
    pub async fn set_window(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(drop)
    }

    pub async fn current_url(&self) -> Result<String> {
        let v = self.call(reqwest::Method::GET, "/url", None).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The first element matching a CSS selector, if any.
    pub async fn find(&self, css: &str) -> Result<Option<Element>> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT_KEY].as_str())
            .map(|id| Element(id.to_owned())))
    }

    /// Polls `probe` every 100 ms until it yields a value; after `timeout`,
    /// saves a screenshot and fails naming `what` and the page's text.
    async fn poll<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let started = Instant::now();
        loop {
            if let Some(v) = probe().await? {
                return Ok(v);
            }
            if started.elapsed() > timeout {
                let _ = self
                    .screenshot(&format!("timeout-{}", sanitize(what)))
                    .await;
                bail!(
                    "{}: {what} not reached within {timeout:?}; page text:\n{}",
                    self.name,
                    self.page_text().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an element matching `css` is on the page.
    pub async fn wait(&self, css: &str, timeout: Duration) -> Result<Element> {
        self.poll(&format!("an element matching {css:?}"), timeout, || {
            self.find(css)
        })
        .await
    }

    /// Waits until `check` holds for the text of the element matching `css`.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.wait_read(css, None, timeout, check).await
    }

    /// Waits until `check` holds for the `value` of the element matching
    /// `css` (a textarea or input).
    pub async fn wait_value(
        &self,
        css: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.wait_read(css, Some("value"), timeout, check).await
    }

    /// Waits until `check` holds for the element's text (`property` None)
    /// or one of its properties.
    async fn wait_read(
        &self,
        css: &str,
        property: Option<&str>,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let check = &check;
        let what = format!(
            "{} of {css:?} passing the check",
            property.unwrap_or("the text")
        );
        self.poll(&what, timeout, || async move {
            let Some(e) = self.find(css).await? else {
                return Ok(None);
            };
            let read = match property {
                Some(name) => self.property(&e, name).await,
                None => self.text(&e).await,
            };
            let value = read.unwrap_or_default();
            Ok(check(&value).then_some(value))
        })
        .await
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Types `text` into an element as key presses.
    pub async fn type_text(&self, e: &Element, text: &str) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", e.0),
                None,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    pub async fn property(&self, e: &Element, name: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/property/{name}", e.0),
                None,
            )
            .await?;
        Ok(match v {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }

    /// Runs a script in the page; `arguments` are available to it.
    pub async fn exec(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Accepts the open `confirm()` or `alert()` dialog.
    pub async fn accept_dialog(&self) -> Result<()> {
        self.call(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await
            .map(drop)
    }

    /// The visible text of the whole page.
    pub async fn page_text(&self) -> Result<String> {
        let v = self
            .exec("return document.body.innerText;", json!([]))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Saves a PNG screenshot as `<shots>/<name>-<step>.png`.
    pub async fn screenshot(&self, step: &str) -> Result<PathBuf> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        let path = self
            .shots
            .join(format!("{}-{}.png", self.name, sanitize(step)));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Closes the window and ends the session.
    pub async fn close(self) -> Result<()> {
        self.call(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
