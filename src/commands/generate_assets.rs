//! `egressd generate-assets DIR` (hidden): renders the command line definition
//! ([`crate::cli`]) as man pages and shell completions for the packages:
//!
//! ```text
//! DIR/man/egressd.1, DIR/man/egressd-status.1, ...   one page per visible verb
//! DIR/completions/egressd.bash                        bash-completion
//! DIR/completions/_egressd                            zsh
//! DIR/completions/egressd.fish                        fish
//! ```
//!
//! `scripts/build-deb.sh` and `scripts/install.sh` run it with the binary they install.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

#[derive(clap::Args, Debug)]
pub struct GenerateAssetsArgs {
    /// Output directory (created if missing); `man/` and `completions/` go inside it.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Which file each shell's completion goes to, under `completions/`.
pub const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "egressd.bash"),
    (Shell::Zsh, "_egressd"),
    (Shell::Fish, "egressd.fish"),
];

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct AssetError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

pub fn run(args: &GenerateAssetsArgs) -> ExitCode {
    match generate(&args.dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egressd generate-assets: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every asset under `dir`; returns the files written.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>, AssetError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AssetError { path, source }
    };
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(at(d))?;
    }
    clap_mangen::generate_to(crate::cli::command(), &man).map_err(at(&man))?;
    for (shell, name) in COMPLETIONS {
        let path = completions.join(name);
        let mut file = std::fs::File::create(&path).map_err(at(&path))?;
        clap_complete::generate(shell, &mut crate::cli::command(), "egressd", &mut file);
        file.sync_all().map_err(at(&path))?;
    }
    let mut files = Vec::new();
    for d in [&man, &completions] {
        for entry in std::fs::read_dir(d).map_err(at(d))? {
            files.push(entry.map_err(at(d))?.path());
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_man_pages_and_completions_for_the_visible_verbs() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "egressd.1",
            "egressd-run.1",
            "egressd-status.1",
            "egressd-release.1",
            "egressd-check-config.1",
            "egressd.bash",
            "_egressd",
            "egressd.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        // Hidden verbs (the OCI hook, this one) get no page.
        assert!(
            !names
                .iter()
                .any(|n| n.contains("hook") || n.contains("generate"))
        );
        let page = std::fs::read_to_string(dir.path().join("man/egressd.1")).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH egressd 1"),
            "{page}"
        );
        assert!(page.contains("check\\-config") && page.contains("release"));
        let bash = std::fs::read_to_string(dir.path().join("completions/egressd.bash")).unwrap();
        assert!(bash.contains("complete") && bash.contains("check-config"));
        // Idempotent: a second run overwrites in place.
        assert_eq!(generate(dir.path()).unwrap(), files);
    }
}
