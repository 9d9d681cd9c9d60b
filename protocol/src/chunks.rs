//! How large Automerge bytes become once loaded, found before Automerge loads
//! them.
//!
//! Automerge compresses change chunks and document columns with DEFLATE and
//! inflates them with no limit: a few megabytes of zeros deflate to a few
//! kilobytes, so an 8 MiB frame could make a receiver allocate gigabytes
//! before anything checked it. [`inflated_len`] walks the chunk headers (the
//! format of the Automerge binary specification: magic, checksum, type,
//! LEB128 length; a document's column metadata), inflates each compressed part
//! into a counter and stops at `cap`. Nothing is kept, so checking costs one
//! pass of inflation and no memory.

use std::io::Read;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The column-specification bit that marks a deflated column.
const DEFLATE_BIT: u64 = 0b1000;

/// Why bytes were refused before Automerge saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    #[error("the bytes are not Automerge chunks")]
    Malformed,
    #[error("Automerge bundles are not accepted; save the document or its changes instead")]
    Bundle,
    #[error("the Automerge data inflates to more than {cap} bytes")]
    TooLarge { cap: usize },
}

/// The size of `bytes` — one or more Automerge chunks (changes, compressed
/// changes, documents, as `save()`, `save_incremental()` and
/// `Change::bytes()` write them) — once every compressed part is inflated;
/// an error as soon as that passes `cap`, or if the bytes are not chunks.
pub fn inflated_len(bytes: &[u8], cap: usize) -> Result<usize, ChunkError> {
    let mut total = 0usize;
    let mut rest = bytes;
    if rest.is_empty() {
        return Err(ChunkError::Malformed);
    }
    while !rest.is_empty() {
        let (magic, after) = split(rest, 4)?;
        if magic != MAGIC {
            return Err(ChunkError::Malformed);
        }
        let (_checksum, after) = split(after, 4)?;
        let (kind, after) = split(after, 1)?;
        let (len, after) = leb128(after)?;
        let header = rest.len() - after.len();
        let (data, after) = split(
            after,
            usize::try_from(len).map_err(|_| ChunkError::Malformed)?,
        )?;
        let size = match kind[0] {
            0 => document_len(data, cap.saturating_sub(total)),
            1 => Ok(data.len()),
            2 => inflate_len(data, cap.saturating_sub(total)),
            3 => return Err(ChunkError::Bundle),
            _ => return Err(ChunkError::Malformed),
        }
        .map_err(|e| match e {
            ChunkError::TooLarge { .. } => ChunkError::TooLarge { cap },
            e => e,
        })?;
        total = total.saturating_add(header).saturating_add(size);
        if total > cap {
            return Err(ChunkError::TooLarge { cap });
        }
        rest = after;
    }
    Ok(total)
}

/// Whether `bytes` are exactly one Automerge document chunk, as `save()`
/// writes it, and nothing after it (`load` would apply change chunks
/// following a document, unchecked by anything that read only the first).
pub fn is_one_document(bytes: &[u8]) -> bool {
    let one = || -> Result<bool, ChunkError> {
        let (magic, after) = split(bytes, 4)?;
        let (_checksum, after) = split(after, 4)?;
        let (kind, after) = split(after, 1)?;
        let (len, after) = leb128(after)?;
        let len = usize::try_from(len).map_err(|_| ChunkError::Malformed)?;
        Ok(magic == MAGIC && kind[0] == 0 && after.len() == len)
    };
    one().unwrap_or(false)
}

/// A document chunk's size with its deflated columns inflated.
fn document_len(data: &[u8], cap: usize) -> Result<usize, ChunkError> {
    let (actors, mut i) = leb128(data)?;
    for _ in 0..actors {
        let (len, after) = leb128(i)?;
        i = split(
            after,
            usize::try_from(len).map_err(|_| ChunkError::Malformed)?,
        )?
        .1;
    }
    let (heads, after) = leb128(i)?;
    let heads_len = usize::try_from(heads)
        .ok()
        .and_then(|h| h.checked_mul(32))
        .ok_or(ChunkError::Malformed)?;
    i = split(after, heads_len)?.1;
    let mut columns = Vec::new();
    for _ in 0..2 {
        let (count, after) = leb128(i)?;
        i = after;
        for _ in 0..count {
            let (spec, after) = leb128(i)?;
            let (len, after) = leb128(after)?;
            i = after;
            columns.push((
                spec,
                usize::try_from(len).map_err(|_| ChunkError::Malformed)?,
            ));
        }
    }
    let mut total = data.len();
    for (spec, len) in columns {
        let (column, after) = split(i, len)?;
        i = after;
        if spec & DEFLATE_BIT != 0 {
            total = total.saturating_add(inflate_len(column, cap.saturating_sub(total))?);
            if total > cap {
                return Err(ChunkError::TooLarge { cap });
            }
        }
    }
    Ok(total)
}

/// The inflated size of a raw DEFLATE stream, counted without keeping it;
/// an error past `cap`.
fn inflate_len(deflated: &[u8], cap: usize) -> Result<usize, ChunkError> {
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let mut decoder = flate2::bufread::DeflateDecoder::new(deflated).take(limit);
    let n = std::io::copy(&mut decoder, &mut std::io::sink()).map_err(|_| ChunkError::Malformed)?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > cap {
        return Err(ChunkError::TooLarge { cap });
    }
    Ok(n)
}

fn split(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), ChunkError> {
    if bytes.len() < n {
        return Err(ChunkError::Malformed);
    }
    Ok(bytes.split_at(n))
}

/// An unsigned LEB128 number (at most 10 bytes).
fn leb128(bytes: &[u8]) -> Result<(u64, &[u8]), ChunkError> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        value |= part
            .checked_shl(7 * i as u32)
            .ok_or(ChunkError::Malformed)?;
        if b & 0x80 == 0 {
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err(ChunkError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    fn doc_with(text: &str) -> AutoCommit {
        let mut am = AutoCommit::new();
        let t = am
            .put_object(ROOT, "text", ObjType::Text)
            .expect("test data");
        am.splice_text(&t, 0, 0, text).expect("test data");
        am.commit();
        am
    }

    #[test]
    fn real_documents_and_changes_are_measured_with_their_columns_inflated() {
        let text = "all work and no play ".repeat(20_000);
        let mut am = doc_with(&text);
        let saved = am.save();
        assert!(saved.len() < 10_000, "the document compresses well");
        let len = inflated_len(&saved, 1 << 30).expect("test data");
        assert!(len > text.len(), "{len} counts the inflated text");
        // Two documents saved one after the other load as one: both counted.
        let mut two = saved.clone();
        two.extend_from_slice(&doc_with("x").save());
        assert!(inflated_len(&two, 1 << 30).expect("test data") > len);
        let mut change = am.get_last_local_change().expect("test data");
        let compressed = change.bytes().into_owned();
        assert_eq!(compressed[8], 2, "a change this large is stored compressed");
        assert!(inflated_len(&compressed, 1 << 30).expect("test data") > text.len());
        let raw = change.raw_bytes();
        assert_eq!(
            inflated_len(raw, 1 << 30),
            Ok(raw.len()),
            "an uncompressed chunk is its own size"
        );
    }

    #[test]
    fn a_deflate_bomb_is_refused_at_the_cap_without_inflating_it_whole() {
        let mut am = doc_with(&"0".repeat(3 << 19));
        let mut change = am.get_last_local_change().expect("test data");
        let bomb = change.bytes().into_owned();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        assert_eq!(
            inflated_len(&bomb, 1 << 20),
            Err(ChunkError::TooLarge { cap: 1 << 20 })
        );
        let saved = am.save();
        assert_eq!(
            inflated_len(&saved, 1 << 20),
            Err(ChunkError::TooLarge { cap: 1 << 20 })
        );
    }

    #[test]
    fn junk_truncations_and_bundles_are_refused() {
        let saved = doc_with("hello").save();
        assert_eq!(inflated_len(&[], 1 << 20), Err(ChunkError::Malformed));
        assert_eq!(
            inflated_len(b"hello world", 1 << 20),
            Err(ChunkError::Malformed)
        );
        for cut in [1, 5, 9, 10, saved.len() / 2, saved.len() - 1] {
            assert!(
                inflated_len(&saved[..cut], 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        assert!(is_one_document(&saved));
        let mut two = saved.clone();
        two.extend_from_slice(&saved);
        assert!(!is_one_document(&two), "a second chunk after the document");
        assert!(!is_one_document(&saved[..saved.len() - 1]));
        let mut change = doc_with("x").get_last_local_change().expect("test data");
        assert!(!is_one_document(change.bytes().as_ref()), "a change chunk");
        let mut bundle = saved.clone();
        bundle[8] = 3;
        assert_eq!(inflated_len(&bundle, 1 << 20), Err(ChunkError::Bundle));
        let mut endless = MAGIC.to_vec();
        endless.extend([0; 5]);
        endless.extend([0xff; 12]);
        assert_eq!(inflated_len(&endless, 1 << 20), Err(ChunkError::Malformed));
    }
}
