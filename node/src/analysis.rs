//! Local analysis of the workspace's code. `code` is Python through
//! tree-sitter; nothing here touches the network or the store.

pub mod code;
