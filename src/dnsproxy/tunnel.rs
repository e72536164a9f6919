//! Signs of DNS tunnelling in one container's queries (pure; the proxy feeds it every name it
//! is asked, allowed or refused). A warning, never a verdict: refusing is the allowlist's job,
//! and a tunnel through a refused name carries nothing anyway. What it flags:
//!
//! - **Many unique names under one parent** within a window: tunnels encode data in the
//!   labels left of a domain they control, so every query is a new name (`<data>.t.evil.test`).
//!   The parent is the registrable part of the name as far as egressd can guess it without the
//!   Public Suffix List: the last two labels, or three when the second-to-last is a common
//!   second-level suffix under a two-letter country code (`example.co.uk`).
//! - **A long, high-entropy label** with digits in it: encoded data (hex, base32) looks like
//!   that; words and the hashed labels of CDNs are shorter or have no digits.
//!
//! Each parent is flagged at most once per window and reason. Memory is bounded: at most
//! [`MAX_PARENTS`] parents, and at most `max_unique + 1` names remembered (as hashes) per parent.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Parents tracked at once; the one seen least recently goes when a new one comes.
pub const MAX_PARENTS: usize = 256;

/// Second-level labels that, under a two-letter top-level domain, are public suffixes.
const SECOND_LEVEL: [&str; 8] = ["co", "com", "net", "org", "gov", "edu", "ac", "or"];

/// Thresholds of the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TunnelSettings {
    pub window: Duration,
    /// More unique names than this under one parent in one window is suspicious.
    pub max_unique: usize,
    /// A label at least this long...
    pub long_label: usize,
    /// ...with at least this many bits of entropy per character...
    pub min_entropy: f64,
    /// ...and at least this share of digits is suspicious.
    pub min_digit_share: f64,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        TunnelSettings {
            window: Duration::from_secs(60),
            max_unique: 30,
            long_label: 32,
            min_entropy: 3.5,
            min_digit_share: 0.1,
        }
    }
}

/// Why a name looks like tunnelling.
#[derive(Debug, Clone, PartialEq)]
pub enum Suspicion {
    /// More than `max_unique` different names under `parent` within the window.
    ManyNames { parent: String, unique: usize },
    /// A label of `len` characters with `entropy` bits per character.
    EncodedLabel {
        parent: String,
        len: usize,
        entropy: f64,
    },
}

impl Suspicion {
    pub fn parent(&self) -> &str {
        match self {
            Suspicion::ManyNames { parent, .. } | Suspicion::EncodedLabel { parent, .. } => parent,
        }
    }

    /// In words, for the log and `egressd status`.
    pub fn describe(&self, window: Duration) -> String {
        match self {
            Suspicion::ManyNames { unique, .. } => format!(
                "possible DNS tunnelling: more than {} unique names under it within {} s",
                unique.saturating_sub(1),
                window.as_secs()
            ),
            Suspicion::EncodedLabel { len, entropy, .. } => format!(
                "possible DNS tunnelling: a {len}-character label with {entropy:.1} bits of entropy per character"
            ),
        }
    }
}

#[derive(Debug)]
struct Parent {
    started: Instant,
    last_seen: Instant,
    names: HashSet<u64>,
    flagged_many: bool,
    flagged_label: bool,
}

/// The detector of one container.
#[derive(Debug)]
pub struct TunnelDetector {
    settings: TunnelSettings,
    parents: HashMap<String, Parent>,
}

impl Default for TunnelDetector {
    fn default() -> Self {
        TunnelDetector::new(TunnelSettings::default())
    }
}

impl TunnelDetector {
    pub fn new(settings: TunnelSettings) -> Self {
        TunnelDetector {
            settings,
            parents: HashMap::new(),
        }
    }

    pub fn settings(&self) -> TunnelSettings {
        self.settings
    }

    /// Notes one queried name at `now`; says so the first time in a window that the names
    /// under its parent look like tunnelling.
    pub fn observe(&mut self, name: &str, now: Instant) -> Option<Suspicion> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
        let parent_len = parent_labels(&labels);
        if labels.len() <= parent_len {
            return None; // the parent itself: no data to the left of it
        }
        let parent = labels[labels.len() - parent_len..].join(".");
        let s = self.settings;
        if !self.parents.contains_key(&parent) && self.parents.len() >= MAX_PARENTS {
            let oldest = self
                .parents
                .iter()
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.parents.remove(&k);
            }
        }
        let p = self
            .parents
            .entry(parent.clone())
            .or_insert_with(|| Parent {
                started: now,
                last_seen: now,
                names: HashSet::new(),
                flagged_many: false,
                flagged_label: false,
            });
        if now.saturating_duration_since(p.started) >= s.window {
            p.started = now;
            p.names.clear();
            p.flagged_many = false;
            p.flagged_label = false;
        }
        p.last_seen = now;
        if !p.flagged_label {
            for label in &labels[..labels.len() - parent_len] {
                if let Some(entropy) = encoded(label, &s) {
                    p.flagged_label = true;
                    return Some(Suspicion::EncodedLabel {
                        parent,
                        len: label.len(),
                        entropy,
                    });
                }
            }
        }
        if p.names.len() <= s.max_unique {
            p.names.insert(hash(&name));
        }
        if !p.flagged_many && p.names.len() > s.max_unique {
            p.flagged_many = true;
            return Some(Suspicion::ManyNames {
                parent,
                unique: p.names.len(),
            });
        }
        None
    }

    /// Parents tracked now (for tests of the bound).
    pub fn tracked(&self) -> usize {
        self.parents.len()
    }
}

/// How many labels at the end of `labels` make the registrable domain (a guess; see the
/// module documentation).
fn parent_labels(labels: &[&str]) -> usize {
    match labels {
        [.., second, tld] if tld.len() == 2 && SECOND_LEVEL.contains(second) => 3,
        _ => 2,
    }
}

/// `Some(entropy)` when `label` looks like encoded data.
fn encoded(label: &str, s: &TunnelSettings) -> Option<f64> {
    if label.len() < s.long_label {
        return None;
    }
    let digits = label.bytes().filter(u8::is_ascii_digit).count();
    if (digits as f64) < s.min_digit_share * label.len() as f64 {
        return None;
    }
    let e = entropy(label);
    (e >= s.min_entropy).then_some(e)
}

/// Shannon entropy of the characters of `s`, in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_label(i: u64) -> String {
        // 40 hex characters that differ per i, as a tunnel's encoded chunk would.
        let mut s = String::new();
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        while s.len() < 40 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        s.truncate(40);
        s
    }

    #[test]
    fn many_unique_subdomains_of_one_parent_are_flagged_once_per_window() {
        let mut d = TunnelDetector::default();
        let t0 = Instant::now();
        let mut flagged = Vec::new();
        for i in 0..200u64 {
            // Short labels: only the count can give them away.
            if let Some(s) = d.observe(&format!("c{i}.t.evil.test"), t0) {
                flagged.push((i, s));
            }
        }
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(
            flagged[0],
            (
                30,
                Suspicion::ManyNames {
                    parent: "evil.test".into(),
                    unique: 31
                }
            )
        );
        // The next window flags again.
        let later = t0 + Duration::from_secs(61);
        let again = (0..40u64).filter_map(|i| d.observe(&format!("d{i}.evil.test"), later));
        assert_eq!(again.count(), 1);
    }

    #[test]
    fn the_same_names_again_and_again_are_normal() {
        let mut d = TunnelDetector::default();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            for name in [
                "api.openai.com",
                "files.pythonhosted.org",
                "pypi.org",
                "a.b.c.d.example.com",
            ] {
                assert_eq!(
                    d.observe(name, t0 + Duration::from_millis(i)),
                    None,
                    "{name}"
                );
            }
        }
        // A CDN's few dozen names, under the threshold.
        for i in 0..30 {
            assert_eq!(d.observe(&format!("edge-{i}.cdn.example.net"), t0), None);
        }
    }

    #[test]
    fn a_long_encoded_label_is_flagged_and_words_are_not() {
        let mut d = TunnelDetector::default();
        let t0 = Instant::now();
        let words = "thisisaverylongbutperfectlyordinarylabelname";
        assert_eq!(d.observe(&format!("{words}.example.com"), t0), None);
        let elb = "my-load-balancer-1234567890.us-west-2.elb.amazonaws.com";
        assert_eq!(d.observe(elb, t0), None);
        let got = d.observe(&format!("{}.x.evil.test", hex_label(1)), t0);
        match got {
            Some(Suspicion::EncodedLabel {
                parent,
                len,
                entropy,
            }) => {
                assert_eq!(parent, "evil.test");
                assert_eq!(len, 40);
                assert!(entropy >= 3.5, "{entropy}");
            }
            other => panic!("{other:?}"),
        }
        // Once per window for that parent.
        assert_eq!(d.observe(&format!("{}.evil.test", hex_label(2)), t0), None);
    }

    #[test]
    fn country_code_second_level_suffixes_are_not_the_parent() {
        let mut d = TunnelDetector::default();
        let t0 = Instant::now();
        let hits: Vec<Suspicion> = (0..40u64)
            .filter_map(|i| d.observe(&format!("n{i}.evil.co.uk"), t0))
            .collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].parent(), "evil.co.uk");
        // Names directly under a public suffix have nothing left of the parent.
        assert_eq!(d.observe("example.co.uk", t0), None);
        assert_eq!(d.observe("example.com.", t0), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = TunnelDetector::default();
        let t0 = Instant::now();
        for i in 0..5000u64 {
            d.observe(&format!("x.p{i}.test"), t0 + Duration::from_millis(i));
        }
        assert_eq!(d.tracked(), MAX_PARENTS);
        for p in d.parents.values() {
            assert!(p.names.len() <= d.settings.max_unique + 1);
        }
    }

    #[test]
    fn entropy_of_simple_strings() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abab") - 1.0).abs() < 1e-9);
        assert!((entropy("0123456789abcdef") - 4.0).abs() < 1e-9);
    }
}
