//! Two Syncthing instances on loopback sharing one folder, for the folder
//! benchmark's baseline (Debian's `syncthing` package). Global discovery,
//! relays, NAT traversal and usage reporting are off; the watcher waits its
//! minimum (1 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{BoxError, free_port};

/// One running Syncthing, killed on drop.
pub struct Syncthing {
    child: Child,
    gui: u16,
    key: String,
    pub id: String,
    http: reqwest::Client,
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `syncthing` is installed (its version line), else why not.
pub fn available() -> Result<String, String> {
    match Command::new("syncthing").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        _ => Err(
            "syncthing is not installed (apt install syncthing); its baseline is skipped".into(),
        ),
    }
}

impl Syncthing {
    fn start(home: &Path) -> Result<(Self, u16), BoxError> {
        let generated = Command::new("syncthing")
            .arg("generate")
            .arg(format!("--home={}", home.display()))
            .args(["--no-default-folder", "--skip-port-probing"])
            .output()?;
        let text = String::from_utf8_lossy(&generated.stdout).into_owned()
            + &String::from_utf8_lossy(&generated.stderr);
        let id = text
            .lines()
            .find_map(|l| l.split("Device ID: ").nth(1))
            .ok_or("no device id from syncthing generate")?
            .trim()
            .to_owned();
        let config = std::fs::read_to_string(home.join("config.xml"))?;
        let key = config
            .split("<apikey>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .ok_or("no API key in config.xml")?
            .to_owned();
        let gui = free_port()?;
        let child = Command::new("syncthing")
            .arg("serve")
            .arg(format!("--home={}", home.display()))
            .args(["--no-browser", "--no-restart"])
            .arg(format!("--gui-address=127.0.0.1:{gui}"))
            .env("STNOUPGRADE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let listen = free_port()?;
        Ok((
            Self {
                child,
                gui,
                key,
                id,
                http: reqwest::Client::builder().no_proxy().build()?,
            },
            listen,
        ))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, BoxError> {
        let mut req = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.gui))
            .header("X-API-Key", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?.error_for_status()?;
        let text = resp.text().await?;
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    async fn ready(&self) -> Result<(), BoxError> {
        let started = Instant::now();
        while self
            .call(reqwest::Method::GET, "/rest/system/ping", None)
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(30) {
                return Err("syncthing did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Asks for a scan of `sub` in the shared folder now.
    pub async fn scan(&self, sub: &str) -> Result<(), BoxError> {
        self.call(
            reqwest::Method::POST,
            &format!("/rest/db/scan?folder=bench&sub={sub}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Bytes this instance sent to its peers so far.
    pub async fn out_bytes(&self) -> Result<f64, BoxError> {
        let c = self
            .call(reqwest::Method::GET, "/rest/system/connections", None)
            .await?;
        Ok(c["total"]["outBytesTotal"].as_f64().unwrap_or(f64::NAN))
    }
}

/// Two instances sharing `dir/st-a` and `dir/st-b`, connected.
pub async fn pair(dir: &Path) -> Result<(Syncthing, Syncthing, PathBuf, PathBuf), BoxError> {
    let (a, la) = Syncthing::start(&dir.join("st-home-a"))?;
    let (b, lb) = Syncthing::start(&dir.join("st-home-b"))?;
    let (fa, fb) = (dir.join("st-a"), dir.join("st-b"));
    std::fs::create_dir_all(&fa)?;
    std::fs::create_dir_all(&fb)?;
    for (me, my_port, other, other_port, folder) in [(&a, la, &b, lb, &fa), (&b, lb, &a, la, &fb)] {
        me.ready().await?;
        me.call(
            reqwest::Method::PATCH,
            "/rest/config/options",
            Some(json!({
                "listenAddresses": [format!("tcp://127.0.0.1:{my_port}")],
                "globalAnnounceEnabled": false, "localAnnounceEnabled": false,
                "relaysEnabled": false, "natEnabled": false, "urAccepted": -1,
                "crashReportingEnabled": false, "autoUpgradeIntervalH": 0,
            })),
        )
        .await?;
        me.call(
            reqwest::Method::PUT,
            &format!("/rest/config/devices/{}", other.id),
            Some(json!({"deviceID": other.id, "addresses": [format!("tcp://127.0.0.1:{other_port}")]})),
        )
        .await?;
        me.call(
            reqwest::Method::PUT,
            "/rest/config/folders/bench",
            Some(json!({
                "id": "bench", "path": folder.to_string_lossy(),
                "devices": [{"deviceID": a.id}, {"deviceID": b.id}],
                "fsWatcherEnabled": true, "fsWatcherDelayS": 1,
                "rescanIntervalS": 3600, "type": "sendreceive",
            })),
        )
        .await?;
    }
    // Connected when a file goes across.
    std::fs::write(fa.join("ready.txt"), b"ok")?;
    let started = Instant::now();
    while std::fs::read(fb.join("ready.txt")).ok().as_deref() != Some(b"ok") {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the two syncthing instances never synced".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((a, b, fa, fb))
}
