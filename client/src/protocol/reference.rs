//! `docs/protocol.md`, the protocol reference, generated from this crate's
//! own definitions so the page cannot drift from them: every method of
//! [`methods!`](super) (name, read-only, parameter and result types, its
//! description), each parameter and result struct's fields with their
//! types and doc comments (read from the source of the protocol modules),
//! and every [`ErrorKind`] with its code and doc comment.
//!
//! The test `protocol_reference` fails when the committed page differs;
//! `LATCHKEY_UPDATE_DOCS=1 cargo test -p latchkey-client --lib protocol_reference`
//! writes it anew.

use super::{ErrorKind, METHOD_DOCS};
use std::fmt::Write;

/// The protocol modules' source, where field and kind docs are read.
const SOURCES: &[&str] = &[
    include_str!("../protocol.rs"),
    include_str!("apps.rs"),
    include_str!("totp.rs"),
    include_str!("stepup.rs"),
    include_str!("secrets.rs"),
    include_str!("git.rs"),
    include_str!("health.rs"),
    include_str!("oauth1.rs"),
    include_str!("proxy.rs"),
    include_str!("exchange.rs"),
    include_str!("keys.rs"),
    include_str!("slots.rs"),
];

/// Every kind, in the order the page lists them; the `match` makes a kind
/// added without a row here fail to compile.
fn every_kind() -> Vec<ErrorKind> {
    use ErrorKind::*;
    let all = vec![
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        FrameTooLarge,
        UnsupportedProtocol,
        NotInitialized,
        AlreadyInitialized,
        Locked,
        WrongPassphrase,
        KeyringUnavailable,
        VaultCorrupt,
        NotFound,
        AlreadyExists,
        Forbidden,
        ReauthRequired,
        RateLimited,
        ProviderUnavailable,
        ProviderError,
        ShuttingDown,
        ApprovalRequired,
        ApprovalDenied,
        StepUpRequired,
        WeakPassphrase,
        SubjectTokenUnavailable,
        VaultUnavailable,
        Internal,
        Unknown,
    ];
    for kind in &all {
        match kind {
            ParseError
            | InvalidRequest
            | MethodNotFound
            | InvalidParams
            | FrameTooLarge
            | UnsupportedProtocol
            | NotInitialized
            | AlreadyInitialized
            | Locked
            | WrongPassphrase
            | KeyringUnavailable
            | VaultCorrupt
            | NotFound
            | AlreadyExists
            | Forbidden
            | ReauthRequired
            | RateLimited
            | ProviderUnavailable
            | ProviderError
            | ShuttingDown
            | ApprovalRequired
            | ApprovalDenied
            | StepUpRequired
            | WeakPassphrase
            | SubjectTokenUnavailable
            | VaultUnavailable
            | Internal
            | Unknown => {}
        }
    }
    all
}

/// A struct's or enum's body in the sources: its fields (or variants) as
/// (name, type, doc). `None` when it is not a braced item of ours.
/// A field or variant: name, type (empty for a variant), doc comment.
type Row = (String, String, String);

fn item(name: &str) -> Option<(bool, Vec<Row>)> {
    for source in SOURCES {
        for (keyword, is_enum) in [("pub struct ", false), ("pub enum ", true)] {
            if source.contains(&format!("{keyword}{name} {{}}")) {
                return Some((false, Vec::new()));
            }
            let head = format!("{keyword}{name} {{\n");
            let Some(at) = source.find(&head) else {
                continue;
            };
            let body = &source[at + head.len()..];
            let body = &body[..body.find("\n}").unwrap_or(body.len())];
            let mut rows = Vec::new();
            let mut doc = String::new();
            for line in body.lines().map(str::trim) {
                if let Some(text) = line.strip_prefix("///") {
                    if !doc.is_empty() {
                        doc.push(' ');
                    }
                    doc.push_str(text.trim());
                } else if line.starts_with("#[") || line.is_empty() {
                } else if let Some(field) = line.strip_prefix("pub ").filter(|_| !is_enum) {
                    if let Some((field, ty)) = field.split_once(':') {
                        rows.push((
                            field.trim().into(),
                            ty.trim().trim_end_matches(',').into(),
                            std::mem::take(&mut doc),
                        ));
                    }
                } else if is_enum {
                    let variant = line.trim_end_matches(',');
                    let variant = variant.split([' ', '(', '{']).next().unwrap_or(variant);
                    rows.push((variant.into(), String::new(), std::mem::take(&mut doc)));
                } else {
                    doc.clear();
                }
            }
            return Some((is_enum, rows));
        }
    }
    None
}

/// The doc comment just above `pub enum ErrorKind`'s variant `variant`.
fn kind_doc(variant: &str) -> String {
    item("ErrorKind")
        .and_then(|(_, rows)| rows.into_iter().find(|(name, _, _)| name == variant))
        .map(|(_, _, doc)| doc)
        .unwrap_or_default()
}

fn doc(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The page, as `docs/protocol.md` must hold it.
pub(crate) fn render() -> String {
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# Latchkey protocol reference\n").unwrap();
    writeln!(w, "<!-- Generated from client/src/protocol.rs by client/src/protocol/reference.rs; do not edit.").unwrap();
    writeln!(w, "     Regenerate: LATCHKEY_UPDATE_DOCS=1 cargo test -p latchkey-client --lib protocol_reference -->\n").unwrap();
    writeln!(w, "One JSON-RPC 2.0 message per line (NDJSON) on the daemon's Unix socket, at most {} bytes per request line and {} per reply line; `hello` first, with `protocol` {}. A request is `{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"token.get\",\"params\":{{\"credential\":\"github\"}}}}`; a reply holds `result`, or `error` with `code`, `message` (the fix) and `data.kind` (one of the [error kinds](#error-kinds)) and, for some, `data.retry_after` (seconds).\n",
        super::MAX_REQUEST_LEN, super::MAX_REPLY_LEN, super::PROTOCOL_VERSION).unwrap();
    writeln!(w, "Every method may answer with the envelope's kinds (`parse_error`, `invalid_request`, `method_not_found`, `invalid_params`, `frame_too_large`, `rate_limited`, `shutting_down`, `internal`); methods that need the vault answer `not_initialized` or `locked` while it is absent or locked.\n").unwrap();
    writeln!(w, "## Methods\n").unwrap();
    writeln!(w, "| method | params | result | read-only | what it does |").unwrap();
    writeln!(w, "|---|---|---|---|---|").unwrap();
    for m in METHOD_DOCS {
        writeln!(
            w,
            "| [`{}`](#{}) | `{}` | `{}` | {} | {} |",
            m.name,
            m.name.replace('.', ""),
            cell(m.params),
            cell(m.result),
            if m.read_only { "yes" } else { "no" },
            cell(&doc(m.doc))
        )
        .unwrap();
    }
    let mut types: Vec<String> = Vec::new();
    for m in METHOD_DOCS {
        writeln!(w, "\n### {}\n", m.name).unwrap();
        writeln!(w, "{}\n", doc(m.doc)).unwrap();
        writeln!(
            w,
            "Params: `{}`. Result: `{}`.{}",
            m.params,
            m.result,
            if m.read_only {
                " Read-only: does not reset the auto-lock clock."
            } else {
                ""
            }
        )
        .unwrap();
        for ty in [m.params, m.result] {
            let inner = ty.trim_start_matches("Vec<").trim_end_matches('>').trim();
            if !types.iter().any(|t| t == inner) {
                types.push(inner.to_owned());
            }
        }
    }
    writeln!(w, "\n## Types\n").unwrap();
    writeln!(w, "Fields marked `Option<…>` may be absent. Secret fields travel in clear on the socket and are never logged.").unwrap();
    let mut i = 0;
    while i < types.len() {
        let ty = types[i].clone();
        i += 1;
        let Some((is_enum, rows)) = item(&ty) else {
            continue;
        };
        writeln!(w, "\n### {ty}\n").unwrap();
        if rows.is_empty() {
            writeln!(w, "An empty object: `{{}}`.").unwrap();
            continue;
        }
        if is_enum {
            writeln!(w, "| variant | meaning |\n|---|---|").unwrap();
        } else {
            writeln!(w, "| field | type | meaning |\n|---|---|---|").unwrap();
        }
        for (name, field_ty, doc) in &rows {
            if is_enum {
                writeln!(w, "| `{name}` | {} |", cell(doc)).unwrap();
            } else {
                writeln!(w, "| `{name}` | `{}` | {} |", cell(field_ty), cell(doc)).unwrap();
                // Nested types of ours get their own section.
                for word in field_ty.split(|c: char| !c.is_alphanumeric() && c != '_') {
                    if word.chars().next().is_some_and(char::is_uppercase)
                        && !types.iter().any(|t| t == word)
                        && item(word).is_some()
                    {
                        types.push(word.to_owned());
                    }
                }
            }
        }
    }
    writeln!(w, "\n## Error kinds\n").unwrap();
    writeln!(w, "| kind | code | meaning |\n|---|---|---|").unwrap();
    for kind in every_kind() {
        let variant = format!("{kind:?}");
        writeln!(
            w,
            "| `{}` | {} | {} |",
            kind.as_str(),
            kind.code(),
            cell(&kind_doc(&variant))
        )
        .unwrap();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed page is what the definitions generate.
    #[test]
    fn protocol_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        let want = render();
        if std::env::var_os("LATCHKEY_UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs")).unwrap();
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/protocol.md differs from what the protocol types generate: run `LATCHKEY_UPDATE_DOCS=1 cargo test -p latchkey-client --lib protocol_reference` and commit it"
        );
        for m in METHOD_DOCS {
            assert!(
                have.contains(&format!("### {}\n", m.name)),
                "{} has its section",
                m.name
            );
        }
    }

    /// Every method's params and result are found in [`SOURCES`] (a new
    /// protocol module must be listed there, or its types go undocumented).
    #[test]
    fn every_method_type_is_documented() {
        for m in METHOD_DOCS {
            for ty in [m.params, m.result] {
                let inner = ty.trim_start_matches("Vec<").trim_end_matches('>').trim();
                assert!(
                    item(inner).is_some(),
                    "{}: type {inner} is in no file of SOURCES (client/src/protocol/reference.rs)",
                    m.name
                );
            }
        }
    }
}
