//! Atomic file writes: write a temporary file next to the target, fsync it, rename it over the
//! target.
//!
//! Every file spiketile produces (checkpoints, prediction CSVs, converted datasets) goes through this
//! module, so an interrupted run never leaves a torn file behind (SPEC §5): readers see either the
//! old file or the complete new one.
//!
//! The temporary file lives in the same directory as the target (a rename is atomic only inside one
//! file system) and is named `.{name}.tmp-{pid}-{counter}`, so it is hidden, never collides with a
//! concurrent writer, and is easy to recognise should a hard kill leave one behind. On any error,
//! and on a panic inside a writer closure, the temporary file is removed and the target is left
//! untouched.
//!
//! ```
//! use std::io::Write;
//! use spiketile::atomic::{write_atomic, write_atomic_with};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("predictions.csv");
//! write_atomic(&path, b"index,label,prediction\n")?;
//! write_atomic_with(&path, |w| {
//!     writeln!(w, "index,label,prediction")?;
//!     writeln!(w, "0,3,3")?;
//!     Ok(())
//! })?;
//! assert_eq!(std::fs::read_to_string(&path)?, "index,label,prediction\n0,3,3\n");
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

/// Distinguishes temporary files of one process (several threads may write at once).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path for `path`, in the same directory: `.{name}.tmp-{pid}-{counter}`.
///
/// Every call returns a new name (a per-process counter). Use it directly only when a library must
/// be given a path to write to (an HDF5 writer, say), and prefer [`write_atomic_path`], which also
/// syncs, renames and cleans up. A `path` without a file name (`/`, `..`) gets `output` as its name
/// here; the writers in this module reject such paths with an error.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or("output".as_ref());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(tmp_name)
}

/// Checks, before any long work, that [`write_atomic`] could write `path` later: it has a file
/// name, is not a directory, and a temporary file can be created (and is removed again) next to
/// it. Commands call it on their output paths first, so that a missing directory or a read-only
/// one is reported before a training run, not after it.
///
/// ```
/// use spiketile::atomic::check_writable;
/// let dir = tempfile::tempdir()?;
/// check_writable(&dir.path().join("out.csv"))?;
/// assert!(check_writable(&dir.path().join("missing/out.csv")).is_err());
/// assert!(check_writable(dir.path()).is_err());
/// assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
/// # Ok::<(), anyhow::Error>(())
/// ```
///
/// # Errors
/// Naming `path` and what is wrong.
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    let run = || -> anyhow::Result<()> {
        if path.file_name().is_none() {
            anyhow::bail!("the path has no file name");
        }
        if path.is_dir() {
            anyhow::bail!("it is a directory");
        }
        let tmp = temp_path_for(path);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create a file next to it ({})", tmp.display()))?;
        std::fs::remove_file(&tmp)
            .with_context(|| format!("cannot remove the test file {}", tmp.display()))?;
        Ok(())
    };
    run().with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` to `path` atomically (see the [module docs](self)).
///
/// # Errors
/// If the temporary file cannot be created, written or synced, or the rename fails (a missing
/// directory, `path` being a directory, no permission). The error names `path`; `path` is then
/// unchanged and no temporary file remains.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Streams the output of `f` into `path` atomically (see the [module docs](self)).
///
/// `f` writes into a buffered writer on the temporary file; whatever it does not write is not in
/// the file. If `f` returns an error (or panics), nothing is renamed: `path` keeps its old contents
/// and the temporary file is removed.
///
/// # Errors
/// The error of `f`, or an I/O error; either way with context naming `path`.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    write_atomic_path(path, |tmp| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .with_context(|| format!("cannot create temporary file {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        w.flush().with_context(|| format!("cannot write temporary file {}", tmp.display()))?;
        Ok(())
    })
}

/// Lets `f` create and fill a file at a temporary path, then fsyncs it and renames it over `path`.
///
/// For writers that want a path rather than a [`Write`] (an HDF5 library, say). `f` must create the
/// file at the path it is given (it does not exist yet) and close it before returning. On error
/// (or panic) whatever `f` left at the temporary path is removed and `path` is untouched.
///
/// # Errors
/// The error of `f`; `f` not having created the file; an I/O error syncing or renaming. Each names
/// `path`.
pub fn write_atomic_path(
    path: &Path,
    f: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let run = || -> anyhow::Result<()> {
        if path.file_name().is_none() {
            anyhow::bail!("the path has no file name");
        }
        let tmp = temp_path_for(path);
        let guard = TempGuard(Some(tmp.clone()));
        f(&tmp)?;
        sync_file(&tmp)?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to the target", tmp.display()))?;
        guard.disarm();
        sync_parent_dir(path);
        Ok(())
    };
    run().with_context(|| format!("cannot write {}", path.display()))
}

/// Flushes the file's data and metadata to the device, so the rename cannot expose an empty file
/// after a crash.
fn sync_file(tmp: &Path) -> anyhow::Result<()> {
    File::options()
        .write(true)
        .open(tmp)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot sync temporary file {}", tmp.display()))
}

/// Makes the rename itself durable (best effort: not every platform can open a directory).
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Removes the temporary file when dropped, unless disarmed after a successful rename.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_new_file_and_replaces_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(entries(dir.path()), ["out.bin"]);
    }

    #[test]
    fn failing_closure_leaves_old_file_intact_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        write_atomic(&path, b"old contents").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"half a new fi")?;
            anyhow::bail!("simulated failure mid-write")
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ckpt.safetensors"), "{msg}");
        assert!(msg.contains("simulated failure mid-write"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
        assert_eq!(entries(dir.path()), ["ckpt.safetensors"]);
    }

    #[test]
    fn failing_closure_creates_nothing_when_target_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.csv");
        write_atomic_with(&path, |_| anyhow::bail!("no")).unwrap_err();
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn panicking_closure_removes_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.bin");
        write_atomic(&path, b"old").unwrap();
        let result = std::panic::catch_unwind(|| {
            write_atomic_with(&path, |w| {
                w.write_all(b"partial")?;
                panic!("writer panicked")
            })
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["p.bin"]);
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no_such_dir").join("out.bin");
        let msg = format!("{:#}", write_atomic(&path, b"x").unwrap_err());
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn target_that_is_a_directory_is_an_error_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"k").unwrap();
        let msg = format!("{:#}", write_atomic(&path, b"x").unwrap_err());
        assert!(msg.contains("sub"), "{msg}");
        assert_eq!(entries(dir.path()), ["sub"]);
        assert_eq!(entries(&path), ["keep"]);
    }

    #[test]
    fn path_without_file_name_is_an_error() {
        let msg = format!("{:#}", write_atomic(Path::new("/"), b"x").unwrap_err());
        assert!(msg.contains("no file name"), "{msg}");
    }

    #[test]
    fn temp_path_is_hidden_sibling_and_unique() {
        let a = temp_path_for(Path::new("/some/dir/model.safetensors"));
        let b = temp_path_for(Path::new("/some/dir/model.safetensors"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/some/dir")));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        let prefix = format!(".model.safetensors.tmp-{}-", std::process::id());
        assert!(name.starts_with(&prefix), "{name}");
        // A bare file name stays in the current directory.
        let c = temp_path_for(Path::new("out.csv"));
        assert_eq!(c.parent(), Some(Path::new("")));
    }

    #[test]
    fn write_atomic_path_renames_what_the_closure_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.h5");
        write_atomic_path(&path, |tmp| {
            assert_ne!(tmp, path);
            Ok(std::fs::write(tmp, b"hdf5ish")?)
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hdf5ish");
        assert_eq!(entries(dir.path()), ["data.h5"]);
    }

    #[test]
    fn write_atomic_path_errors_when_closure_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.h5");
        let msg = format!("{:#}", write_atomic_path(&path, |_| Ok(())).unwrap_err());
        assert!(msg.contains("data.h5"), "{msg}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn write_atomic_path_cleans_up_after_failing_closure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.h5");
        write_atomic_path(&path, |tmp| {
            std::fs::write(tmp, b"partial")?;
            anyhow::bail!("library error")
        })
        .unwrap_err();
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn concurrent_writers_never_tear_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.bin");
        std::thread::scope(|s| {
            for t in 0u8..4 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|&b| b == bytes[0]));
        assert_eq!(entries(dir.path()), ["shared.bin"]);
    }
}
