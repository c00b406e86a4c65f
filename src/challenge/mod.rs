//! Challenges: secret, keyed, reproducible prompts.
//!
//! `challenge(key, run_id, index)` is a pure function. An HMAC-SHA256 PRF keyed by the
//! auditor's secret key, over the run id and the index, chooses a family, a template and
//! every slot filler; the same key and run id give the same prompts byte for byte, and
//! without the key nobody (least of all the audited provider) can predict them.
//!
//! Families are stratified round-robin: indices `5c .. 5c+4` (cycle `c`) hold each of the five
//! families exactly once, in an order the PRF shuffles per cycle. The statistics rely on this
//! (see `stats`): over a full cycle the challenges are a stratified sample of the families.
//!
//! The templates and word lists are data, in `challenges/*.json` at the repository root,
//! compiled into the binary so a run never depends on the working directory.
//!
//! A run never uses the auditor's key directly: it uses the run key
//! [`ChallengeKey::for_run`] (an HMAC of the key and the run id), so that revealing one run's
//! key in its evidence bundle reveals no other run's prompts.
//!
//! This room never does I/O besides reading a key file, and never prints or records the key:
//! runs record only [`ChallengeKey::commitment`] of their run key.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation tag of the challenge PRF. Changing the derivation changes this tag.
pub const PRF_TAG: &[u8] = b"pot/challenge/v1";
const COMMIT_TAG: &[u8] = b"pot/key-commitment/v1";
const RUN_KEY_TAG: &[u8] = b"pot/run-key/v1";
const SCORE_SALT_TAG: &[u8] = b"pot/score-salt/v1";

/// The five challenge families, in their canonical order.
pub const FAMILIES: [&str; 5] = ["general", "arithmetic", "code", "safety-vocab", "ood-nouns"];

const FAMILY_DATA: [&str; 5] = [
    include_str!("../../challenges/general.json"),
    include_str!("../../challenges/arithmetic.json"),
    include_str!("../../challenges/code.json"),
    include_str!("../../challenges/safety-vocab.json"),
    include_str!("../../challenges/ood-nouns.json"),
];

/// What can go wrong with keys and challenge data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The key file could not be read.
    #[error("{path}: cannot read key file ({source}); create one with `pot keygen -o {path}`")]
    KeyRead {
        /// Path.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("{path}: {reason}; a key file holds 64 hex digits (32 bytes): create one with `pot keygen -o FILE`")]
    KeyFormat {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Challenge data that does not parse or has a hole (a bug in challenges/*.json).
    #[error("challenges/{family}.json: {reason}")]
    Data {
        /// Family.
        family: String,
        /// What is wrong.
        reason: String,
    },
}

/// A 256-bit secret challenge key. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ChallengeKey([u8; 32]);

impl fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChallengeKey(commitment {})", self.commitment())
    }
}

impl ChallengeKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parse the 64-hex-digit text form (surrounding whitespace ignored).
    pub fn from_hex(text: &str, source: &str) -> Result<Self, ChallengeError> {
        let t = text.trim();
        let fmt_err = |reason: String| ChallengeError::KeyFormat {
            path: source.to_string(),
            reason,
        };
        if t.is_empty() {
            return Err(fmt_err("the key file is empty".into()));
        }
        if t.len() != 64 {
            return Err(fmt_err(format!(
                "expected 64 hex digits, found {} characters",
                t.len()
            )));
        }
        let bytes = hex::decode(t).map_err(|e| fmt_err(format!("not hexadecimal ({e})")))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(Self(k))
    }

    /// Read a key file.
    pub fn read(path: &Path) -> Result<Self, ChallengeError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ChallengeError::KeyRead {
            path: p.clone(),
            source,
        })?;
        Self::from_hex(&text, &p)
    }

    /// The text form written to key files. Handle with care: this is the secret.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// SHA-256 commitment to the key (hex): binding, and hiding because the key is 256
    /// random bits. Transcripts and bundles record this, never the key.
    pub fn commitment(&self) -> String {
        let mut h = Sha256::new();
        h.update(COMMIT_TAG);
        h.update(self.0);
        hex::encode(h.finalize())
    }

    /// The key of one run: HMAC-SHA256(key, tag ‖ run id). A run's challenges are drawn
    /// with its run key, and an evidence bundle reveals only that key, so publishing one
    /// run's bundle reveals nothing about the prompts of any other run under the same key.
    pub fn for_run(&self, run_id: &str) -> ChallengeKey {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(RUN_KEY_TAG);
        mac.update(&(run_id.len() as u64).to_be_bytes());
        mac.update(run_id.as_bytes());
        Self(mac.finalize().into_bytes().into())
    }

    /// 64 bytes for the salt of the run's score commitment (`crate::zk`): HMAC-SHA256(key,
    /// tag ‖ i) for i = 0, 1. Whoever holds the run key can prove the verdict; nobody else
    /// can search the commitment for the scores.
    pub fn score_salt(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, half) in out.chunks_mut(32).enumerate() {
            let mut mac =
                HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
            mac.update(SCORE_SALT_TAG);
            mac.update(&[i as u8]);
            half.copy_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// The PRF: HMAC-SHA256 over a length-prefixed, domain-separated encoding of
    /// (run id, index, label, counter).
    fn prf(&self, run_id: &str, index: u64, label: &[u8], counter: u32) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(PRF_TAG);
        mac.update(&(run_id.len() as u64).to_be_bytes());
        mac.update(run_id.as_bytes());
        mac.update(&index.to_be_bytes());
        mac.update(&(label.len() as u64).to_be_bytes());
        mac.update(label);
        mac.update(&counter.to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// A stream of uniform draws from the PRF for one (run, index, label).
struct Draws<'a> {
    key: &'a ChallengeKey,
    run_id: &'a str,
    index: u64,
    label: &'a [u8],
    counter: u32,
    buf: [u8; 32],
    pos: usize,
}

impl<'a> Draws<'a> {
    fn new(key: &'a ChallengeKey, run_id: &'a str, index: u64, label: &'a [u8]) -> Self {
        Self {
            key,
            run_id,
            index,
            label,
            counter: 0,
            buf: [0; 32],
            pos: 32,
        }
    }

    fn next_u64(&mut self) -> u64 {
        if self.pos == 32 {
            self.buf = self
                .key
                .prf(self.run_id, self.index, self.label, self.counter);
            self.counter += 1;
            self.pos = 0;
        }
        let v = u64::from_be_bytes(
            self.buf[self.pos..self.pos + 8]
                .try_into()
                .expect("8 bytes"),
        );
        self.pos += 8;
        v
    }

    /// Uniform in `0..n` with no modulo bias (rejection sampling).
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "draw from an empty range");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

#[derive(Deserialize)]
struct FamilyFile {
    family: String,
    about: String,
    templates: Vec<String>,
    slots: std::collections::BTreeMap<String, Vec<String>>,
}

/// One piece of a parsed template.
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Words(usize),
    Int(u64, u64),
}

/// A family: its parsed templates and word lists.
#[derive(Debug)]
pub struct Family {
    /// Name.
    pub name: String,
    /// One line on what the family probes.
    pub about: String,
    templates: Vec<Vec<Piece>>,
    lists: Vec<Vec<String>>,
}

impl Family {
    fn parse(text: &str) -> Result<Self, ChallengeError> {
        let f: FamilyFile = serde_json::from_str(text).map_err(|e| ChallengeError::Data {
            family: "?".into(),
            reason: e.to_string(),
        })?;
        let data_err = |reason: String| ChallengeError::Data {
            family: f.family.clone(),
            reason,
        };
        let names: Vec<&String> = f.slots.keys().collect();
        let mut lists = Vec::new();
        for (name, words) in &f.slots {
            let mut seen = std::collections::HashSet::new();
            if words.is_empty() {
                return Err(data_err(format!("slot {name} has no words")));
            }
            for w in words {
                if !seen.insert(w) {
                    return Err(data_err(format!("slot {name} lists {w:?} twice")));
                }
                if w.contains(['{', '}']) {
                    return Err(data_err(format!("slot {name}: filler {w:?} holds a brace")));
                }
            }
            lists.push(words.clone());
        }
        let mut templates = Vec::new();
        for t in &f.templates {
            let mut pieces = Vec::new();
            let mut rest = t.as_str();
            while let Some(open) = rest.find('{') {
                if open > 0 {
                    pieces.push(Piece::Text(rest[..open].to_string()));
                }
                let close = rest[open..]
                    .find('}')
                    .ok_or_else(|| data_err(format!("template {t:?}: unclosed brace")))?
                    + open;
                let slot = &rest[open + 1..close];
                if let Some(range) = slot.strip_prefix("int:") {
                    let (a, b) = range
                        .split_once(':')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                        .ok_or_else(|| data_err(format!("template {t:?}: bad range {slot}")))?;
                    if a > b {
                        return Err(data_err(format!("template {t:?}: empty range {slot}")));
                    }
                    pieces.push(Piece::Int(a, b));
                } else {
                    let i = names
                        .iter()
                        .position(|n| n.as_str() == slot)
                        .ok_or_else(|| data_err(format!("template {t:?}: unknown slot {slot}")))?;
                    pieces.push(Piece::Words(i));
                }
                rest = &rest[close + 1..];
            }
            if rest.contains('}') {
                return Err(data_err(format!("template {t:?}: stray closing brace")));
            }
            if !rest.is_empty() {
                pieces.push(Piece::Text(rest.to_string()));
            }
            templates.push(pieces);
        }
        if templates.is_empty() {
            return Err(data_err("no templates".into()));
        }
        Ok(Self {
            name: f.family.clone(),
            about: f.about.clone(),
            templates,
            lists,
        })
    }

    /// How many prompts the family can produce (templates × fillers; each filler list has
    /// distinct entries, checked at load).
    pub fn capacity(&self) -> f64 {
        self.templates
            .iter()
            .map(|t| {
                t.iter()
                    .map(|p| match p {
                        Piece::Text(_) => 1.0,
                        Piece::Words(i) => self.lists[*i].len() as f64,
                        Piece::Int(a, b) => (b - a + 1) as f64,
                    })
                    .product::<f64>()
            })
            .sum()
    }

    fn fill(&self, draws: &mut Draws<'_>) -> (usize, String) {
        let t = draws.below(self.templates.len() as u64) as usize;
        let mut out = String::new();
        for p in &self.templates[t] {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Words(i) => {
                    let list = &self.lists[*i];
                    out.push_str(&list[draws.below(list.len() as u64) as usize]);
                }
                Piece::Int(a, b) => {
                    out.push_str(&(a + draws.below(b - a + 1)).to_string());
                }
            }
        }
        (t, out)
    }
}

/// All five families, parsed once.
pub struct Catalog {
    /// In [`FAMILIES`] order.
    pub families: Vec<Family>,
}

impl Catalog {
    /// Parse the compiled-in challenge data.
    pub fn load() -> Result<Self, ChallengeError> {
        let families = FAMILY_DATA
            .iter()
            .map(|t| Family::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        for (f, name) in families.iter().zip(FAMILIES) {
            if f.name != name {
                return Err(ChallengeError::Data {
                    family: name.into(),
                    reason: format!("file names family {:?}", f.name),
                });
            }
        }
        Ok(Self { families })
    }

    /// The challenge at `index` of run `run_id`.
    pub fn challenge(&self, key: &ChallengeKey, run_id: &str, index: u64) -> Challenge {
        let n = FAMILIES.len() as u64;
        let cycle = index / n;
        // Per-cycle order of the families: a PRF-keyed Fisher-Yates shuffle.
        let mut order: Vec<usize> = (0..FAMILIES.len()).collect();
        let mut d = Draws::new(key, run_id, cycle, b"cycle-order");
        for i in (1..order.len()).rev() {
            let j = d.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let fam = &self.families[order[(index % n) as usize]];
        let mut d = Draws::new(key, run_id, index, b"prompt");
        let (template, prompt) = fam.fill(&mut d);
        Challenge {
            index,
            family: fam.name.clone(),
            template,
            prompt,
        }
    }
}

/// One challenge prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Position in the run.
    pub index: u64,
    /// Family name.
    pub family: String,
    /// Template number within the family.
    pub template: usize,
    /// The prompt text.
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_missing_key_file_keeps_its_os_error_and_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.key");
        let e = ChallengeKey::read(&path).unwrap_err();
        let source = std::error::Error::source(&e).expect("the OS error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let line = crate::with_causes(&e);
        assert!(line.contains("pot keygen -o"), "{line}");
        assert_eq!(line.matches(&io.to_string()).count(), 1, "{line}");
    }

    fn key(b: u8) -> ChallengeKey {
        ChallengeKey::from_bytes([b; 32])
    }

    #[test]
    fn same_key_and_run_give_the_same_prompts() {
        let c = Catalog::load().unwrap();
        for i in 0..200 {
            assert_eq!(
                c.challenge(&key(1), "run", i),
                c.challenge(&key(1), "run", i)
            );
        }
    }

    #[test]
    fn other_key_or_run_gives_other_prompts() {
        let c = Catalog::load().unwrap();
        let a: Vec<_> = (0..50)
            .map(|i| c.challenge(&key(1), "run", i).prompt)
            .collect();
        let b: Vec<_> = (0..50)
            .map(|i| c.challenge(&key(2), "run", i).prompt)
            .collect();
        let r: Vec<_> = (0..50)
            .map(|i| c.challenge(&key(1), "run2", i).prompt)
            .collect();
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 3);
        assert!(a.iter().zip(&r).filter(|(x, y)| x == y).count() < 3);
    }

    #[test]
    fn every_cycle_holds_each_family_once() {
        let c = Catalog::load().unwrap();
        for cycle in 0..100u64 {
            let fams: HashSet<String> = (0..5)
                .map(|j| c.challenge(&key(3), "r", cycle * 5 + j).family)
                .collect();
            assert_eq!(fams.len(), 5, "cycle {cycle}");
        }
    }

    #[test]
    fn no_unfilled_placeholder_in_100000_draws() {
        let c = Catalog::load().unwrap();
        for i in 0..100_000 {
            let ch = c.challenge(&key(4), "placeholders", i);
            assert!(!ch.prompt.contains(['{', '}']), "{ch:?}");
            assert!(!ch.prompt.is_empty());
        }
    }

    #[test]
    fn each_family_can_produce_a_million_distinct_prompts() {
        let c = Catalog::load().unwrap();
        for f in &c.families {
            assert!(
                f.capacity() >= 1e6,
                "{} holds only {}",
                f.name,
                f.capacity()
            );
        }
        // And draws rarely collide: of 20,000 draws from a family, at least 95% are distinct
        // (templates differ in capacity; the smallest hold about 10^4 prompts each).
        let mut per_family: std::collections::HashMap<String, HashSet<String>> = Default::default();
        for i in 0..100_000 {
            let ch = c.challenge(&key(5), "distinct", i);
            per_family.entry(ch.family).or_default().insert(ch.prompt);
        }
        for (f, set) in per_family {
            eprintln!("{f}: {} distinct of 20000", set.len());
            assert!(
                set.len() >= 19_000,
                "{f}: only {} distinct of 20000",
                set.len()
            );
        }
    }

    #[test]
    fn key_debug_and_commitment_hide_the_key() {
        let k = key(0xab);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.to_hex()));
        assert!(!k.commitment().contains(&k.to_hex()));
        assert_eq!(k.commitment().len(), 64);
        // Run keys: a function of (key, run id), distinct per run and from the key.
        assert_eq!(k.for_run("a"), k.for_run("a"));
        assert_ne!(k.for_run("a"), k.for_run("b"));
        assert_ne!(k.for_run("a"), k);
        assert_ne!(k.for_run("a"), ChallengeKey::generate().for_run("a"));
    }

    #[test]
    fn key_text_round_trips_and_bad_keys_are_refused() {
        let k = ChallengeKey::generate();
        assert_eq!(
            ChallengeKey::from_hex(&format!("{}\n", k.to_hex()), "f").unwrap(),
            k
        );
        assert!(ChallengeKey::from_hex("", "f").is_err());
        assert!(ChallengeKey::from_hex("abc", "f").is_err());
        assert!(ChallengeKey::from_hex(&"zz".repeat(32), "f").is_err());
    }

    #[test]
    fn draws_are_unbiased_in_small_ranges() {
        let k = key(9);
        let mut d = Draws::new(&k, "bias", 0, b"t");
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[d.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
