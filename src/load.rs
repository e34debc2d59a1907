//! The one loader: find loss files, read each once, check it and compile it. Every front end
//! (the commands, the TUI and its hot reload) goes through here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compile::{self, CompiledFile};
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::lang::file;

/// A loss file as read and compiled, with everything said about it.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub path: PathBuf,
    /// The file's `name`, when that key could be read, even if the file has errors.
    pub name: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// None when the file has errors.
    pub compiled: Option<CompiledFile>,
    /// The text as read, even when it could not be built (for rendering and change detection).
    pub source: Option<Arc<SourceFile>>,
    /// The other files it reads (its `[data]` CSVs), so that a change to one reloads it.
    pub reads: Vec<PathBuf>,
}

impl LoadedFile {
    /// Whether no diagnostic is an error.
    pub fn ok(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The error a one-line status shows.
    pub fn first_error(&self) -> Option<&Diagnostic> {
        self.diagnostics.iter().find(|d| d.is_error())
    }

    /// The compiled file and its warnings, or every diagnostic when it did not compile.
    pub fn into_compiled(self) -> Result<(CompiledFile, Vec<Diagnostic>), Vec<Diagnostic>> {
        match self.compiled {
            Some(c) => Ok((c, self.diagnostics)),
            None => Err(self.diagnostics),
        }
    }
}

/// Loss files under `paths`: files as given, directories searched recursively for `*.toml`,
/// sorted. A path that does not exist, or a directory without a loss file, becomes a diagnostic.
pub fn discover(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = files.len();
            walk(p, &mut files);
            if files.len() == before {
                diags.push(
                    Diagnostic::error(format!("no loss files (*.toml) in {}", p.display()))
                        .in_file(p)
                        .help("`gradscope check losses` checks the bundled ones"),
                );
            }
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            diags.push(
                Diagnostic::error(format!("no such file or directory: {}", p.display())).in_file(p),
            );
        }
    }
    (files, diags)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|p| p.is_dir());
    out.extend(
        files
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml")),
    );
    for d in dirs {
        walk(&d, out);
    }
}

/// Reads, checks and compiles a loss file.
pub fn load(path: &Path) -> LoadedFile {
    finish(path, file::load(path))
}

/// Checks and compiles a loss file's contents, already read, as if from `path` (a reload that
/// compared the text first reads the file only once).
pub fn load_bytes(path: &Path, bytes: Vec<u8>) -> LoadedFile {
    finish(path, file::load_bytes(path, bytes))
}

fn finish(path: &Path, loaded: file::Loaded) -> LoadedFile {
    let mut out = LoadedFile {
        path: path.to_path_buf(),
        name: loaded.name,
        diagnostics: loaded.diagnostics,
        compiled: None,
        source: loaded.source,
        reads: loaded
            .file
            .as_ref()
            .map(file::LossFile::reads)
            .unwrap_or_default(),
    };
    if let Some(file) = loaded.file {
        let (compiled, diags) = compile::compile(file);
        out.diagnostics.extend(diags);
        out.compiled = compiled;
    }
    out
}

/// Loads a file: compiled, with its warnings, or every diagnostic when it did not compile.
pub fn load_compiled(path: &Path) -> Result<(CompiledFile, Vec<Diagnostic>), Vec<Diagnostic>> {
    load(path).into_compiled()
}
