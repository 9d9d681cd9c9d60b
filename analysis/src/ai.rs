//! AI review through the local Ollama (ollama-rs): which model to use, what
//! may be sent (secrets redacted first), and calls bounded by a timeout with
//! retries. Every failure is a status, never an error of the analysis: the
//! static results stand on their own.

use std::time::Duration;

use ollama_rs::Ollama;
use ollama_rs::generation::completion::request::GenerationRequest;
use xencode_protocol::analysis::CodeAnalysis;

/// Bumped whenever the prompt changes (part of what identifies a response).
pub const PROMPT_VERSION: &str = "review-v1";
/// Where Ollama listens when neither the config nor `OLLAMA_HOST` says.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:11434";
/// Most source characters sent to the model.
const MAX_PROMPT_SOURCE_CHARS: usize = 24_000;

/// Why there is no AI text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AiError {
    #[error("unavailable: Ollama does not answer at {0}; start it with `ollama serve`")]
    Unavailable(String),
    #[error("timeout: Ollama did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no model: {0}")]
    NoModel(String),
    #[error("error: Ollama answered with something unusable: {0}")]
    Failed(String),
}

/// A model Ollama has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub name: String,
    pub size_bytes: u64,
    /// When Ollama last changed the model (a new pull changes it).
    pub modified_at: String,
}

/// The cache key of an answer: the prompt version, the model's identity and
/// the prompt. ollama-rs 0.3.6 does not expose a model's digest, so its name,
/// size and modification time stand for it: any new pull changes them.
pub fn cache_key(model: &Model, prompt: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("xencode 2026 ai cache v1");
    h.update(PROMPT_VERSION.as_bytes());
    h.update(&identity(model));
    h.update(prompt.as_bytes());
    *h.finalize().as_bytes()
}

/// A hash of what identifies a model's version: name, size, modification time.
fn identity(model: &Model) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("xencode 2026 model identity v1");
    for part in [
        &model.name,
        &model.modified_at,
        &model.size_bytes.to_string(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// The model version recorded as an answer's provenance (`model_digest`):
/// `xencode-b3:` and 16 hex digits of [`identity`]. It is not Ollama's own
/// digest, which ollama-rs 0.3.6 does not expose; it changes whenever the
/// model is pulled again.
pub fn fingerprint(model: &Model) -> String {
    format!("xencode-b3:{}", hex::encode(&identity(model)[..8]))
}

/// The Ollama URL: `configured`, else `OLLAMA_HOST` (a bare `host:port` gets
/// `http://`), else [`DEFAULT_HOST`].
pub fn host(configured: Option<&str>) -> String {
    let raw = configured
        .map(str::to_owned)
        .or_else(|| std::env::var("OLLAMA_HOST").ok())
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.into());
    let raw = raw.trim().trim_end_matches('/');
    if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    }
}

/// Picks the model: the one asked for (if Ollama has it), else the first of
/// `preferences` Ollama has (`name` or `name:tag`), else the largest that fits
/// the machine — half its memory, and 2 GiB per core, since a model much
/// larger than that answers too slowly to be useful here.
pub fn choose(
    available: &[Model],
    requested: Option<&str>,
    preferences: &[String],
    memory_bytes: u64,
    cores: u64,
) -> Result<String, AiError> {
    let has = |want: &str| {
        available
            .iter()
            .find(|m| m.name == want || m.name.split(':').next() == Some(want))
            .map(|m| m.name.clone())
    };
    if let Some(want) = requested {
        return has(want).ok_or_else(|| {
            AiError::NoModel(format!(
                "Ollama has no model {want:?}; fetch it with `ollama pull {want}`"
            ))
        });
    }
    if let Some(name) = preferences.iter().find_map(|p| has(p)) {
        return Ok(name);
    }
    let budget = (memory_bytes / 2).min(cores.max(1).saturating_mul(2 << 30));
    let fitting = available
        .iter()
        .filter(|m| m.size_bytes <= budget)
        .max_by_key(|m| m.size_bytes);
    fitting
        .or_else(|| available.iter().min_by_key(|m| m.size_bytes))
        .map(|m| m.name.clone())
        .ok_or_else(|| {
            AiError::NoModel(
                "Ollama has no models; fetch one with `ollama pull qwen2.5-coder`".into(),
            )
        })
}

/// The model a request naming none would get, among `available`.
pub fn default_model(available: &[Model], preferences: &[String]) -> Option<String> {
    let (memory, cores) = machine();
    choose(available, None, preferences, memory, cores).ok()
}

/// This machine's memory (bytes) and cores.
pub fn machine() -> (u64, u64) {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    (memory, cores)
}

const TOKEN_PREFIXES: &[&str] = &[
    "sk-", "ghp_", "gho_", "ghs_", "xoxb-", "xoxp-", "AKIA", "glpat-", "AIza",
];

/// Removes secrets from text bound for the model: private-key blocks, values
/// assigned to secret-looking names, and well-known token formats. Returns
/// the text and how many secrets were removed.
pub fn redact(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut in_key = false;
    for line in text.split_inclusive('\n') {
        if line.contains("-----BEGIN") && line.contains("PRIVATE KEY") {
            in_key = true;
            count += 1;
            out.push_str("[REDACTED PRIVATE KEY]\n");
            continue;
        }
        if in_key {
            if line.contains("-----END") {
                in_key = false;
            }
            continue;
        }
        let (line, n) = redact_line(line);
        count += n;
        out.push_str(&line);
    }
    (out, count)
}

fn redact_line(line: &str) -> (String, usize) {
    let mut count = 0;
    // name = "value" / name: value, for secret-looking names.
    let lower = line.to_ascii_lowercase();
    let mut result = line.to_owned();
    if super::code::mentions_secret(&lower)
        && let Some(pos) = line.find(['=', ':'])
    {
        let value = line[pos + 1..].trim();
        let value = value.trim_end_matches([',', ';']);
        let stripped = value.trim_matches(|c| c == '"' || c == '\'');
        let literal = value.starts_with(['"', '\'']) || !stripped.contains(['(', ' ', '.']);
        if stripped.len() >= 4 && literal {
            result = format!("{}{} [REDACTED]\n", &line[..pos], &line[pos..=pos]);
            if !line.ends_with('\n') {
                result.pop();
            }
            return (result, 1);
        }
    }
    // Known token shapes anywhere in the line.
    let mut rebuilt = String::with_capacity(result.len());
    for word in result
        .split_inclusive(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')'))
    {
        let core = word.trim_end_matches(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')')
        });
        let tail = &word[core.len()..];
        if core.len() >= 16 && TOKEN_PREFIXES.iter().any(|p| core.starts_with(p)) {
            rebuilt.push_str("[REDACTED]");
            rebuilt.push_str(tail);
            count += 1;
        } else {
            rebuilt.push_str(word);
        }
    }
    (rebuilt, count)
}

/// The review prompt: the static findings and the (redacted) code.
pub fn review_prompt(path: &str, source: &str, analysis: &CodeAnalysis) -> (String, usize) {
    let (code, redacted) = redact(source);
    let code: String = code.chars().take(MAX_PROMPT_SOURCE_CHARS).collect();
    let mut findings = String::new();
    for e in &analysis.syntax_errors {
        findings.push_str(&format!("- line {}: syntax error: {}\n", e.line, e.message));
    }
    for i in &analysis.security_issues {
        findings.push_str(&format!(
            "- line {}: {} ({}): {}\n",
            i.line, i.kind, i.cwe_id, i.description
        ));
    }
    for h in &analysis.performance_hints {
        findings.push_str(&format!(
            "- line {}: performance: {}\n",
            h.line, h.description
        ));
    }
    if findings.is_empty() {
        findings.push_str("- none\n");
    }
    let prompt = format!(
        "You review Python code for a software team. Static analysis of {path} found:\n{findings}\n\
         Confirm or dismiss these findings, add any bugs, security or performance problems they \
         missed, and suggest concrete fixes with line numbers. Be brief.\n\n```python\n{code}\n```\n"
    );
    (prompt, redacted)
}

/// An error with its causes, shortened: what went wrong, for `ai.status`.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(200).collect()
}

/// The summary prompt for a processed document (its text redacted and cut).
pub fn summary_prompt(doc: &xencode_protocol::analysis::ProcessedDocument) -> (String, usize) {
    let (text, redacted) = redact(&doc.extracted_text);
    let text: String = text.chars().take(MAX_PROMPT_SOURCE_CHARS).collect();
    let title = doc
        .metadata
        .title
        .as_deref()
        .unwrap_or(&doc.original_filename);
    let prompt = format!(
        "Summarise this {} document, \"{title}\", for a software team in 5 to 8 sentences: \
         what it is about, the decisions it records, and the open questions.\n\n{text}\n",
        doc.document_type
    );
    (prompt, redacted)
}

/// A client of one Ollama.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    timeout: Duration,
    retries: u32,
}

impl Client {
    pub fn new(url: String, timeout: Duration, retries: u32) -> Self {
        Self {
            url,
            timeout,
            retries,
        }
    }

    /// Ollama's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn ollama(&self) -> Result<Ollama, AiError> {
        Ollama::try_new(self.url.as_str())
            .map_err(|e| AiError::Unavailable(format!("{} ({e})", self.url)))
    }

    /// Runs `call` with the timeout, retrying connection failures with
    /// backoff (0.5 s, 1 s, …); timeouts and bad answers are not retried.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, AiError>
    where
        F: Fn(Ollama) -> Fut,
        Fut: std::future::Future<Output = Result<T, ollama_rs::error::OllamaError>>,
    {
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            let out = tokio::time::timeout(self.timeout, call(self.ollama()?)).await;
            match out {
                Err(_) => return Err(AiError::Timeout(self.timeout)),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let unreachable = matches!(
                        &e,
                        ollama_rs::error::OllamaError::ReqwestError(r) if r.is_connect()
                    );
                    if !unreachable {
                        return Err(AiError::Failed(describe(&e)));
                    }
                    if attempt >= self.retries {
                        return Err(AiError::Unavailable(self.url.clone()));
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }

    /// The models Ollama has.
    pub async fn models(&self) -> Result<Vec<Model>, AiError> {
        let list = self
            .call(|o| async move { o.list_local_models().await })
            .await?;
        Ok(list
            .into_iter()
            .map(|m| Model {
                name: m.name,
                size_bytes: m.size,
                modified_at: m.modified_at,
            })
            .collect())
    }

    /// The model to ask: Ollama's models, [`choose`]n for this machine
    /// ([`machine`]) — the one `requested`, else the first of `preferences`,
    /// else the largest that fits.
    pub async fn pick(
        &self,
        requested: Option<&str>,
        preferences: &[String],
    ) -> Result<Model, AiError> {
        let available = self.models().await?;
        let (memory, cores) = machine();
        let name = choose(&available, requested, preferences, memory, cores)?;
        available
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| AiError::NoModel(format!("Ollama no longer lists {name:?}")))
    }

    /// A completion of `prompt` by `model`, each piece sent on `tokens` as it
    /// arrives (the receiver's pace bounds the buffering); returns the whole
    /// text. The timeout bounds the wait for each piece.
    pub async fn stream(
        &self,
        model: &str,
        prompt: &str,
        tokens: &tokio::sync::mpsc::Sender<String>,
    ) -> Result<String, AiError> {
        use futures::StreamExt;
        let request = GenerationRequest::new(model.to_owned(), prompt.to_owned());
        let ollama = self.ollama()?;
        let mut stream =
            match tokio::time::timeout(self.timeout, ollama.generate_stream(request)).await {
                Err(_) => return Err(AiError::Timeout(self.timeout)),
                Ok(Err(ollama_rs::error::OllamaError::ReqwestError(e))) if e.is_connect() => {
                    return Err(AiError::Unavailable(self.url.clone()));
                }
                Ok(Err(e)) => return Err(AiError::Failed(describe(&e))),
                Ok(Ok(s)) => s,
            };
        let mut text = String::new();
        loop {
            match tokio::time::timeout(self.timeout, stream.next()).await {
                Err(_) => return Err(AiError::Timeout(self.timeout)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(AiError::Failed(describe(&e))),
                Ok(Some(Ok(chunk))) => {
                    for piece in chunk {
                        if piece.response.is_empty() {
                            continue;
                        }
                        text.push_str(&piece.response);
                        if tokens.send(piece.response).await.is_err() {
                            // The client left; the answer is still worth keeping.
                            continue;
                        }
                    }
                }
            }
        }
        if text.trim().is_empty() {
            return Err(AiError::Failed("an empty answer".into()));
        }
        Ok(text)
    }

    /// One completion of `prompt` by `model`.
    pub async fn generate(&self, model: &str, prompt: &str) -> Result<String, AiError> {
        let (model, prompt) = (model.to_owned(), prompt.to_owned());
        let text = self
            .call(|o| {
                let request = GenerationRequest::new(model.clone(), prompt.clone());
                async move { o.generate(request).await.map(|r| r.response) }
            })
            .await?;
        if text.trim().is_empty() {
            return Err(AiError::Failed("an empty answer".into()));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, gb: u64) -> Model {
        Model {
            name: name.into(),
            size_bytes: gb << 30,
            modified_at: "2026-11-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn cache_keys_change_with_the_model_version_and_the_prompt() {
        let a = m("qwen2.5-coder:7b", 5);
        let mut repulled = a.clone();
        repulled.modified_at = "2026-11-20T00:00:00Z".into();
        assert_eq!(cache_key(&a, "p"), cache_key(&a.clone(), "p"));
        assert_ne!(cache_key(&a, "p"), cache_key(&repulled, "p"));
        assert_ne!(cache_key(&a, "p"), cache_key(&a, "q"));
        assert!(fingerprint(&a).starts_with("xencode-b3:"));
        assert_eq!(fingerprint(&a).len(), "xencode-b3:".len() + 16);
        assert_ne!(fingerprint(&a), fingerprint(&repulled));
    }

    #[test]
    fn the_model_is_the_requested_one_then_a_preference_then_what_fits() {
        let have = [
            m("llama3.2:1b", 1),
            m("qwen2.5-coder:7b", 5),
            m("llama3.1:70b", 40),
        ];
        let prefs = vec!["mistral".to_owned(), "qwen2.5-coder".to_owned()];
        assert_eq!(
            choose(&have, Some("llama3.2:1b"), &prefs, 16 << 30, 8),
            Ok("llama3.2:1b".into())
        );
        assert!(
            matches!(choose(&have, Some("phi3"), &prefs, 16 << 30, 8), Err(AiError::NoModel(m)) if m.contains("ollama pull phi3"))
        );
        assert_eq!(
            choose(&have, None, &prefs, 16 << 30, 8),
            Ok("qwen2.5-coder:7b".into())
        );
        // No preference available: the largest that fits memory and cores.
        assert_eq!(
            choose(&have, None, &[], 64 << 30, 16),
            Ok("qwen2.5-coder:7b".into())
        );
        assert_eq!(
            choose(&have, None, &[], 24 << 30, 2),
            Ok("llama3.2:1b".into()),
            "2 cores: 4 GiB budget"
        );
        assert_eq!(
            choose(&have[2..], None, &[], 8 << 30, 2),
            Ok("llama3.1:70b".into()),
            "nothing fits: the smallest"
        );
        assert!(matches!(
            choose(&[], None, &[], 8 << 30, 2),
            Err(AiError::NoModel(_))
        ));
    }

    #[test]
    fn secrets_are_redacted_before_anything_reaches_the_model() {
        let src = "API_KEY = \"sk-live-0123456789abcdef\"\npassword: hunter22\nuser = load()\n\
                   headers = {\"Authorization\": \"Bearer ghp_abcdefghijklmnop1234\"}\n\
                   -----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----\nprint(token_count(x))\n";
        let (out, n) = redact(src);
        for secret in [
            "sk-live-0123456789abcdef",
            "hunter22",
            "ghp_abcdefghijklmnop1234",
            "MIIEabc",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert_eq!(n, 4, "{out}");
        assert!(out.contains("user = load()"), "ordinary code is kept");
        assert!(
            out.contains("print(token_count(x))"),
            "a call on a secret-ish name is not a secret"
        );
        assert!(out.contains("[REDACTED PRIVATE KEY]"));
    }

    #[test]
    fn hosts_get_a_scheme() {
        assert_eq!(host(Some("127.0.0.1:9999")), "http://127.0.0.1:9999");
        assert_eq!(
            host(Some("http://10.0.0.1:11434/")),
            "http://10.0.0.1:11434"
        );
    }
}
