//! The thin HTTP client the CLI commands use to reach the running node.

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use xencode_node::paths::DataDir;
use xencode_protocol::api::{ErrorBody, WorkspaceList, same_name, similar_names};
use xencode_protocol::{WorkspaceId, WorkspacePath};

/// The node answered with an error (its code and message); printed as
/// `message [code]`.
#[derive(Debug, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct NodeRefused {
    pub code: String,
    pub message: String,
}

/// The error code the node refused with, if that is what `e` is.
pub fn refusal_code(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<NodeRefused>().map(|r| r.code.as_str())
}

/// A failure the CLI itself classifies, with a stable code for `--json`
/// (`{"error": {"code", "message"}}`), like the node's own refusals.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn error(code: &'static str, message: impl Into<String>) -> anyhow::Error {
        Self {
            code,
            message: message.into(),
        }
        .into()
    }
}

/// The stable code of any CLI error: the node's, the CLI's own, or
/// `error` for everything else (I/O, bad arguments found late).
pub fn error_code(e: &anyhow::Error) -> &str {
    if let Some(code) = refusal_code(e) {
        return code;
    }
    e.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map_or("error", |f| f.code)
}

/// A peer id as people read it: the last 8 characters (`…Xq3mP9aZ`), where
/// a whole 52-character id would drown the line.
pub fn short_id(peer_id: &str) -> String {
    let n = peer_id.chars().count();
    if n <= 12 {
        return peer_id.to_owned();
    }
    let tail: String = peer_id.chars().skip(n - 8).collect();
    format!("…{tail}")
}

/// A connection to the node of one data directory.
pub struct Client {
    base: Url,
    token: String,
    http: reqwest::Client,
    api_url_file: String,
}

impl Client {
    /// Finds the running node through `<data-dir>/api-url`.
    pub fn connect(dir: &DataDir) -> Result<Self> {
        let url_path = dir.api_url();
        let api_url_file = url_path.display().to_string();
        let raw = match std::fs::read_to_string(&url_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::error(
                    "node_not_running",
                    format!(
                        "no node is running for {} (there is no {api_url_file}) — start one with `xencode node`",
                        dir.root().display()
                    ),
                ));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {api_url_file}")),
        };
        let base = Url::parse(raw.trim())
            .with_context(|| format!("{api_url_file} does not hold a URL; restart the node"))?;
        let token = xencode_node::identity::load_api_token(dir)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base,
            token,
            http,
            api_url_file,
        })
    }

    /// The URL of `segments` under the API root; each segment is
    /// percent-encoded.
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} holds an unusable URL", self.api_url_file))?
            .clear()
            .extend(segments);
        Ok(url)
    }

    fn request<'a>(
        &self,
        method: Method,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<RequestBuilder> {
        Ok(self.request_to(method, self.url(segments)?))
    }

    fn request_to(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    /// Sends a request and reads its JSON answer.
    async fn send_for_json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        self.send(req)
            .await?
            .json()
            .await
            .context("the node sent an unreadable answer")
    }

    /// Sends a request; a non-2xx answer becomes an error with the node's message.
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                Failure::error(
                    "node_not_running",
                    format!(
                        "no node answers at {} (from {}) — start one with `xencode node`",
                        self.base, self.api_url_file
                    ),
                )
            } else {
                anyhow!("talking to the node at {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(err) => Err(NodeRefused {
                code: err.error.code,
                message: err.error.message,
            }
            .into()),
            Err(_) => bail!("the node answered {status}"),
        }
    }

    pub async fn get_json<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T> {
        self.send_for_json(self.request(Method::GET, segments.iter().copied())?)
            .await
    }

    /// `GET`s a response to read as it streams.
    pub async fn get_stream(&self, segments: &[&str]) -> Result<Response> {
        self.send(self.request(Method::GET, segments.iter().copied())?)
            .await
    }

    /// `GET`s JSON with query parameters.
    pub async fn get_json_query<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T> {
        let mut url = self.url(segments.iter().copied())?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let req = self.http.get(url).bearer_auth(&self.token);
        self.send_for_json(req).await
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T> {
        self.send_json(Method::POST, segments, body).await
    }

    /// Sends a JSON body with `method` and reads the JSON answer.
    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<T> {
        let req = self.request(method, segments.iter().copied())?.json(body);
        self.send_for_json(req).await
    }

    /// `PATCH`es JSON.
    pub async fn patch_json<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T> {
        self.send_json(Method::PATCH, segments, body).await
    }

    /// `DELETE`s and reads the JSON answer.
    pub async fn delete_json<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T> {
        let req = self.request(Method::DELETE, segments.iter().copied())?;
        self.send_for_json(req).await
    }

    /// `POST`s one file as the `file` field of a multipart form, after the
    /// text `fields`.
    pub async fn post_file<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        fields: &[(&str, String)],
        filename: &str,
        bytes: Vec<u8>,
    ) -> Result<T> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in fields {
            form = form.text(name.to_string(), value.clone());
        }
        let form = form.part("file", part);
        let req = self
            .request(Method::POST, segments.iter().copied())?
            .multipart(form);
        self.send_for_json(req).await
    }

    /// The request for `/api/v1/workspaces/{ws}/files/{path...}`.
    fn file_request(&self, method: Method, ws: &str, path: &str) -> Result<RequestBuilder> {
        self.path_request(method, ws, "files", path)
    }

    /// The request for `/api/v1/workspaces/{ws}/{kind}/{path...}`.
    fn path_request(
        &self,
        method: Method,
        ws: &str,
        kind: &str,
        path: &str,
    ) -> Result<RequestBuilder> {
        Ok(self.request_to(method, self.path_url(ws, kind, path)?))
    }

    /// The URL `/api/v1/workspaces/{ws}/{kind}/{path...}`. The path is
    /// validated here first: URL building would silently resolve `..`.
    fn path_url(&self, ws: &str, kind: &str, path: &str) -> Result<Url> {
        let path =
            WorkspacePath::parse(path).map_err(|e| anyhow!("invalid file path {path:?}: {e}"))?;
        let segments = ["api", "v1", "workspaces", ws, kind]
            .into_iter()
            .chain(path.as_str().split('/'));
        self.url(segments)
    }

    /// Imports a saved Automerge document as the new file `path`, its text
    /// read from the root's `field`.
    pub async fn import_automerge<T: DeserializeOwned>(
        &self,
        ws: &str,
        path: &str,
        bytes: Vec<u8>,
        field: &str,
    ) -> Result<T> {
        let mut url = self.path_url(ws, "automerge", path)?;
        url.query_pairs_mut().append_pair("field", field);
        let req = self.request_to(Method::PUT, url).body(bytes);
        self.send_for_json(req).await
    }

    /// A file's Automerge document, saved.
    pub async fn export_automerge(&self, ws: &str, path: &str) -> Result<Vec<u8>> {
        let resp = self
            .send(self.path_request(Method::GET, ws, "automerge", path)?)
            .await?;
        Ok(resp
            .bytes()
            .await
            .context("reading the document from the node failed")?
            .to_vec())
    }

    pub async fn put_file<T: DeserializeOwned>(
        &self,
        ws: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T> {
        let req = self.file_request(Method::PUT, ws, path)?.body(bytes);
        self.send_for_json(req).await
    }

    pub async fn get_file(&self, ws: &str, path: &str) -> Result<Vec<u8>> {
        let resp = self.send(self.file_request(Method::GET, ws, path)?).await?;
        Ok(resp
            .bytes()
            .await
            .context("reading the file from the node failed")?
            .to_vec())
    }

    pub async fn delete_file(&self, ws: &str, path: &str) -> Result<()> {
        self.send(self.file_request(Method::DELETE, ws, path)?)
            .await?;
        Ok(())
    }

    /// Resolves a workspace argument: an id, or the name of exactly one
    /// workspace — exactly as written, else without regard to case.
    pub async fn resolve_workspace(&self, arg: &str) -> Result<WorkspaceId> {
        if let Ok(id) = arg.parse::<WorkspaceId>() {
            return Ok(id);
        }
        let list: WorkspaceList = self.get_json(&["api", "v1", "workspaces"]).await?;
        let exact: Vec<_> = list.workspaces.iter().filter(|w| w.name == arg).collect();
        let matches = if exact.is_empty() {
            list.workspaces
                .iter()
                .filter(|w| same_name(&w.name, arg))
                .collect()
        } else {
            exact
        };
        match matches.as_slice() {
            [one] => Ok(one.id),
            [] => {
                let close = similar_names(arg, list.workspaces.iter().map(|w| w.name.as_str()));
                let hint = match close.as_slice() {
                    [] => String::new(),
                    [one] => format!(" — did you mean {one:?}?"),
                    many => format!(
                        " — did you mean one of {}?",
                        many.iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                Err(Failure::error(
                    "workspace_not_found",
                    format!(
                        "no workspace is named or has the id {arg:?}{hint}; list them with `xencode workspace list`"
                    ),
                ))
            }
            many => Err(Failure::error(
                "ambiguous_name",
                format!(
                    "{} workspaces are named {arg:?}; give the id instead (or rename one with `xencode workspace rename ID NAME`): {}",
                    many.len(),
                    many.iter()
                        .map(|w| format!("{} (owner {})", w.id, short_id(&w.owner)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}
