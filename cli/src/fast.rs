//! The quick way in for the commands scripts call in loops: `token`,
//! `header` and `exec`.
//!
//! clap builds the whole command tree (every subcommand, every help text,
//! the exit-code table) before it parses a single argument; for `latchkey
//! token NAME` that was most of the CLI's own user-space work and a good
//! part of the pages it touched at start. This module reads the plain
//! spellings of those three commands by hand and gives up — returns `None`,
//! so that clap parses the command line as always — on anything else:
//! `--help`, `--version`, a flag given twice, a value that starts with `-`,
//! `--` outside `exec`, a value that is not UTF-8, a bad duration or scope,
//! any other command. So every message, refusal and help text stays
//! clap's; the fast path only ever accepts what clap accepts, with the same
//! values (the tests below hold it to that, over generated command lines).

use crate::args::parse_scope_arg;
use crate::commands::{exec, header, token, Command};
use crate::Cli;
use latchkey_client::duration;
use std::ffi::OsString;
use std::path::PathBuf;

/// What `latchkey --version` (or `-V`) alone prints, as clap prints it;
/// `None` for any other command line. `args` excludes the program name.
pub fn version(args: &[OsString]) -> Option<&'static str> {
    match args {
        [flag] if flag == "--version" || flag == "-V" => {
            Some(concat!("latchkey ", env!("CARGO_PKG_VERSION"), "\n"))
        }
        _ => None,
    }
}

/// The parsed command line, when it is a plain `token`, `header` or `exec`
/// call; `None` when clap must read it. `args` excludes the program name.
pub fn parse(args: &[OsString]) -> Option<Cli> {
    let mut words = Words {
        args,
        next: 0,
        globals: Globals::default(),
    };
    // Global options may come before the subcommand...
    let name = loop {
        let word = words.take()?;
        if !words.global(word)? {
            break word;
        }
    };
    let command = match name {
        "token" => Command::Token(token_args(&mut words)?),
        "header" => Command::Header(header::Args {
            token: words.token_args(|_, _| Some(false))?,
        }),
        "exec" => Command::Exec(exec_args(&mut words)?),
        _ => return None,
    };
    let Globals {
        socket,
        vault,
        quiet,
    } = words.globals;
    Some(Cli {
        socket,
        vault,
        quiet: quiet.unwrap_or(false),
        command,
    })
}

fn token_args(words: &mut Words<'_>) -> Option<token::Args> {
    let mut json = None;
    let token = words.token_args(|word, _| match word {
        "--json" => set_once(&mut json, true).map(|()| true),
        _ => Some(false),
    })?;
    Some(token::Args {
        token,
        json: json.unwrap_or(false),
    })
}

fn exec_args(words: &mut Words<'_>) -> Option<exec::Args> {
    let mut env = None;
    let mut mask = None;
    let mut command = None;
    let token = words.token_args(|word, rest| {
        if word == "--" {
            // Everything after `--` is the command, as given (clap's `last`).
            let argv: Vec<OsString> = rest.take_rest().to_vec();
            if argv.is_empty() {
                return None;
            }
            command = Some(argv);
            return Some(true);
        }
        if word == "--mask" {
            return set_once(&mut mask, true).map(|()| true);
        }
        match rest.value(word, "--env")? {
            Some(value) => set_once(&mut env, exec::parse_env_name(value).ok()?).map(|()| true),
            None => Some(false),
        }
    })?;
    Some(exec::Args {
        token,
        env: env.unwrap_or_else(|| exec::DEFAULT_ENV.to_owned()),
        mask: mask.unwrap_or(false),
        command: command?,
    })
}

/// The global options seen so far; each at most once.
#[derive(Default)]
struct Globals {
    socket: Option<PathBuf>,
    vault: Option<PathBuf>,
    quiet: Option<bool>,
}

/// The command line being read, word by word.
struct Words<'a> {
    args: &'a [OsString],
    next: usize,
    globals: Globals,
}

impl<'a> Words<'a> {
    /// The next word; `None` at the end or when it is not UTF-8.
    fn take(&mut self) -> Option<&'a str> {
        let word = self.args.get(self.next)?.to_str()?;
        self.next += 1;
        Some(word)
    }

    /// Every word not read yet (after `exec`'s `--`).
    fn take_rest(&mut self) -> &'a [OsString] {
        let rest = &self.args[self.next..];
        self.next = self.args.len();
        rest
    }

    /// Whether `word` was a global option (then it is recorded); `None`
    /// when it is one, but not in a form this module accepts.
    fn global(&mut self, word: &'a str) -> Option<bool> {
        if word == "-q" || word == "--quiet" {
            set_once(&mut self.globals.quiet, true)?;
            return Some(true);
        }
        if let Some(path) = self.value(word, "--socket")? {
            set_once(&mut self.globals.socket, PathBuf::from(path))?;
            return Some(true);
        }
        if let Some(path) = self.value(word, "--vault")? {
            set_once(&mut self.globals.vault, PathBuf::from(path))?;
            return Some(true);
        }
        Some(false)
    }

    /// The value of option `flag` when `word` is it: `--flag VALUE` or
    /// `--flag=VALUE`. `Some(None)`: `word` is not `flag`. `None`: it is,
    /// but the value is missing, empty or starts with `-` (clap would take
    /// such a word for a flag, or refuse it: clap decides).
    fn value(&mut self, word: &'a str, flag: &str) -> Option<Option<&'a str>> {
        let value = match word.strip_prefix(flag) {
            Some("") => self.take()?,
            Some(attached) => match attached.strip_prefix('=') {
                Some(value) => value,
                None => return Some(None),
            },
            None => return Some(None),
        };
        if value.is_empty() || value.starts_with('-') {
            return None;
        }
        Some(Some(value))
    }

    /// Reads the rest of the line as [`token::TokenArgs`] plus global
    /// options; `own` takes the words of the subcommand's other options
    /// (`Some(true)`: taken; `Some(false)`: not its word; `None`: give up).
    fn token_args(
        &mut self,
        mut own: impl FnMut(&'a str, &mut Self) -> Option<bool>,
    ) -> Option<token::TokenArgs> {
        let mut name = None;
        let mut min_ttl = None;
        let mut scopes = Vec::new();
        while self.next < self.args.len() {
            let word = self.take()?;
            if self.global(word)? || own(word, self)? {
                continue;
            }
            if let Some(value) = self.value(word, "--min-ttl")? {
                set_once(&mut min_ttl, duration::parse_whole_secs(value).ok()?)?;
            } else if let Some(value) = self.value(word, "--scope")? {
                scopes.push(parse_scope_arg(value).ok()?);
            } else if word.is_empty() || word.starts_with('-') {
                // `--`, `-h`, `--help`, an unknown or misspelt flag.
                return None;
            } else {
                set_once(&mut name, word.to_owned())?;
            }
        }
        Some(token::TokenArgs {
            name: name?,
            min_ttl,
            scopes,
            wait_confirm: None,
        })
    }
}

/// Records an option's value; `None` (give up) when it was given before:
/// clap refuses most repeats, and decides about the rest.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(argv: &[&str]) -> Vec<OsString> {
        argv.iter().map(OsString::from).collect()
    }

    /// What a parsed hot command says, to compare the two parsers; `None`
    /// for any other command.
    fn describe(cli: &Cli) -> Option<String> {
        let command = match &cli.command {
            Command::Token(args) => format!("{args:?}"),
            Command::Header(args) => format!("{args:?}"),
            Command::Exec(args) => format!("{args:?}"),
            _ => return None,
        };
        Some(format!(
            "socket {:?} vault {:?} quiet {} {command}",
            cli.socket, cli.vault, cli.quiet
        ))
    }

    /// The property: whatever the fast path accepts, clap accepts too, with
    /// the same values. Returns whether the fast path accepted it.
    fn check(argv: &[OsString]) -> bool {
        let Some(fast) = parse(argv) else {
            return false;
        };
        let full = std::iter::once(OsString::from("latchkey")).chain(argv.iter().cloned());
        let clap = match Cli::try_parse_from(full) {
            Ok(cli) => cli,
            Err(err) => panic!("the fast path accepts {argv:?}, clap refuses it: {err}"),
        };
        assert_eq!(describe(&fast), describe(&clap), "{argv:?}");
        assert!(describe(&fast).is_some());
        true
    }

    #[test]
    fn the_plain_spellings_take_the_fast_path_with_clap_s_values() {
        let accepted: &[&[&str]] = &[
            &["token", "gh"],
            &["header", "gh"],
            &["token", "gh", "--json"],
            &["token", "--json", "gh"],
            &["token", "gh", "--min-ttl", "10m"],
            &["token", "gh", "--min-ttl=600"],
            &["token", "gh", "--scope", "repo read:org", "--scope=user"],
            &["token", "gh", "--scope", "a", "--scope", "a"],
            &["header", "gh", "--min-ttl", "1h", "--scope", "repo"],
            &["--socket", "/run/l.sock", "token", "gh"],
            &["--socket=/run/l.sock", "-q", "token", "gh"],
            &["token", "gh", "--vault", "rel/vault.db", "--quiet"],
            &["--vault=v.db", "header", "gh", "--socket", "s"],
            &["-q", "token", "token"],
            &["--socket", "token", "token", "exec"],
            &["exec", "gh", "--", "env"],
            &[
                "exec", "gh", "--env", "GH_TOKEN", "--", "gh", "api", "/user",
            ],
            &[
                "exec",
                "--env=T",
                "gh",
                "--min-ttl",
                "30s",
                "--",
                "sh",
                "-c",
                "--",
            ],
            &["exec", "gh", "--", "--", "-x", "--help"],
            &["exec", "gh", "--mask", "--", "x"],
            &["exec", "--mask", "gh", "--env", "T", "--", "x", "--mask"],
            &["-q", "exec", "gh", "--scope", "s", "--", "x"],
        ];
        for argv in accepted {
            assert!(check(&os(argv)), "the fast path refuses {argv:?}");
        }
    }

    #[test]
    fn the_version_is_clap_s() {
        use clap::CommandFactory;
        let clap = Cli::command().render_version().to_string();
        assert_eq!(version(&os(&["--version"])), Some(clap.as_str()));
        assert_eq!(version(&os(&["-V"])), Some(clap.as_str()));
        for other in [&["--version", "x"][..], &["token", "-V"], &["--help"], &[]] {
            assert_eq!(version(&os(other)), None, "{other:?}");
        }
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        let refused: &[&[&str]] = &[
            &[],
            &["token"],
            &["token", "--help"],
            &["token", "-h"],
            &["--help"],
            &["--version"],
            &["-V"],
            &["help", "token"],
            &["status"],
            &["credential", "list"],
            &["token", "gh", "--json", "--json"],
            &["token", "gh", "-q", "--quiet"],
            &["-q", "token", "gh", "-q"],
            &["--socket", "a", "--socket", "b", "token", "gh"],
            &["token", "gh", "other"],
            &["token", "--", "gh"],
            &["token", "gh", "--min-ttl"],
            &["token", "gh", "--min-ttl", "soon"],
            &["token", "gh", "--min-ttl", "1.5s"],
            &["token", "gh", "--min-ttl", "1m", "--min-ttl", "2m"],
            &["token", "gh", "--scope", ""],
            &["token", "gh", "--scope", "  "],
            &["token", "gh", "--scope", "-x"],
            &["token", "gh", "--socket="],
            &["token", "gh", "--socket", "-"],
            &["token", "gh", "--sock", "x"],
            &["token", "gh", "--jsonx"],
            &["token", "gh", "--json=true"],
            &["token", "-qgh"],
            &["header", "gh", "--json"],
            &["token", "gh", "--env", "X"],
            &["token", ""],
            &["exec", "gh"],
            &["exec", "gh", "--"],
            &["exec", "--", "cmd"],
            &["exec", "gh", "--env", "A=B", "--", "x"],
            &["exec", "gh", "--env", "", "--", "x"],
            &["exec", "gh", "--env", "A", "--env", "B", "--", "x"],
            &["exec", "gh", "--mask", "--mask", "--", "x"],
            &["tok", "gh"],
            &["Token", "gh"],
        ];
        for argv in refused {
            assert!(parse(&os(argv)).is_none(), "the fast path takes {argv:?}");
        }
    }

    #[test]
    fn words_that_are_not_utf8_are_left_to_clap() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"g\xffh".to_vec());
        assert!(parse(&[OsString::from("token"), bad.clone()]).is_none());
        // After `exec`'s `--` the command is passed on as given.
        let argv = [
            OsString::from("exec"),
            OsString::from("gh"),
            OsString::from("--"),
            bad,
        ];
        assert!(check(&argv));
    }

    /// Generated command lines from words that matter to either parser:
    /// every one the fast path accepts must parse the same in clap.
    #[test]
    fn generated_command_lines_parse_as_clap_parses_them() {
        const WORDS: &[&str] = &[
            "token",
            "header",
            "exec",
            "status",
            "help",
            "gh",
            "x",
            "--",
            "-",
            "",
            "-q",
            "--quiet",
            "-qq",
            "--socket",
            "--socket=/s",
            "--socket=",
            "--vault",
            "--vault=v",
            "/p",
            "rel",
            "--json",
            "--json=1",
            "--min-ttl",
            "--min-ttl=5m",
            "10m",
            "0",
            "1.5",
            "--scope",
            "--scope=a b",
            "--scope=",
            "a b",
            " ",
            "--env",
            "--env=T",
            "A=B",
            "T",
            "-h",
            "--help",
            "-V",
            "--version",
            "--unknown",
            "sh",
            "-c",
        ];
        // A small deterministic generator: the test is repeatable.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..40_000 {
            let len = 1 + next(7);
            let mut argv: Vec<&str> = (0..len).map(|_| WORDS[next(WORDS.len())]).collect();
            // Mostly start at a hot command, so the interesting cases are many.
            if next(4) > 0 {
                let hot = ["token", "header", "exec"][next(3)];
                argv.insert(next(2).min(argv.len()), hot);
            }
            if check(&os(&argv)) {
                accepted += 1;
            }
        }
        assert!(
            accepted > 500,
            "only {accepted} generated lines took the fast path"
        );
    }
}
