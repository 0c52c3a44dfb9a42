//! Keeps the example frames in `docs/PROTOCOL.md` true to the code.
//!
//! Every example in the document is marked with an HTML comment
//! `<!-- frame: NAME -->`, followed by a fenced ```` ```cbor-diag ```` block
//! (CBOR diagnostic notation) and a fenced ```` ```hex ```` block (the frame:
//! the 4-byte length prefix, then the CBOR body). This test rebuilds each frame
//! with `quince::protocol`'s encoders and checks that
//!
//! * the document holds exactly the expected set of examples, and every `hex`
//!   block is a marked example;
//! * each hex block is byte for byte what the encoder produces;
//! * each diagnostic block is the diagnostic notation of those bytes;
//! * each frame decodes back (`decode_request` / `decode_reply` /
//!   `decode_event`) to the value it was made from.
//!
//! To regenerate the examples after a protocol change, run
//! `cargo test --test protocol_doc print_examples -- --ignored --nocapture`
//! and paste the output into the document.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use ciborium::Value;
use quince::protocol::{
    BackupReady, Body, ErrorBody, ErrorCode, Event, MAX_FRAME, Marker, Message, Page, Reply,
    Request, Role, SendAck, Session, StreamHeader, decode_event, decode_reply, decode_request,
    decode_result, decode_stream_header, encode_err, encode_event, encode_ok, encode_request,
    encode_stream_header,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

/// Decodes a frame body and asserts it is the value the example was made from.
type Check = Box<dyn Fn(&[u8])>;

/// One example frame: its name in the document, the bytes the code produces,
/// and a check that decodes those bytes back to the original value.
struct Example {
    name: &'static str,
    bytes: Vec<u8>,
    check: Check,
}

fn request(name: &'static str, id: u64, req: Request) -> Example {
    let bytes = encode_request(id, &req);
    Example {
        name,
        bytes,
        check: Box::new(move |body| {
            let raw =
                decode_request(body).unwrap_or_else(|e| panic!("{name}: decode_request: {e}"));
            assert_eq!(raw.id, id, "{name}: id");
            let op = raw.op.clone();
            let parsed = raw.parse().unwrap_or_else(|e| panic!("{name}: parse: {e}"));
            assert_eq!(parsed.as_ref(), Some(&req), "{name}: request (op {op})");
        }),
    }
}

fn ok<T>(name: &'static str, id: u64, result: T) -> Example
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let bytes = encode_ok(id, &result);
    Example {
        name,
        bytes,
        check: Box::new(move |body| {
            match decode_reply(body).unwrap_or_else(|e| panic!("{name}: decode_reply: {e}")) {
                Reply::Ok {
                    id: got,
                    result: value,
                } => {
                    assert_eq!(got, id, "{name}: id");
                    let decoded: T = decode_result(value)
                        .unwrap_or_else(|e| panic!("{name}: decode_result: {e}"));
                    assert_eq!(decoded, result, "{name}: result");
                }
                Reply::Err { error, .. } => panic!("{name}: expected ok, got error {error:?}"),
            }
        }),
    }
}

fn error(name: &'static str, id: u64, err: ErrorBody) -> Example {
    let bytes = encode_err(id, &err);
    Example {
        name,
        bytes,
        check: Box::new(move |body| {
            match decode_reply(body).unwrap_or_else(|e| panic!("{name}: decode_reply: {e}")) {
                Reply::Err { id: got, error } => {
                    assert_eq!(got, id, "{name}: id");
                    assert_eq!(error, err, "{name}: error body");
                }
                Reply::Ok { result, .. } => panic!("{name}: expected an error, got ok {result:?}"),
            }
        }),
    }
}

fn event(name: &'static str, ev: Event) -> Example {
    let bytes = encode_event(&ev);
    Example {
        name,
        bytes,
        check: Box::new(move |body| {
            let decoded =
                decode_event(body).unwrap_or_else(|e| panic!("{name}: decode_event: {e}"));
            assert_eq!(decoded, ev, "{name}: event");
        }),
    }
}

fn stream_header(name: &'static str, header: StreamHeader) -> Example {
    let bytes = encode_stream_header(&header);
    Example {
        name,
        bytes,
        check: Box::new(move |body| {
            assert_eq!(
                decode_stream_header(body).as_ref(),
                Some(&header),
                "{name}: stream header"
            );
            assert!(decode_event(body).is_err(), "{name}: read as an event");
        }),
    }
}

/// The message id used throughout the examples: bytes 0x00 to 0x0f.
fn mid() -> ByteBuf {
    ByteBuf::from((0u8..16).collect::<Vec<u8>>())
}

/// The message alice sends to bob in the examples.
fn hi_message() -> Message {
    Message {
        conv: 1,
        seq: 1,
        mid: mid(),
        from: "alice".into(),
        device: 1,
        ts: 1_700_000_000_000,
        body: Body::text("hi"),
    }
}

/// Every example the document must contain, in document order.
fn examples() -> Vec<Example> {
    vec![
        request("ping", 1, Request::Ping {}),
        request(
            "send",
            2,
            Request::Send {
                conv: None,
                user: Some("bob".into()),
                mid: mid(),
                text: "hi".into(),
                ext: None,
                reply_to: None,
                attachment: None,
            },
        ),
        ok(
            "send_ok",
            2,
            SendAck {
                conv: 1,
                seq: 1,
                ts: 1_700_000_000_000,
                duplicate: false,
            },
        ),
        error(
            "err_not_authenticated",
            3,
            ErrorBody {
                code: ErrorCode::NotAuthenticated,
                message: "log in first".into(),
                retry_after_ms: None,
            },
        ),
        event("event_message", Event::Message(hi_message())),
        request(
            "login",
            4,
            Request::Login {
                username: "alice".into(),
                password: "correct horse".into(),
                device: "laptop".into(),
            },
        ),
        ok(
            "login_ok",
            4,
            Session {
                user: "alice".into(),
                role: Role::Member,
                device: 1,
                token: Some("tok".into()),
            },
        ),
        error(
            "err_rate_limited",
            4,
            ErrorBody {
                code: ErrorCode::RateLimited,
                message: "too many failed logins".into(),
                retry_after_ms: Some(2000),
            },
        ),
        request(
            "history",
            5,
            Request::History {
                conv: 1,
                after: Some(0),
                before: None,
                limit: 100,
            },
        ),
        ok(
            "history_ok",
            5,
            Page {
                messages: vec![hi_message()],
                more: false,
            },
        ),
        error(
            "err_bad_frame",
            0,
            ErrorBody {
                code: ErrorCode::BadFrame,
                message: "not a request".into(),
                retry_after_ms: None,
            },
        ),
        request("admin_backup", 6, Request::AdminBackup {}),
        ok(
            "admin_backup_ok",
            6,
            BackupReady {
                bytes: 1_054_871,
                sha256: "5f2c0a8e4b6d1f3a9c7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a".into(),
            },
        ),
        stream_header(
            "stream_header_backup",
            StreamHeader {
                stream: "backup".into(),
                id: 6,
                offset: None,
            },
        ),
        request(
            "edit",
            8,
            Request::Edit {
                conv: 1,
                seq: 1,
                text: "hi!".into(),
            },
        ),
        event(
            "event_read",
            Event::Read(Marker {
                conv: 1,
                user: "bob".into(),
                seq: 2,
            }),
        ),
        // Attachments (section 17).
        request(
            "upload_begin",
            7,
            Request::UploadBegin {
                size: 2_411_724,
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            },
        ),
        ok(
            "upload_begin_ok",
            7,
            quince::protocol::UploadSlot {
                upload: 12,
                received: 1_048_576,
            },
        ),
        stream_header(
            "stream_header_upload",
            StreamHeader {
                stream: "upload".into(),
                id: 12,
                offset: Some(1_048_576),
            },
        ),
        stream_header(
            "stream_header_download",
            StreamHeader {
                stream: "download".into(),
                id: 9,
                offset: None,
            },
        ),
    ]
}

// ---------------------------------------------------------------------------
// CBOR diagnostic notation (RFC 8949 section 8), printed the same way here and
// in the document so the two can be compared exactly.

fn diag_inline(v: &Value) -> String {
    match v {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Bytes(b) => format!("h'{}'", hex::encode(b)),
        Value::Float(f) => {
            let s = f.to_string();
            if s.contains('.') || s.contains("inf") || s.contains("NaN") {
                s
            } else {
                format!("{s}.0")
            }
        }
        Value::Text(t) => text(t),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Tag(t, inner) => format!("{t}({})", diag_inline(inner)),
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(diag_inline).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", diag_inline(k), diag_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn text(t: &str) -> String {
    let mut out = String::from("\"");
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A map or array that fits in the line (72 columns) goes on one line;
/// otherwise one entry per line, indented by two spaces per level. `indent` is
/// the indentation of the line the value starts on, `column` where it starts.
fn diag(v: &Value, indent: usize, column: usize) -> String {
    const WIDTH: usize = 72;
    let inline = diag_inline(v);
    if column + inline.len() <= WIDTH {
        return inline;
    }
    let inner = indent + 2;
    let pad = " ".repeat(inner);
    let close = " ".repeat(indent);
    match v {
        Value::Map(entries) => {
            let lines: Vec<String> = entries
                .iter()
                .map(|(k, val)| {
                    let key = diag_inline(k);
                    let value = diag(val, inner, inner + key.len() + 2);
                    format!("{pad}{key}: {value}")
                })
                .collect();
            format!("{{\n{}\n{close}}}", lines.join(",\n"))
        }
        Value::Array(items) => {
            let lines: Vec<String> = items
                .iter()
                .map(|i| format!("{pad}{}", diag(i, inner, inner)))
                .collect();
            format!("[\n{}\n{close}]", lines.join(",\n"))
        }
        _ => inline,
    }
}

fn diag_of_body(body: &[u8]) -> String {
    let value: Value = ciborium::from_reader(body).expect("example body is CBOR");
    diag(&value, 0, 0)
}

/// The frame as hex: the length prefix on the first line, then the body in
/// lines of 16 bytes.
fn hex_lines(frame: &[u8]) -> String {
    let mut lines = vec![hex::encode(&frame[..4])];
    for chunk in frame[4..].chunks(16) {
        lines.push(
            chunk
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------
// Reading the document.

#[derive(Default, Debug)]
struct DocExample {
    diag: Option<String>,
    hex: Option<String>,
}

fn read_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Finds every `<!-- frame: NAME -->` marker and the `cbor-diag` and `hex`
/// blocks that follow it. An error for a `hex` or `cbor-diag` block without a
/// marker, a marker without a `hex` block, or a name used twice.
fn parse_doc(doc: &str) -> Result<BTreeMap<String, DocExample>, String> {
    let mut found: BTreeMap<String, DocExample> = BTreeMap::new();
    let mut pending: Option<String> = None;
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let line_no = n + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- frame:") {
            let name = rest
                .strip_suffix("-->")
                .ok_or(format!("line {line_no}: bad marker"))?
                .trim();
            if let Some(prev) = pending.take() {
                return Err(format!(
                    "line {line_no}: marker {name} follows marker {prev}, which has no hex block"
                ));
            }
            if found.contains_key(name) {
                return Err(format!("line {line_no}: example {name} appears twice"));
            }
            found.insert(name.to_string(), DocExample::default());
            pending = Some(name.to_string());
            continue;
        }
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        let info = info.trim().to_string();
        // Collect the fenced block (also when it is not one of ours, so its
        // contents are not mistaken for markers or fences).
        let mut block = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            block.push(l);
        }
        match info.as_str() {
            "hex" => {
                let name = pending.take().ok_or(format!(
                    "line {line_no}: hex block without a <!-- frame: NAME --> marker"
                ))?;
                found.get_mut(&name).expect("marker recorded").hex = Some(block.join("\n"));
            }
            "cbor-diag" => {
                let name = pending.as_ref().ok_or(format!(
                    "line {line_no}: cbor-diag block without a frame marker"
                ))?;
                let entry = found.get_mut(name).expect("marker recorded");
                if entry.diag.is_some() {
                    return Err(format!(
                        "line {line_no}: example {name} has two cbor-diag blocks"
                    ));
                }
                entry.diag = Some(
                    block
                        .iter()
                        .map(|l| l.trim_end())
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            _ => {}
        }
    }
    match pending {
        Some(name) => Err(format!("marker {name} has no hex block")),
        None => Ok(found),
    }
}

/// The examples in docs/PROTOCOL.md; the test fails if the document is malformed.
fn doc_examples() -> BTreeMap<String, DocExample> {
    parse_doc(&read_doc()).unwrap_or_else(|e| panic!("docs/PROTOCOL.md: {e}"))
}

fn parse_hex(name: &str, text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        digits
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "example {name}: hex must be lower-case hex digits and whitespace"
    );
    hex::decode(&digits).unwrap_or_else(|e| panic!("example {name}: bad hex: {e}"))
}

#[test]
fn document_has_exactly_the_expected_examples() {
    let found = doc_examples();
    let expected: BTreeSet<String> = examples().iter().map(|e| e.name.to_string()).collect();
    let names: BTreeSet<String> = found.keys().cloned().collect();
    assert_eq!(
        names, expected,
        "examples in docs/PROTOCOL.md differ from the expected set"
    );
}

#[test]
fn example_frames_match_the_encoders() {
    let found = doc_examples();
    for ex in examples() {
        let Some(doc) = found.get(ex.name) else {
            panic!("docs/PROTOCOL.md lacks example {}", ex.name);
        };
        let hex_text = doc
            .hex
            .as_deref()
            .unwrap_or_else(|| panic!("example {} has no hex block", ex.name));
        let bytes = parse_hex(ex.name, hex_text);
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(&ex.bytes),
            "example {}: the document's bytes differ from what the code encodes; expected\n{}",
            ex.name,
            hex_lines(&ex.bytes)
        );
        // The length prefix frames exactly the body.
        assert!(
            bytes.len() >= 4,
            "example {}: shorter than a length prefix",
            ex.name
        );
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4, "example {}: length prefix", ex.name);
        assert!(len <= MAX_FRAME, "example {}: over MAX_FRAME", ex.name);
        let body = &bytes[4..];
        (ex.check)(body);
        let diag_text = doc
            .diag
            .as_deref()
            .unwrap_or_else(|| panic!("example {} has no cbor-diag block", ex.name));
        assert_eq!(
            diag_text,
            diag_of_body(body),
            "example {}: diagnostic notation differs from the frame's contents",
            ex.name
        );
    }
}

/// The parser itself must notice a missing example or an unmarked hex block.
#[test]
fn doc_parser_rejects_missing_and_unmarked_examples() {
    let doc = read_doc();
    let first = examples().into_iter().next().unwrap().name;
    let without = doc.replace(
        &format!("<!-- frame: {first} -->"),
        "<!-- frame: renamed -->",
    );
    let names: BTreeSet<String> = parse_doc(&without).unwrap().keys().cloned().collect();
    assert!(!names.contains(first));
    let unmarked = format!("{doc}\n```hex\n00000000\n```\n");
    assert!(parse_doc(&unmarked).is_err());
    let orphan = doc.replacen("<!-- frame: ", "<!-- frame: a -->\n<!-- frame: ", 1);
    assert!(parse_doc(&orphan).is_err());
}

/// Prints every example in the document's format, for regenerating it.
#[test]
#[ignore]
fn print_examples() {
    for ex in examples() {
        println!("<!-- frame: {} -->", ex.name);
        println!("```cbor-diag\n{}\n```", diag_of_body(&ex.bytes[4..]));
        println!("```hex\n{}\n```\n", hex_lines(&ex.bytes));
    }
}
