//! `latchkey slot add|list|remove`: the vault's key slots. A key-file slot
//! lets one machine unlock with its own key file (`latchkey unlock
//! --key-file PATH`, or `LATCHKEY_KEY_FILE` for a daemon the CLI starts);
//! removing it cuts that machine off without changing anyone else's
//! secret. Adding and removing need a proof that a person asks.

use crate::args::ProofArgs;
use crate::context::Ctx;
use crate::{exit, output, secret};
use anyhow::{Context, Result};
use latchkey_client::keyfile;
use latchkey_client::protocol::{
    Empty, SlotAdd, SlotAddParams, SlotInfo, SlotList, SlotRemove, SlotRemoveParams,
};
use secrecy::SecretString;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Let this machine unlock with a key file: creates PATH (0600) unless it is a key file already
    ///
    /// The file holds a random key; the vault keeps only a public key
    /// derived from it, so `latchkey rekey` keeps every machine's slot
    /// working without their files. An existing key file of ours is
    /// reused (one machine key may open several vaults). Needs the vault
    /// unlocked and the passphrase (or --totp, --polkit) as proof.
    Add(AddArgs),
    /// List the key slots (no key material)
    List(ListArgs),
    /// Remove a key slot: its key file (or passphrase) no longer opens the vault
    ///
    /// The last slot that opens the vault is refused. When a machine's key
    /// file may have been copied, remove its slot, then run `latchkey
    /// rekey`: a copy of the old vault file would still open with it.
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// Where the key file is (or is to be created; its directory must exist)
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,
    /// A name for the slot in `latchkey slot list` [default: the daemon's hostname]
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    #[command(flatten)]
    proof: ProofArgs,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The slot's id (see `latchkey slot list`)
    id: String,
    #[command(flatten)]
    proof: ProofArgs,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add(args) => add(ctx, args),
        Command::List(args) => {
            let mut conn = ctx.connect()?;
            let slots = conn
                .call::<SlotList>(&Empty {})
                .context("failed to list the key slots")?;
            if args.json {
                return output::print_json(&slots);
            }
            let rows: Vec<Vec<String>> = slots.iter().map(slot_row).collect();
            output::print(&output::table(&["ID", "KIND", "LABEL", "CREATED"], &rows))
        }
        Command::Remove(args) => {
            let mut conn = ctx.connect()?;
            let proof = args.proof.proof("to remove a key slot")?;
            conn.call::<SlotRemove>(&SlotRemoveParams {
                id: args.id.clone(),
                proof: Some(proof),
            })
            .context("failed to remove the key slot")?;
            ctx.done(format_args!("removed key slot {}", args.id))
        }
    }
}

fn slot_row(slot: &SlotInfo) -> Vec<String> {
    let label = match (&slot.label, &slot.backend) {
        (Some(label), _) => label.clone(),
        (None, Some(backend)) => backend.clone(),
        (None, None) => String::new(),
    };
    vec![
        slot.id.clone(),
        slot.kind.clone(),
        label,
        output::utc(slot.created_at),
    ]
}

fn add(ctx: &Ctx, args: AddArgs) -> Result<()> {
    let mut conn = ctx.connect()?;
    let proof = args.proof.proof("to add a key slot")?;
    let path = &args.key_file;
    let (key, created) = match key_file(path)? {
        Some(key) => (key, false),
        None => (create_key_file(path)?, true),
    };
    let added = conn.call::<SlotAdd>(&SlotAddParams {
        key,
        label: args.label,
        proof: Some(proof),
    });
    let slot = match added {
        Ok(slot) => slot,
        Err(err) => {
            if created {
                // Nothing opens with it: leave no stray key behind.
                let _ = std::fs::remove_file(path);
            }
            return Err(err).context("failed to add the key slot");
        }
    };
    if !created {
        ctx.info(format_args!(
            "{} is a key file already: its key now opens this vault too",
            path.display()
        ));
    }
    ctx.done(format_args!(
        "added key slot {} ({}): `latchkey unlock --key-file {}` (or {}={} for a daemon the CLI starts) opens the vault on this machine; keep the file private",
        slot.id,
        slot.label.as_deref().unwrap_or("key file"),
        path.display(),
        secret::KEY_FILE_ENV,
        path.display()
    ))
}

/// The key of the key file at `path`, `None` when there is no file; a
/// file that is not a private key file of ours is refused, not replaced.
fn key_file(path: &Path) -> Result<Option<SecretString>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look at {}", path.display())),
        Ok(meta) if !meta.is_file() => Err(exit::usage(format!(
            "{} exists and is not a regular file: pick another path for the key file",
            path.display()
        ))),
        Ok(_) => secret::read_vault_key_file(path).map(Some).with_context(|| {
            format!(
                "{} exists: it is reused only when it is a private key file of ours; pick another path",
                path.display()
            )
        }),
    }
}

/// Creates a new key file at `path` (never replacing one: `create_new`,
/// no link followed), mode 0600 from the start, synced to disk with its
/// directory. Returns its key.
fn create_key_file(path: &Path) -> Result<SecretString> {
    use std::os::unix::fs::OpenOptionsExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(exit::usage(format!(
            "the directory {} does not exist: create it first (the key file is created in it)",
            parent.display()
        )));
    }
    let mut secret = zeroize::Zeroizing::new([0u8; keyfile::KEY_LEN]);
    getrandom::fill(&mut secret[..])
        .map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
    let key = keyfile::encode(&secret);
    let text = keyfile::render(&key);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        // The new name durable too.
        std::fs::File::open(parent)?.sync_all()
    };
    write().with_context(|| format!("failed to create the key file {}", path.display()))?;
    Ok(key)
}
