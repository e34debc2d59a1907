//! Arrays from NumPy (`.npy`, `.npz`) and safetensors files, as float64 tensors. candle's own
//! readers read what they can (C-order little-endian npy of its dtypes, and safetensors of its
//! dtypes); what they refuse but is plain numbers is decoded here (Fortran order, big-endian,
//! int8, uint16, uint64, npy format 3.0; safetensors' int8, uint64, bool and 8-bit floats); the
//! rest is refused with a reason.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType as CDType, Device, Tensor};
use safetensors::Dtype as StDtype;
use safetensors::tensor::{Metadata, TensorView};

use super::shape::MAX_ELEMENTS;
use crate::lang::file::ArrayFormat;

/// Why an array could not be read. Each says what went wrong; [`ArrayError::help`] what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArrayError {
    /// The file could not be opened or read.
    #[error("cannot read `{file}`: {why}")]
    Io { file: String, why: String },
    /// The file is not of the format the entry names (or is damaged).
    #[error("`{file}` is not a valid .{} file: {why}", .format.name())]
    Invalid {
        file: String,
        format: ArrayFormat,
        why: String,
        /// The format it looks like instead, when it has another's signature.
        looks_like: Option<ArrayFormat>,
    },
    /// The key names no array of the file.
    #[error("`{file}` has no array `{key}`")]
    NoKey {
        file: String,
        key: String,
        keys: Vec<String>,
    },
    /// No key was given and the file holds other than one array.
    #[error("`{file}` holds {}{}", count(.keys.len()), if .keys.is_empty() { "" } else { ": name the one to read with `key`" })]
    NeedKey { file: String, keys: Vec<String> },
    /// Values that are not plain numbers (complex, strings, records) or of no known format.
    #[error("`{file}`{} holds {dtype} values, which gradscope cannot read", in_key(.key))]
    Dtype {
        file: String,
        key: Option<String>,
        dtype: String,
    },
    /// More elements than gradscope builds a tensor of.
    #[error("`{file}`{} holds {elements} values, more than gradscope's limit of {MAX_ELEMENTS}", in_key(.key))]
    TooLarge {
        file: String,
        key: Option<String>,
        elements: String,
    },
}

fn count(n: usize) -> String {
    match n {
        0 => "no arrays".into(),
        1 => "one array".into(),
        n => format!("{n} arrays"),
    }
}

fn in_key(key: &Option<String>) -> String {
    key.as_ref()
        .map_or(String::new(), |k| format!(" (key `{k}`)"))
}

impl ArrayError {
    /// What to do about it, when there is more to say than the message.
    pub fn help(&self) -> Option<String> {
        match self {
            ArrayError::Io { .. } => None,
            ArrayError::Invalid { looks_like, .. } => looks_like.map(|f| {
                format!(
                    "it looks like a .{0} file: read it with {0} = \"...\"",
                    f.name()
                )
            }),
            ArrayError::NeedKey { keys, .. } if keys.is_empty() => {
                Some("save at least one array into it, e.g. np.savez(path, x=x)".into())
            }
            ArrayError::NoKey { keys, .. } | ArrayError::NeedKey { keys, .. } => Some(list(keys)),
            ArrayError::Dtype { dtype, .. } => Some(dtype_help(dtype)),
            ArrayError::TooLarge { .. } => {
                Some("read a slice of it: save a smaller array from Python".into())
            }
        }
    }
}

/// What to do with an array of a dtype gradscope does not read.
fn dtype_help(dtype: &str) -> String {
    let read = "gradscope reads float, int, uint and bool arrays";
    if dtype.starts_with("complex") || dtype == "C64" {
        format!("{read}: save the real and imaginary parts apart (x.real, x.imag)")
    } else if dtype.starts_with("float") {
        format!("{read} of up to 64 bits: save it as x.astype(np.float64)")
    } else if dtype.starts_with('F') {
        format!("{read}: save it as float16, bfloat16 or float32")
    } else {
        format!("{read}: save the numbers as one, e.g. np.asarray(x, dtype=np.float64)")
    }
}

/// "it holds: a, b, c" (the first 12 keys).
fn list(keys: &[String]) -> String {
    if keys.is_empty() {
        return "it holds no arrays".into();
    }
    let shown: Vec<String> = keys.iter().take(12).map(|k| format!("`{k}`")).collect();
    let more = match keys.len().saturating_sub(12) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!("it holds: {}{more}", shown.join(", "))
}

/// Reads the array `key` (None: the file's only array) of the file at `path`, as float64.
/// `shown` names the file in messages (as the loss file writes it).
pub fn read(
    format: ArrayFormat,
    path: &Path,
    key: Option<&str>,
    shown: &str,
) -> Result<Tensor, ArrayError> {
    let io = |e: std::io::Error| ArrayError::Io {
        file: shown.to_string(),
        why: e.to_string(),
    };
    if path.is_dir() {
        return Err(ArrayError::Io {
            file: shown.to_string(),
            why: "it is a directory".into(),
        });
    }
    let t = match format {
        ArrayFormat::Npy => read_npy(path, shown, io)?,
        ArrayFormat::Npz => read_npz(path, key, shown, io)?,
        ArrayFormat::Safetensors => read_safetensors(path, key, shown, io)?,
    };
    t.to_dtype(CDType::F64).map_err(|e| ArrayError::Invalid {
        file: shown.to_string(),
        format,
        why: e.to_string(),
        looks_like: None,
    })
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The format a file's first bytes say it is: npy and zip (npz) have magic strings; a
/// safetensors file starts with its header's length and then `{`.
fn sniff(head: &[u8]) -> Option<ArrayFormat> {
    if head.starts_with(NPY_MAGIC) {
        Some(ArrayFormat::Npy)
    } else if head.starts_with(ZIP_MAGIC) {
        Some(ArrayFormat::Npz)
    } else if head.len() > 8 && head[8] == b'{' {
        Some(ArrayFormat::Safetensors)
    } else {
        None
    }
}

fn invalid(shown: &str, format: ArrayFormat, why: impl Into<String>, head: &[u8]) -> ArrayError {
    ArrayError::Invalid {
        file: shown.to_string(),
        format,
        why: why.into(),
        looks_like: sniff(head).filter(|f| *f != format),
    }
}

/// A `.npy` header: how the data that follows is laid out.
#[derive(Debug, Clone, PartialEq)]
struct NpyHeader {
    /// The format's major version (1, 2 or 3).
    version: u8,
    /// `descr`, e.g. `<f8`; None for a structured (record) dtype.
    descr: Option<String>,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Reads the magic string, version and header dict of a `.npy` stream, leaving it at the data.
fn npy_header(r: &mut impl Read) -> Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|_| "it is shorter than a .npy header".to_string())?;
    if &pre[..6] != NPY_MAGIC {
        return Err("it does not start with the .npy magic string".into());
    }
    let version = pre[6];
    let len = match version {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!("format version {v}.{} is unknown", pre[7])),
    };
    if len > 1 << 20 {
        return Err(format!("its header claims {len} bytes"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|_| "its header is cut short".to_string())?;
    let text = String::from_utf8(text).map_err(|_| "its header is not text".to_string())?;
    parse_npy_header(version, &text)
}

/// The value text after `'key':` in a header dict.
fn field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    ['\'', '"'].iter().find_map(|q| {
        let at = header.find(&format!("{q}{key}{q}"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Some(rest.strip_prefix(':')?.trim_start())
    })
}

fn parse_npy_header(version: u8, text: &str) -> Result<NpyHeader, String> {
    let descr_text = field(text, "descr").ok_or("its header has no `descr`")?;
    let descr = if descr_text.starts_with('[') {
        None
    } else {
        let q = descr_text
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"');
        let q = q.ok_or("its `descr` is not a string")?;
        let body = &descr_text[1..];
        let end = body.find(q).ok_or("its `descr` is not closed")?;
        Some(body[..end].to_string())
    };
    let fortran = field(text, "fortran_order").ok_or("its header has no `fortran_order`")?;
    let fortran_order = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return Err("its `fortran_order` is neither True nor False".into());
    };
    let shape_text = field(text, "shape").ok_or("its header has no `shape`")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .ok_or("its `shape` is not a tuple")?
        .0;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("its shape ({inner}) is not a list of sizes"))?;
    Ok(NpyHeader {
        version,
        descr,
        fortran_order,
        shape,
    })
}

/// An element type gradscope reads: a float, signed or unsigned int of a byte size, bool, or
/// one of safetensors' two 8-bit floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Float(usize),
    Int(usize),
    Uint(usize),
    Bool,
    /// 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, NaN at S.1111.111.
    F8E4M3,
    /// 1 sign, 5 exponent, 2 mantissa bits: the top byte of an IEEE half.
    F8E5M2,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::Float(n) | Elem::Int(n) | Elem::Uint(n) => n,
            Elem::Bool | Elem::F8E4M3 | Elem::F8E5M2 => 1,
        }
    }
}

/// An F8_E4M3 byte's value (decoded here: candle 0.11 spins converting an F8E4M3 tensor).
fn f8_e4m3(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (i32::from((b >> 3) & 0xf), b & 7);
    let fraction = f64::from(m) / 8.0;
    match (e, m) {
        (15, 7) => f64::NAN,
        (0, _) => sign * fraction * 2f64.powi(-6),
        _ => sign * (1.0 + fraction) * 2f64.powi(e - 7),
    }
}

/// `<f8` as (element type, big-endian); Err(name) for what is not read, in NumPy's words.
fn npy_elem(descr: &str) -> Result<(Elem, bool), String> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let big = order == '>' || (order == '=' && cfg!(target_endian = "big"));
    let kind = code.chars().next().unwrap_or(' ');
    let size: Option<usize> = code.get(kind.len_utf8()..).and_then(|s| s.parse().ok());
    let elem = match (kind, size) {
        ('f', Some(n @ (2 | 4 | 8))) => Elem::Float(n),
        ('i', Some(n @ (1 | 2 | 4 | 8))) => Elem::Int(n),
        ('u', Some(n @ (1 | 2 | 4 | 8))) => Elem::Uint(n),
        ('b', Some(1)) | ('?', None) => Elem::Bool,
        ('f', Some(n)) => return Err(format!("float{} (long double)", 8 * n)),
        ('c', Some(n)) => return Err(format!("complex{}", 8 * n)),
        ('U' | 'S' | 'a', _) => return Err(format!("string (`{descr}`)")),
        ('O', _) => return Err("object (pickled Python)".into()),
        ('M', _) => return Err("datetime64".into()),
        ('m', _) => return Err("timedelta64".into()),
        ('V', _) => return Err(format!("raw void (`{descr}`)")),
        _ => return Err(format!("`{descr}`")),
    };
    Ok((elem, big))
}

/// Whether candle's npy reader reads this layout as it is.
fn candle_reads(h: &NpyHeader, elem: Elem, big: bool) -> bool {
    let of_candle = matches!(
        elem,
        Elem::Float(_) | Elem::Int(2 | 4 | 8) | Elem::Uint(1 | 4) | Elem::Bool
    );
    h.version <= 2 && !h.fortran_order && !big && of_candle
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// Checks a header's dtype and size: the element type, its byte order and count.
fn npy_layout(
    h: &NpyHeader,
    shown: &str,
    key: Option<&str>,
) -> Result<(Elem, bool, usize), ArrayError> {
    let dtype = |dtype: String| ArrayError::Dtype {
        file: shown.to_string(),
        key: key.map(str::to_string),
        dtype,
    };
    let descr = h
        .descr
        .as_deref()
        .ok_or_else(|| dtype("structured (record)".into()))?;
    let (elem, big) = npy_elem(descr).map_err(dtype)?;
    let n = elements(&h.shape).ok_or_else(|| ArrayError::TooLarge {
        file: shown.to_string(),
        key: key.map(str::to_string),
        elements: h
            .shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" x "),
    })?;
    Ok((elem, big, n))
}

fn read_npy(
    path: &Path,
    shown: &str,
    io: impl Fn(std::io::Error) -> ArrayError,
) -> Result<Tensor, ArrayError> {
    let mut r = BufReader::new(File::open(path).map_err(&io)?);
    let header = npy_header(&mut r).map_err(|why| {
        let mut head = [0u8; 16];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        invalid(shown, ArrayFormat::Npy, why, &head[..n])
    })?;
    let (elem, big, n) = npy_layout(&header, shown, None)?;
    let bad = |why: String| invalid(shown, ArrayFormat::Npy, why, &[]);
    let room = std::fs::metadata(path).map_err(&io)?.len();
    if candle_reads(&header, elem, big) {
        fits(n, elem, room).map_err(bad)?;
        return Tensor::read_npy(path).map_err(|e| bad(e.to_string()));
    }
    decode_npy(&mut r, &header, elem, big, n, room).map_err(bad)
}

fn short(n: usize) -> String {
    format!("it holds fewer than the {n} values its header promises")
}

/// Whether `n` elements fit in the `room` bytes a stream has left (checked before allocating).
fn fits(n: usize, elem: Elem, room: u64) -> Result<(), String> {
    match (n * elem.size()) as u64 <= room {
        true => Ok(()),
        false => Err(short(n)),
    }
}

/// The data of a `.npy` stream whose header was read: any byte order, either memory order.
/// `room` bounds the bytes left in the stream, so a header promising more is refused before
/// anything is allocated.
fn decode_npy(
    r: &mut impl Read,
    h: &NpyHeader,
    elem: Elem,
    big: bool,
    n: usize,
    room: u64,
) -> Result<Tensor, String> {
    fits(n, elem, room)?;
    let mut bytes = vec![0u8; n * elem.size()];
    r.read_exact(&mut bytes).map_err(|_| short(n))?;
    let values = decode(&bytes, elem, big);
    let err = |e: candle_core::Error| e.to_string();
    if !h.fortran_order {
        return Tensor::from_vec(values, h.shape.as_slice(), &Device::Cpu).map_err(err);
    }
    // Column-major is row-major of the reversed shape, with the axes reversed back.
    let reversed: Vec<usize> = h.shape.iter().rev().copied().collect();
    let axes: Vec<usize> = (0..h.shape.len()).rev().collect();
    Tensor::from_vec(values, reversed.as_slice(), &Device::Cpu)
        .and_then(|t| t.permute(axes)?.contiguous())
        .map_err(err)
}

/// Little- or big-endian elements as f64 (integers past 2^53 round to the nearest f64).
fn decode(bytes: &[u8], elem: Elem, big: bool) -> Vec<f64> {
    macro_rules! each {
        ($t:ty, $n:literal, $f:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("chunks of the size");
                    let v = if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    };
                    $f(v)
                })
                .collect()
        };
    }
    match elem {
        Elem::Float(2) => each!(u16, 2, |b| half::f16::from_bits(b).to_f64()),
        Elem::Float(4) => each!(f32, 4, f64::from),
        Elem::Float(_) => each!(f64, 8, |v| v),
        Elem::Int(1) => each!(i8, 1, f64::from),
        Elem::Int(2) => each!(i16, 2, f64::from),
        Elem::Int(4) => each!(i32, 4, f64::from),
        Elem::Int(_) => each!(i64, 8, |v| v as f64),
        Elem::Uint(1) => each!(u8, 1, f64::from),
        Elem::Uint(2) => each!(u16, 2, f64::from),
        Elem::Uint(4) => each!(u32, 4, f64::from),
        Elem::Uint(_) => each!(u64, 8, |v| v as f64),
        Elem::Bool => bytes.iter().map(|&b| f64::from(u8::from(b != 0))).collect(),
        Elem::F8E4M3 => bytes.iter().map(|&b| f8_e4m3(b)).collect(),
        Elem::F8E5M2 => bytes
            .iter()
            .map(|&b| half::f16::from_bits(u16::from(b) << 8).to_f64())
            .collect(),
    }
}

fn read_npz(
    path: &Path,
    key: Option<&str>,
    shown: &str,
    io: impl Fn(std::io::Error) -> ArrayError,
) -> Result<Tensor, ArrayError> {
    let file = File::open(path).map_err(&io)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        let mut head = [0u8; 16];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        invalid(shown, ArrayFormat::Npz, e.to_string(), &head[..n])
    })?;
    // np.savez names each array `KEY.npy`; the key is the name without it.
    let members: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(shown, ArrayFormat::Npz, e.to_string(), &[]))?;
    let keys: Vec<String> = members
        .iter()
        .map(|m| m.strip_suffix(".npy").unwrap_or(m).to_string())
        .collect();
    let index = pick(&keys, key, shown)?;
    let key = keys[index].clone();
    let bad = |why: String| invalid(shown, ArrayFormat::Npz, format!("`{key}`: {why}"), &[]);
    let mut member = zip
        .by_name(&members[index])
        .map_err(|e| bad(e.to_string()))?;
    let header = npy_header(&mut member).map_err(&bad)?;
    let (elem, big, n) = npy_layout(&header, shown, Some(&key))?;
    let room = member.size();
    if candle_reads(&header, elem, big) && members[index].ends_with(".npy") {
        fits(n, elem, room).map_err(&bad)?;
        drop(member);
        let mut read =
            Tensor::read_npz_by_name(path, &[key.as_str()]).map_err(|e| bad(e.to_string()))?;
        return read.pop().ok_or_else(|| bad("no array".into()));
    }
    decode_npy(&mut member, &header, elem, big, n, room).map_err(&bad)
}

/// The index of `key` among `keys`, or of the only key when none is given.
fn pick(keys: &[String], key: Option<&str>, shown: &str) -> Result<usize, ArrayError> {
    match key {
        Some(k) => keys.iter().position(|x| x == k).ok_or(ArrayError::NoKey {
            file: shown.to_string(),
            key: k.to_string(),
            keys: keys.to_vec(),
        }),
        None if keys.len() == 1 => Ok(0),
        None => Err(ArrayError::NeedKey {
            file: shown.to_string(),
            keys: keys.to_vec(),
        }),
    }
}

/// Reads the header and then only the one tensor's bytes (a checkpoint may be large), and
/// converts those with candle's loader.
fn read_safetensors(
    path: &Path,
    key: Option<&str>,
    shown: &str,
    io: impl Fn(std::io::Error) -> ArrayError,
) -> Result<Tensor, ArrayError> {
    let mut f = File::open(path).map_err(&io)?;
    let mut head = [0u8; 16];
    let got = f.read(&mut head).map_err(&io)?;
    let bad = |why: String| invalid(shown, ArrayFormat::Safetensors, why, &head[..got]);
    let n = match head.get(..8) {
        Some(b) if got >= 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        _ => return Err(bad("it is shorter than a safetensors header".into())),
    };
    // safetensors' own limit on the header.
    if n > 100_000_000 {
        return Err(bad(format!("its header claims {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.seek(SeekFrom::Start(8)).map_err(&io)?;
    f.read_exact(&mut header)
        .map_err(|_| bad("its header is cut short".into()))?;
    let meta: Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("its header: {e}")))?;
    let mut keys: Vec<String> = meta.tensors().into_keys().collect();
    keys.sort();
    let key = keys[pick(&keys, key, shown)?].clone();
    let info = meta
        .info(&key)
        .ok_or_else(|| bad(format!("no tensor `{key}`")))?;
    let (dtype, shape) = (info.dtype, info.shape.clone());
    let count = elements(&shape).ok_or_else(|| ArrayError::TooLarge {
        file: shown.to_string(),
        key: Some(key.clone()),
        elements: shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" x "),
    })?;
    // Checked before allocating: the offsets must span exactly the shape's bytes, in the file.
    let (start, end) = info.data_offsets;
    let bytes = (count * dtype.bitsize()).div_ceil(8);
    let file_len = f.metadata().map_err(&io)?.len();
    let at = (8 + n).checked_add(start as u64);
    if end.checked_sub(start) != Some(bytes)
        || at
            .and_then(|a| a.checked_add(bytes as u64))
            .is_none_or(|e| e > file_len)
    {
        return Err(bad(format!(
            "the offsets of `{key}` do not hold its {count} values"
        )));
    }
    let mut data = vec![0u8; bytes];
    f.seek(SeekFrom::Start(8 + n + start as u64))
        .and_then(|_| f.read_exact(&mut data))
        .map_err(|_| bad(format!("the data of `{key}` is cut short")))?;
    let view =
        TensorView::new(dtype, shape.clone(), &data).map_err(|e| bad(format!("`{key}`: {e}")))?;
    let own = match dtype {
        StDtype::I8 => Some(Elem::Int(1)),
        StDtype::U64 => Some(Elem::Uint(8)),
        StDtype::BOOL => Some(Elem::Bool),
        StDtype::F8_E4M3 => Some(Elem::F8E4M3),
        StDtype::F8_E5M2 => Some(Elem::F8E5M2),
        _ => None,
    };
    let failed = |e: candle_core::Error| bad(format!("`{key}`: {e}"));
    if let Some(elem) = own {
        return Tensor::from_vec(decode(&data, elem, false), shape.as_slice(), &Device::Cpu)
            .map_err(failed);
    }
    let candle_reads = matches!(
        dtype,
        StDtype::U8
            | StDtype::U16
            | StDtype::U32
            | StDtype::I16
            | StDtype::I32
            | StDtype::I64
            | StDtype::BF16
            | StDtype::F16
            | StDtype::F32
            | StDtype::F64
    );
    if !candle_reads {
        return Err(ArrayError::Dtype {
            file: shown.to_string(),
            key: Some(key),
            dtype: dtype.to_string(),
        });
    }
    view.load(&Device::Cpu).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_as_numpy_writes_them() {
        let h = parse_npy_header(
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }    \n",
        )
        .unwrap();
        assert_eq!(h.descr.as_deref(), Some("<f8"));
        assert!(h.fortran_order);
        assert_eq!(h.shape, vec![2, 3]);
        let scalar =
            parse_npy_header(1, "{'descr': '|b1', 'fortran_order': False, 'shape': (), }").unwrap();
        assert!(scalar.shape.is_empty());
        let record = parse_npy_header(
            1,
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
        )
        .unwrap();
        assert_eq!((record.descr, record.shape), (None, vec![2]));
        assert!(parse_npy_header(1, "{'descr': '<f8', 'shape': (2,), }").is_err());
        assert!(
            parse_npy_header(
                1,
                "{'descr': '<f8', 'fortran_order': False, 'shape': (a,), }"
            )
            .is_err()
        );
    }

    #[test]
    fn element_types_in_numpy_spelling() {
        assert_eq!(npy_elem("<f2"), Ok((Elem::Float(2), false)));
        assert_eq!(npy_elem(">i4"), Ok((Elem::Int(4), true)));
        assert_eq!(npy_elem("|u1"), Ok((Elem::Uint(1), false)));
        assert_eq!(npy_elem("|b1"), Ok((Elem::Bool, false)));
        assert_eq!(npy_elem("<c16"), Err("complex128".into()));
        assert_eq!(npy_elem("<f16"), Err("float128 (long double)".into()));
        assert_eq!(npy_elem("<U3"), Err("string (`<U3`)".into()));
        assert_eq!(npy_elem("|O"), Err("object (pickled Python)".into()));
        assert_eq!(npy_elem("<"), Err("`<`".into()));
        assert_eq!(npy_elem(""), Err("``".into()));
    }

    #[test]
    fn eight_bit_floats() {
        // E4M3: 0x38 = 2^0, 0xC0 = -2^1, 0x7E = 1.75 * 2^8 (the largest), 0x01 = 2^-9.
        let e4m3 = decode(&[0x38, 0xC0, 0x7E, 0x01, 0x00], Elem::F8E4M3, false);
        assert_eq!(e4m3, vec![1.0, -2.0, 448.0, 2f64.powi(-9), 0.0]);
        assert!(f8_e4m3(0x7F).is_nan() && f8_e4m3(0xFF).is_nan());
        // E5M2: 0x3C = 1, 0xC0 = -2, 0x7C = inf, 0x7B = 57344 (the largest finite).
        let e5m2 = decode(&[0x3C, 0xC0, 0x7C, 0x7B], Elem::F8E5M2, false);
        assert_eq!(e5m2, vec![1.0, -2.0, f64::INFINITY, 57344.0]);
    }

    #[test]
    fn decoding_both_byte_orders() {
        // 1.0 as f64: 0x3ff0000000000000.
        let le = 1.0f64.to_le_bytes();
        let be = 1.0f64.to_be_bytes();
        assert_eq!(decode(&le, Elem::Float(8), false), vec![1.0]);
        assert_eq!(decode(&be, Elem::Float(8), true), vec![1.0]);
        assert_eq!(
            decode(&[0xff, 0x80], Elem::Int(1), false),
            vec![-1.0, -128.0]
        );
        assert_eq!(decode(&[0, 2], Elem::Bool, false), vec![0.0, 1.0]);
        assert_eq!(
            decode(&u64::MAX.to_le_bytes(), Elem::Uint(8), false),
            vec![u64::MAX as f64]
        );
    }
}
