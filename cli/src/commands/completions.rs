//! `latchkey completions SHELL` and `latchkey man [--dir DIR]`: shell
//! completion scripts (clap_complete) and man pages (clap_mangen), both
//! from the same clap definitions `latchkey` parses its arguments with.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// `latchkey completions`.
#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells we generate completions for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn run(mut tree: clap::Command, args: Args) -> Result<()> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut tree, "latchkey", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// `latchkey man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Write one page per command (latchkey.1, latchkey-provider-add.1, ...) into this directory, created if missing; without it latchkey.1 goes to stdout
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Writes the man pages.
pub fn man(ctx: &crate::context::Ctx, tree: clap::Command, args: ManArgs) -> Result<()> {
    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(tree)
            .render(&mut page)
            .context("failed to render the man page")?;
        let mut out = std::io::stdout().lock();
        out.write_all(&page)?;
        out.flush()?;
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    clap_mangen::generate_to(tree, &dir)
        .with_context(|| format!("failed to write the man pages into {}", dir.display()))?;
    ctx.done(format!(
        "wrote the man pages into {} (read them with `man latchkey` once the directory is in MANPATH, e.g. ~/.local/share/man/man1)",
        dir.display()
    ))
}
