//! A check of a GGUF file's structure before candle reads it.
//!
//! candle's reader bounds lengths by the file size, but a crafted header can still make it
//! divide by a zero `general.alignment`, and the element count of an absurd shape
//! overflows when multiplied. [`check_header`] walks the header once, keeping no value:
//! magic and version, the declared counts against the file size, every metadata entry
//! (skipped, except the alignment), and every tensor's rank, dimensions, ggml type and
//! extent in the file. A failure names the offending tensor, key or value; once the check
//! passes, candle reads the same header and every tensor it lists lies inside the file.

use std::io::Read;
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// Most dimensions of a tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays candle accepts.
const MAX_DEPTH: usize = 64;
/// Longest tensor name accepted (llama.cpp allows 64 bytes).
const MAX_NAME: u64 = 1024;
/// Longest metadata key read for messages; longer ones are skipped unread.
const MAX_KEY: u64 = 256;
/// Alignment of the tensor data when the file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";

/// ggml types candle reads and dequantizes, by their id in the file.
fn supported_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// ggml's name of a type id, for messages.
fn type_name(id: u32) -> &'static str {
    #[rustfmt::skip]
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",
        "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// Bytes of one metadata value of a fixed-size type; `None` for strings and arrays.
fn fixed_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

struct Walker<'a, R> {
    reader: &'a mut R,
    path: &'a Path,
    pos: u64,
    len: u64,
    /// GGUF v1 writes lengths and counts as u32, later versions as u64.
    v1: bool,
}

impl<R: Read> Walker<'_, R> {
    fn fail(&self, detail: impl Into<String>) -> Error {
        Error::invalid_gguf(self.path, detail)
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `n` more bytes follow.
    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            return Err(self.fail(format!(
                "the file ends inside {} ({n} bytes needed at offset {}, the file has {} bytes); it is truncated",
                what(),
                self.pos,
                self.len
            )));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf).map_err(|e| Error::io(self.path, e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    /// A length or count: u32 in GGUF v1, u64 after.
    fn count(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        if self.v1 { self.u32(what).map(u64::from) } else { self.u64(what) }
    }

    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.need(n, what)?;
        let copied = std::io::copy(&mut self.reader.by_ref().take(n), &mut std::io::sink())
            .map_err(|e| Error::io(self.path, e))?;
        if copied != n {
            return Err(self.fail(format!("{} ends early", what())));
        }
        self.pos += n;
        Ok(())
    }

    /// `n` bytes; the caller bounds `n`.
    fn read_vec(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        self.need(n, what)?;
        let mut buf = vec![0u8; n as usize];
        self.reader.read_exact(&mut buf).map_err(|e| Error::io(self.path, e))?;
        self.pos += n;
        Ok(buf)
    }

    /// A string of at most `max` bytes, read; longer ones are an error.
    fn short_string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.count(what)?;
        if n > max {
            return Err(self.fail(format!("{} is {n} bytes long (at most {max} allowed)", what())));
        }
        let buf = self.read_vec(n, what)?;
        Ok(String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string())
    }

    /// Skips one metadata value of type `value_type`.
    fn skip_value(&mut self, value_type: u32, depth: usize, key: &str) -> Result<()> {
        let what = || format!("metadata `{key}`");
        if let Some(size) = fixed_size(value_type) {
            return self.skip(size, &what);
        }
        match value_type {
            8 => {
                let n = self.count(&what)?;
                self.skip(n, &what)
            }
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.fail(format!("metadata `{key}` nests arrays deeper than {MAX_DEPTH} levels")));
                }
                let element_type = self.u32(&what)?;
                let n = self.count(&what)?;
                if let Some(size) = fixed_size(element_type) {
                    let total =
                        n.checked_mul(size).ok_or_else(|| self.fail(format!("metadata `{key}`: {n} elements")))?;
                    return self.skip(total, &what);
                }
                // Strings and arrays take at least their length prefix each.
                let prefix = if self.v1 { 4 } else { 8 };
                let least = if element_type == 9 { prefix + 4 } else { prefix };
                self.need(n.saturating_mul(least), &what)?;
                if element_type != 8 && element_type != 9 {
                    return Err(self.fail(format!("metadata `{key}` is an array of unknown type {element_type}")));
                }
                for _ in 0..n {
                    self.skip_value(element_type, depth + 1, key)?;
                }
                Ok(())
            }
            other => Err(self.fail(format!("metadata `{key}` has unknown value type {other}"))),
        }
    }

    /// Reads `general.alignment` as candle interprets it: unsigned, or non-negative signed,
    /// integers of up to 32 bits; any other value means the default.
    fn alignment(&mut self, value_type: u32) -> Result<u64> {
        let what = || format!("metadata `{ALIGNMENT_KEY}`");
        let value = match value_type {
            0 => Some(u64::from(self.bytes::<1>(&what)?[0])),
            1 => u64::try_from(i8::from_le_bytes(self.bytes(&what)?)).ok(),
            2 => Some(u64::from(u16::from_le_bytes(self.bytes(&what)?))),
            3 => u64::try_from(i16::from_le_bytes(self.bytes(&what)?)).ok(),
            4 => Some(u64::from(self.u32(&what)?)),
            5 => u64::try_from(i32::from_le_bytes(self.bytes(&what)?)).ok(),
            other => {
                self.skip_value(other, 0, ALIGNMENT_KEY)?;
                None
            }
        };
        match value {
            Some(a) if !a.is_power_of_two() => {
                Err(self.fail(format!("metadata `{ALIGNMENT_KEY}` = {a} is not a power of two")))
            }
            Some(a) => Ok(a),
            None => Ok(DEFAULT_ALIGNMENT),
        }
    }
}

/// One tensor as the header describes it.
struct TensorExtent {
    name: String,
    offset: u64,
    bytes: u64,
}

/// Checks the GGUF header read from `reader` (positioned at the start of a file of `len`
/// bytes); `path` names the file in messages. The reader is left somewhere in the header.
pub(crate) fn check_header<R: Read>(reader: &mut R, len: u64, path: &Path) -> Result<()> {
    if len < 24 {
        return Err(Error::invalid_gguf(path, format!("the file is {len} bytes long, too short for a GGUF header")));
    }
    let mut w = Walker { reader, path, pos: 0, len, v1: false };
    let fixed = || "the fixed header".to_string();
    let magic: [u8; 4] = w.bytes(&fixed)?;
    if &magic != b"GGUF" && &magic != b"FUGG" {
        return Err(w.fail(format!(
            "it starts with the bytes {:02x} {:02x} {:02x} {:02x} ({:?}), not the GGUF magic \"GGUF\"",
            magic[0],
            magic[1],
            magic[2],
            magic[3],
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = w.u32(&fixed)?;
    if !(1..=3).contains(&version) {
        return Err(w.fail(format!("GGUF version {version} is not supported (1, 2 and 3 are)")));
    }
    w.v1 = version == 1;
    let tensor_count = w.count(&fixed)?;
    let kv_count = w.count(&fixed)?;
    // The smallest metadata entry is a length prefix, a value type and one byte; the
    // smallest tensor entry a length prefix, a rank, a type and an offset.
    let prefix = if w.v1 { 4 } else { 8 };
    let least = kv_count.saturating_mul(prefix + 5).saturating_add(tensor_count.saturating_mul(prefix + 16));
    if least > w.remaining() {
        return Err(w.fail(format!(
            "the header declares {tensor_count} tensors and {kv_count} metadata entries, which need at least {least} bytes, but only {} follow; the file is truncated",
            w.remaining()
        )));
    }

    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..kv_count {
        let what = || format!("the key of metadata entry {i}");
        let key_len = w.count(&what)?;
        // Keys name the entry in messages; only the alignment's value matters here.
        let key = if key_len <= MAX_KEY {
            String::from_utf8_lossy(&w.read_vec(key_len, &what)?).trim_end_matches('\0').to_string()
        } else {
            w.skip(key_len, &what)?;
            format!("#{i}")
        };
        let value_type = w.u32(&|| format!("metadata `{key}`"))?;
        if key == ALIGNMENT_KEY {
            alignment = w.alignment(value_type)?;
        } else {
            w.skip_value(value_type, 0, &key)?;
        }
    }

    let mut tensors = Vec::new();
    for i in 0..tensor_count {
        let name = w.short_string(MAX_NAME, &|| format!("the name of tensor {i}"))?;
        let what = || format!("the description of tensor `{name}`");
        let rank = w.u32(&what)?;
        if rank > MAX_DIMS {
            return Err(w.fail(format!("tensor `{name}` has {rank} dimensions (at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            dims.push(w.count(&what)?);
        }
        // GGUF lists dimensions innermost first; sieve and candle print them outermost first.
        dims.reverse();
        let type_id = w.u32(&what)?;
        let offset = w.u64(&what)?;
        let Some(dtype) = supported_type(type_id) else {
            return Err(w.fail(format!(
                "tensor `{name}` has ggml type {type_id} ({}), which sieve cannot dequantize (it reads {SUPPORTED_TYPES})",
                type_name(type_id)
            )));
        };
        let impossible = || format!("tensor `{name}` has the impossible shape {dims:?}");
        let Some(elems) = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| usize::try_from(e).is_ok() && dims.iter().all(|&d| usize::try_from(d).is_ok()))
        else {
            return Err(w.fail(impossible()));
        };
        // An empty tensor is no weight sieve needs, and candle would view its empty buffer
        // as blocks through a dangling, unaligned pointer.
        if elems == 0 {
            return Err(w.fail(format!("tensor `{name}` has the empty shape {dims:?}")));
        }
        // candle stores a quantized tensor by rows of whole blocks.
        let block = dtype.block_size() as u64;
        match dims.last() {
            None => return Err(w.fail(format!("tensor `{name}` has no dimensions"))),
            Some(&last) if last % block != 0 => {
                return Err(w.fail(format!(
                    "tensor `{name}` of shape {dims:?} is stored as {dtype:?}, whose rows need a multiple of {block} elements"
                )));
            }
            Some(_) => {}
        }
        let Some(bytes) = (elems / block).checked_mul(dtype.type_size() as u64) else {
            return Err(w.fail(impossible()));
        };
        tensors.push(TensorExtent { name, offset, bytes });
    }

    let data_start = w.pos.div_ceil(alignment).saturating_mul(alignment);
    for t in &tensors {
        let start = data_start.checked_add(t.offset);
        if start.and_then(|s| s.checked_add(t.bytes)).is_none_or(|end| end > len) {
            return Err(w.fail(format!(
                "tensor `{}` ({} bytes at offset {}) runs past the end of the file ({len} bytes); the file is truncated",
                t.name,
                t.bytes,
                start.map_or_else(|| "beyond 2^64".to_string(), |s| s.to_string()),
            )));
        }
    }
    Ok(())
}
