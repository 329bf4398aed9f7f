//! `latchkey lock`: the daemon forgets the vault's keys and cached tokens.

use crate::context::Ctx;
use anyhow::{Context, Result};
use latchkey_client::protocol::{method, Empty};

pub fn run(ctx: &Ctx) -> Result<()> {
    // A daemon that is not running holds no keys: starting one only to lock
    // it would be wasted work, so `lock` never starts the daemon.
    let Some(mut session) = ctx.connect_running()? else {
        return ctx.done("vault is locked (the daemon is not running)");
    };
    let _: serde_json::Value = session
        .raw(method::VAULT_LOCK, &Empty {})
        .context("failed to lock the vault")?;
    ctx.done("vault locked")
}
