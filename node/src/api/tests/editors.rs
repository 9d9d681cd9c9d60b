//! `POST /api/v1/workspaces/{id}/editors` and `GET …/presence` against
//! hostile input: every field out of bounds or malformed, a workspace that
//! is not ours; refused with a clear error, and the node's state unharmed.

use super::*;
use crate::folder::{FolderOptions, Folders};

/// The API with linked-folder support running (as the daemon has it).
async fn api_with_folders() -> TestApi {
    let (api, store) = api_and_store();
    let folders = Folders::start(store, FolderOptions::default())
        .await
        .expect("folders");
    api.state.attach_folders(folders);
    api
}

#[tokio::test]
async fn editor_sessions_refuse_hostile_input_and_keep_working() {
    let api = api_with_folders().await;
    let ws = api.workspace().await;
    assert_eq!(api.put(&ws, "a.py", b"x = 1\n").await, StatusCode::OK);
    let uri = format!("/api/v1/workspaces/{ws}/editors");
    let hex = "ab".repeat(32);
    let many: Vec<String> = (0..=crate::folder::editors::MAX_OPEN)
        .map(|i| format!("f{i}"))
        .collect();
    let cursor =
        |offset: u64, heads: Vec<String>| json!({"path": "a.py", "offset": offset, "heads": heads});
    let bad = [
        json!({"session": "", "open": []}),
        json!({"session": "s".repeat(65), "open": []}),
        json!({"session": "s", "open": [], "saves": [{"path": "a.py", "hash": "zz", "heads": []}]}),
        json!({"session": "s", "open": [], "saves": [{"path": "a.py", "hash": hex, "heads": ["00"]}]}),
        json!({"session": "s", "open": [], "saves": [{"path": "a.py", "hash": hex, "heads": vec![hex.clone(); 257]}]}),
        json!({"session": "s", "open": many}),
        json!({"session": "s", "open": ["a.py"], "cursors": [cursor(0, vec!["xyz".into()])]}),
    ];
    for body in &bad {
        let (status, answer) = api.call(json_req("POST", &uri, body)).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_editor_session"),
            "{}",
            &body.to_string()[..body.to_string().len().min(200)]
        );
    }
    // More cursors than a session may hold files: over this API's body
    // limit here, refused by the route's own bound with a larger one.
    let crowd = json!({"session": "s", "open": ["a.py"],
        "cursors": vec![cursor(0, vec![]); crate::folder::editors::MAX_OPEN + 1]});
    let (status, _) = api.call(json_req("POST", &uri, &crowd)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Malformed shapes: a path out of the workspace, an unknown field.
    for body in [
        json!({"session": "s", "open": ["../etc/passwd"]}),
        json!({"session": "s", "open": [], "admin": true}),
        json!({"session": "s", "open": ["a.py"], "cursors": [{"path": "a.py", "offset": -1, "heads": []}]}),
    ] {
        let (status, _) = api.call(json_req("POST", &uri, &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // A workspace that is not ours: the same answer as every route.
    let foreign = format!("/api/v1/workspaces/{}/editors", "7f".repeat(16));
    let body = json!({"session": "s", "open": ["a.py"]});
    let (status, answer) = api.call(json_req("POST", &foreign, &body)).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::NOT_FOUND, "workspace_not_found")
    );
    // Cursors that name heads the file never had, or run past its end,
    // are taken without harm: nothing to place, or the end.
    let odd = json!({"session": "s", "open": ["a.py"], "cursors": [
        cursor(u64::MAX, vec![]),
        cursor(3, vec![hex.clone()]),
    ]});
    let (status, answer) = api.call(json_req("POST", &uri, &odd)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["lease_ms"], 30_000);
    assert_eq!(answer["teammates"], json!([]), "nobody else is here");
    let presence = format!("/api/v1/workspaces/{ws}/presence");
    let (status, answer) = api
        .call(req("GET", &presence).body(Body::empty()).expect("request"))
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"teammates": []})));
    // The file is unharmed and still editable.
    let (status, answer) = api
        .call(json_req(
            "POST",
            &format!("/api/v1/workspaces/{ws}/splice"),
            &json!({"path": "a.py", "pos": 0, "insert": "# "}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}
