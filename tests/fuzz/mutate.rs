//! Mutations: byte-level edits any file gets, and edits that know a format's framing
//! (protobuf wire fields, `.npy` headers, zip headers, PNG chunks, JPEG segments).

use super::Rng;

/// Integers that sit on the edges readers check (and forget to check).
pub const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    7,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 1,
];

/// One byte-level edit: a bit flip, an interesting byte or integer, truncation,
/// insertion, deletion or duplication of a range.
pub fn bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(b.len());
    match rng.below(9) {
        0 | 1 => b[at] ^= 1 << rng.below(8),
        2 => b[at] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 1]),
        3 => {
            let v = rng.pick(&INTERESTING).to_le_bytes();
            let n = *rng.pick(&[1usize, 2, 4, 8]);
            let end = (at + n).min(b.len());
            b[at..end].copy_from_slice(&v[..end - at]);
        }
        4 => b.truncate(at),
        5 => {
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            b.splice(at..at, ins);
        }
        6 => {
            let end = (at + 1 + rng.below(32)).min(b.len());
            b.drain(at..end);
        }
        7 => {
            let end = (at + 1 + rng.below(64)).min(b.len());
            let chunk = b[at..end].to_vec();
            let to = rng.below(b.len() + 1);
            b.splice(to..to, chunk);
        }
        _ => b[at] = b[at].wrapping_add(rng.below(5) as u8).wrapping_sub(2),
    }
}

/// Writes `v` as a protobuf varint.
pub fn varint(v: u64, out: &mut Vec<u8>) {
    let mut v = v;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A protobuf field found on the wire: where its tag starts, where its value starts and
/// ends, its wire type, and (for varints and lengths) the number read.
#[derive(Clone, Copy, Debug)]
struct Field {
    start: usize,
    value_start: usize,
    end: usize,
    wire: u8,
    number: u64,
}

/// The fields of the message in `b[from..to]`, and of every length-delimited field that
/// parses as a message itself, recursively (strings and packed lists that happen to parse
/// are fine: they are bytes to mutate too).
fn fields(b: &[u8], from: usize, to: usize, depth: usize, out: &mut Vec<Field>) -> bool {
    let mut at = from;
    let mut found = Vec::new();
    while at < to {
        let start = at;
        let Some(tag) = read_varint(b, &mut at) else {
            return false;
        };
        let wire = (tag & 7) as u8;
        let value_start;
        let number;
        match wire {
            0 => {
                let vs = at;
                let Some(v) = read_varint(b, &mut at) else {
                    return false;
                };
                value_start = vs;
                number = v;
            }
            1 => {
                value_start = at;
                number = 0;
                at += 8;
            }
            2 => {
                let Some(len) = read_varint(b, &mut at) else {
                    return false;
                };
                value_start = at;
                number = len;
                at = match usize::try_from(len).ok().and_then(|l| at.checked_add(l)) {
                    Some(e) => e,
                    None => return false,
                };
            }
            5 => {
                value_start = at;
                number = 0;
                at += 4;
            }
            _ => return false,
        }
        if at > to || tag >> 3 == 0 {
            return false;
        }
        found.push(Field {
            start,
            value_start,
            end: at,
            wire,
            number,
        });
    }
    for f in &found {
        out.push(*f);
        if f.wire == 2 && depth < 12 && f.end > f.value_start {
            let mut inner = Vec::new();
            if fields(b, f.value_start, f.end, depth + 1, &mut inner) {
                out.extend(inner);
            }
        }
    }
    true
}

/// One edit of a protobuf message on the wire: a varint set to an interesting value, a
/// length prefix made wrong (the bytes after it then parse as something else), a field
/// removed or repeated. Falls back to a byte edit when the bytes do not parse.
pub fn protobuf(rng: &mut Rng, b: &mut Vec<u8>) {
    let mut all = Vec::new();
    fields(b, 0, b.len(), 0, &mut all);
    if all.is_empty() {
        return bytes(rng, b);
    }
    let f = *rng.pick(&all);
    let tag_and_len = |v: u64| {
        let mut enc = Vec::new();
        varint(v, &mut enc);
        enc
    };
    match (f.wire, rng.below(4)) {
        (0, _) => {
            let v = if rng.chance(3) {
                f.number.wrapping_add(rng.below(5) as u64).wrapping_sub(2)
            } else {
                *rng.pick(&INTERESTING)
            };
            let enc = tag_and_len(v);
            b.splice(f.value_start..f.end, enc);
        }
        (2, 0 | 1) => {
            // The length prefix sits between the tag and the value.
            let mut at = f.start;
            read_varint(b, &mut at);
            let len_start = at;
            let v = if rng.chance(2) {
                f.number.wrapping_add(rng.below(9) as u64).wrapping_sub(4)
            } else {
                *rng.pick(&INTERESTING)
            };
            let enc = tag_and_len(v);
            b.splice(len_start..f.value_start, enc);
        }
        (_, 2) => {
            b.drain(f.start..f.end);
        }
        _ => {
            let copy = b[f.start..f.end].to_vec();
            b.splice(f.end..f.end, copy);
        }
    }
}

/// One edit of a `.npy` payload's header: shape, descr, order, format version or header
/// length; or of its data (truncated or extended).
pub fn npy(rng: &mut Rng, b: &mut Vec<u8>) {
    let Some((start, end)) = npy_header(b) else {
        return bytes(rng, b);
    };
    let text = String::from_utf8_lossy(&b[start..end]).into_owned();
    let dims = [
        "0",
        "1",
        "2",
        "3",
        "7",
        "-1",
        "65536",
        "4294967296",
        "1099511627776",
        "4611686018427387904",
        "9223372036854775807",
        "99999999999999999999",
    ];
    let descrs = [
        "<f4",
        ">f4",
        "<f8",
        "<f2",
        "|u1",
        "|i1",
        "<i8",
        "=i4",
        "|b1",
        "<U0",
        "<U1",
        "<U1000000000",
        "<U4611686018427387904",
        "|O",
        "<c8",
        "|S3",
        "<M8[ns]",
        "",
        "<f4x",
    ];
    let new_text = match rng.below(8) {
        0..=2 => {
            // A new shape: the old one with a dim changed, added or dropped.
            let open = text.find("'shape': (").map(|i| i + 10);
            let close = open.and_then(|o| text[o..].find(')').map(|c| o + c));
            let (Some(o), Some(c)) = (open, close) else {
                return bytes(rng, b);
            };
            let mut parts: Vec<String> = text[o..c]
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            match rng.below(3) {
                0 if !parts.is_empty() => {
                    let i = rng.below(parts.len());
                    parts[i] = rng.pick(&dims).to_string();
                }
                1 => parts.insert(rng.below(parts.len() + 1), rng.pick(&dims).to_string()),
                _ if !parts.is_empty() => {
                    parts.remove(rng.below(parts.len()));
                }
                _ => parts.push(rng.pick(&dims).to_string()),
            }
            let shape = match parts.len() {
                1 => format!("{},", parts[0]),
                _ => parts.join(", "),
            };
            format!("{}{shape}{}", &text[..o], &text[c..])
        }
        3 | 4 => {
            let o = text.find("'descr': '").map(|i| i + 10);
            let c = o.and_then(|o| text[o..].find('\'').map(|c| o + c));
            let (Some(o), Some(c)) = (o, c) else {
                return bytes(rng, b);
            };
            format!("{}{}{}", &text[..o], rng.pick(&descrs), &text[c..])
        }
        5 => {
            if text.contains("False") {
                text.replacen("False", "True", 1)
            } else {
                text.replacen("True", "False", 1)
            }
        }
        6 => {
            // Format version and header length.
            b[6] = *rng.pick(&[1u8, 2, 3, 0, 4, 255]);
            let at = 8 + rng.below(2);
            b[at] = rng.next_u64() as u8;
            return;
        }
        _ => {
            // The data: truncated or extended.
            if rng.chance(2) {
                let keep = end + rng.below(b.len() - end + 1);
                b.truncate(keep);
            } else {
                let n = rng.below(64);
                b.extend((0..n).map(|_| rng.next_u64() as u8));
            }
            return;
        }
    };
    // The length field follows the new text (up to its closing newline).
    b.splice(start..end, new_text.into_bytes());
    fix_npy_len(b, start);
}

/// Header text bounds of a `.npy` payload (`start..end`), from its declared length.
pub fn npy_header(b: &[u8]) -> Option<(usize, usize)> {
    if b.len() < 12 || &b[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10usize),
        2 | 3 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => return None,
    };
    let end = start.checked_add(len)?;
    (end <= b.len()).then_some((start, end))
}

/// After the header text starting at `start` changed, sets the length field to end at the
/// header's closing newline.
fn fix_npy_len(b: &mut [u8], start: usize) {
    let Some(nl) = b[start..].iter().position(|&c| c == b'\n') else {
        return;
    };
    let len = nl + 1;
    if start == 10 {
        if let Ok(l) = u16::try_from(len) {
            b[8..10].copy_from_slice(&l.to_le_bytes());
        }
    } else if let Ok(l) = u32::try_from(len) {
        b[8..12].copy_from_slice(&l.to_le_bytes());
    }
}

/// Offsets of each occurrence of a 4-byte zip signature.
fn signatures(b: &[u8], sig: [u8; 4]) -> Vec<usize> {
    b.windows(4)
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect()
}

/// A zip record's signature.
type Sig = [u8; 4];
/// Fields of a zip record: (offset from its signature, width in bytes).
type Layout<'a> = &'a [(usize, usize)];

/// One edit of a zip archive's framing: a field of a local header, a central directory
/// entry or the end record (sizes, CRC, method, flags, name and extra lengths, offsets,
/// entry counts).
pub fn zip(rng: &mut Rng, b: &mut Vec<u8>) {
    // (signature, [(field offset, field width)])
    let local: &[(usize, usize)] = &[(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)];
    let central: &[(usize, usize)] = &[
        (8, 2),
        (10, 2),
        (16, 4),
        (20, 4),
        (24, 4),
        (28, 2),
        (30, 2),
        (32, 2),
        (42, 4),
    ];
    let end: &[(usize, usize)] = &[(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)];
    let kinds: [(Sig, Layout); 3] = [
        (*b"PK\x03\x04", local),
        (*b"PK\x01\x02", central),
        (*b"PK\x05\x06", end),
    ];
    let (sig, layout) = kinds[rng.below(3)];
    let at = signatures(b, sig);
    if at.is_empty() {
        return bytes(rng, b);
    }
    let base = *rng.pick(&at);
    let (off, width) = *rng.pick(layout);
    let pos = base + off;
    if pos + width > b.len() {
        return bytes(rng, b);
    }
    let old = b[pos..pos + width]
        .iter()
        .rev()
        .fold(0u64, |v, &x| (v << 8) | u64::from(x));
    let v = match rng.below(4) {
        0 => old.wrapping_add(rng.below(9) as u64).wrapping_sub(4),
        1 if off == 8 || off == 10 => *rng.pick(&[0u64, 8, 12, 14, 93, 99, 1]),
        _ => *rng.pick(&INTERESTING),
    };
    b[pos..pos + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// PNG chunks: (start of the length field, data length as declared, chunk type).
fn png_chunks(b: &[u8]) -> Vec<(usize, usize, [u8; 4])> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= b.len() {
        let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let ty: [u8; 4] = b[at + 4..at + 8].try_into().unwrap();
        out.push((at, len, ty));
        match at.checked_add(12 + len) {
            Some(n) if n <= b.len() => at = n,
            _ => break,
        }
    }
    out
}

/// Recomputes the CRC of the chunk at `at` (when it fits), so the decoder reads past it.
fn png_fix_crc(b: &mut [u8], at: usize) {
    let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let Some(crc_at) = at.checked_add(8 + len).filter(|&c| c + 4 <= b.len()) else {
        return;
    };
    let crc = crc32fast::hash(&b[at + 4..crc_at]);
    b[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One edit of a PNG: IHDR fields (width, height, bit depth, colour type, interlace), a
/// chunk's data or length, a chunk dropped or repeated; CRCs fixed after data edits.
pub fn png(rng: &mut Rng, b: &mut Vec<u8>) {
    let chunks = png_chunks(b);
    if chunks.is_empty() {
        return bytes(rng, b);
    }
    match rng.below(6) {
        0 | 1 => {
            let Some(&(at, _, _)) = chunks.iter().find(|c| &c.2 == b"IHDR") else {
                return bytes(rng, b);
            };
            let d = at + 8;
            if d + 13 > b.len() {
                return bytes(rng, b);
            }
            match rng.below(5) {
                0 | 1 => {
                    let side = d + 4 * rng.below(2);
                    let v = *rng.pick(&[
                        0u32,
                        1,
                        2,
                        255,
                        16384,
                        16385,
                        65535,
                        65536,
                        100_000,
                        0x7fff_ffff,
                        u32::MAX,
                    ]);
                    b[side..side + 4].copy_from_slice(&v.to_be_bytes());
                }
                2 => b[d + 8] = *rng.pick(&[1u8, 2, 4, 8, 16, 3, 0]),
                3 => b[d + 9] = *rng.pick(&[0u8, 2, 3, 4, 6, 1, 7]),
                _ => b[d + 12] = *rng.pick(&[0u8, 1, 2]),
            }
            png_fix_crc(b, at);
        }
        2 | 3 => {
            let &(at, len, _) = rng.pick(&chunks);
            if len > 0 && at + 8 + len <= b.len() {
                let mut data = b[at + 8..at + 8 + len].to_vec();
                bytes(rng, &mut data);
                let new_len = (data.len() as u32).to_be_bytes();
                b.splice(at + 8..at + 8 + len, data);
                b[at..at + 4].copy_from_slice(&new_len);
                png_fix_crc(b, at);
            }
        }
        4 => {
            let &(at, _, _) = rng.pick(&chunks);
            let v = *rng.pick(&[0u32, 1, 0x7fff_ffff, u32::MAX, 13]);
            b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        _ => {
            let &(at, len, _) = rng.pick(&chunks);
            let end = (at + 12 + len).min(b.len());
            if rng.chance(2) {
                b.drain(at..end);
            } else {
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
        }
    }
}

/// JPEG segments with a length: (offset of the marker, marker byte, declared length).
fn jpeg_segments(b: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut at = 2;
    while at + 4 <= b.len() && b[at] == 0xff {
        let marker = b[at + 1];
        let len = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
        out.push((at, marker, len));
        if marker == 0xda {
            break;
        }
        at += 2 + len;
    }
    out
}

/// One edit of a JPEG: frame header fields (precision, height, width, component count,
/// sampling factors, table ids), a segment's length or bytes, the entropy-coded data.
pub fn jpeg(rng: &mut Rng, b: &mut Vec<u8>) {
    let segs = jpeg_segments(b);
    if segs.is_empty() {
        return bytes(rng, b);
    }
    match rng.below(5) {
        0 | 1 => {
            let Some(&(at, _, len)) = segs.iter().find(|s| matches!(s.1, 0xc0..=0xc2)) else {
                return bytes(rng, b);
            };
            if at + 2 + len > b.len() || len < 8 {
                return bytes(rng, b);
            }
            let f = at + 4;
            match rng.below(4) {
                0 => b[f] = *rng.pick(&[8u8, 12, 16, 0, 255]),
                1 => {
                    let side = f + 1 + 2 * rng.below(2);
                    let v = *rng.pick(&[0u16, 1, 8, 16383, 16385, 65535, 60000]);
                    b[side..side + 2].copy_from_slice(&v.to_be_bytes());
                }
                2 => b[f + 5] = *rng.pick(&[0u8, 1, 2, 3, 4, 255]),
                _ => {
                    let i = f + 6 + rng.below(len.saturating_sub(8).max(1));
                    if i < b.len() {
                        b[i] = *rng.pick(&[0x11u8, 0x22, 0x44, 0x00, 0xff, 0x12, 0x21, 3]);
                    }
                }
            }
        }
        2 => {
            let &(at, _, _) = rng.pick(&segs);
            let v = *rng.pick(&[0u16, 1, 2, 3, 65535, 100]);
            b[at + 2..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        3 => {
            let &(at, _, len) = rng.pick(&segs);
            let end = (at + 2 + len).min(b.len());
            if end > at + 4 {
                let i = at + 4 + rng.below(end - at - 4);
                b[i] = rng.next_u64() as u8;
            }
        }
        _ => {
            // The scan data after the last header.
            let &(at, _, len) = segs.last().unwrap();
            let from = (at + 2 + len).min(b.len());
            if from < b.len() {
                let mut tail = b.split_off(from);
                bytes(rng, &mut tail);
                b.extend(tail);
            }
        }
    }
}
