//! Local analysis of the workspace's code and documents. `code` is Python
//! through tree-sitter; `documents` extracts text from PDF, HTML, DOCX and
//! Markdown. Nothing here touches the network or the store.

pub mod ai;
pub mod code;
pub mod documents;
pub mod worker;
