//! The content of `Narrative.div` (txt-1, txt-2; R4 narrative.html): the
//! text a FHIR client shows a person, so nothing in it may run, load or
//! submit anything. Well-formed XHTML, one root `div` in the XHTML
//! namespace, only HTML 4's formatting elements and attributes, `a`
//! (`href`, `name`), images and inline styles; something to read.
//!
//! An allow-list, not a deny-list: an element or attribute a browser may
//! learn tomorrow is refused today.

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

const XHTML: &[u8] = b"http://www.w3.org/1999/xhtml";

/// HTML 4 chapters 7–11 (minus 9.4, `ins`/`del`) and 15, `a`, images, as
/// the HL7 validator reads txt-1.
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// Attributes any allowed element may carry.
const COMMON_ATTRIBUTES: &[&str] = &[
    "class",
    "dir",
    "id",
    "lang",
    "style",
    "title",
    "xml:lang",
    "xmlns",
    // tables (HTML 4 chapter 11)
    "abbr",
    "align",
    "axis",
    "border",
    "cellpadding",
    "cellspacing",
    "char",
    "charoff",
    "colspan",
    "frame",
    "headers",
    "height",
    "nowrap",
    "rowspan",
    "rules",
    "scope",
    "span",
    "summary",
    "valign",
    "width",
];

/// Attributes of one element only.
fn own_attribute(element: &str, attribute: &str) -> bool {
    matches!(
        (element, attribute),
        ("a", "href" | "name" | "rel" | "hreflang" | "type" | "shape" | "coords")
            | (
                "img",
                "src" | "alt" | "usemap" | "ismap" | "longdesc" | "hspace" | "vspace"
            )
            | ("area", "href" | "alt" | "shape" | "coords" | "nohref")
            | ("map", "name")
            | ("blockquote" | "q", "cite")
            | ("ol", "start" | "type" | "compact")
            | ("ul" | "li", "type" | "value" | "compact")
            | ("col" | "colgroup", "span")
            | ("br", "clear")
            | ("pre", "width")
    )
}

/// Why a narrative is refused: the invariant it breaks and what in it
/// breaks it, by element and attribute names only (the text is a
/// patient's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct NarrativeFault {
    pub key: &'static str,
    pub reason: String,
}

fn txt1(reason: impl Into<String>) -> NarrativeFault {
    NarrativeFault {
        key: "txt-1",
        reason: reason.into(),
    }
}

/// Checks a `Narrative.div` value.
pub fn check(div: &str) -> Result<(), NarrativeFault> {
    let mut reader = Reader::from_str(div);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = true;
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut content = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| txt1(format!("the div is not well-formed XHTML ({})", malformed(&e))))?;
        match event {
            Event::Start(e) => {
                content |= open(&e, depth, &mut roots)?;
                depth += 1;
            }
            Event::Empty(e) => content |= open(&e, depth, &mut roots)?,
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                let blank = t.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
                if depth == 0 && !blank {
                    return Err(txt1("text outside the div"));
                }
                content |= !blank;
            }
            Event::CData(c) => {
                if depth == 0 {
                    return Err(txt1("text outside the div"));
                }
                content |= c.iter().any(|b| !b.is_ascii_whitespace());
            }
            Event::GeneralRef(r) => {
                if depth == 0 {
                    return Err(txt1("text outside the div"));
                }
                // XML knows five entities; HTML's (`&nbsp;`) are undefined
                // without a DTD: the specification asks for the character
                // or its reference (`&#160;`).
                if !r.is_char_ref() && !matches!(&*r, b"lt" | b"gt" | b"amp" | b"apos" | b"quot") {
                    return Err(txt1(format!(
                        "the entity &{}; is not defined in XHTML: write the character or &#NNN;",
                        String::from_utf8_lossy(&r).chars().take(32).collect::<String>()
                    )));
                }
                if r.resolve_char_ref().is_err() {
                    return Err(txt1("a character reference names no character"));
                }
                content = true;
            }
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) => {
                return Err(txt1("processing instructions are not allowed in a narrative"));
            }
            Event::DocType(_) => return Err(txt1("a DOCTYPE is not allowed in a narrative")),
            Event::Eof => break,
        }
    }
    if roots == 0 {
        return Err(txt1("the narrative must be one div element"));
    }
    if depth != 0 {
        return Err(txt1("the div is not well-formed XHTML (an element is not closed)"));
    }
    if !content {
        return Err(NarrativeFault {
            key: "txt-2",
            reason: "the narrative has no content (text or an image)".into(),
        });
    }
    Ok(())
}

/// The kind of a parse error, without the input it quotes.
fn malformed(e: &quick_xml::Error) -> &'static str {
    use quick_xml::Error as E;
    match e {
        E::IllFormed(quick_xml::errors::IllFormedError::MismatchedEndTag { .. }) => "an end tag does not match",
        E::IllFormed(quick_xml::errors::IllFormedError::UnmatchedEndTag(_)) => "an end tag closes nothing",
        E::IllFormed(_) => "ill-formed markup",
        E::Syntax(_) => "a syntax error",
        E::InvalidAttr(_) => "a malformed or repeated attribute",
        E::Escape(_) => "a malformed reference",
        _ => "unreadable",
    }
}

/// An element opens: the one root, or one inside it. Is it an image
/// (content enough for txt-2)?
fn open(e: &BytesStart<'_>, depth: usize, roots: &mut usize) -> Result<bool, NarrativeFault> {
    if depth == 0 {
        if *roots > 0 {
            return Err(txt1("the narrative must be one div element"));
        }
        *roots += 1;
    }
    element(e, depth == 0)?;
    Ok(e.name().as_ref() == b"img")
}

fn element(e: &BytesStart<'_>, root: bool) -> Result<(), NarrativeFault> {
    let raw = e.name();
    let name = std::str::from_utf8(raw.as_ref()).map_err(|_| txt1("an element name is not UTF-8"))?;
    if root && name != "div" {
        return Err(txt1("the narrative must be one div element"));
    }
    if !ELEMENTS.contains(&name) {
        return Err(txt1(format!("<{}> is not allowed in a narrative", shown(name))));
    }
    let mut has_xhtml_ns = false;
    for attr in e.attributes() {
        let attr = attr.map_err(|_| txt1(format!("<{name}> has a malformed or repeated attribute")))?;
        let key = std::str::from_utf8(attr.key.as_ref()).map_err(|_| txt1("an attribute name is not UTF-8"))?;
        if key.len() > 2 && key.as_bytes().get(..2).is_some_and(|p| p.eq_ignore_ascii_case(b"on")) {
            return Err(txt1(format!(
                "the event attribute {}= on <{name}> is not allowed in a narrative",
                shown(key)
            )));
        }
        if !COMMON_ATTRIBUTES.contains(&key) && !own_attribute(name, key) {
            return Err(txt1(format!(
                "the attribute {}= is not allowed on <{name}> in a narrative",
                shown(key)
            )));
        }
        let value = attr
            .unescape_value()
            .map_err(|_| txt1(format!("the value of {key}= on <{name}> has a malformed reference")))?;
        match key {
            "xmlns" if value.as_bytes() != XHTML => {
                return Err(txt1("the narrative must be in the XHTML namespace only"));
            }
            "xmlns" => has_xhtml_ns = true,
            "href" | "src" | "cite" | "longdesc" | "usemap" => url(name, key, &value)?,
            "style" => style(name, &value)?,
            _ => {}
        }
    }
    if root && !has_xhtml_ns {
        return Err(txt1(
            "the div must declare the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")",
        ));
    }
    Ok(())
}

/// Links may go anywhere on the web or inside the resource; nothing that
/// runs (`javascript:`, `vbscript:`) nor inline documents (`data:`), but
/// for an image's picture.
fn url(element: &str, attribute: &str, value: &str) -> Result<(), NarrativeFault> {
    // Browsers drop whitespace and control characters inside a scheme
    // (`java\tscript:`) and ignore case.
    let folded: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .flat_map(char::to_lowercase)
        .collect();
    let Some((scheme, rest)) = folded.split_once(':') else {
        return Ok(());
    };
    // A colon after a path or a query is no scheme (`page?a=b:c`).
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return Ok(());
    }
    let ok = match scheme {
        "http" | "https" | "mailto" | "tel" | "urn" | "ftp" => true,
        // SVG may hold scripts.
        "data" => {
            attribute == "src" && element == "img" && rest.starts_with("image/") && !rest.starts_with("image/svg")
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(txt1(format!(
            "{attribute}= on <{element}> uses the URL scheme '{}:', which is not allowed in a narrative",
            shown(scheme)
        )))
    }
}

/// Inline styles only: nothing fetched (`url(`, `@import`) or run
/// (`expression(`, `behavior`, `-moz-binding`); CSS escapes could spell
/// either, so none.
fn style(element: &str, value: &str) -> Result<(), NarrativeFault> {
    let v = value.to_ascii_lowercase();
    let bad = [
        "url(",
        "@import",
        "expression(",
        "behavior",
        "-moz-binding",
        "javascript:",
        "\\",
    ]
    .iter()
    .any(|b| v.contains(b));
    if bad {
        return Err(txt1(format!(
            "the style of <{element}> loads or runs something (url(), @import, expression(), escapes), which is not allowed in a narrative"
        )));
    }
    Ok(())
}

/// A name from the input, cut short.
fn shown(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn div(inner: &str) -> String {
        format!(r#"<div xmlns="http://www.w3.org/1999/xhtml">{inner}</div>"#)
    }

    #[test]
    fn a_rich_narrative_passes() {
        let ok = [
            div("<p>Bilan initial</p>"),
            div(
                r##"<table class="grid"><thead><tr><th scope="col">Test</th><th>Valeur</th></tr></thead><tbody><tr><td colspan="2" style="color: red">6MWT &amp; TUG &#160;: 420 m</td></tr></tbody></table><ul><li><a href="https://www.has-sante.fr/guide">HAS</a></li><li><a href="#obs-1">mesure</a></li></ul><img src="#photo" alt="courbe"/><br/><img src="data:image/png;base64,iVBORw0KGgo="/>"##,
            ),
            div("<!-- généré --><span xml:lang=\"fr\">é</span>"),
            div(r##"<img src="#chart"/>"##),
            r#"<div xmlns='http://www.w3.org/1999/xhtml'><p>ok</p></div>"#.to_string(),
        ];
        for d in ok {
            assert_eq!(check(&d), Ok(()), "{d}");
        }
    }

    fn refused(d: &str) -> NarrativeFault {
        check(d).expect_err(d)
    }

    #[test]
    fn what_runs_or_loads_is_refused() {
        for (d, says) in [
            (div("<script>alert(1)</script><p>x</p>"), "<script>"),
            (div(r#"<img src="x.png" onload="alert(1)"/>"#), "onload"),
            (div(r#"<p ONCLICK="x">y</p>"#), "ONCLICK"),
            // A name whose second byte is inside a character.
            (div(r#"<p aé="x">y</p>"#), "aé"),
            (div(r#"<a href="javascript:alert(1)">x</a>"#), "'javascript:'"),
            (div(r#"<a href=" JaVa&#x09;Script:alert(1)">x</a>"#), "'javascript:'"),
            (div(r#"<a href="&#106;avascript:alert(1)">x</a>"#), "'javascript:'"),
            (div(r#"<a href="vbscript:x">x</a>"#), "'vbscript:'"),
            (div(r#"<a href="data:text/html,x">x</a>"#), "'data:'"),
            (div(r#"<img src="data:image/svg+xml,x"/>"#), "'data:'"),
            (div(r#"<iframe src="https://x"></iframe>"#), "<iframe>"),
            (div("<style>p{}</style><p>x</p>"), "<style>"),
            (div(r#"<link rel="stylesheet" href="https://x"/><p>x</p>"#), "<link>"),
            (div(r#"<form><input name="x"/></form>"#), "<form>"),
            (div("<object></object><embed/><p>x</p>"), "<object>"),
            (div(r#"<p style="background:url(https://tracker)">x</p>"#), "style"),
            (div(r#"<svg:svg xmlns:svg="http://www.w3.org/2000/svg"/>"#), "<svg:svg>"),
            (div(r#"<p xlink:href="x">y</p>"#), "xlink:href"),
        ] {
            let f = refused(&d);
            assert_eq!(f.key, "txt-1", "{d}");
            assert!(f.reason.contains(says), "{d}: {f}");
        }
    }

    #[test]
    fn the_form_of_the_div_is_xhtml() {
        for d in [
            "<p>x</p>".to_string(),
            "<div><p>x</p></div>".to_string(),
            r#"<div xmlns="http://www.w3.org/2000/svg"><p>x</p></div>"#.to_string(),
            div("<p>x</div>"),
            div("<p>x"),
            div("<p>a &nbsp; b</p>"),
            format!("{}{}", div("<p>a</p>"), div("<p>b</p>")),
            format!("{}trailing", div("<p>a</p>")),
            div(r#"<p class="a" class="b">x</p>"#),
            div("<p class=a>x</p>"),
            format!("<!DOCTYPE html>{}", div("x")),
            div("<?php x ?>x"),
        ] {
            assert_eq!(refused(&d).key, "txt-1", "{d}");
        }
    }

    #[test]
    fn a_narrative_says_something() {
        for d in [div(""), div("  \n "), div("<p> </p><br/>")] {
            assert_eq!(refused(&d).key, "txt-2", "{d}");
        }
    }
}
