//! `latchkey audit`: the audit log — what happened, to which credential,
//! asked by which app, and how it ended — as a table for people or JSON
//! lines, optionally followed as it grows; `latchkey audit verify`: checks
//! the log's MAC chain and says where it was edited, cut or reordered.

use crate::context::Ctx;
use crate::exit;
use crate::output;
use anyhow::{Context, Result};
use latchkey_client::duration;
use latchkey_client::protocol::{
    unix_now, AuditEntry, AuditList, AuditListParams, AuditVerify, AuditVerifyResult, Empty,
    AUDIT_LIST_MAX,
};
use std::time::Duration;

/// How often `--follow` asks for new rows.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Only rows from this long ago on: 30m, 12h, 7d
    #[arg(long, value_name = "AGE", value_parser = duration::parse_whole_secs)]
    since: Option<Duration>,
    /// Only rows about this credential
    #[arg(long, value_name = "C")]
    credential: Option<String>,
    /// Only rows of this app: its key (exe:/usr/bin/curl, key:ci, unknown) or a part of its name
    #[arg(long, value_name = "A")]
    app: Option<String>,
    /// Print one JSON object per row and line
    #[arg(long)]
    json: bool,
    /// Keep printing rows as they are written, until interrupted
    #[arg(long)]
    follow: bool,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check the log's MAC chain: exits 1 when a row was edited, deleted,
    /// reordered or cut off, naming the first one
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Print the daemon's verdict as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    match args.command {
        Some(Command::Verify(verify_args)) => verify(ctx, verify_args),
        None => list(ctx, args),
    }
}

fn list(ctx: &Ctx, args: Args) -> Result<()> {
    let since = args
        .since
        .map(|age| unix_now().saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX)));
    let mut params = AuditListParams {
        since,
        credential: args.credential,
        app: args.app,
        after_seq: None,
        limit: Some(AUDIT_LIST_MAX),
    };
    let mut conn = ctx.connect()?;
    let mut printed = 0u64;
    loop {
        let page = conn
            .call::<AuditList>(&params)
            .context("failed to read the audit log")?;
        let mut text = String::new();
        for row in &page.rows {
            if args.json {
                text.push_str(&serde_json::to_string(row)?);
            } else {
                if printed == 0 {
                    text.push_str(&header());
                    text.push('\n');
                }
                text.push_str(&line(row));
            }
            text.push('\n');
            printed += 1;
        }
        output::print(&text)?;
        params.after_seq = Some(page.next);
        if page.more {
            continue;
        }
        if !args.follow {
            break;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
    if printed == 0 && !args.json {
        ctx.done("no audit rows match")?;
    }
    Ok(())
}

/// The column names, as wide as [`line()`]'s columns.
fn header() -> String {
    format!(
        "{:<23}  {:<18}  {:<7}  {:<16}  APP  DETAIL",
        "TIME", "EVENT", "OUTCOME", "CREDENTIAL"
    )
}

/// One row for people. What the log holds is shown with control
/// characters escaped: a row edited in the file cannot drive the terminal.
fn line(row: &AuditEntry) -> String {
    let dash = |v: &Option<String>| clean(v.as_deref().unwrap_or("-"));
    let mut detail = dash(&row.detail);
    if row.chained_late {
        detail.push_str(" [chained late]");
    }
    if !row.chained {
        detail.push_str(" [not chained yet]");
    }
    format!(
        "{}  {:<18}  {:<7}  {:<16}  {}  {}",
        output::utc(row.at),
        clean(&row.event),
        dash(&row.outcome),
        dash(&row.credential),
        dash(&row.app),
        detail
    )
}

fn clean(text: &str) -> String {
    text.chars()
        .flat_map(char::escape_debug)
        .collect::<String>()
}

fn verify(ctx: &Ctx, args: VerifyArgs) -> Result<()> {
    let result = ctx
        .connect()?
        .call::<AuditVerify>(&Empty {})
        .context("failed to verify the audit log")?;
    if args.json {
        output::print_json(&result)?;
        return if result.ok {
            Ok(())
        } else {
            Err(anyhow::Error::new(exit::Silent(exit::OTHER)))
        };
    }
    match &result.problem {
        Some(problem) if !result.ok => Err(anyhow::Error::new(exit::Fail {
            code: exit::OTHER,
            message: format!(
                "the audit log failed verification after {} good rows: {}",
                result.checked, problem.message
            ),
        })),
        _ => output::print(&verdict(&result)),
    }
}

fn verdict(result: &AuditVerifyResult) -> String {
    let mut text = match (result.first_seq, result.last_seq) {
        (Some(first), Some(last)) => format!(
            "audit log verified: {} rows (seq {first} to {last}), none edited, deleted, reordered or cut off",
            result.checked
        ),
        _ => "audit log verified: no rows are chained yet".to_owned(),
    };
    if result.chained_late > 0 {
        text.push_str(&format!(
            "; {} of them were chained late (written while the vault was locked, chained at the next unlock)",
            result.chained_late
        ));
    }
    if result.unchained > 0 {
        text.push_str(&format!(
            "; {} newer rows are not chained yet (the daemon chains them in a moment)",
            result.unchained
        ));
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 3,
            at: 1_700_000_000,
            event: "unlock_failed".into(),
            credential: None,
            app: Some("/usr/bin/latchkey (sha256 00112233)".into()),
            app_key: Some("exe:/usr/bin/latchkey".into()),
            pid: Some(42),
            outcome: Some("failed".into()),
            detail: Some("wrong_passphrase".into()),
            chained_late: true,
            chained: true,
        }
    }

    #[test]
    fn a_row_reads_as_one_line_and_cannot_drive_the_terminal() {
        let text = line(&entry());
        assert_eq!(
            text,
            "2023-11-14 22:13:20 UTC  unlock_failed       failed   -                 /usr/bin/latchkey (sha256 00112233)  wrong_passphrase [chained late]"
        );
        let hostile = AuditEntry {
            detail: Some("\u{1b}[2Jgone\n".into()),
            chained: false,
            chained_late: false,
            ..entry()
        };
        let text = line(&hostile);
        assert!(!text.contains('\u{1b}') && !text.contains('\n'), "{text}");
        assert!(
            text.ends_with("\\u{1b}[2Jgone\\n [not chained yet]"),
            "{text}"
        );
    }

    #[test]
    fn the_header_names_the_columns_of_a_line() {
        let header = header();
        let line = line(&entry());
        for (name, value) in [
            ("EVENT", "unlock_failed"),
            ("OUTCOME", "failed"),
            ("CREDENTIAL", "-"),
        ] {
            let at = |text: &str, word: &str| text.find(&format!("  {word}"));
            assert_eq!(at(&header, name), at(&line, value), "{name}");
        }
    }

    #[test]
    fn the_verdict_counts_what_it_checked() {
        let result = AuditVerifyResult {
            ok: true,
            checked: 12,
            chained_late: 2,
            unchained: 1,
            first_seq: Some(5),
            last_seq: Some(16),
            problem: None,
        };
        assert_eq!(
            verdict(&result),
            "audit log verified: 12 rows (seq 5 to 16), none edited, deleted, reordered or cut off; \
             2 of them were chained late (written while the vault was locked, chained at the next unlock); \
             1 newer rows are not chained yet (the daemon chains them in a moment)\n"
        );
    }
}
