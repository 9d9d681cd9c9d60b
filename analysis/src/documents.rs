//! Text out of documents: PDF (pdf-extract, page by page so one bad page
//! costs one page), HTML (scraper: main content, headings, code kept; no
//! script, style, nav or footer), DOCX (zip + XML: paragraphs, headings,
//! tables) and Markdown. Text is NFKC-normalised, so ligatures such as "ﬁ"
//! read as plain letters.
//!
//! These functions run inside the extraction worker process (see
//! `worker.rs`): pdf-extract can panic, and even abort, on malformed files.
//! Every traversal is iterative; nesting depth and decompressed sizes are
//! bounded.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use unicode_normalization::UnicodeNormalization;
use xencode_protocol::analysis::{DocumentMetadata, Section};

/// Deepest HTML nesting parsed (html5ever is quadratic in depth).
pub const MAX_HTML_DEPTH: usize = 2_000;
/// Most bytes a DOCX part may decompress to (zip bombs).
pub const MAX_DOCX_PART_BYTES: u64 = 64 * 1024 * 1024;

/// The kinds of documents understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pdf,
    Html,
    Docx,
    Markdown,
}

impl Kind {
    /// By file name extension.
    pub fn of(filename: &str) -> Option<Self> {
        let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "pdf" => Some(Self::Pdf),
            "html" | "htm" | "xhtml" => Some(Self::Html),
            "docx" => Some(Self::Docx),
            "md" | "markdown" => Some(Self::Markdown),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pdf => "pdf",
            Self::Html => "html",
            Self::Docx => "docx",
            Self::Markdown => "markdown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pdf, Self::Html, Self::Docx, Self::Markdown]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Why a document gave no text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    #[error(
        "the PDF is encrypted (password-protected); remove the password (e.g. print it to a new PDF) and add it again"
    )]
    Encrypted,
    #[error("the {kind} file cannot be read: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("the HTML nests deeper than {MAX_HTML_DEPTH} elements; it is refused")]
    TooDeep,
    #[error(
        "a part of the DOCX decompresses to more than {MAX_DOCX_PART_BYTES} bytes (a zip bomb?); it is refused"
    )]
    ZipBomb,
}

/// What an extractor found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    pub text: String,
    pub metadata: DocumentMetadata,
    pub sections: Vec<Section>,
    /// 0..1: the share the extractor could read times how much the text
    /// looks like text (`quality.rs`).
    pub confidence: f64,
}

fn normalize(s: &str) -> String {
    s.nfkc().collect()
}

fn malformed(kind: &'static str, reason: impl std::fmt::Display) -> DocError {
    DocError::Malformed {
        kind,
        reason: reason.to_string(),
    }
}

/// Extracts a document of `kind`; `on_page` hears each PDF page as it is done
/// (the worker streams them, so a timeout still yields partial text).
pub fn extract(
    kind: Kind,
    bytes: &[u8],
    on_page: &mut dyn FnMut(u32, &str),
) -> Result<Extracted, DocError> {
    let mut out = match kind {
        Kind::Pdf => pdf(bytes, on_page)?,
        Kind::Html => html(&String::from_utf8_lossy(bytes))?,
        Kind::Docx => docx(bytes)?,
        Kind::Markdown => markdown(&String::from_utf8_lossy(bytes)),
    };
    out.metadata.size_bytes = bytes.len() as u64;
    let score = quality::text_score(&out.text);
    out.confidence = (out.confidence * score).clamp(0.0, 1.0);
    let what = match kind {
        Kind::Pdf => "PDF",
        Kind::Html => "HTML page",
        Kind::Docx => "DOCX",
        Kind::Markdown => "Markdown file",
    };
    if let Some(w) = quality::warning(score, out.text.trim().len(), what) {
        out.metadata.warnings.push(w);
    }
    Ok(out)
}

/// A text string of the PDF's Info dictionary (UTF-16BE with BOM, or bytes).
fn pdf_info(doc: &pdf_extract::Document, key: &[u8]) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?;
    let dict = match info {
        pdf_extract::Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        pdf_extract::Object::Dictionary(d) => d,
        _ => return None,
    };
    let raw = dict.get(key).ok()?.as_str().ok()?;
    let text = if let Some(utf16) = raw.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = utf16
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        raw.iter().map(|b| char::from(*b)).collect()
    };
    let text = normalize(text.trim());
    (!text.is_empty()).then_some(text)
}

fn pdf(bytes: &[u8], on_page: &mut dyn FnMut(u32, &str)) -> Result<Extracted, DocError> {
    let mut emitted = std::collections::BTreeSet::new();
    let first = load_pdf(bytes).map(|doc| {
        read_pdf(&doc, &mut |n, text| {
            emitted.insert(n);
            on_page(n, text);
        })
    });
    if matches!(first, Err(DocError::Encrypted)) {
        return first;
    }
    // A file that would not load or gave no text may have a broken
    // cross-reference table: rebuilt from its objects, it may give more
    // (pages already heard are not heard twice). A file that loaded and
    // gave text is not read twice for a page the extractor failed on.
    let damaged = first.as_ref().map_or(true, |r| r.text.trim().is_empty());
    if damaged
        && let Some(rebuilt) = pdf_repair::rebuild(bytes)
        && let Ok(doc) = load_pdf(&rebuilt)
    {
        let mut second = read_pdf(&doc, &mut |n, text| {
            if !emitted.contains(&n) {
                on_page(n, text);
            }
        });
        let had = first.as_ref().map_or(0, |r| r.text.chars().count());
        if second.text.chars().count() > had {
            second.metadata.warnings.insert(
                0,
                "the PDF is damaged (its cross-reference table is missing or wrong): it was rebuilt by scanning the file for its objects, and text may be missing".into(),
            );
            return Ok(second);
        }
    }
    first
}

/// Loads a PDF (decrypting one with an empty user password).
fn load_pdf(bytes: &[u8]) -> Result<pdf_extract::Document, DocError> {
    let loaded = catch_unwind(|| pdf_extract::Document::load_mem(bytes))
        .map_err(|_| malformed("PDF", "its structure is damaged"))?;
    let mut doc = loaded.map_err(|e| {
        if e.to_string().to_ascii_lowercase().contains("decrypt")
            || e.to_string().contains("password")
        {
            DocError::Encrypted
        } else {
            malformed("PDF", e)
        }
    })?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(DocError::Encrypted);
    }
    Ok(doc)
}

/// The text of every page of a loaded PDF, each heard by `on_page` when done.
fn read_pdf(doc: &pdf_extract::Document, on_page: &mut dyn FnMut(u32, &str)) -> Extracted {
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    let mut out = Extracted::default();
    out.metadata.pages = Some(pages.len() as u32);
    out.metadata.title = pdf_info(doc, b"Title");
    out.metadata.author = pdf_info(doc, b"Author");
    let mut ok = 0usize;
    for n in &pages {
        let page = catch_unwind(AssertUnwindSafe(|| {
            let mut s = String::new();
            let mut output = pdf_extract::PlainTextOutput::new(&mut s);
            pdf_extract::output_doc_page(doc, &mut output, *n).map(|()| s)
        }));
        match page {
            Ok(Ok(text)) => {
                let text = quality::dehyphenate(&normalize(&text));
                on_page(*n, &text);
                ok += 1;
                out.sections.push(Section {
                    heading: None,
                    level: 0,
                    text,
                    page: Some(*n),
                });
            }
            Ok(Err(e)) => out.metadata.warnings.push(format!("page {n}: {e}")),
            Err(_) => out.metadata.warnings.push(format!(
                "page {n} could not be extracted (the extractor failed on it)"
            )),
        }
    }
    out.text = out
        .sections
        .iter()
        .map(|s| s.text.trim())
        .collect::<Vec<_>>()
        .join("\n\n");
    out.confidence = if pages.is_empty() {
        0.0
    } else {
        ok as f64 / pages.len() as f64
    };
    out
}

/// Maximum element nesting of an HTML text, estimated from its tags.
fn html_depth(html: &str) -> usize {
    const VOID: &[&str] = &[
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr", "!",
    ];
    let (mut depth, mut max) = (0usize, 0usize);
    for tag in html.split('<').skip(1) {
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() || VOID.iter().any(|v| name.starts_with(v)) {
            continue;
        }
        let self_closing = tag.split('>').next().is_some_and(|t| t.ends_with('/'));
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing {
            depth += 1;
            max = max.max(depth);
        }
    }
    max
}

fn html(source: &str) -> Result<Extracted, DocError> {
    use scraper::{Html, Node, Selector};
    const SKIP: &[&str] = &[
        "script", "style", "nav", "footer", "noscript", "template", "aside", "svg", "head", "form",
    ];
    const BLOCK: &[&str] = &[
        "p",
        "div",
        "section",
        "article",
        "li",
        "ul",
        "ol",
        "table",
        "tr",
        "br",
        "pre",
        "blockquote",
        "main",
        "td",
        "th",
    ];
    if html_depth(source) > MAX_HTML_DEPTH {
        return Err(DocError::TooDeep);
    }
    let doc = Html::parse_document(source);
    let select = |s: &str| Selector::parse(s).ok();
    let mut out = Extracted::default();
    out.metadata.title = select("title")
        .and_then(|s| doc.select(&s).next())
        .map(|t| normalize(t.text().collect::<String>().trim()))
        .filter(|t| !t.is_empty());
    out.metadata.author = select(r#"meta[name="author"]"#)
        .and_then(|s| doc.select(&s).next())
        .and_then(|m| m.value().attr("content").map(str::to_owned));
    out.metadata.language = select("html")
        .and_then(|s| doc.select(&s).next())
        .and_then(|h| h.value().attr("lang").map(str::to_owned));
    let root = ["main", "article", r#"[role="main"]"#, "body"]
        .iter()
        .filter_map(|s| select(s))
        .find_map(|s| doc.select(&s).next())
        .unwrap_or_else(|| doc.root_element());

    let mut sections = vec![Section {
        heading: None,
        level: 0,
        text: String::new(),
        page: None,
    }];
    let mut heading: Option<(u8, String)> = None;
    let (mut skip, mut pre) = (0usize, 0usize);
    for edge in root.traverse() {
        match edge {
            ego_tree::iter::Edge::Open(node) => match node.value() {
                Node::Element(el) => {
                    let name = el.name();
                    if skip > 0 || SKIP.contains(&name) {
                        skip += 1;
                        continue;
                    }
                    if let Some(level) = heading_level(name) {
                        heading = Some((level, String::new()));
                    }
                    if name == "pre" {
                        pre += 1;
                    }
                    if BLOCK.contains(&name)
                        && let Some(last) = sections.last_mut()
                        && !last.text.ends_with('\n')
                        && !last.text.is_empty()
                    {
                        last.text.push('\n');
                    }
                }
                Node::Text(t) if skip == 0 => {
                    let text: String = if pre > 0 {
                        t.to_string()
                    } else {
                        t.split_whitespace().collect::<Vec<_>>().join(" ")
                    };
                    if text.is_empty() {
                        continue;
                    }
                    let target = match &mut heading {
                        Some((_, h)) => h,
                        None => match sections.last_mut() {
                            Some(s) => &mut s.text,
                            None => continue,
                        },
                    };
                    if pre == 0 && !target.is_empty() && !target.ends_with(['\n', ' ']) {
                        target.push(' ');
                    }
                    target.push_str(&text);
                }
                _ => {}
            },
            ego_tree::iter::Edge::Close(node) => {
                if let Node::Element(el) = node.value() {
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    if el.name() == "pre" {
                        pre = pre.saturating_sub(1);
                    }
                    if heading_level(el.name()).is_some()
                        && let Some((level, h)) = heading.take()
                    {
                        sections.push(Section {
                            heading: Some(normalize(h.trim())),
                            level,
                            text: String::new(),
                            page: None,
                        });
                    }
                }
            }
        }
    }
    finish_sections(&mut out, sections);
    Ok(out)
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// Drops empty sections, normalises, and builds the full text.
fn finish_sections(out: &mut Extracted, sections: Vec<Section>) {
    out.sections = sections
        .into_iter()
        .map(|mut s| {
            s.text = normalize(s.text.trim());
            s
        })
        .filter(|s| s.heading.is_some() || !s.text.is_empty())
        .collect();
    let mut text = String::new();
    for s in &out.sections {
        for part in [s.heading.as_deref().unwrap_or(""), s.text.as_str()] {
            if !part.is_empty() {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(part);
            }
        }
    }
    out.text = text;
    if out.metadata.title.is_none() {
        out.metadata.title = out
            .sections
            .iter()
            .find(|s| s.level == 1)
            .and_then(|s| s.heading.clone());
    }
    out.confidence = if out.text.is_empty() { 0.0 } else { 1.0 };
}

/// Reads one part of a zip, refusing what decompresses past the bound.
fn zip_part(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
) -> Result<Option<String>, DocError> {
    let file = match archive.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(malformed("DOCX", e)),
    };
    let mut buf = Vec::new();
    file.take(MAX_DOCX_PART_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| malformed("DOCX", e))?;
    if buf.len() as u64 > MAX_DOCX_PART_BYTES {
        return Err(DocError::ZipBomb);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn docx(bytes: &[u8]) -> Result<Extracted, DocError> {
    use quick_xml::events::Event;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| malformed("DOCX", e))?;
    let body = zip_part(&mut archive, "word/document.xml")?
        .ok_or_else(|| malformed("DOCX", "it has no word/document.xml"))?;
    let mut out = Extracted::default();
    if let Some(core) = zip_part(&mut archive, "docProps/core.xml")? {
        let grab = |tag: &str| -> Option<String> {
            let start = core.find(&format!("<{tag}"))?;
            let open_end = start + core[start..].find('>')? + 1;
            let close = open_end + core[open_end..].find(&format!("</{tag}>"))?;
            let v = normalize(core[open_end..close].trim());
            (!v.is_empty()).then_some(v)
        };
        out.metadata.title = grab("dc:title");
        out.metadata.author = grab("dc:creator");
        out.metadata.language = grab("dc:language");
    }
    let mut reader = quick_xml::Reader::from_str(&body);
    let mut sections = vec![Section {
        heading: None,
        level: 0,
        text: String::new(),
        page: None,
    }];
    let (mut para, mut style_level, mut in_text, mut in_cell) =
        (String::new(), None, false, 0usize);
    // Open elements: above zero at the end means the XML was cut off.
    let mut depth = 0usize;
    loop {
        let event = reader.read_event();
        match &event {
            Ok(Event::Start(_)) => depth += 1,
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            _ => {}
        }
        match event {
            // Cut off (ends inside an element) or damaged after some text:
            // keep what was read before, and say so.
            Ok(Event::Eof) if depth > 0 => {
                keep_partial(
                    &mut sections,
                    &para,
                    &mut out,
                    "ends early (the file was cut off or damaged)".into(),
                );
                break;
            }
            Err(e) if sections.iter().any(|s| !s.text.trim().is_empty()) || !para.is_empty() => {
                keep_partial(&mut sections, &para, &mut out, format!("is damaged ({e})"));
                break;
            }
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.name().into_inner() {
                "w:p" => {
                    para.clear();
                    style_level = None;
                }
                "w:pStyle" => {
                    let val = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.into_inner() == "w:val")
                        .map(|a| a.value.to_string())
                        .unwrap_or_default();
                    style_level = docx_heading_level(&val);
                }
                "w:t" => in_text = true,
                "w:tab" => para.push('\t'),
                "w:br" => para.push('\n'),
                "w:tc" => in_cell += 1,
                _ => {}
            },
            Ok(Event::Text(t)) if in_text => para.push_str(&t.into_inner()),
            Ok(Event::GeneralRef(r)) if in_text => {
                if let Some(c) = xml_entity(&r.into_inner()) {
                    para.push(c);
                }
            }
            Ok(Event::End(e)) => match e.name().into_inner() {
                "w:t" => in_text = false,
                "w:tc" => {
                    in_cell = in_cell.saturating_sub(1);
                    if let Some(s) = sections.last_mut() {
                        s.text.push_str(" | ");
                    }
                }
                "w:tr" => {
                    if let Some(s) = sections.last_mut() {
                        s.text.push('\n');
                    }
                }
                "w:p" => {
                    let p = std::mem::take(&mut para);
                    match style_level {
                        Some(level) if in_cell == 0 => sections.push(Section {
                            heading: Some(normalize(p.trim())),
                            level,
                            text: String::new(),
                            page: None,
                        }),
                        _ => {
                            if let Some(s) = sections.last_mut() {
                                s.text.push_str(&p);
                                if in_cell == 0 {
                                    s.text.push('\n');
                                }
                            }
                        }
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) => break,
            Err(e) => return Err(malformed("DOCX", e)),
            _ => {}
        }
    }
    finish_sections(&mut out, sections);
    Ok(out)
}

/// Keeps the paragraph being read when a DOCX's XML stopped, and warns
/// that only the text before `what` went wrong was read.
fn keep_partial(sections: &mut [Section], para: &str, out: &mut Extracted, what: String) {
    if let Some(s) = sections.last_mut() {
        s.text.push_str(para);
    }
    out.metadata.warnings.push(format!(
        "the document's XML {what}: only the text before it was read"
    ));
}

/// The character an XML entity reference (`amp`, `#38`, `#x26`) stands for.
fn xml_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix('x').or_else(|| num.strip_prefix('X')) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// `Heading1`…`Heading9` and `Title` paragraph styles.
fn docx_heading_level(style: &str) -> Option<u8> {
    if style.eq_ignore_ascii_case("title") {
        return Some(1);
    }
    let n = style
        .strip_prefix("Heading")
        .or_else(|| style.strip_prefix("heading"))?;
    n.trim().parse::<u8>().ok().filter(|l| (1..=9).contains(l))
}

fn markdown(source: &str) -> Extracted {
    let mut sections = vec![Section {
        heading: None,
        level: 0,
        text: String::new(),
        page: None,
    }];
    let mut fence: Option<&str> = None;
    for line in source.lines() {
        let trimmed = line.trim_start();
        if let Some(f) = fence {
            if trimmed.starts_with(f) {
                fence = None;
            }
        } else if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
        } else {
            let hashes = trimmed.chars().take_while(|c| *c == '#').count();
            if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
                sections.push(Section {
                    heading: Some(normalize(
                        trimmed[hashes..].trim().trim_end_matches('#').trim(),
                    )),
                    level: hashes as u8,
                    text: String::new(),
                    page: None,
                });
                continue;
            }
        }
        if let Some(s) = sections.last_mut() {
            s.text.push_str(line);
            s.text.push('\n');
        }
    }
    let mut out = Extracted::default();
    finish_sections(&mut out, sections);
    out
}

mod pdf_repair;
mod quality;

#[cfg(test)]
mod tests;
