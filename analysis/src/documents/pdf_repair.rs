//! Rebuilding a damaged PDF's cross-reference table by scanning the file
//! for its objects, as poppler (pdftotext) does: a file cut short (its table
//! and trailer lost) or with bytes inserted (every offset after them wrong)
//! still has its objects, each starting `N G obj`. The rebuilt file is the
//! original bytes followed by a new table of the objects found (the last
//! copy of each, as an incremental update would have it) and a trailer
//! naming the catalog; objects inside object streams are found through
//! their stream, which the table lists.

/// The bytes of `pdf` with a rebuilt cross-reference table and trailer, or
/// `None` if no catalog could be found (nothing to rebuild from) or the file
/// is encrypted (its objects cannot be read without its table).
pub(super) fn rebuild(pdf: &[u8]) -> Option<Vec<u8>> {
    // Offsets count from the header, as readers do.
    let start = find(pdf, b"%PDF-", 0)?;
    let body = &pdf[start..];
    if find(body, b"/Encrypt", 0).is_some() {
        return None;
    }
    let objects = scan_objects(body);
    let root = last_root(body).or_else(|| catalog(body, &objects))?;
    let size = objects.keys().max().map_or(1, |max| max + 1);
    let mut out = body.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let xref_at = out.len();
    out.extend_from_slice(format!("xref\n0 {size}\n").as_bytes());
    for id in 0..size {
        let entry = match objects.get(&id) {
            Some((offset, generation)) => format!("{offset:010} {generation:05} n \n"),
            None => "0000000000 65535 f \n".to_owned(),
        };
        out.extend_from_slice(entry.as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {size} /Root {} {} R >>\nstartxref\n{xref_at}\n%%EOF\n",
            root.0, root.1
        )
        .as_bytes(),
    );
    Some(out)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b'\x0c' | b'\0')
}

/// Reads an unsigned decimal at `at`; returns it and the index after it.
fn number(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let digits = bytes
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 10 {
        return None;
    }
    let text = std::str::from_utf8(&bytes[at..at + digits]).ok()?;
    Some((text.parse().ok()?, at + digits))
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).copied().is_some_and(is_space) {
        at += 1;
    }
    at
}

/// `N G <keyword>` at `at` (a number, space, a number, space, keyword).
fn triple(bytes: &[u8], at: usize, keyword: &[u8]) -> Option<(u32, u16, usize)> {
    let (id, after) = number(bytes, at)?;
    let next = skip_space(bytes, after);
    if next == after {
        return None;
    }
    let (generation, after) = number(bytes, next)?;
    let next = skip_space(bytes, after);
    if next == after || !bytes.get(next..)?.starts_with(keyword) {
        return None;
    }
    Some((
        u32::try_from(id).ok()?,
        u16::try_from(generation).ok()?,
        next + keyword.len(),
    ))
}

/// Every `N G obj` at the start of a line, by object number: (offset,
/// generation) of the last one.
fn scan_objects(body: &[u8]) -> std::collections::BTreeMap<u32, (usize, u16)> {
    let mut out = std::collections::BTreeMap::new();
    let mut at = 0;
    while let Some(found) = find(body, b"obj", at) {
        at = found + 3;
        // Back from "obj" over " G " and "N": spaces, digits, spaces, digits.
        // At most 20 bytes each: a long run of spaces or digits before
        // every "obj" must not make the scan quadratic.
        let back_over = |mut i: usize, digits: bool| {
            let floor = i.saturating_sub(20);
            while i > floor
                && (if digits {
                    body[i - 1].is_ascii_digit()
                } else {
                    is_space(body[i - 1])
                })
            {
                i -= 1;
            }
            i
        };
        let gen_end = back_over(found, false);
        let gen_start = back_over(gen_end, true);
        let id_end = back_over(gen_start, false);
        let start = back_over(id_end, true);
        if gen_start == gen_end || id_end == gen_start || start == id_end {
            continue;
        }
        // The object starts a line (or follows the previous `endobj`).
        if start > 0 && !is_space(body[start - 1]) && !body[..start].ends_with(b"endobj") {
            continue;
        }
        if let Some((id, generation, end)) = triple(body, start, b"obj")
            && end == found + 3
            && id < 10_000_000
        {
            out.insert(id, (start, generation));
        }
    }
    out
}

/// The last `/Root N G R` in the file (a trailer's or an xref stream's).
fn last_root(body: &[u8]) -> Option<(u32, u16)> {
    let mut at = 0;
    let mut last = None;
    while let Some(found) = find(body, b"/Root", at) {
        at = found + 5;
        let next = skip_space(body, at);
        if let Some((id, generation, _)) = triple(body, next, b"R") {
            last = Some((id, generation));
        }
    }
    last
}

/// The object whose dictionary says `/Type /Catalog`.
fn catalog(
    body: &[u8],
    objects: &std::collections::BTreeMap<u32, (usize, u16)>,
) -> Option<(u32, u16)> {
    objects.iter().find_map(|(id, (offset, generation))| {
        // A catalog is a small dictionary: its first 4 KiB say.
        let window = &body[*offset..body.len().min(offset + 4096)];
        let object = &window[..find(window, b"endobj", 0).unwrap_or(window.len())];
        let compact: Vec<u8> = object.iter().copied().filter(|b| !is_space(*b)).collect();
        find(&compact, b"/Type/Catalog", 0).map(|_| (*id, *generation))
    })
}
