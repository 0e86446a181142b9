//! NumPy `.npy` codec: header parsing and encoding, raw element decoding into [`Tensor`].
//!
//! Owns the byte format only (format versions 1–3, little/big endian, C and Fortran order).
//! Numeric, bool and unicode (`<U`) arrays decode; object, bytes, complex and structured
//! arrays are reported as [`NpyError::Unsupported`] after reading only the header, so callers
//! can skip them with a reason. File names and array names are added by the caller.

use crate::ir::tensor::{DType, Tensor};
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use std::io::Read;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Why an `.npy` payload could not be decoded (no file context; the caller adds it).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NpyError {
    /// The bytes are not a well-formed `.npy` file.
    #[error("malformed .npy data: {0}")]
    Malformed(String),
    /// Well-formed, but the element type has no numeric tensor form here.
    #[error("unsupported numpy dtype '{descr}' ({why})")]
    Unsupported { descr: String, why: String },
}

/// Byte order of a numpy element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

/// Element kind from a numpy type descriptor such as `<f4`, `|b1` or `<U12`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// Fixed-width UTF-32 string of this many code points.
    Unicode(usize),
}

impl Kind {
    fn item_size(self) -> usize {
        match self {
            Kind::I8 | Kind::U8 | Kind::Bool => 1,
            Kind::F16 | Kind::I16 | Kind::U16 => 2,
            Kind::F32 | Kind::I32 | Kind::U32 => 4,
            Kind::F64 | Kind::I64 | Kind::U64 => 8,
            Kind::Unicode(n) => 4 * n,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// The raw `descr` entry as written (`<f4`, `<U116`, or a list for structured types).
    pub descr: String,
    /// Whether the data is stored column-major.
    pub fortran_order: bool,
    /// Array shape.
    pub shape: Vec<usize>,
    /// Offset of the first data byte.
    pub data_offset: usize,
}

/// Parses the header of an `.npy` payload.
pub fn parse_header(bytes: &[u8]) -> Result<Header, NpyError> {
    let bad = |m: &str| NpyError::Malformed(m.to_string());
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header length"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(NpyError::Malformed(format!("unknown format version {v}"))),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("header runs past the end of the data"))?;
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not UTF-8"))?;
    let dict = match Lit::parse(text)? {
        Lit::Dict(d) => d,
        _ => return Err(bad("header is not a dict")),
    };
    let get = |k: &str| dict.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Lit::Str(s)) => s.clone(),
        Some(other) => other.render(),
        None => return Err(bad("header has no 'descr'")),
    };
    let fortran_order = match get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        _ => return Err(bad("header has no boolean 'fortran_order'")),
    };
    let shape = match get("shape") {
        Some(Lit::Tuple(items)) => items
            .iter()
            .map(|i| match i {
                Lit::Int(n) => usize::try_from(*n).map_err(|_| bad("negative dimension")),
                _ => Err(bad("non-integer dimension in 'shape'")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad("header has no tuple 'shape'")),
    };
    Ok(Header {
        descr,
        fortran_order,
        shape,
        data_offset: end,
    })
}

/// Parses a descriptor into its byte order and element kind.
fn parse_descr(descr: &str) -> Result<(Endian, Kind), NpyError> {
    let unsupported = |why: &str| NpyError::Unsupported {
        descr: descr.to_string(),
        why: why.to_string(),
    };
    let mut chars = descr.chars();
    let (endian, rest) = match chars.next() {
        Some('<') | Some('|') => (Endian::Little, chars.as_str()),
        Some('>') => (Endian::Big, chars.as_str()),
        Some('=') => (
            if cfg!(target_endian = "big") {
                Endian::Big
            } else {
                Endian::Little
            },
            chars.as_str(),
        ),
        _ => return Err(unsupported("structured or unrecognised type")),
    };
    let kind = match rest {
        "f2" => Kind::F16,
        "f4" => Kind::F32,
        "f8" => Kind::F64,
        "i1" => Kind::I8,
        "i2" => Kind::I16,
        "i4" => Kind::I32,
        "i8" => Kind::I64,
        "u1" => Kind::U8,
        "u2" => Kind::U16,
        "u4" => Kind::U32,
        "u8" => Kind::U64,
        "b1" => Kind::Bool,
        _ if rest.starts_with('U') => {
            let n = rest[1..]
                .parse::<usize>()
                .ok()
                .filter(|n| n.checked_mul(4).is_some())
                .ok_or_else(|| unsupported("bad unicode width"))?;
            // numpy never writes zero-width strings: elements without bytes would let a
            // header alone ask for any number of them.
            if n == 0 {
                return Err(unsupported("zero-width unicode type"));
            }
            Kind::Unicode(n)
        }
        _ if rest.starts_with('O') => return Err(unsupported("object array (pickled)")),
        _ if rest.starts_with('S') || rest.starts_with('a') => {
            return Err(unsupported("byte-string array"))
        }
        _ if rest.starts_with('c') => return Err(unsupported("complex numbers")),
        _ if rest.starts_with('V') => return Err(unsupported("void/structured type")),
        _ if rest.starts_with('M') || rest.starts_with('m') => {
            return Err(unsupported("datetime/timedelta"))
        }
        _ => return Err(unsupported("unrecognised type")),
    };
    Ok((endian, kind))
}

/// Element type of an array: byte order and kind, parsed from a `descr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elem {
    endian: Endian,
    kind: Kind,
}

impl Elem {
    /// Parses a descriptor such as `<f4`; unsupported kinds are [`NpyError::Unsupported`].
    pub fn parse(descr: &str) -> Result<Elem, NpyError> {
        let (endian, kind) = parse_descr(descr)?;
        Ok(Elem { endian, kind })
    }

    /// Bytes per element.
    pub fn item_size(self) -> usize {
        self.kind.item_size()
    }

    /// The tensor element type this decodes to.
    pub fn dtype(self) -> DType {
        match self.kind {
            Kind::F16 => DType::F16,
            Kind::F32 => DType::F32,
            Kind::F64 => DType::F64,
            Kind::I8 => DType::I8,
            Kind::I16 => DType::I16,
            Kind::I32 => DType::I32,
            Kind::I64 => DType::I64,
            Kind::U8 => DType::U8,
            Kind::U16 => DType::U16,
            Kind::U32 => DType::U32,
            Kind::U64 => DType::U64,
            Kind::Bool => DType::Bool,
            Kind::Unicode(_) => DType::String,
        }
    }

    /// True for fixed-width unicode strings.
    pub fn is_text(self) -> bool {
        matches!(self.kind, Kind::Unicode(_))
    }

    /// Decodes `data` (exactly the bytes of `shape`'s elements, stored in C order, or column
    /// major when `fortran`) into a tensor in logical (C) order.
    pub fn decode(self, shape: &[usize], fortran: bool, data: &[u8]) -> Result<Tensor, NpyError> {
        decode_data(self.endian, self.kind, shape, fortran, data)
    }
}

/// Number of elements of `shape`, or an error when it overflows.
pub fn element_count(shape: &[usize]) -> Result<usize, NpyError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Malformed("shape overflows".into()))
}

/// The error for a payload holding fewer data bytes than its header announces.
pub fn short_data(header: &Header, need: u64, found: u64) -> NpyError {
    NpyError::Malformed(format!(
        "expected {need} data bytes for shape {:?} of '{}', found {found}",
        header.shape, header.descr
    ))
}

/// Reads a `.npy` header from the start of a stream (nothing past it is read): `Err` when
/// the stream fails, `Ok(Err(_))` when the bytes are not a `.npy` header.
pub fn read_header(r: &mut impl Read) -> Result<Result<Header, NpyError>, std::io::Error> {
    // A payload that ends inside its header is malformed, not a failed read.
    fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, std::io::Error> {
        match r.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
    let short = || {
        Ok(Err(NpyError::Malformed(
            "header runs past the end of the data".into(),
        )))
    };
    let mut prefix = vec![0u8; 10];
    if !fill(r, &mut prefix)? {
        return Ok(Err(NpyError::Malformed("missing \\x93NUMPY magic".into())));
    }
    if &prefix[..6] != MAGIC {
        return Ok(parse_header(&prefix));
    }
    let wide = matches!(prefix[6], 2 | 3);
    if wide {
        prefix.resize(12, 0);
        if !fill(r, &mut prefix[10..])? {
            return short();
        }
    }
    let len = if wide {
        u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize
    } else {
        usize::from(u16::from_le_bytes([prefix[8], prefix[9]]))
    };
    if len > (1 << 24) {
        return Ok(Err(NpyError::Malformed(format!(
            "header of {len} bytes is implausibly long"
        ))));
    }
    let at = prefix.len();
    prefix.resize(at + len, 0);
    if !fill(r, &mut prefix[at..])? {
        return short();
    }
    Ok(parse_header(&prefix))
}

/// Decodes a whole `.npy` payload into a tensor (unicode arrays become [`Tensor::Str`]).
pub fn decode(bytes: &[u8]) -> Result<Tensor, NpyError> {
    let header = parse_header(bytes)?;
    let elem = Elem::parse(&header.descr)?;
    let count = element_count(&header.shape)?;
    let need = count
        .checked_mul(elem.item_size())
        .ok_or_else(|| NpyError::Malformed("data size overflows".into()))?;
    let data = &bytes[header.data_offset..];
    if data.len() < need {
        return Err(short_data(&header, need as u64, data.len() as u64));
    }
    elem.decode(&header.shape, header.fortran_order, &data[..need])
}

/// Decodes exactly `count(shape)` elements from `data`.
fn decode_data(
    endian: Endian,
    kind: Kind,
    shape: &[usize],
    fortran: bool,
    data: &[u8],
) -> Result<Tensor, NpyError> {
    let count = element_count(shape)?;
    if count.checked_mul(kind.item_size()) != Some(data.len()) {
        return Err(NpyError::Malformed(format!(
            "{} data bytes do not hold shape {shape:?}",
            data.len()
        )));
    }

    macro_rules! num {
        ($var:ident, $t:ty, $n:expr) => {{
            let v: Vec<$t> = data
                .chunks_exact($n)
                .map(|c| {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    match endian {
                        Endian::Little => <$t>::from_le_bytes(b),
                        Endian::Big => <$t>::from_be_bytes(b),
                    }
                })
                .collect();
            Tensor::$var(build(shape, fortran, v)?)
        }};
    }

    Ok(match kind {
        Kind::F16 => {
            let v: Vec<half::f16> = data
                .chunks_exact(2)
                .map(|c| {
                    let b = [c[0], c[1]];
                    half::f16::from_bits(match endian {
                        Endian::Little => u16::from_le_bytes(b),
                        Endian::Big => u16::from_be_bytes(b),
                    })
                })
                .collect();
            Tensor::F16(build(shape, fortran, v)?)
        }
        Kind::F32 => num!(F32, f32, 4),
        Kind::F64 => num!(F64, f64, 8),
        Kind::I8 => num!(I8, i8, 1),
        Kind::I16 => num!(I16, i16, 2),
        Kind::I32 => num!(I32, i32, 4),
        Kind::I64 => num!(I64, i64, 8),
        Kind::U8 => num!(U8, u8, 1),
        Kind::U16 => num!(U16, u16, 2),
        Kind::U32 => num!(U32, u32, 4),
        Kind::U64 => num!(U64, u64, 8),
        Kind::Bool => {
            let v: Vec<bool> = data.iter().map(|&b| b != 0).collect();
            Tensor::Bool(build(shape, fortran, v)?)
        }
        Kind::Unicode(n) => {
            let mut v = Vec::with_capacity(count);
            for item in data.chunks_exact(4 * n.max(1)).take(count) {
                let mut s = String::new();
                for c in item.chunks_exact(4) {
                    let b = [c[0], c[1], c[2], c[3]];
                    let code = match endian {
                        Endian::Little => u32::from_le_bytes(b),
                        Endian::Big => u32::from_be_bytes(b),
                    };
                    if code == 0 {
                        break;
                    }
                    s.push(char::from_u32(code).ok_or_else(|| {
                        NpyError::Malformed(format!(
                            "invalid code point {code:#x} in unicode array"
                        ))
                    })?);
                }
                v.push(s);
            }
            // `<U0` arrays have no bytes per item; every element is the empty string.
            v.resize(count, String::new());
            Tensor::Str(build(shape, fortran, v)?)
        }
    })
}

fn build<T: Clone>(shape: &[usize], fortran: bool, v: Vec<T>) -> Result<ArrayD<T>, NpyError> {
    let a = if fortran {
        ArrayD::from_shape_vec(IxDyn(shape).f(), v)
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), v)
    }
    .map_err(|e| NpyError::Malformed(format!("shape {shape:?}: {e}")))?;
    Ok(a.as_standard_layout().into_owned())
}

/// Encodes a tensor as a version 1.0 `.npy` payload (C order, little endian).
///
/// Types numpy has no dtype for (bfloat16, int4, uint4) are rejected rather than widened.
pub fn encode(t: &Tensor) -> Result<Vec<u8>, NpyError> {
    let unsupported = |d: &str| NpyError::Unsupported {
        descr: d.to_string(),
        why: "numpy has no such dtype".to_string(),
    };
    let mut body: Vec<u8> = Vec::new();
    macro_rules! le {
        ($a:expr, $d:expr) => {{
            for v in $a.iter() {
                body.extend_from_slice(&v.to_le_bytes());
            }
            $d.to_string()
        }};
    }
    let descr = match t {
        Tensor::F32(a) => le!(a, "<f4"),
        Tensor::F64(a) => le!(a, "<f8"),
        Tensor::F16(a) => le!(a.mapv(|v| v.to_bits()), "<f2"),
        Tensor::I8(a) => le!(a, "|i1"),
        Tensor::U8(a) => le!(a, "|u1"),
        Tensor::I16(a) => le!(a, "<i2"),
        Tensor::U16(a) => le!(a, "<u2"),
        Tensor::I32(a) => le!(a, "<i4"),
        Tensor::U32(a) => le!(a, "<u4"),
        Tensor::I64(a) => le!(a, "<i8"),
        Tensor::U64(a) => le!(a, "<u8"),
        Tensor::Bool(a) => le!(a.mapv(u8::from), "|b1"),
        Tensor::Str(a) => {
            let width = a
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(1);
            for s in a.iter() {
                let mut n = 0;
                for c in s.chars() {
                    body.extend_from_slice(&(c as u32).to_le_bytes());
                    n += 1;
                }
                body.resize(body.len() + 4 * (width - n), 0);
            }
            format!("<U{width}")
        }
        Tensor::BF16(_) => return Err(unsupported("bf16")),
        Tensor::I4(_) => return Err(unsupported("i4")),
        Tensor::U4(_) => return Err(unsupported("u4")),
    };
    let shape = t.shape();
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // numpy pads so that magic + version + length + header is a multiple of 64, ending in '\n'.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len())
        .map_err(|_| NpyError::Malformed("header longer than 65535 bytes".into()))?;
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The subset of Python literals that appear in `.npy` headers.
#[derive(Clone, Debug, PartialEq)]
enum Lit {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(String, Lit)>),
}

impl Lit {
    fn parse(text: &str) -> Result<Lit, NpyError> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(NpyError::Malformed(format!(
                "trailing text in header at byte {}",
                p.i
            )));
        }
        Ok(v)
    }

    /// Python-like text, used to report structured descriptors.
    fn render(&self) -> String {
        let join = |v: &[Lit]| v.iter().map(Lit::render).collect::<Vec<_>>().join(", ");
        match self {
            Lit::Str(s) => format!("'{s}'"),
            Lit::Int(n) => n.to_string(),
            Lit::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Lit::None => "None".to_string(),
            Lit::Tuple(v) => format!("({})", join(v)),
            Lit::List(v) => format!("[{}]", join(v)),
            Lit::Dict(v) => format!(
                "{{{}}}",
                v.iter()
                    .map(|(k, x)| format!("'{k}': {}", x.render()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> NpyError {
        NpyError::Malformed(format!("header: {what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Lit, NpyError> {
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut items = Vec::new();
                while !self.eat(b'}') {
                    let key = match self.value()? {
                        Lit::Str(s) => s,
                        _ => return Err(self.err("dict key is not a string")),
                    };
                    if !self.eat(b':') {
                        return Err(self.err("expected ':'"));
                    }
                    items.push((key, self.value()?));
                    if !self.eat(b',') && self.peek() != Some(b'}') {
                        return Err(self.err("expected ',' or '}'"));
                    }
                }
                Ok(Lit::Dict(items))
            }
            Some(open @ (b'(' | b'[')) => {
                self.i += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                while !self.eat(close) {
                    items.push(self.value()?);
                    if !self.eat(b',') && self.peek() != Some(close) {
                        return Err(self.err("expected ',' or closing bracket"));
                    }
                }
                Ok(if open == b'(' {
                    Lit::Tuple(items)
                } else {
                    Lit::List(items)
                })
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err(self.err("unterminated string"));
                }
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Lit::Str(s))
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                // Python 2 era headers may write `3L`.
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let n = text.parse::<i64>().map_err(|_| self.err("bad integer"))?;
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                Ok(Lit::Int(n))
            }
            Some(_) => {
                for (word, lit) in [
                    ("True", Lit::Bool(true)),
                    ("False", Lit::Bool(false)),
                    ("None", Lit::None),
                ] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(self.err("unexpected token"))
            }
            None => Err(self.err("unexpected end")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, arr2};

    fn raw(header: &str, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn round_trips_every_numpy_type() {
        let tensors = vec![
            Tensor::F32(arr2(&[[1.5f32, -2.0], [3.0, 4.25]]).into_dyn()),
            Tensor::F64(arr1(&[1e300f64, -0.5]).into_dyn()),
            Tensor::F16(arr1(&[half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]).into_dyn()),
            Tensor::I8(arr1(&[-128i8, 127]).into_dyn()),
            Tensor::U8(arr1(&[0u8, 255]).into_dyn()),
            Tensor::I16(arr1(&[-300i16]).into_dyn()),
            Tensor::U16(arr1(&[65535u16]).into_dyn()),
            Tensor::I32(arr1(&[i32::MIN, 7]).into_dyn()),
            Tensor::U32(arr1(&[u32::MAX]).into_dyn()),
            Tensor::I64(arr1(&[i64::MIN, 1]).into_dyn()),
            Tensor::U64(arr1(&[u64::MAX]).into_dyn()),
            Tensor::Bool(arr1(&[true, false, true]).into_dyn()),
            Tensor::Str(arr1(&["ab".to_string(), "é€".to_string(), String::new()]).into_dyn()),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 16000)),
            Tensor::F32(ArrayD::zeros(IxDyn(&[0, 3]))),
        ];
        for t in tensors {
            let bytes = encode(&t).unwrap();
            let h = parse_header(&bytes).unwrap();
            assert_eq!(h.data_offset % 64, 0, "header padded for {:?}", t.dtype());
            assert_eq!(h.shape, t.shape());
            assert_eq!(decode(&bytes).unwrap(), t);
        }
    }

    #[test]
    fn encode_refuses_types_numpy_lacks() {
        let t = Tensor::BF16(arr1(&[half::bf16::from_f32(1.0)]).into_dyn());
        assert!(matches!(encode(&t), Err(NpyError::Unsupported { .. })));
        let t = Tensor::I4(arr1(&[1i8]).into_dyn());
        assert!(matches!(encode(&t), Err(NpyError::Unsupported { .. })));
    }

    #[test]
    fn big_endian_and_fortran_order() {
        let mut body = Vec::new();
        for v in [1i32, 2, 3, 4, 5, 6] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        // Column-major 2x3: memory 1..6 means columns [1,2], [3,4], [5,6].
        let bytes = raw(
            "{'descr': '>i4', 'fortran_order': True, 'shape': (2, 3), }\n",
            &body,
        );
        let t = decode(&bytes).unwrap();
        assert_eq!(
            t,
            Tensor::I32(arr2(&[[1, 3, 5], [2, 4, 6]]).into_dyn()),
            "fortran order is transposed back into logical order"
        );
    }

    #[test]
    fn reports_unsupported_kinds_with_reason() {
        for (descr, why) in [
            ("|O", "object"),
            ("|S5", "byte-string"),
            ("<c8", "complex"),
            ("<M8[ns]", "datetime"),
        ] {
            let bytes = raw(
                &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}\n"),
                &[0; 16],
            );
            match decode(&bytes) {
                Err(NpyError::Unsupported { descr: d, why: w }) => {
                    assert_eq!(d, descr);
                    assert!(w.contains(why), "{w}");
                }
                other => panic!("{descr}: {other:?}"),
            }
        }
        let structured = raw(
            "{'descr': [('a', '<i4'), ('b', '<f4')], 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 8],
        );
        match decode(&structured) {
            Err(NpyError::Unsupported { descr, .. }) => assert!(descr.starts_with('[')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(matches!(decode(b"nope"), Err(NpyError::Malformed(_))));
        let short = raw(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n",
            &[0; 8],
        );
        assert!(matches!(decode(&short), Err(NpyError::Malformed(m)) if m.contains("16")));
        let no_shape = raw("{'descr': '<f4', 'fortran_order': False}\n", &[]);
        assert!(matches!(decode(&no_shape), Err(NpyError::Malformed(m)) if m.contains("shape")));
        let garbage = raw("{'descr': <f4}\n", &[]);
        assert!(matches!(decode(&garbage), Err(NpyError::Malformed(_))));
        let mut long_len = raw("{}", &[]);
        long_len[8] = 200;
        assert!(matches!(decode(&long_len), Err(NpyError::Malformed(_))));
    }
}
