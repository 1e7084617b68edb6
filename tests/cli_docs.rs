//! The command line as a user meets it: `--version` with the git revision,
//! `forkserve manpage` (roff pages), `forkserve completions bash|zsh|fish` (scripts
//! that the shells accept and that complete subcommands), the messages of a wrong
//! `--listen`, and the `RUNDIR` shorthand.

mod common;

use std::process::{Command, Output};

use common::*;

fn run(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(run(args).stdout).unwrap()
}

#[test]
fn version_names_the_git_revision_in_a_checkout() {
    let version = stdout(&["--version"]);
    let want = format!("forkserve {}", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&want), "{version}");
    let rev = Command::new("git")
        .args(["describe", "--always", "--tags"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    match rev {
        Some(o) => {
            let rev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            assert_eq!(version.trim(), format!("{want} (git {rev})"));
        }
        None => assert_eq!(version.trim(), want),
    }
}

#[test]
fn manpage_prints_roff_and_writes_one_page_per_subcommand() {
    let page = stdout(&["manpage"]);
    assert!(page.contains(".TH forkserve 1"), "{page}");
    assert!(page.contains(".SH NAME"));
    assert!(page.contains("socket\\-activated"));
    let dir = TempDir::new("man");
    run(&["manpage", "--dir", &dir.0.display().to_string()]);
    for name in [
        "forkserve",
        "forkserve-echo",
        "forkserve-chat",
        "forkserve-bench",
    ] {
        let text = std::fs::read_to_string(dir.path(&format!("{name}.1"))).unwrap();
        assert!(text.contains(&format!(".TH {name} 1")), "{name}");
    }
    if Command::new("man").arg("--version").output().is_ok() {
        let out = Command::new("man")
            .args(["-l", &dir.path("forkserve-echo.1").display().to_string()])
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            // man-db confines groff with its own seccomp filter; the page is ours
            // and the test must not depend on the kernel's BPF JIT.
            .env("MAN_DISABLE_SECCOMP", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAME") && text.contains("Uppercase"),
            "{text}"
        );
    }
}

#[test]
fn bash_completion_completes_subcommands() {
    let script = stdout(&["completions", "bash"]);
    let dir = TempDir::new("compl");
    let path = dir.path("forkserve.bash");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(forkserve ec); COMP_CWORD=1; _forkserve forkserve ec forkserve; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "echo");
}

#[test]
fn zsh_and_fish_completions_are_generated() {
    for (shell, marker) in [
        ("zsh", "#compdef forkserve"),
        ("fish", "complete -c forkserve"),
    ] {
        let script = stdout(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("manpage"), "{shell}");
        // Syntax-check with the shell itself where it is installed.
        let dir = TempDir::new("compl");
        let path = dir.path("script");
        std::fs::write(&path, &script).unwrap();
        if let Ok(out) = Command::new(shell).arg("-n").arg(&path).output() {
            assert!(
                out.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn an_unknown_service_in_listen_lists_the_services() {
    let out = Command::new(bin())
        .args(["-l", "bogus=tcp:127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no service named 'bogus' (services: echo, time,"),
        "{err}"
    );
    assert!(err.contains("chat") && err.contains("models-fork"), "{err}");
}

#[test]
fn rundir_in_a_unix_address_is_the_runtime_directory() {
    let dir = TempDir::new("rundir");
    let mut b = forkserve()
        .args(["echo", "-l", "unix:RUNDIR/mine.sock"])
        .env("XDG_RUNTIME_DIR", &dir.0);
    b.command().env_remove("RUNTIME_DIRECTORY");
    let fs = b.start();
    let want = dir.path("forkserve/mine.sock");
    assert_eq!(fs.addr(0), format!("unix:{}", want.display()));
    let mut c = Conn::connect(fs.addr(0));
    std::io::Write::write_all(&mut c, b"rundir\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "RUNDIR");
}

#[test]
fn the_readme_library_example_is_examples_shout_rs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let shout = std::fs::read_to_string(root.join("examples/shout.rs")).unwrap();
    let library = readme
        .split("## Library\n")
        .nth(1)
        .expect("a Library section");
    let block = library
        .split("```rust\n")
        .nth(1)
        .and_then(|b| b.split("```\n").next())
        .expect("a rust block");
    assert_eq!(block, shout);
}
