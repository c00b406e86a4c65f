//! Weights read in place from a memory-mapped file.
//!
//! A GGUF file's k-quant blocks are exactly what pot's k-quant kernels read, so pot maps the
//! file and points the kernels at its bytes instead of copying them. The pages are the file's
//! (the page cache's), not the process's own memory: they load on first touch, two processes
//! on one file share them, and under memory pressure the kernel drops them and reads them back
//! later instead of killing the process. A model larger than the memory it may use therefore
//! still runs, paged from disk (slowly: every pass reads what did not stay resident).
//!
//! `POT_MMAP=0` turns mapping off (every weight is copied into memory when the model loads),
//! for a file system where mapping is slow or a file that may change while pot runs: a mapped
//! file truncated under a running process faults it (SIGBUS), as with llama.cpp's `--mmap`.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

/// Whether GGUF weights are mapped (the default) or copied (`POT_MMAP=0`).
pub fn enabled() -> bool {
    !matches!(
        std::env::var("POT_MMAP").as_deref(),
        Ok("0") | Ok("off") | Ok("false") | Ok("no")
    )
}

/// A read-only map of a whole file.
#[derive(Clone)]
pub struct MappedFile(Arc<Mmap>);

impl MappedFile {
    /// Map `file` read-only.
    pub fn open(file: &File, path: &Path) -> std::io::Result<Self> {
        // SAFETY: the map is read-only and pot never writes the file. Another process
        // truncating it while it is mapped would fault this one (see the module docs); the
        // bounds of every tensor were checked against the file's size when it was opened.
        let map = unsafe { Mmap::map(file) }.map_err(|e| {
            std::io::Error::new(e.kind(), format!("mapping {}: {e}", path.display()))
        })?;
        Ok(Self(Arc::new(map)))
    }

    /// The bytes `range` of the file, held by the map.
    pub fn slice(&self, range: Range<usize>) -> Option<Mapped> {
        (range.start <= range.end && range.end <= self.0.len()).then(|| Mapped {
            map: self.0.clone(),
            range,
        })
    }
}

/// A byte range of a mapped file; the file stays mapped while any range of it lives.
#[derive(Clone)]
pub struct Mapped {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// A matrix's stored bytes: in a tensor read into memory, or in place in a mapped file.
pub enum Stored {
    /// Read into memory.
    Tensor(Arc<candle_core::quantized::QTensor>),
    /// In place in a mapped file.
    Mapped(Mapped),
}

impl Stored {
    /// The bytes, as the file stores them.
    pub fn data(&self) -> candle_core::Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Stored::Tensor(t) => t.data(),
            Stored::Mapped(m) => Ok(std::borrow::Cow::Borrowed(m)),
        }
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapped({:?})", self.range)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `bytes` written to a temporary file at an odd offset (as a GGUF tensor may lie
    /// relative to a page) and mapped: the range holding them.
    pub(crate) fn mapped(bytes: &[u8]) -> Mapped {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 96]).unwrap();
        f.write_all(bytes).unwrap();
        let map = MappedFile::open(&f, Path::new("test")).unwrap();
        map.slice(96..96 + bytes.len()).unwrap()
    }

    #[test]
    fn ranges_outside_the_file_are_refused() {
        let m = mapped(&[1, 2, 3]);
        assert_eq!(&m[..], &[1, 2, 3]);
        let f = tempfile::tempfile().unwrap();
        f.set_len(10).unwrap();
        let map = MappedFile::open(&f, Path::new("test")).unwrap();
        assert!(map.slice(0..10).is_some());
        assert!(map.slice(5..11).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 6..5;
        assert!(map.slice(backwards).is_none());
    }
}
