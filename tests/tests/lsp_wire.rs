//! `xencode lsp` spoken to directly over stdio, as a buggy or hostile
//! editor would: ranges that do not fit, versions out of order, malformed
//! JSON, unknown methods, a document over the node's text limit, a file
//! that is not UTF-8, a file outside every linked folder, a message over
//! the size limit. Each gets a clear answer or is skipped; the server keeps
//! serving (a well-formed edit after all of them still lands) until the
//! stream itself is broken.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xencode_tests::{Node, last_line, ok_stdout, wait_for, xencode_bin};

const WAIT: Duration = Duration::from_secs(30);

/// A fake editor: the server's process and what it says.
struct Editor {
    child: Child,
    stdin: ChildStdin,
    from_server: Receiver<Value>,
    /// Everything the server sent, in order.
    seen: Vec<Value>,
}

impl Drop for Editor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Editor {
    fn start(node_dir: &Path) -> Self {
        let mut child = Command::new(xencode_bin())
            .arg("--data-dir")
            .arg(node_dir)
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("xencode lsp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, from_server) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("Content-Length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                if let Ok(v) = serde_json::from_slice(&body)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            from_server,
            seen: Vec::new(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        let _ = self.stdin.write_all(bytes);
        let _ = self.stdin.flush();
    }

    fn send(&mut self, msg: &Value) {
        let body = msg.to_string();
        self.raw(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Waits for a message from the server that `pred` accepts.
    fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_server.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("never got {what}; the server said: {:#?}", self.seen)
                }
            }
        }
    }

    fn request(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.expect(&format!("the answer to {method}"), |v| {
            v["id"] == id && v.get("method").is_none()
        })
    }

    fn said(&mut self, text: &str) -> Value {
        self.expect(&format!("a message saying {text:?}"), |v| {
            v["method"] == "window/showMessage"
                && v["params"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
        })
    }
}

fn uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_editor_gets_clear_answers_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(&tmp.path().join("a")).expect("node");
    let folder = tmp.path().join("folder");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let big = "y".repeat(2 << 20);
    std::fs::write(folder.join("ok.py"), "x = 1\n").expect("ok.py");
    std::fs::write(folder.join("big.txt"), &big).expect("big");
    std::fs::write(folder.join("latin1.txt"), b"caf\xe9\n").expect("latin1");
    let out = node.cli(&["folder", "share", folder.to_str().expect("utf8")]);
    ok_stdout(&out);
    let ws = last_line(&out);
    let mut ed = Editor::start(&node.dir);
    let init = ed.request(1, "initialize", json!({"capabilities": {}}));
    assert_eq!(
        init["result"]["capabilities"]["textDocumentSync"]["change"],
        2
    );
    ed.notify("initialized", json!({}));
    let ok = uri(&folder.join("ok.py"));
    ed.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": ok, "languageId": "python", "version": 1, "text": "x = 1\n"}}),
    );
    let range = |sl: u64, sc: u64, el: u64, ec: u64| json!({"start": {"line": sl, "character": sc}, "end": {"line": el, "character": ec}});
    let change = |version: i64, changes: Value| json!({"textDocument": {"uri": ok, "version": version}, "contentChanges": changes});
    // Changes that do not fit are skipped, whole.
    for (version, changes) in [
        (
            2,
            json!([{"range": range(0, 4, 0, 1), "text": "backwards"}]),
        ),
        (3, json!([{"range": {"start": "x"}, "text": "malformed"}])),
        (4, json!([{"range": range(0, 0, 0, 0)}])),
        (5, json!("not a list")),
        (
            6,
            json!([{"range": range(u64::MAX, 0, 0, 0), "text": "huge line"}]),
        ),
    ] {
        ed.notify("textDocument/didChange", change(version, changes));
    }
    // Not JSON, though framed; a request nobody serves; absurd positions.
    ed.raw(b"Content-Length: 9\r\n\r\n{nonsense");
    let unknown = ed.request(2, "textDocument/formatting", json!({}));
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    let hover = ed.request(
        3,
        "textDocument/hover",
        json!({"textDocument": {"uri": ok}, "position": {"line": 1_000_000_000u64, "character": 7}}),
    );
    assert_eq!(hover["result"], Value::Null);
    let actions = ed.request(4, "textDocument/codeAction", json!({"garbage": true}));
    assert_eq!(actions["result"], json!([]));
    // A position past the end means the end (LSP's rule); a version that
    // goes backwards is still the editor's text.
    ed.notify(
        "textDocument/didChange",
        change(
            0,
            json!([{"range": range(1_000_000, 9, 1_000_000, 9), "text": "# tail"}]),
        ),
    );
    let landed = wait_for(WAIT, || async {
        node.file(&ws, "ok.py").await.as_deref() == Some(b"x = 1\n# tail".as_slice())
    })
    .await;
    if !landed {
        let _ = ed.child.kill();
        let mut err = String::new();
        if let Some(mut e) = ed.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!(
            "the node has {:?}; the server said {:#?}\nits log:\n{err}\nthe node's:\n{}",
            node.file(&ws, "ok.py").await,
            ed.seen,
            node.log_text()
        );
    }
    // Over the node's text limit, or not UTF-8: not live-shared, said so,
    // and the files on disk untouched.
    for (name, text) in [("big.txt", big.as_str()), ("latin1.txt", "caf\u{fffd}\n")] {
        ed.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri(&folder.join(name)), "languageId": "text", "version": 1, "text": text}}),
        );
        ed.said(&format!("{name}: not live-shared"));
    }
    assert_eq!(
        std::fs::read(folder.join("latin1.txt")).ok(),
        Some(b"caf\xe9\n".to_vec())
    );
    assert_eq!(
        std::fs::read(folder.join("big.txt")).ok().map(|b| b.len()),
        Some(big.len())
    );
    // Outside every linked folder: declined.
    let elsewhere = tmp.path().join("elsewhere.py");
    std::fs::write(&elsewhere, "z = 3\n").expect("elsewhere");
    ed.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri(&elsewhere), "languageId": "python", "version": 1, "text": "z = 3\n"}}),
    );
    ed.said("is not in a linked folder");
    // A message over the size limit breaks the stream: the server stops
    // with a clear error, and the node runs on.
    ed.raw(b"Content-Length: 999999999999\r\n\r\n");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = ed.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < WAIT,
            "the server ignored a broken stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = ed.child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("the limit is"),
        "status {status}, stderr: {err}"
    );
    assert!(node.get_json("/api/v1/node").await["peer_id"].is_string());
}
