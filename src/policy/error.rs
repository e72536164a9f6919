//! Errors that point into a file: `path:line:column: "token": message`.
//!
//! Label errors are plain strings in [`super::ContainerPolicy::errors`]; see
//! [`super::labels::LabelError`].

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem with a config or profile file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file or directory could not be read.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// What was attempted ("cannot read file", "cannot list directory").
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// A problem at a position in the file.
    #[error("{}", At { path, line: *line, column: *column, token, message })]
    At {
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, counted in characters.
        column: usize,
        /// The offending text as written in the file (first line only); may be empty
        /// (for instance at the end of the file).
        token: String,
        message: String,
    },
    /// A problem with the file as a whole (for instance a bad file name).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

/// Display helper for [`FileError::At`].
struct At<'a> {
    path: &'a Path,
    line: usize,
    column: usize,
    token: &'a str,
    message: &'a str,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if !self.token.is_empty() {
            write!(f, "{:?}: ", self.token)?;
        }
        write!(f, "{}", self.message)
    }
}

impl FileError {
    /// An error at byte range `span` of `src` (the text of `path`).
    pub fn at(path: &Path, src: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, column) = line_col(src, span.start);
        FileError::At {
            path: path.to_path_buf(),
            line,
            column,
            token: token_text(src, span),
            message: message.into(),
        }
    }

    /// An error at `span` whose token is given explicitly (for instance a string's content
    /// without its quotes).
    pub fn at_token(
        path: &Path,
        src: &str,
        span: Range<usize>,
        token: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(src, span.start);
        FileError::At {
            path: path.to_path_buf(),
            line,
            column,
            token: token.into(),
            message: message.into(),
        }
    }

    /// Turns a TOML parse or deserialize error into a positioned error.
    pub fn from_toml(path: &Path, src: &str, err: &toml::de::Error) -> Self {
        // toml's message may end with a newline; keep one line.
        let message = err.message().trim().to_string();
        match err.span() {
            Some(span) => FileError::at(path, src, span, message),
            None => FileError::File {
                path: path.to_path_buf(),
                message,
            },
        }
    }

    /// `(line, column)` for positioned errors; `(0, 0)` otherwise (sorts first).
    pub fn position(&self) -> (usize, usize) {
        match self {
            FileError::At { line, column, .. } => (*line, *column),
            _ => (0, 0),
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. }
            | FileError::At { path, .. }
            | FileError::File { path, .. } => path,
        }
    }
}

/// Every error found in a set of files, in the order they were found.
#[derive(Debug, Default)]
pub struct FileErrors(pub Vec<FileError>);

/// Errors from [`super::config::Config::load`].
pub type ConfigErrors = FileErrors;

impl FileErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, FileError> {
        self.0.iter()
    }
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

impl From<Vec<FileError>> for FileErrors {
    fn from(v: Vec<FileError>) -> Self {
        FileErrors(v)
    }
}

impl IntoIterator for FileErrors {
    type Item = FileError;
    type IntoIter = std::vec::IntoIter<FileError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
/// An offset past the end (or inside a character) is clamped.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The text of `span` in `src`, cut at the first line break and at 60 characters, so
/// that a multi-line span (a whole table) still gives a readable token.
fn token_text(src: &str, span: Range<usize>) -> String {
    let start = span.start.min(src.len());
    let end = span.end.clamp(start, src.len());
    let Some(text) = src.get(start..end) else {
        return String::new();
    };
    let first_line = text.lines().next().unwrap_or("").trim_end();
    const MAX: usize = 60;
    if first_line.chars().count() > MAX {
        let cut: String = first_line.chars().take(MAX).collect();
        format!("{cut}...")
    } else {
        first_line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 4), (1, 5));
        assert_eq!(line_col(src, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        let quote = src.find('"').unwrap();
        assert_eq!(line_col(src, quote), (2, 6));
        assert_eq!(line_col(src, 10_000), (3, 1));
    }

    #[test]
    fn at_error_display_names_file_line_column_and_token() {
        let src = "x = 1\nmode = \"enforcee\"\n";
        let start = src.find("\"enforcee\"").unwrap();
        let e = FileError::at_token(
            Path::new("/etc/egressd/config.toml"),
            src,
            start..start + 10,
            "enforcee",
            "must be \"enforce\" or \"report\"",
        );
        assert_eq!(
            e.to_string(),
            "/etc/egressd/config.toml:2:8: \"enforcee\": must be \"enforce\" or \"report\""
        );
    }

    #[test]
    fn token_is_first_line_only() {
        let src = "[[allow]]\nports = [1]\n";
        let e = FileError::at(
            Path::new("p.toml"),
            src,
            0..src.len(),
            "missing field `host`",
        );
        assert_eq!(
            e.to_string(),
            "p.toml:1:1: \"[[allow]]\": missing field `host`"
        );
    }
}
