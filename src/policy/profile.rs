//! Profiles: admin-curated rule sets, one TOML file per profile.
//!
//! ```toml
//! # /etc/egressd/profiles/openai.toml  (profile name = file stem)
//! description = "OpenAI API"
//! [[allow]]
//! host = "api.openai.com"
//! ports = [443]            # optional, default [443]; integers or "8000-8100" strings
//! proto = "tcp"            # optional, "tcp" (default) or "udp"
//! ```
//!
//! [`ProfileSet::load_dirs`] reads several directories; a later directory overrides an
//! earlier one profile by profile. It never stops at the first bad file: every error of
//! every file is collected, and a profile whose (winning) file is bad is *broken*: a
//! container that asks for it is quarantined rather than given a shadowed or partial profile.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::error::FileError;
use super::rule::{
    RuleError, RuleOptions, check_port_count, merge_duplicates, normalize_ports, parse_host,
    parse_port_range, parse_proto,
};
use super::{PortRange, Rule, RuleSource};

/// File name suffix of profile files.
pub const PROFILE_SUFFIX: &str = ".toml";

/// Wire type of a profile file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    allow: Vec<AllowEntry>,
}

/// Wire type of one `[[allow]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowEntry {
    host: Spanned<String>,
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    #[serde(default)]
    proto: Option<Spanned<String>>,
}

/// One validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Validated rules, each with `RuleSource::Profile(name)`; duplicates merged.
    pub rules: Vec<Rule>,
    /// The file it was loaded from.
    pub path: PathBuf,
}

/// What a profile name refers to in a [`ProfileSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a Profile),
    /// The file for this name has errors (listed in [`ProfileSet::errors`]).
    Broken(&'a Path),
    /// A profile directory could not be listed, so no lookup can be trusted (an admin
    /// override in it might be missing). Every profile request fails closed.
    Unavailable(&'a Path),
    Unknown,
}

/// All profiles from the profile directories, plus everything that went wrong loading them.
#[derive(Debug, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
    broken: BTreeMap<String, PathBuf>,
    unreadable_dirs: Vec<PathBuf>,
    missing_dirs: Vec<PathBuf>,
    errors: Vec<FileError>,
}

/// Whether `name` is a valid profile name: `[a-z0-9][a-z0-9_-]*`.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl ProfileSet {
    /// Loads every `NAME.toml` in `dirs`, in order; a later directory's `NAME.toml` replaces an
    /// earlier one. A directory that does not exist is skipped (see [`Self::missing_dirs`]).
    /// Files whose names start with `.` and files not ending in `.toml` are ignored.
    /// Never fails: check [`Self::errors`].
    pub fn load_dirs<P: AsRef<Path>>(dirs: &[P], opts: &RuleOptions) -> ProfileSet {
        let mut set = ProfileSet::default();
        for dir in dirs {
            set.load_dir(dir.as_ref(), opts);
        }
        set
    }

    /// A set built from already validated profiles (for tests and tools).
    pub fn from_profiles(profiles: impl IntoIterator<Item = Profile>) -> ProfileSet {
        ProfileSet {
            profiles: profiles.into_iter().map(|p| (p.name.clone(), p)).collect(),
            ..Default::default()
        }
    }

    fn load_dir(&mut self, dir: &Path, opts: &RuleOptions) {
        let entries = match fs::read_dir(dir) {
            Ok(rd) => rd.collect::<Result<Vec<_>, io::Error>>(),
            Err(e) => Err(e),
        };
        let mut entries = match entries {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.missing_dirs.push(dir.to_path_buf());
                return;
            }
            Err(source) => {
                self.errors.push(FileError::Io {
                    path: dir.to_path_buf(),
                    action: "cannot list profile directory",
                    source,
                });
                self.unreadable_dirs.push(dir.to_path_buf());
                return;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue; // not UTF-8, so not NAME.toml
            };
            if file_name.starts_with('.') {
                continue;
            }
            let Some(name) = file_name.strip_suffix(PROFILE_SUFFIX) else {
                continue;
            };
            let path = entry.path();
            if !is_valid_name(name) {
                self.errors.push(FileError::File {
                    path,
                    message: format!(
                        "\"{name}\" is not a valid profile name: use [a-z0-9][a-z0-9_-]* (the file is ignored)"
                    ),
                });
                continue;
            }
            let result = match fs::read_to_string(&path) {
                Ok(src) => parse_profile(name, &path, &src, opts),
                Err(source) => Err(vec![FileError::Io {
                    path: path.clone(),
                    action: "cannot read profile",
                    source,
                }]),
            };
            match result {
                Ok(profile) => {
                    self.broken.remove(name);
                    self.profiles.insert(name.to_string(), profile);
                }
                Err(errors) => {
                    self.errors.extend(errors);
                    self.profiles.remove(name);
                    self.broken.insert(name.to_string(), path);
                }
            }
        }
    }

    /// What `name` refers to.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        if let Some(dir) = self.unreadable_dirs.first() {
            return Lookup::Unavailable(dir);
        }
        if let Some(p) = self.profiles.get(name) {
            return Lookup::Found(p);
        }
        match self.broken.get(name) {
            Some(path) => Lookup::Broken(path),
            None => Lookup::Unknown,
        }
    }

    /// The valid profile called `name`.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        match self.lookup(name) {
            Lookup::Found(p) => Some(p),
            _ => None,
        }
    }

    /// Valid profiles, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// Names of valid profiles, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Every error from every file and directory.
    pub fn errors(&self) -> &[FileError] {
        &self.errors
    }

    /// Directories that did not exist (not an error: the shipped and the admin directory
    /// need not both exist).
    pub fn missing_dirs(&self) -> &[PathBuf] {
        &self.missing_dirs
    }
}

/// Parses and validates one profile file (`src` is the text of `path`). Pure.
pub fn parse_profile(
    name: &str,
    path: &Path,
    src: &str,
    opts: &RuleOptions,
) -> Result<Profile, Vec<FileError>> {
    let (_, syntax) = toml::de::DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| FileError::from_toml(path, src, e))
            .collect());
    }
    let file: ProfileFile =
        toml::from_str(src).map_err(|e| vec![FileError::from_toml(path, src, &e)])?;

    let source = RuleSource::Profile(name.to_string());
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for entry in &file.allow {
        let at = |span: std::ops::Range<usize>, token: &str, e: RuleError| {
            FileError::at_token(path, src, span, token, e.to_string())
        };
        let host = parse_host(entry.host.get_ref(), opts)
            .map_err(|e| errors.push(at(entry.host.span(), entry.host.get_ref(), e)))
            .ok();

        let proto = match &entry.proto {
            None => Some(Default::default()),
            Some(p) => parse_proto(p.get_ref())
                .map_err(|e| errors.push(at(p.span(), p.get_ref(), e)))
                .ok(),
        };

        let ports = match &entry.ports {
            None => Some(vec![PortRange::single(super::rule::DEFAULT_PORT)]),
            Some(list) if list.get_ref().is_empty() => {
                errors.push(FileError::at(
                    path,
                    src,
                    list.span(),
                    "ports is empty; omit it for the default [443]",
                ));
                None
            }
            Some(list) => {
                let mut ranges = Vec::new();
                let mut ok = true;
                for item in list.get_ref() {
                    match port_item(item.get_ref()) {
                        Ok(r) => ranges.push(r),
                        Err(e) => {
                            ok = false;
                            errors.push(FileError::at(path, src, item.span(), e.to_string()));
                        }
                    }
                }
                ok.then(|| normalize_ports(ranges))
            }
        };

        if let (Some(host), Some(ports), Some(proto)) = (host, ports, proto) {
            if let Err(e) = check_port_count(&host, &ports) {
                let span = entry.ports.as_ref().map_or(entry.host.span(), |p| p.span());
                errors.push(FileError::at(path, src, span, e.to_string()));
                continue;
            }
            rules.push(Rule {
                host,
                ports,
                proto,
                source: source.clone(),
            });
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(FileError::position);
        return Err(errors);
    }
    Ok(Profile {
        name: name.to_string(),
        description: file.description.unwrap_or_default(),
        rules: merge_duplicates(rules),
        path: path.to_path_buf(),
    })
}

/// Why an item of `ports = [...]` was refused.
#[derive(Debug, thiserror::Error)]
enum PortItemError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("ports items must be integers (443) or range strings (\"8000-8100\")")]
    Type,
}

fn port_item(v: &toml::Value) -> Result<PortRange, PortItemError> {
    match v {
        toml::Value::Integer(n) => match u16::try_from(*n) {
            Ok(p) if p >= 1 => Ok(PortRange::single(p)),
            _ => Err(RuleError::PortOutOfRange(n.to_string()).into()),
        },
        toml::Value::String(s) => Ok(parse_port_range(s)?),
        _ => Err(PortItemError::Type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Host, Proto};

    fn parse(src: &str) -> Result<Profile, Vec<String>> {
        parse_profile("p", Path::new("/x/p.toml"), src, &RuleOptions::default())
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    fn pr(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn good_profile() {
        let p = parse(
            r#"
description = "Example"
[[allow]]
host = "API.example.com"
[[allow]]
host = "10.0.0.0/8"
ports = [53, "8000-8100", 80]
proto = "udp"
[[allow]]
host = "[2001:db8::1]"
ports = ["443"]
"#,
        )
        .unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(p.description, "Example");
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[0].host, Host::Domain("api.example.com".into()));
        assert_eq!(p.rules[0].ports, vec![pr(443, 443)]);
        assert_eq!(p.rules[0].proto, Proto::Tcp);
        assert_eq!(p.rules[0].source, RuleSource::Profile("p".into()));
        assert_eq!(
            p.rules[1].ports,
            vec![pr(53, 53), pr(80, 80), pr(8000, 8100)]
        );
        assert_eq!(p.rules[1].proto, Proto::Udp);
        assert_eq!(
            p.rules[2].host,
            Host::Net("2001:db8::1/128".parse().unwrap())
        );
    }

    #[test]
    fn empty_profile_is_valid() {
        let p = parse("description = \"nothing\"\n").unwrap();
        assert!(p.rules.is_empty());
        assert!(parse("").unwrap().rules.is_empty());
    }

    #[test]
    fn syntax_error_has_position() {
        let errs = parse("description = \"x\"\n[[allow]\nhost = \"a.com\"\n").unwrap_err();
        assert!(errs[0].starts_with("/x/p.toml:2:"), "{errs:?}");
    }

    #[test]
    fn unknown_key_has_position_and_token() {
        let errs = parse("[[allow]]\nhost = \"a.com\"\nprots = [80]\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("/x/p.toml:3:1: \"prots\": unknown field `prots`"),
            "{errs:?}"
        );
        let errs = parse("descripton = \"x\"\n").unwrap_err();
        assert!(
            errs[0].starts_with("/x/p.toml:1:1: \"descripton\": unknown field"),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_host() {
        let errs = parse("[[allow]]\nports = [80]\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("missing field `host`"), "{errs:?}");
    }

    #[test]
    fn all_value_errors_reported_with_positions() {
        let src = r#"[[allow]]
host = "a..com"
ports = [0, "9000-8000", 65536, true]
proto = "icmp"
[[allow]]
host = "*"
"#;
        let errs = parse(src).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "/x/p.toml:2:8: \"a..com\": empty label (two dots in a row, or a leading dot)",
                "/x/p.toml:3:10: \"0\": port 0 is out of range 1-65535",
                "/x/p.toml:3:13: \"\\\"9000-8000\\\"\": port range 9000-8000 is reversed; write 8000-9000",
                "/x/p.toml:3:26: \"65536\": port 65536 is out of range 1-65535",
                "/x/p.toml:3:33: \"true\": ports items must be integers (443) or range strings (\"8000-8100\")",
                "/x/p.toml:4:9: \"icmp\": unknown protocol \"icmp\"; use tcp or udp",
                "/x/p.toml:6:8: \"*\": a bare \"*\" would allow every name; list the domains, or use a wildcard such as *.example.com",
            ]
        );
    }

    #[test]
    fn broad_cidr_in_profile_depends_on_options() {
        let src = "[[allow]]\nhost = \"0.0.0.0/0\"\n";
        let errs = parse(src).unwrap_err();
        assert!(errs[0].starts_with("/x/p.toml:2:8: \"0.0.0.0/0\": 0.0.0.0/0 is broader"));
        let opts = RuleOptions {
            allow_broad_cidrs: true,
        };
        assert!(parse_profile("p", Path::new("p.toml"), src, &opts).is_ok());
    }

    #[test]
    fn empty_ports_and_port_limit() {
        let errs = parse("[[allow]]\nhost = \"a.com\"\nports = []\n").unwrap_err();
        assert_eq!(
            errs,
            vec!["/x/p.toml:3:9: \"[]\": ports is empty; omit it for the default [443]"]
        );
        let errs = parse("[[allow]]\nhost = \"a.com\"\nports = [\"1-2000\"]\n").unwrap_err();
        assert!(errs[0].starts_with("/x/p.toml:3:9: "), "{errs:?}");
        assert!(errs[0].contains("at most 1024"), "{errs:?}");
    }

    #[test]
    fn host_with_port_refused() {
        let errs = parse("[[allow]]\nhost = \"a.com:443\"\n").unwrap_err();
        assert!(errs[0].contains("cannot contain \":\""), "{errs:?}");
    }

    #[test]
    fn names() {
        for ok in ["openai", "crates-io", "a", "0x", "my_profile-2"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "OpenAI", "-a", "_a", "a.b", "a b", "ä"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn later_dirs_override_and_all_errors_are_collected() {
        let shipped = tempfile::tempdir().unwrap();
        let admin = tempfile::tempdir().unwrap();
        write(
            shipped.path(),
            "openai.toml",
            "[[allow]]\nhost = \"api.openai.com\"\n",
        );
        write(
            shipped.path(),
            "pypi.toml",
            "[[allow]]\nhost = \"pypi.org\"\n",
        );
        write(shipped.path(), "bad1.toml", "[[allow]]\nhost = \"a..b\"\n");
        write(
            admin.path(),
            "openai.toml",
            "[[allow]]\nhost = \"proxy.corp.example\"\n",
        );
        write(admin.path(), "bad2.toml", "nope = 1\n");
        write(admin.path(), "Bad Name.toml", "");
        write(admin.path(), ".hidden.toml", "garbage");
        write(admin.path(), "notes.txt", "garbage");
        write(admin.path(), "pypi.toml.dpkg-old", "garbage");
        let missing = admin.path().join("missing");

        let set = ProfileSet::load_dirs(
            &[shipped.path(), admin.path(), missing.as_path()],
            &RuleOptions::default(),
        );
        assert_eq!(set.names().collect::<Vec<_>>(), vec!["openai", "pypi"]);
        let openai = set.get("openai").unwrap();
        assert_eq!(
            openai.rules[0].host,
            Host::Domain("proxy.corp.example".into())
        );
        assert_eq!(openai.path, admin.path().join("openai.toml"));
        assert_eq!(set.missing_dirs(), std::slice::from_ref(&missing));

        let errs: Vec<String> = set.errors().iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].contains("bad1.toml:2:8: \"a..b\""), "{errs:#?}");
        assert!(
            errs[1].contains("Bad Name.toml: \"Bad Name\" is not a valid profile name"),
            "{errs:#?}"
        );
        assert!(
            errs[2].contains("bad2.toml:1:1: \"nope\": unknown field"),
            "{errs:#?}"
        );
        assert!(matches!(set.lookup("bad1"), Lookup::Broken(_)));
        assert_eq!(set.lookup("nothing"), Lookup::Unknown);
    }

    #[test]
    fn broken_override_does_not_fall_back_to_shipped() {
        let shipped = tempfile::tempdir().unwrap();
        let admin = tempfile::tempdir().unwrap();
        write(
            shipped.path(),
            "openai.toml",
            "[[allow]]\nhost = \"api.openai.com\"\n",
        );
        write(
            admin.path(),
            "openai.toml",
            "[[allow]]\nhost = \"api.openai.com:443\"\n",
        );
        let set = ProfileSet::load_dirs(&[shipped.path(), admin.path()], &RuleOptions::default());
        assert!(set.get("openai").is_none());
        assert_eq!(
            set.lookup("openai"),
            Lookup::Broken(&admin.path().join("openai.toml"))
        );
        // A valid later file repairs an earlier broken one.
        let set = ProfileSet::load_dirs(&[admin.path(), shipped.path()], &RuleOptions::default());
        assert!(set.get("openai").is_some());
        assert_eq!(set.errors().len(), 1);
    }

    #[test]
    fn unreadable_dir_makes_every_lookup_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "openai.toml",
            "[[allow]]\nhost = \"api.openai.com\"\n",
        );
        let not_a_dir = dir.path().join("openai.toml");
        let set =
            ProfileSet::load_dirs(&[dir.path(), not_a_dir.as_path()], &RuleOptions::default());
        assert_eq!(set.errors().len(), 1);
        assert!(
            set.errors()[0]
                .to_string()
                .contains("cannot list profile directory")
        );
        assert!(matches!(set.lookup("openai"), Lookup::Unavailable(_)));
    }

    #[test]
    fn non_utf8_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x.toml"), [0xff, 0xfe]).unwrap();
        let set = ProfileSet::load_dirs(&[dir.path()], &RuleOptions::default());
        assert_eq!(set.errors().len(), 1);
        assert!(set.errors()[0].to_string().contains("cannot read profile"));
    }
}
