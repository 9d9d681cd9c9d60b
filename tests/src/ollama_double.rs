//! A stand-in for Ollama that speaks its HTTP wire format on a real socket:
//! `GET /api/tags`, `POST /api/generate` and `POST /api/chat` (one JSON
//! object, or NDJSON when `"stream": true`). No model can run here, so this
//! is the one test double the project allows. It can answer normally,
//! slowly, or with garbage, and it records what it was sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the double answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Sleeps this long before answering a generation.
    Slow(Duration),
    /// Answers 200 with a body that is not JSON.
    Garbage,
}

/// The canned review text.
pub const REVIEW: &str = "The pickle.loads call on line 5 is dangerous; use json instead.";

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    bodies: Vec<String>,
}

/// A running double; it stops when the test process ends.
pub struct OllamaDouble {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl OllamaDouble {
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Mutex::new(Shared {
            mode: Some(Mode::Normal),
            bodies: Vec::new(),
        }));
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
        });
        Ok(Self { url, shared })
    }

    pub fn set_mode(&self, mode: Mode) {
        if let Ok(mut s) = self.shared.lock() {
            s.mode = Some(mode);
        }
    }

    /// Bodies of the generation and chat requests received so far.
    pub fn bodies(&self) -> Vec<String> {
        self.shared
            .lock()
            .map(|s| s.bodies.clone())
            .unwrap_or_default()
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn serve(mut stream: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length.min(64 << 20)];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let mode = shared
        .lock()
        .ok()
        .and_then(|s| s.mode)
        .unwrap_or(Mode::Normal);
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    match path {
        "/api/tags" => respond(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"models":[{"name":"llama3.2:1b","model":"llama3.2:1b","modified_at":"2026-11-01T10:00:00.000000000Z","size":1321098329,"digest":"baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"1.2B","quantization_level":"Q8_0"}},{"name":"qwen2.5-coder:7b","model":"qwen2.5-coder:7b","modified_at":"2026-11-02T10:00:00.000000000Z","size":4683087332,"digest":"2b0496514337a3d5901f1d253d01726c890b721e891335a56d6e08cedf3e2cb0","details":{"parent_model":"","format":"gguf","family":"qwen2","families":["qwen2"],"parameter_size":"7.6B","quantization_level":"Q4_K_M"}}]}"#,
        ),
        "/api/generate" | "/api/chat" => {
            if let Ok(mut s) = shared.lock() {
                s.bodies.push(body.clone());
            }
            match mode {
                Mode::Garbage => {
                    return respond(
                        &mut stream,
                        "200 OK",
                        "application/json",
                        "<<this is not json>>",
                    );
                }
                Mode::Slow(d) => std::thread::sleep(d),
                Mode::Normal => {}
            }
            let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let model = request["model"].as_str().unwrap_or("?").to_owned();
            let chat = path == "/api/chat";
            let piece = |text: &str, done: bool| {
                let mut v = serde_json::json!({
                    "model": model,
                    "created_at": "2026-11-25T12:00:00.000000000Z",
                    "done": done,
                });
                if chat {
                    v["message"] = serde_json::json!({"role": "assistant", "content": text});
                } else {
                    v["response"] = serde_json::json!(text);
                }
                if done {
                    v["done_reason"] = serde_json::json!("stop");
                    v["total_duration"] = serde_json::json!(1_234_567);
                    v["eval_count"] = serde_json::json!(12);
                }
                v.to_string()
            };
            if request["stream"] == true {
                let words: Vec<String> = REVIEW
                    .split_inclusive(' ')
                    .map(|w| piece(w, false))
                    .collect();
                let ndjson = format!("{}\n{}\n", words.join("\n"), piece("", true));
                respond(&mut stream, "200 OK", "application/x-ndjson", &ndjson)
            } else {
                respond(
                    &mut stream,
                    "200 OK",
                    "application/json",
                    &piece(REVIEW, true),
                )
            }
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "404 page not found",
        ),
    }
}
