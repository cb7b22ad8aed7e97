//! Sealed chunks on disk: append-only files, indexed by sled.
//!
//! sled stored 2 bytes on disk per byte of ~2 KB chunk values on the standard workload (its
//! segments are cleaned only once less than half live), so chunk bytes live in plain files and
//! sled keeps only their locations.
//!
//! ```text
//! <data dir>/chunks/<file number, 10 digits>.chunks   chunk after chunk (see codec), each followed
//!                                                     by its 1-minute summaries (see buckets)
//! sled tree `chunks`: id (u64 BE) ++ first ts (u64 BE) -> Loc: u32 LE file, u64 LE offset,
//!                     u32 LE len (chunk and summaries), then u32 LE length of the summaries
//! ```
//! Invariants:
//! - A location is inserted into sled only after its bytes are fsynced, so sled (which may
//!   persist an insert at any time) never points at bytes a crash could lose.
//! - Files are only appended to; a new file starts at every open and past `max_file_bytes`.
//!   Bytes no location points at (replaced or deleted chunks, or a crash's unindexed tail) are
//!   garbage; `live` counts what is still pointed at, and a file with no live bytes left is
//!   deleted at a checkpoint (after sled is flushed).

use crate::error::{Result, StorageError};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a chunk's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.file.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Loc> {
        if b.len() != 16 {
            return Err(StorageError::corrupt(
                "chunk index",
                "location is not 16 bytes",
            ));
        }
        let mut f = [0u8; 4];
        let mut o = [0u8; 8];
        let mut l = [0u8; 4];
        f.copy_from_slice(&b[..4]);
        o.copy_from_slice(&b[4..12]);
        l.copy_from_slice(&b[12..]);
        Ok(Loc {
            file: u32::from_le_bytes(f),
            offset: u64::from_le_bytes(o),
            len: u32::from_le_bytes(l),
        })
    }
}

struct Active {
    number: u32,
    file: File,
    len: u64,
    unsynced: bool,
}

/// The chunk files of a store.
pub(crate) struct ChunkFiles {
    dir: PathBuf,
    max_file_bytes: u64,
    active: Mutex<Active>,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// Live bytes per file.
    live: Mutex<HashMap<u32, u64>>,
}

fn name(number: u32) -> String {
    format!("{number:010}.chunks")
}

fn io(p: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(p, e)
}

impl ChunkFiles {
    /// Opens the files under `dir` and starts a new one for appends.
    pub(crate) fn open(dir: &Path, max_file_bytes: u64) -> Result<ChunkFiles> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut readers = HashMap::new();
        let mut max = 0u32;
        for e in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let e = e.map_err(|e| io(dir, e))?;
            let n = e.file_name();
            let Some(num) = n
                .to_str()
                .and_then(|s| s.strip_suffix(".chunks"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let f = File::open(e.path()).map_err(|err| io(&e.path(), err))?;
            readers.insert(num, Arc::new(f));
            max = max.max(num);
        }
        let number = max + 1;
        let (file, reader) = Self::create(dir, number)?;
        readers.insert(number, reader);
        Ok(ChunkFiles {
            dir: dir.to_path_buf(),
            max_file_bytes,
            active: Mutex::new(Active {
                number,
                file,
                len: 0,
                unsynced: false,
            }),
            readers: RwLock::new(readers),
            live: Mutex::new(HashMap::new()),
        })
    }

    fn create(dir: &Path, number: u32) -> Result<(File, Arc<File>)> {
        let path = dir.join(name(number));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
        let reader = Arc::new(File::open(&path).map_err(|e| io(&path, e))?);
        Ok((file, reader))
    }

    /// Counts `loc` as live (at open, for every indexed location).
    pub(crate) fn count_live(&self, loc: Loc) {
        *self.live.lock().entry(loc.file).or_default() += loc.len as u64;
    }

    /// Appends a chunk; it is durable only after [`ChunkFiles::sync`].
    pub(crate) fn append(&self, bytes: &[u8]) -> Result<Loc> {
        let mut a = self.active.lock();
        if a.len > 0 && a.len + bytes.len() as u64 > self.max_file_bytes {
            a.file.sync_data().map_err(|e| io(&self.dir, e))?;
            let number = a.number + 1;
            let (file, reader) = Self::create(&self.dir, number)?;
            self.readers.write().insert(number, reader);
            *a = Active {
                number,
                file,
                len: 0,
                unsynced: false,
            };
        }
        a.file
            .write_all(bytes)
            .map_err(|e| io(&self.dir.join(name(a.number)), e))?;
        let loc = Loc {
            file: a.number,
            offset: a.len,
            len: bytes.len() as u32,
        };
        a.len += bytes.len() as u64;
        a.unsynced = true;
        drop(a);
        self.count_live(loc);
        Ok(loc)
    }

    /// Makes every appended chunk durable.
    pub(crate) fn sync(&self) -> Result<()> {
        let mut a = self.active.lock();
        if a.unsynced {
            a.file
                .sync_data()
                .map_err(|e| io(&self.dir.join(name(a.number)), e))?;
            a.unsynced = false;
        }
        Ok(())
    }

    /// Reads a chunk's bytes.
    pub(crate) fn read(&self, loc: Loc) -> Result<Vec<u8>> {
        let f = self.readers.read().get(&loc.file).cloned().ok_or_else(|| {
            StorageError::corrupt("chunk index", format!("no chunk file {}", loc.file))
        })?;
        let mut buf = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| io(&self.dir.join(name(loc.file)), e))?;
        Ok(buf)
    }

    /// Marks `loc` as no longer pointed at.
    pub(crate) fn release(&self, loc: Loc) {
        if let Some(l) = self.live.lock().get_mut(&loc.file) {
            *l = l.saturating_sub(loc.len as u64);
        }
    }

    /// Deletes the files (other than the active one) with no live bytes. Call only once sled is
    /// flushed, so that no durable location points into them.
    pub(crate) fn delete_dead(&self) -> Result<usize> {
        let active = self.active.lock().number;
        let dead: Vec<u32> = {
            let live = self.live.lock();
            self.readers
                .read()
                .keys()
                .copied()
                .filter(|n| *n != active && live.get(n).copied().unwrap_or(0) == 0)
                .collect()
        };
        for n in &dead {
            self.readers.write().remove(n);
            self.live.lock().remove(n);
            let p = self.dir.join(name(*n));
            fs::remove_file(&p).map_err(|e| io(&p, e))?;
        }
        Ok(dead.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_rotate_and_delete_dead() {
        let dir = tempfile::tempdir().unwrap();
        let cf = ChunkFiles::open(dir.path(), 10).unwrap();
        let a = cf.append(b"hello").unwrap();
        let b = cf.append(b"world!!").unwrap();
        cf.sync().unwrap();
        assert_eq!(cf.read(a).unwrap(), b"hello");
        assert_eq!(cf.read(b).unwrap(), b"world!!");
        assert_ne!(a.file, b.file, "rotates past max_file_bytes");
        assert_eq!(Loc::decode(&b.encode()).unwrap(), b);
        cf.release(a);
        assert_eq!(cf.delete_dead().unwrap(), 1);
        assert!(cf.read(a).is_err());
        assert_eq!(cf.read(b).unwrap(), b"world!!");
        drop(cf);
        // Reopening starts a new file and still reads the old ones.
        let cf = ChunkFiles::open(dir.path(), 10).unwrap();
        assert_eq!(cf.read(b).unwrap(), b"world!!");
    }
}
