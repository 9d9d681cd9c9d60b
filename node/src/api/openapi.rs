//! The OpenAPI 3.1 document of the API, generated from the code: every route
//! is registered through [`Documented::route`], which adds it to the axum
//! router and records its description in the same step, so a route cannot
//! exist without being in `/api/v1/openapi.json`. Body schemas come from the
//! protocol types' `JsonSchema` derives (schemars).

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::ApiState;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No authentication (health, the dashboard's page and assets, login).
    Public,
    /// The API token, or a dashboard session (plus CSRF on writes).
    TokenOrSession,
    /// The API token only.
    TokenOnly,
}

#[derive(Debug, Clone, Copy)]
enum Body {
    None,
    Json(SchemaFn),
    Raw(&'static str),
    Multipart,
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Json(u16, SchemaFn),
    Raw(u16, &'static str),
    Sse(SchemaFn),
    Empty(u16),
    Redirect,
}

/// The description of one operation.
#[derive(Debug, Clone)]
pub struct Doc {
    summary: &'static str,
    tag: &'static str,
    auth: Auth,
    body: Body,
    reply: Reply,
    query: &'static [(&'static str, &'static str)],
}

impl Doc {
    /// An operation answering `200` with no body described yet.
    pub fn new(tag: &'static str, summary: &'static str) -> Self {
        Self {
            summary,
            tag,
            auth: Auth::TokenOrSession,
            body: Body::None,
            reply: Reply::Empty(200),
            query: &[],
        }
    }
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    pub fn json_body<T: JsonSchema>(mut self) -> Self {
        self.body = Body::Json(schema_of::<T>);
        self
    }
    pub fn raw_body(mut self, content_type: &'static str) -> Self {
        self.body = Body::Raw(content_type);
        self
    }
    pub fn multipart(mut self) -> Self {
        self.body = Body::Multipart;
        self
    }
    pub fn json<T: JsonSchema>(mut self, status: u16) -> Self {
        self.reply = Reply::Json(status, schema_of::<T>);
        self
    }
    pub fn raw(mut self, status: u16, content_type: &'static str) -> Self {
        self.reply = Reply::Raw(status, content_type);
        self
    }
    pub fn sse<T: JsonSchema>(mut self) -> Self {
        self.reply = Reply::Sse(schema_of::<T>);
        self
    }
    pub fn empty(mut self, status: u16) -> Self {
        self.reply = Reply::Empty(status);
        self
    }
    pub fn redirect(mut self) -> Self {
        self.reply = Reply::Redirect;
        self
    }
    pub fn query(mut self, params: &'static [(&'static str, &'static str)]) -> Self {
        self.query = params;
        self
    }
}

/// One documented operation.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    pub doc: Doc,
}

/// A router whose routes are documented as they are added.
pub struct Documented {
    router: Router<ApiState>,
    operations: Vec<Operation>,
}

impl Documented {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            operations: Vec::new(),
        }
    }

    /// Adds `handler` for `method` on `path`, described by `doc`.
    pub fn route<H, T>(self, method: Method, path: &'static str, doc: Doc, handler: H) -> Self
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        self.route_with(method, path, doc, handler, |m| m)
    }

    /// As [`Self::route`], with a layer around this one operation.
    pub fn route_with<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        doc: Doc,
        handler: H,
        wrap: impl FnOnce(MethodRouter<ApiState>) -> MethodRouter<ApiState>,
    ) -> Self
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("{method} is not a routable method"));
        let mut method_router = wrap(on(filter, handler));
        // What the document says is what is enforced.
        if doc.auth == Auth::TokenOnly {
            method_router =
                method_router.layer(axum::middleware::from_fn(super::guard::token_only));
        }
        self.router = self.router.route(path, method_router);
        self.operations.push(Operation { method, path, doc });
        self
    }

    pub fn finish(self) -> (Router<ApiState>, Vec<Operation>) {
        (self.router, self.operations)
    }
}

/// `{*path}` (axum) is `{path}` in OpenAPI.
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|p| p.trim_start_matches('*').to_owned())
        .collect()
}

/// Builds the OpenAPI document for `operations`, served from `api_url`.
pub fn document(operations: &[Operation], api_url: &str, port: u16) -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
    let error = generator.subschema_for::<xencode_protocol::api::ErrorBody>();
    let mut paths: Map<String, Value> = Map::new();
    for op in operations {
        let mut o = Map::new();
        o.insert("summary".into(), json!(op.doc.summary));
        o.insert("tags".into(), json!([op.doc.tag]));
        o.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                op.method.as_str().to_lowercase(),
                op.path
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let mut c = s.chars();
                        c.next().map_or_else(String::new, |f| {
                            f.to_ascii_uppercase().to_string() + c.as_str()
                        })
                    })
                    .collect::<String>()
            )),
        );
        let mut params: Vec<Value> = path_params(op.path)
            .into_iter()
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        for (name, description) in op.doc.query {
            params.push(json!({"name": name, "in": "query", "required": false,
                "description": description, "schema": {"type": "string"}}));
        }
        if !params.is_empty() {
            o.insert("parameters".into(), Value::Array(params));
        }
        match op.doc.auth {
            Auth::Public => {
                o.insert("security".into(), json!([]));
            }
            Auth::TokenOnly => {
                o.insert("security".into(), json!([{"bearer": []}]));
            }
            Auth::TokenOrSession => {
                o.insert(
                    "security".into(),
                    json!([{"bearer": []}, {"session": [], "csrf": []}]),
                );
            }
        }
        let body = match op.doc.body {
            Body::None => None,
            Body::Json(f) => Some(json!({"application/json": {"schema": f(&mut generator)}})),
            Body::Raw(t) => Some(json!({ t: {"schema": {"type": "string", "format": "binary"}} })),
            Body::Multipart => Some(json!({"multipart/form-data": {"schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "ai": {"type": "string", "enum": ["true", "false"]},
                    "model": {"type": "string"},
                },
            }}})),
        };
        if let Some(content) = body {
            o.insert(
                "requestBody".into(),
                json!({"required": true, "content": content}),
            );
        }
        let mut responses = Map::new();
        let (status, ok) = match op.doc.reply {
            Reply::Json(s, f) => (
                s,
                json!({"description": "success", "content": {"application/json": {"schema": f(&mut generator)}}}),
            ),
            Reply::Raw(s, t) => (
                s,
                json!({"description": "success", "content": { t: {"schema": {"type": "string"}}}}),
            ),
            Reply::Sse(f) => (
                200,
                json!({"description": "Server-Sent Events; each event's data is one JSON object",
                       "content": {"text/event-stream": {"schema": f(&mut generator)}}}),
            ),
            Reply::Empty(s) => (s, json!({"description": "success"})),
            Reply::Redirect => (
                303,
                json!({"description": "logged in: a session cookie is set and the browser sent to /"}),
            ),
        };
        responses.insert(status.to_string(), ok);
        let error_content = json!({"application/json": {"schema": error.clone()}});
        responses.insert(
            "4XX".into(),
            json!({"description": "a refused request: `{error: {code, message}}`", "content": error_content}),
        );
        responses.insert(
            "5XX".into(),
            json!({"description": "the node could not answer: `{error: {code, message}}`", "content": error_content}),
        );
        o.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(openapi_path(op.path))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(op.method.as_str().to_lowercase(), Value::Object(o));
        }
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Xencode node API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The local API of one Xencode node: loopback only; foreign Host and Origin headers are refused. Authenticate with `Authorization: Bearer <data-dir/api-token>`, or from the dashboard with its session cookie plus `X-CSRF-Token` on writes.",
        },
        "servers": [{"url": api_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the token in <data-dir>/api-token"},
                "session": {"type": "apiKey", "in": "cookie", "name": super::session::cookie_name(port)},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token", "description": "from GET /api/v1/session; needed with the cookie on every request that changes state"},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_parameters_translate() {
        assert_eq!(
            openapi_path("/api/v1/workspaces/{id}/files/{*path}"),
            "/api/v1/workspaces/{id}/files/{path}"
        );
        assert_eq!(
            path_params("/api/v1/workspaces/{id}/files/{*path}"),
            vec!["id", "path"]
        );
    }
}
