//! Build script: the version `forkserve --version` prints. Built from a git
//! checkout it carries the revision (`0.1.0 (git 1a2b3c4)`, from `git describe
//! --always --tags`; no `-dirty` mark, which would go stale: the script reruns when
//! HEAD moves, not on every edit); without git or outside a checkout (a crate tarball)
//! it is the package version alone. Never fails the build.

use std::path::PathBuf;
use std::process::Command;

/// `git ARGS` in the package directory, trimmed; None if git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let rev = git(&["describe", "--always", "--tags"]);
    let full = match &rev {
        Some(r) => format!("{version} (git {r})"),
        None => version,
    };
    println!("cargo:rustc-env=FORKSERVE_VERSION={full}");
    // Rebuild when HEAD moves or the branch it names gets a commit (a worktree's
    // HEAD lives in its own git dir, the refs in the common one).
    if let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) {
        let dir = PathBuf::from(dir);
        let common = PathBuf::from(common);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            common.join("packed-refs").display()
        );
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", common.join(head).display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
