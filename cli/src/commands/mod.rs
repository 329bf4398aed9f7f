//! The subcommands, one per file, and the dispatch from parsed arguments.

use crate::context::Ctx;
use anyhow::Result;
use clap::Subcommand;

mod app;
mod approve;
mod audit;
mod completions;
mod confirm;
mod credential;
mod daemon;
mod doctor;
mod dpop;
pub(crate) mod exec;
mod git_credential;
pub(crate) mod header;
mod init;
mod keys;
mod lock;
mod login;
pub(crate) mod oauth1;
mod panic;
mod passphrase;
mod provider;
mod proxy;
mod rekey;
mod revoke;
mod service;
mod slot;
mod status;
pub(crate) mod token;
mod totp;
mod unlock;

/// Everything `latchkey` can do.
#[derive(Subcommand)]
pub enum Command {
    /// Create the vault with a passphrase slot, a keyring slot, or both
    ///
    /// The passphrase comes from --passphrase-file, --passphrase-stdin or
    /// --passphrase-env; else from the file named by $LATCHKEY_PASSPHRASE_FILE;
    /// else it is asked twice on the terminal. --keyring with no passphrase
    /// source creates only a keyring slot: the vault is then lost if the
    /// keyring entry is (kernel keyutils entries vanish at reboot).
    Init(init::Args),
    /// Unlock the vault so tokens can be served
    ///
    /// With no flag: the key file named by $LATCHKEY_KEY_FILE if set, else
    /// the file named by $LATCHKEY_PASSPHRASE_FILE if set; else the keyring
    /// slot, if the vault has one; else a passphrase prompt.
    Unlock(unlock::Args),
    /// Lock the vault: the daemon forgets its keys and cached tokens
    Lock,
    /// Show the vault's state, key slots, auto-lock timer and counts
    Status(status::Args),
    /// Manage the vault passphrase
    #[command(subcommand)]
    Passphrase(passphrase::Command),
    /// Make a new data key and re-encrypt every secret with it
    ///
    /// All or nothing, in one transaction. Every key slot is rewrapped, so a
    /// vault with a passphrase slot needs the passphrase: from the flags,
    /// else $LATCHKEY_PASSPHRASE_FILE, else a prompt. Key-file slots are
    /// rewrapped without their files (to the public key each one stores):
    /// every machine's key file still opens the vault afterwards.
    Rekey(rekey::Args),
    /// Manage the vault's key slots: key files that let a machine unlock
    ///
    /// `latchkey slot add --key-file PATH` on a machine creates its key
    /// file and a slot for it; `latchkey unlock --key-file PATH`, or
    /// $LATCHKEY_KEY_FILE for a daemon the CLI starts, unlocks with it.
    /// `latchkey slot remove ID` cuts one machine off without changing
    /// anyone else's secret (then `latchkey rekey` when its file leaked).
    #[command(subcommand)]
    Slot(slot::Command),
    /// Manage OAuth providers (authorization servers)
    #[command(subcommand)]
    Provider(provider::Command),
    /// Manage credentials (an OAuth client at a provider)
    #[command(subcommand)]
    Credential(credential::Command),
    /// Which apps may use which credential: rules and app keys
    #[command(subcommand)]
    App(app::Command),
    /// Answer apps that ask for a credential (needs the vault passphrase or an authenticator code)
    ///
    /// Asks for the passphrase once (or reads --passphrase-file), then shows
    /// each app that waits for a credential with access `ask` — its path,
    /// hash, the programs that started it, the credential and scopes — and
    /// reads the answer: o (once), s (this terminal session), h N (N hours),
    /// a (always: a stored rule), d (deny). Answers come from standard
    /// input, so a script can answer too.
    Approve(approve::Args),
    /// Log in as a user so the daemon holds a refresh token for a credential
    ///
    /// For credentials with the authorization_code or device_code grant. A
    /// browser login opens the login page in $BROWSER (else xdg-open or
    /// open); with --no-browser, or when no browser can be opened, the URL is
    /// printed alone on stdout. --device prints the URL to open on any device
    /// and the code to enter there, each on its own line (with a QR code on
    /// a terminal). Then it waits for the login and prints `logged in: NAME`,
    /// the account when known, and the granted scope. Exits 9 when the user
    /// denies access and 6 when the login times out or expires.
    Login(login::Args),
    /// Revoke a credential's tokens at the provider and forget them
    ///
    /// Revokes the refresh token and the cached access tokens (RFC 7009);
    /// a user-login credential then needs `latchkey login NAME` again.
    Revoke(revoke::Args),
    /// Incident response: revoke every token at its provider, then lock the vault
    ///
    /// Revokes the tokens of every credential (or of one provider's), forgets
    /// them even where revocation fails, drops every cached token and locks
    /// the vault. Prints what happened to each credential; exits 1 when any
    /// could not be revoked. Never prompts.
    Panic(panic::Args),
    /// Print an access token for a credential
    ///
    /// Prints the token alone on stdout, for `$(latchkey token NAME)`.
    Token(token::Args),
    /// Print an `Authorization:` header for a credential
    Header(header::Args),
    /// Sign one request with an OAuth 1.0a credential: print its Authorization header value
    ///
    /// The consumer and token secrets stay in the daemon; the header holds
    /// a fresh nonce and timestamp and is good for exactly this method, URL
    /// (with its query) and form body. For example:
    /// curl -H "Authorization: $(latchkey oauth1-sign NAME --url URL)" URL
    #[command(name = "oauth1-sign")]
    Oauth1Sign(oauth1::SignArgs),
    /// Print the headers of one request with a DPoP-bound token: `Authorization: DPoP …` and `DPoP: <proof>`
    ///
    /// The proof is signed in the daemon, with a key that never leaves the
    /// vault, for exactly --method and --url (RFC 9449); a copied token is
    /// useless without it. Pass the resource server's DPoP-Nonce with --nonce
    /// when it asks for one.
    Dpop(dpop::Args),
    /// Run a command with an access token in its environment
    ///
    /// The token is put in the command's environment (never its arguments),
    /// and latchkey is replaced by the command, so the exit code is the
    /// command's own (a shell shows death by signal N as 128+N); 126 or 127
    /// when the command cannot be run.
    Exec(exec::Args),
    /// Start, stop or inspect the daemon
    #[command(subcommand)]
    Daemon(daemon::Command),
    /// Show the audit log: who asked for what, and how it ended
    ///
    /// Oldest first, one row per line (TIME, EVENT, OUTCOME, CREDENTIAL, APP,
    /// DETAIL), or one JSON object per line with --json. Rows marked
    /// [chained late] were written while the vault was locked and chained into
    /// the log at the next unlock.
    /// `latchkey audit verify` checks the log's MAC chain and exits 1 when a
    /// row was edited, deleted, reordered or cut off. Both need the vault
    /// unlocked.
    Audit(audit::Args),
    /// Confirm a step-up credential, so its tokens are handed out for a while
    ///
    /// For credentials set with `latchkey credential set NAME --step-up
    /// totp|passphrase [--window 10m]`: asks for a code of your
    /// authenticator (or reads --totp-file; the passphrase for `passphrase`
    /// step-up), then tokens of NAME are handed out until the window ends.
    /// Until then, callers get `step_up_required` (exit code 13).
    Confirm(confirm::Args),
    /// Enroll an authenticator app whose codes prove it is you (--totp)
    ///
    /// Wherever a proof that a person asks is needed (allowing an app,
    /// `latchkey approve`, opening a credential to every app), a code of
    /// the enrolled authenticator (RFC 6238 TOTP) or one of its recovery
    /// codes can stand in for the vault passphrase: `--totp` asks for it,
    /// `--totp-file PATH` reads it.
    #[command(subcommand)]
    Totp(totp::Command),
    /// A git credential helper: git gets access tokens by route (host, path, username)
    ///
    /// `latchkey git-credential setup https://github.com/acme --credential
    /// gh-work` routes git's requests for that prefix to a credential and
    /// configures git to ask latchkey (`credential.https://HOST.helper`).
    /// git then runs `latchkey git-credential get|store|erase` itself.
    #[command(subcommand)]
    GitCredential(git_credential::Command),
    /// Run an authenticating proxy: apps send plain requests, the daemon adds the token
    ///
    /// `latchkey proxy NAME --upstream https://api.example.com --listen
    /// 127.0.0.1:8080` prints the address apps use (alone on stdout), then
    /// runs until Ctrl-C. Each request sent there goes to the upstream only,
    /// with the app's Authorization replaced by the credential's bearer
    /// token; the app never sees the token. Only your own programs may
    /// connect, and each is identified as an app, as for `latchkey token`.
    Proxy(proxy::Args),
    /// Install latchkeyd as a user service (systemd socket activation, or launchd on macOS)
    ///
    /// Writes latchkey.socket and latchkey.service into
    /// $XDG_CONFIG_HOME/systemd/user (default ~/.config/systemd/user), or a
    /// LaunchAgent plist on macOS, and prints the commands that enable it.
    #[command(subcommand)]
    Service(service::Command),
    /// Print a shell completion script: bash, zsh or fish
    ///
    /// `latchkey completions bash > ~/.local/share/bash-completion/completions/latchkey`
    Completions(completions::Args),
    /// Write man pages: latchkey.1 to stdout, or one page per command into --dir
    ///
    /// `latchkey man --dir ~/.local/share/man/man1`
    Man(completions::ManArgs),
    /// Check the daemon, files, keyring, providers and credentials, each with its fix
    ///
    /// Exits 1 when any check needs action (warn or fail). --json prints a
    /// stable list of {check, status: ok|warn|fail, detail, fix}. Never
    /// starts the daemon.
    Doctor(doctor::Args),
}

/// Runs one parsed command.
/// `tree` builds the whole command line's definition, for the commands
/// that describe it (completions, man pages).
pub fn run(ctx: &Ctx, command: Command, tree: fn() -> clap::Command) -> Result<()> {
    match command {
        Command::Init(args) => init::run(ctx, args),
        Command::Unlock(args) => unlock::run(ctx, args),
        Command::Lock => lock::run(ctx),
        Command::Status(args) => status::run(ctx, args),
        Command::Passphrase(command) => passphrase::run(ctx, command),
        Command::Rekey(args) => rekey::run(ctx, args),
        Command::Slot(command) => slot::run(ctx, command),
        Command::Provider(command) => provider::run(ctx, command),
        Command::Credential(command) => credential::run(ctx, command),
        Command::App(command) => app::run(ctx, command),
        Command::Approve(args) => approve::run(ctx, args),
        Command::Login(args) => login::run(ctx, args),
        Command::Revoke(args) => revoke::run(ctx, args),
        Command::Panic(args) => panic::run(ctx, args),
        Command::Token(args) => token::run(ctx, args),
        Command::Header(args) => header::run(ctx, args),
        Command::Oauth1Sign(args) => oauth1::sign(ctx, args),
        Command::Dpop(args) => dpop::run(ctx, args),
        Command::Exec(args) => exec::run(ctx, args),
        Command::Daemon(command) => daemon::run(ctx, command),
        Command::Audit(args) => audit::run(ctx, args),
        Command::Totp(command) => totp::run(ctx, command),
        Command::Confirm(args) => confirm::run(ctx, args),
        Command::GitCredential(command) => git_credential::run(ctx, command),
        Command::Proxy(args) => proxy::run(ctx, args),
        Command::Service(command) => service::run(ctx, command),
        Command::Completions(args) => completions::run(tree(), args),
        Command::Man(args) => completions::man(ctx, tree(), args),
        Command::Doctor(args) => doctor::run(ctx, args),
    }
}
