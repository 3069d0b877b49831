//! The token embedding of [`crate::OrtBackend`]: a graph over an `f32` table, or the rows a
//! call looks up, decoded on the host from a packed table (a graph would need the table
//! decoded). A packed table read unchanged from the model file stays there: the rows are
//! read from the file when looked up, so the process does not hold the table beside the LM
//! head sessions' copy of it (30 MB for the default model's tied Q8_0 table).

use std::sync::Mutex;

use ort::session::Session;
use sieve_backend::quant::{GgmlType, Packed};

use crate::error::{Error, Result};

/// How the backend looks tokens up.
pub(crate) enum Embed {
    /// A graph over an `f32` table.
    Graph(Mutex<Session>),
    /// Rows of a packed `[rows, cols]` table, decoded and scaled on the host.
    Host { table: Table, rows: usize, cols: usize, scale: f32 },
}

/// A packed table's bytes: held, or left in the model file.
pub(crate) enum Table {
    Memory(Packed),
    #[cfg(unix)]
    File {
        file: std::fs::File,
        path: std::path::PathBuf,
        offset: u64,
        dtype: GgmlType,
    },
}

impl Table {
    /// `table`, left in its file when it names one whose bytes there are the same (read
    /// and compared once, here); held otherwise.
    pub(crate) fn new(table: Packed) -> Self {
        #[cfg(unix)]
        if let Some(region) = &table.file
            && let Some(file) = same_bytes(region, &table.bytes)
        {
            let (path, offset) = (region.path.clone(), region.offset);
            return Table::File { file, path, offset, dtype: table.dtype };
        }
        Table::Memory(table)
    }

    /// Whether the rows are read from the model file.
    #[cfg(test)]
    fn in_file(&self) -> bool {
        !matches!(self, Table::Memory(_))
    }

    fn dtype(&self) -> GgmlType {
        match self {
            Table::Memory(p) => p.dtype,
            #[cfg(unix)]
            Table::File { dtype, .. } => *dtype,
        }
    }

    /// Row `t` (of `rb` bytes), from memory or read into `buf`.
    fn row<'a>(&'a self, t: usize, rb: usize, buf: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        match self {
            Table::Memory(p) => Ok(&p.bytes[t * rb..(t + 1) * rb]),
            #[cfg(unix)]
            Table::File { file, path, offset, .. } => {
                use std::os::unix::fs::FileExt;
                buf.resize(rb, 0);
                file.read_exact_at(buf, offset + (t * rb) as u64)
                    .map_err(|source| Error::ModelFile { path: path.clone(), source })?;
                Ok(buf)
            }
        }
    }
}

/// The file of `region`, open, when it holds `bytes` from the region's offset.
#[cfg(unix)]
fn same_bytes(region: &sieve_backend::quant::FileRegion, bytes: &[u8]) -> Option<std::fs::File> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&region.path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    for (i, want) in bytes.chunks(buf.len()).enumerate() {
        let got = &mut buf[..want.len()];
        file.read_exact_at(got, region.offset + (i << 20) as u64).ok()?;
        if got != want {
            return None;
        }
    }
    Some(file)
}

/// Rows `tokens` of the packed `table` (`[rows, cols]`), decoded and scaled, `[tokens, cols]`.
pub(crate) fn host_rows(table: &Table, (rows, cols): (usize, usize), scale: f32, tokens: &[u32]) -> Result<Vec<f32>> {
    let dtype = table.dtype();
    let rb = dtype.row_bytes(cols);
    let mut out = vec![0f32; tokens.len() * cols];
    let mut buf = Vec::new();
    for (&t, o) in tokens.iter().zip(out.chunks_exact_mut(cols)) {
        let t = t as usize;
        if t >= rows {
            return Err(sieve_backend::Error::Input(format!("token id {t} is outside the vocabulary ({rows})")).into());
        }
        sieve_backend::quant::dequantize(dtype, table.row(t, rb, &mut buf)?, o);
        if scale != 1.0 {
            o.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(out)
}

#[cfg(all(test, unix))]
mod tests {
    use sieve_backend::quant::{FileRegion, quantize};

    use super::*;

    /// A table whose file holds its bytes is read from there, row for row what the held
    /// table gives; a file that holds other bytes, or none, leaves the table held.
    #[test]
    fn rows_from_the_file_equal_the_held_table() {
        let (rows, cols) = (40, 64);
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let bytes = quantize(GgmlType::Q8_0, &values).unwrap();
        let path = std::env::temp_dir().join(format!("sieve-ort-embed-{}.bin", std::process::id()));
        let header = b"a header of some bytes".to_vec();
        std::fs::write(&path, [header.clone(), bytes.clone()].concat()).unwrap();
        let region = |offset: u64| Some(FileRegion { path: path.clone(), offset });
        let packed = |file| Packed { dtype: GgmlType::Q8_0, bytes: bytes.clone(), file };

        let held = Table::new(packed(None));
        let in_file = Table::new(packed(region(header.len() as u64)));
        assert!(!held.in_file() && in_file.in_file());
        let tokens = [0u32, 39, 7, 7, 21];
        let want = host_rows(&held, (rows, cols), 0.5, &tokens).unwrap();
        assert_eq!(host_rows(&in_file, (rows, cols), 0.5, &tokens).unwrap(), want);
        let err = host_rows(&in_file, (rows, cols), 1.0, &[40]).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");

        // One byte off, or a missing file: the table stays held.
        assert!(!Table::new(packed(region(header.len() as u64 - 1))).in_file());
        std::fs::remove_file(&path).unwrap();
        assert!(!Table::new(packed(region(header.len() as u64))).in_file());
    }
}
