//! JSON-RPC over stdio with LSP's framing: `Content-Length: N\r\n\r\n`
//! followed by N bytes of JSON. Messages are bounded; a malformed one is
//! skipped (its length is known), a broken frame ends the session.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The largest message accepted (a whole document in `didOpen`).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Reads one message; `None` at the end of input. A body that is not JSON
/// gives `Some(Err)`, and the next message can still be read.
pub fn read<R: BufRead>(input: &mut R) -> Result<Option<Result<Value, serde_json::Error>>> {
    let mut length: Option<usize> = None;
    let mut line = String::new();
    loop {
        line.clear();
        // A header line is short; a huge one is not LSP.
        let n = std::io::Read::take(&mut *input, 4096)
            .read_line(&mut line)
            .context("cannot read from the editor")?;
        if n == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse()
                    .with_context(|| format!("bad Content-Length header: {l}"))?,
            );
        }
    }
    let Some(length) = length else {
        bail!("a message without Content-Length");
    };
    if length > MAX_MESSAGE {
        bail!("a message of {length} bytes; the limit is {MAX_MESSAGE}");
    }
    let mut body = vec![0; length];
    input
        .read_exact(&mut body)
        .context("the editor closed mid-message")?;
    Ok(Some(serde_json::from_slice(&body)))
}

/// Writes one message.
pub fn write(output: &mut impl Write, msg: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg)?;
    write!(output, "Content-Length: {}\r\n\r\n", body.len())?;
    output.write_all(&body)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_bodies_are_skipped() {
        let mut buf = Vec::new();
        write(&mut buf, &serde_json::json!({"id": 1})).expect("write");
        buf.extend_from_slice(b"Content-Length: 3\r\n\r\n{x}");
        write(&mut buf, &serde_json::json!({"id": 2})).expect("write");
        let mut input = std::io::Cursor::new(buf);
        let first = read(&mut input)
            .expect("read")
            .expect("some")
            .expect("json");
        assert_eq!(first["id"], 1);
        assert!(read(&mut input).expect("read").expect("some").is_err());
        let third = read(&mut input)
            .expect("read")
            .expect("some")
            .expect("json");
        assert_eq!(third["id"], 2);
        assert!(read(&mut input).expect("eof").is_none());
    }

    #[test]
    fn oversized_or_headerless_messages_are_refused() {
        let big = format!("Content-Length: {}\r\n\r\n", MAX_MESSAGE + 1);
        assert!(read(&mut std::io::Cursor::new(big.into_bytes())).is_err());
        assert!(read(&mut std::io::Cursor::new(b"X: 1\r\n\r\n{}".to_vec())).is_err());
    }
}
