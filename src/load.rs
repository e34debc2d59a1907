//! The one loader: find loss files, read each once, check it and compile it. Every front end
//! (the commands, the TUI and its hot reload) goes through here. A loss file may name the
//! optimizers of the `optimizers/` folders in its folder and every folder above it; the files
//! of such a folder hold only `[optimizers.NAME]` tables and are checked as such.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compile::{self, CompiledFile};
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::lang::file::{self, FolderOptimizers, OptimizerDef, OptimizerFile};

/// The folder whose `*.toml` files hold optimizers for every loss file beside it and below.
pub const OPTIMIZERS_DIR: &str = "optimizers";

/// The param shape `check` lowers an optimizer file's optimizers for, to report what it can
/// without a loss file: a matrix, which elementwise updates and matrix ones both accept.
const PROBE_SHAPE: [usize; 2] = [2, 3];

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
    /// The other files it reads (its `[data]` and `[params]` sources, the optimizer files above
    /// it), so that a change to one reloads it.
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

/// Loss files under `paths`: files as given, directories searched recursively for `*.toml`
/// (outside `optimizers/` folders), sorted. A path that does not exist, or a directory without
/// a loss file, becomes a diagnostic.
pub fn discover(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    discover_files(paths, false)
}

/// [`discover`], with the files of the `optimizers/` folders found too: what `check` checks.
pub fn discover_with_optimizers(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    discover_files(paths, true)
}

/// Whether `path` is an optimizer file: a `*.toml` in an `optimizers/` folder.
pub fn is_optimizer_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        && path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == OPTIMIZERS_DIR)
}

/// The folder whose loss files (beside it and below) an optimizer file serves.
pub fn served_by(optimizer_file: &Path) -> Option<&Path> {
    optimizer_file.parent()?.parent()
}

fn discover_files(paths: &[PathBuf], optimizers: bool) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = files.len();
            walk(p, &mut files, optimizers);
            if files.len() == before {
                diags.push(
                    Diagnostic::error(format!("no loss files (*.toml) in {}", p.display()))
                        .in_file(p)
                        .help("`gradscope check losses` checks the bundled ones"),
                );
            }
        } else if p.is_file() {
            files.push(p.clone());
        } else if p.exists() {
            diags.push(
                Diagnostic::error(format!(
                    "{} is neither a loss file nor a folder of them",
                    p.display()
                ))
                .in_file(p)
                .help("give a *.toml loss file or a folder"),
            );
        } else {
            diags.push(
                Diagnostic::error(format!("no such file or directory: {}", p.display())).in_file(p),
            );
        }
    }
    (files, diags)
}

/// The `*.toml` files under `dir`, sorted; those of `optimizers/` folders only with
/// `optimizers` (and nothing below such a folder). Symlinked folders are followed, each real
/// folder once: a link back up (`self -> .`) had the walk list a file 41 times or never end.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, optimizers: bool) {
    walk_once(dir, out, optimizers, &mut HashSet::new());
}

fn walk_once(dir: &Path, out: &mut Vec<PathBuf>, optimizers: bool, seen: &mut HashSet<PathBuf>) {
    if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|p| p.is_dir());
    out.extend(files.into_iter().filter(|p| {
        p.extension().is_some_and(|e| e == "toml") && (optimizers || !is_optimizer_file(p))
    }));
    if dir.file_name().is_some_and(|n| n == OPTIMIZERS_DIR) {
        return;
    }
    for d in dirs {
        walk_once(&d, out, optimizers, seen);
    }
}

/// Reads, checks and compiles a loss file (an optimizer file: reads and checks it).
pub fn load(path: &Path) -> LoadedFile {
    if is_optimizer_file(path) {
        return load_optimizer_file(path);
    }
    let scope = Inherited::of(path);
    finish(path, file::load_with(path, &scope.folder), scope)
}

/// Checks and compiles a loss file's contents, already read, as if from `path` (a reload that
/// compared the text first reads the file only once). An optimizer file is read again and
/// checked as such.
pub fn load_bytes(path: &Path, bytes: Vec<u8>) -> LoadedFile {
    if is_optimizer_file(path) {
        return load_optimizer_file(path);
    }
    let scope = Inherited::of(path);
    finish(
        path,
        file::load_bytes_with(path, bytes, &scope.folder),
        scope,
    )
}

/// The `optimizers/` folders whose optimizers the loss files in `dir` may name: in `dir` and
/// every folder above, nearest first (those of the path as typed first, so their files are
/// named as the user names them).
pub fn optimizer_dirs(dir: &Path) -> Vec<PathBuf> {
    let here = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let typed = dir.ancestors().map(Path::to_path_buf);
    let beyond = here
        .canonicalize()
        .map(|c| c.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for candidate in typed.chain(beyond).map(|a| a.join(OPTIMIZERS_DIR)) {
        let Ok(canonical) = candidate.canonicalize() else {
            continue;
        };
        if candidate.is_dir() && !seen.contains(&canonical) {
            seen.push(canonical);
            out.push(candidate);
        }
    }
    out
}

/// The optimizer files of folder `dir`, in name order, each read and checked.
fn read_folder(dir: &Path) -> Vec<(PathBuf, OptimizerFile)> {
    let mut paths = Vec::new();
    walk(dir, &mut paths, true);
    paths
        .into_iter()
        .map(|p| {
            let f = file::load_optimizers(&p);
            (p, f)
        })
        .collect()
}

/// The optimizers of one folder's files, and every diagnostic about them: a name defined by an
/// earlier file is an error at the later definition, which is left out.
fn folder_optimizers(
    files: &[(PathBuf, OptimizerFile)],
) -> (Vec<Arc<OptimizerDef>>, Vec<Diagnostic>) {
    let mut defs: Vec<Arc<OptimizerDef>> = Vec::new();
    let mut diags = Vec::new();
    for (_, f) in files {
        diags.extend(f.diagnostics.iter().cloned());
        for def in &f.optimizers {
            match defs.iter().find(|d| d.name.node == def.name.node) {
                Some(first) => diags.push(
                    Diagnostic::error(format!(
                        "optimizer `{}` is already defined in {}",
                        def.name.node,
                        first.source.path.display()
                    ))
                    .at(&def.source, def.name.span.clone())
                    .help("each optimizer of an `optimizers/` folder needs a name of its own"),
                ),
                None => defs.push(Arc::clone(def)),
            }
        }
    }
    (defs, diags)
}

/// What a loss file inherits from the `optimizers/` folders above it.
struct Inherited {
    /// Their optimizers (a nearer folder's shadow a farther one's of the same name), and those
    /// with errors.
    folder: FolderOptimizers,
    /// The errors of their files.
    errors: Vec<Diagnostic>,
    /// Their files, so that a change to one reloads the loss file.
    files: Vec<PathBuf>,
}

impl Inherited {
    /// What a loss file at `path` inherits.
    fn of(path: &Path) -> Self {
        let mut out = Self {
            folder: FolderOptimizers::default(),
            errors: Vec::new(),
            files: Vec::new(),
        };
        let named = |f: &FolderOptimizers, name: &str| {
            f.optimizers.iter().any(|d| d.name.node == name)
                || f.broken.iter().any(|(n, _)| n == name)
        };
        for dir in optimizer_dirs(path.parent().unwrap_or(Path::new(""))) {
            let folder = read_folder(&dir);
            let (found, diags) = folder_optimizers(&folder);
            out.errors
                .extend(diags.into_iter().filter(Diagnostic::is_error));
            for (p, f) in &folder {
                for name in &f.broken {
                    if !named(&out.folder, name) {
                        out.folder.broken.push((name.clone(), p.clone()));
                    }
                }
            }
            out.files.extend(folder.into_iter().map(|(p, _)| p));
            for def in found {
                if !named(&out.folder, &def.name.node) {
                    out.folder.optimizers.push(def);
                }
            }
        }
        out
    }
}

/// Reads and checks an optimizer file: its tables, the names its folder defines twice, and its
/// optimizers lowered for a [`PROBE_SHAPE`] param. It compiles to nothing on its own.
fn load_optimizer_file(path: &Path) -> LoadedFile {
    let folder = read_folder(path.parent().unwrap_or(Path::new("")));
    let (defs, diags) = folder_optimizers(&folder);
    let this = |p: &Path| p == path;
    let mut diagnostics: Vec<Diagnostic> = diags
        .into_iter()
        .filter(|d| d.file().is_some_and(this))
        .collect();
    let mut names = Vec::new();
    for def in defs.iter().filter(|d| this(&d.source.path)) {
        names.push(def.name.node.clone());
        let (_, d) = compile::optimizer::build(def, &[(PROBE_SHAPE.to_vec(), String::new())]);
        diagnostics.extend(d);
    }
    let source = folder
        .into_iter()
        .find(|(p, _)| this(p))
        .and_then(|(_, f)| f.source);
    LoadedFile {
        path: path.to_path_buf(),
        name: Some(format!("optimizers: {}", names.join(", "))),
        diagnostics,
        compiled: None,
        source,
        reads: Vec::new(),
    }
}

/// The loaded file, reading the optimizer files of `scope` too; when it has errors, with those
/// of the optimizer files, which may be why.
fn finish(path: &Path, loaded: file::Loaded, scope: Inherited) -> LoadedFile {
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
    if !out.ok() {
        out.diagnostics.extend(scope.errors);
    }
    out.reads.extend(scope.files);
    out
}

/// Loads a file: compiled, with its warnings, or every diagnostic when it did not compile.
pub fn load_compiled(path: &Path) -> Result<(CompiledFile, Vec<Diagnostic>), Vec<Diagnostic>> {
    load(path).into_compiled()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Links back up, to the folder itself and to its parent from below, list each file once.
    #[cfg(unix)]
    #[test]
    fn symlinked_folders_that_loop_are_walked_once() {
        let root = std::env::temp_dir().join(format!("gradscope-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("ok.toml"), "").unwrap();
        std::fs::write(root.join("sub/inner.toml"), "").unwrap();
        std::os::unix::fs::symlink(".", root.join("self")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        let (files, diags) = discover(std::slice::from_ref(&root));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(files, [root.join("ok.toml"), root.join("sub/inner.toml")]);
    }
}
