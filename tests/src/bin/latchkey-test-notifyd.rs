//! A desktop notification service for the notification tests: owns
//! `org.freedesktop.Notifications` on the session bus of
//! `$DBUS_SESSION_BUS_ADDRESS`, records every call as a JSON line on
//! stdout, and on commands read from stdin sends what a person's clicks
//! would (`invoke ID KEY`, `closed ID`), or what an impostor without the
//! name would (`impostor ID KEY`, from a second connection).
//!
//! Lines on stdout: `{"event":"ready","unique":…}`, `{"event":"notify",…}`
//! (id, replaces, app, summary, body, actions, expire),
//! `{"event":"close","id":…}`, `{"event":"sent","command":…}`.
//!
//! Usage: `latchkey-test-notifyd [CAPABILITY,…]` (default `actions,body`).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use zbus::zvariant::OwnedValue;

const NAME: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";

static OUT: Mutex<()> = Mutex::new(());

/// One JSON line on stdout, whole.
fn say(line: Value) {
    let _held = OUT.lock().unwrap();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Server {
    caps: Vec<String>,
    next: AtomicU32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    fn get_capabilities(&self) -> Vec<String> {
        self.caps.clone()
    }

    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        expire_timeout: i32,
    ) -> u32 {
        let id = if replaces_id != 0 {
            replaces_id
        } else {
            self.next.fetch_add(1, Ordering::SeqCst)
        };
        say(json!({
            "event": "notify",
            "id": id,
            "replaces": replaces_id,
            "app": app_name,
            "summary": summary,
            "body": body,
            "actions": actions,
            "hints": hints.keys().collect::<Vec<_>>(),
            "expire": expire_timeout,
        }));
        id
    }

    fn close_notification(&self, id: u32) {
        say(json!({"event": "close", "id": id}));
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "latchkey-test-notifyd".into(),
            "latchkey".into(),
            "0".into(),
            "1.2".into(),
        )
    }
}

fn emit(
    conn: &zbus::blocking::Connection,
    member: &str,
    body: &(u32, impl serde::Serialize + zbus::zvariant::Type),
) {
    conn.emit_signal(None::<zbus::names::BusName<'_>>, PATH, NAME, member, body)
        .expect("emitting a signal works");
}

fn main() {
    let caps: Vec<String> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "actions,body".into())
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let server = Server {
        caps,
        next: AtomicU32::new(1),
    };
    let conn = zbus::blocking::connection::Builder::session()
        .and_then(|b| b.name(NAME))
        .and_then(|b| b.serve_at(PATH, server))
        .and_then(|b| b.build())
        .expect("the session bus takes our name");
    let impostor = zbus::blocking::Connection::session().expect("a second connection");
    say(json!({
        "event": "ready",
        "unique": conn.unique_name().map(|n| n.to_string()),
        "impostor": impostor.unique_name().map(|n| n.to_string()),
    }));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["invoke", id, key] => emit(&conn, "ActionInvoked", &(id.parse().unwrap(), *key)),
            ["impostor", id, key] => emit(&impostor, "ActionInvoked", &(id.parse().unwrap(), *key)),
            // Reason 2: dismissed by the user.
            ["closed", id] => emit(&conn, "NotificationClosed", &(id.parse().unwrap(), 2u32)),
            ["quit"] => break,
            _ => {
                say(json!({"event": "error", "command": line}));
                continue;
            }
        }
        say(json!({"event": "sent", "command": line}));
    }
}
