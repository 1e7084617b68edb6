//! `forkserve manpage` and `forkserve completions SHELL`: the man pages (one for
//! the command, one per subcommand, roff from clap_mangen) and shell completion
//! scripts (clap_complete), generated from the same command-line definition the
//! parser uses, so they never disagree with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

/// Options of `forkserve manpage`.
#[derive(Args)]
pub struct ManpageArgs {
    /// Write forkserve.1 and forkserve-SUBCOMMAND.1 into DIR instead of printing forkserve(1)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// A shell `forkserve completions` writes a script for.
#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Renders one page.
fn render(cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd).render(out)
}

/// Writes `forkserve.1` and one page per subcommand into `dir`.
fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut pages = vec![(format!("{}.1", cmd.get_name()), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // clap names commands with &'static str; this one-shot tool leaks a few.
        let name: &'static str =
            Box::leak(format!("{}-{}", cmd.get_name(), sub.get_name()).into_boxed_str());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, page) in &pages {
        let path = dir.join(file);
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        render(page.clone(), &mut f).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(pages.len())
}

/// `forkserve manpage [--dir DIR]`.
pub fn manpage(mut cmd: clap::Command, args: &ManpageArgs) -> ExitCode {
    cmd.build();
    let result = match &args.dir {
        Some(dir) => write_pages(&cmd, dir).map(|n| eprintln!("{n} pages in {}", dir.display())),
        None => {
            let mut page = Vec::new();
            // Writing into memory cannot fail.
            let _ = render(cmd, &mut page);
            return print(&page);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forkserve manpage: {e}");
            ExitCode::from(73) // EX_CANTCREAT
        }
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is no error.
fn print(bytes: &[u8]) -> ExitCode {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("forkserve: stdout: {e}");
            ExitCode::from(74) // EX_IOERR
        }
        _ => ExitCode::SUCCESS,
    }
}

/// `forkserve completions SHELL`: the script on stdout.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> ExitCode {
    let name = cmd.get_name().to_string();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    print(&script)
}
