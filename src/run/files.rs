//! A run's files and names: its id, its transcript, and the life of its challenge key.
//!
//! A new run gets a fresh secret key, saved (mode 0600, never overwritten) beside its
//! transcript as `RUN.key`, unless one is given; a resumed run reads the saved key back. The
//! key the challenges are derived from is that key bound to the run id
//! ([`ChallengeKey::for_run`]). A run that fails before its transcript exists removes the key
//! it made, so a failed start leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::challenge::{ChallengeError, ChallengeKey};

/// What can go wrong with a run's files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// A file or folder could not be made or written.
    #[error("{path}: {what}")]
    Io {
        /// The path.
        path: String,
        /// What was being done, and the fix.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A run id that is not a plain file name.
    #[error("run id {0:?} must be a plain file name (no slashes, not starting with a dot)")]
    BadRunId(String),
    /// `--resume` with `--run-id`.
    #[error("--resume RUN names the run already; drop --run-id")]
    ResumeWithRunId,
    /// A resumed run whose key is neither given nor saved.
    #[error("resuming {run_id}: no --key-file given and no saved key at {path}; pass the run's own key with --key-file (a new key cannot continue a run)")]
    NoSavedKey {
        /// The run.
        run_id: String,
        /// Where the key was looked for.
        path: String,
    },
    /// A key file given by hand.
    #[error(transparent)]
    Key(#[from] ChallengeError),
}

/// A run id from the UTC time and a random suffix, e.g. `20261123T120501Z-3fa2c1`.
pub fn new_run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let ((y, m, d), rem) = (civil_date(secs.div_euclid(86_400)), secs.rem_euclid(86_400));
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{:06x}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        rand::random::<u32>() & 0xff_ffff
    )
}

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Write a secret to a new file readable by its owner only (never over an existing one).
pub fn write_new_secret(path: &Path, text: &str) -> Result<(), FilesError> {
    let io = |what, source| FilesError::Io {
        path: path.display().to_string(),
        what,
        source,
    };
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .map_err(|e| io("cannot create key file (it must not exist yet)", e))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io("cannot write key file", e))
}

/// A run's id, transcript and key.
pub struct RunFiles {
    /// The run key (see [`ChallengeKey::for_run`]).
    pub key: ChallengeKey,
    /// Run id.
    pub run_id: String,
    /// Transcript path.
    pub transcript: PathBuf,
    /// Where the run's own key is saved.
    pub saved_key: PathBuf,
    /// This call made the saved key.
    pub generated_key: bool,
    /// The run continues an existing transcript.
    pub resume: bool,
}

impl RunFiles {
    /// The files of a run in the folder `transcripts`: a new one (id given or made, key given
    /// or made and saved), or the one `resume` names (its saved key, unless one is given).
    pub fn prepare(
        key_file: Option<&Path>,
        run_id: Option<&str>,
        resume: Option<&str>,
        transcripts: &Path,
    ) -> Result<Self, FilesError> {
        if resume.is_some() && run_id.is_some() {
            return Err(FilesError::ResumeWithRunId);
        }
        let run_id = resume
            .or(run_id)
            .map(str::to_string)
            .unwrap_or_else(new_run_id);
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(FilesError::BadRunId(run_id));
        }
        let transcript = transcripts.join(format!("{run_id}.ndjson"));
        let saved_key = transcripts.join(format!("{run_id}.key"));
        let mut generated_key = false;
        let key = match (key_file, resume.is_some()) {
            (Some(f), _) => ChallengeKey::read(f)?,
            (None, true) if !saved_key.exists() => {
                return Err(FilesError::NoSavedKey {
                    run_id,
                    path: saved_key.display().to_string(),
                })
            }
            (None, true) => ChallengeKey::read(&saved_key)?,
            (None, false) => {
                let key = ChallengeKey::generate();
                std::fs::create_dir_all(transcripts).map_err(|source| FilesError::Io {
                    path: transcripts.display().to_string(),
                    what: "cannot create the transcripts folder",
                    source,
                })?;
                write_new_secret(&saved_key, &key.to_hex())?;
                generated_key = true;
                key
            }
        };
        Ok(Self {
            key: key.for_run(&run_id),
            run_id,
            transcript,
            saved_key,
            generated_key,
            resume: resume.is_some(),
        })
    }

    /// On an error before anything was recorded, remove the key made for this run.
    pub fn cleanup_on_error<T, E>(&self, r: Result<T, E>) -> Result<T, E> {
        if r.is_err() && self.generated_key && !self.transcript.exists() {
            let _ = std::fs::remove_file(&self.saved_key);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_run_ids() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_788), (2026, 12, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        let id = new_run_id();
        assert_eq!(id.len(), "20261123T120501Z-3fa2c1".len(), "{id}");
        assert!(id[..8].chars().all(|c| c.is_ascii_digit()) && id.as_bytes()[8] == b'T');
    }

    #[test]
    fn a_new_run_saves_its_key_and_a_failed_start_removes_it() {
        let dir = std::env::temp_dir().join(format!("pot-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = RunFiles::prepare(None, Some("r1"), None, &dir).unwrap();
        assert!(f.generated_key && f.saved_key.is_file());
        let back = RunFiles::prepare(None, None, Some("r1"), &dir).unwrap();
        assert_eq!(back.key.to_hex(), f.key.to_hex());
        assert!(!back.generated_key && back.resume);
        // The saved key is never overwritten.
        assert!(matches!(
            RunFiles::prepare(None, Some("r1"), None, &dir),
            Err(FilesError::Io { .. })
        ));
        let r: Result<(), &str> = f.cleanup_on_error(Err("failed before the transcript"));
        assert!(r.is_err() && !f.saved_key.exists());
        assert!(matches!(
            RunFiles::prepare(None, None, Some("r1"), &dir),
            Err(FilesError::NoSavedKey { .. })
        ));
        for bad in ["", "a/b", ".hidden"] {
            assert!(matches!(
                RunFiles::prepare(None, Some(bad), None, &dir),
                Err(FilesError::BadRunId(_))
            ));
        }
        assert!(matches!(
            RunFiles::prepare(None, Some("x"), Some("y"), &dir),
            Err(FilesError::ResumeWithRunId)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
