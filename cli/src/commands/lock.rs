//! `latchkey lock`: the daemon forgets the vault's keys and cached tokens.

use crate::context::Ctx;
use anyhow::{Context, Result};
use latchkey_client::protocol::{Empty, VaultLock};

pub fn run(ctx: &Ctx) -> Result<()> {
    // A daemon that is not running holds no keys: starting one only to lock
    // it would be wasted work, so `lock` never starts the daemon.
    let Some(mut conn) = ctx.connect_running()? else {
        return ctx.done("vault is locked (the daemon is not running)");
    };
    conn.raw::<VaultLock>(&Empty {})
        .context("failed to lock the vault")?;
    ctx.done("vault locked")
}
