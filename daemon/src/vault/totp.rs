//! The enrolled authenticator: a TOTP secret (RFC 6238, through `totp-rs`)
//! whose codes prove that a person asks, the last time step a code was
//! accepted for (a code is good once: RFC 6238 §5.2), and keyed hashes of
//! one-time recovery codes. One sealed document, so none of it can be read
//! or edited in the file without the vault key.

use super::crypto::{self, keyed_hash, keyed_hash_matches};
use super::store::SealedRow;
use super::{Keys, Result, Vault};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use totp_rs::{Algorithm, Secret, Totp};

/// 160-bit secrets: the HMAC-SHA1 key size RFC 4226 §4 recommends, and
/// what every authenticator app accepts.
const SECRET_LEN: usize = 20;
/// Six digits every 30 seconds: what authenticator apps show by default
/// (other parameters are silently ignored by several of them).
pub const DIGITS: u32 = 6;
pub const PERIOD: u64 = 30;
/// One step either side: a phone's clock a little off still works.
const SKEW: u16 = 1;
/// Recovery codes made at enrollment.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (5 bits each: 50 bits), shown in two
/// groups of five.
const RECOVERY_LEN: usize = 10;
/// Lower-case letters and digits without the look-alikes (0/o, 1/l).
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// The only row's id.
const ROW_ID: &str = "authenticator";

/// The stored authenticator. No `Debug`: it holds the secret.
#[derive(Serialize, Deserialize)]
pub struct Authenticator {
    /// The TOTP secret in base32.
    #[serde(serialize_with = "expose")]
    secret: SecretString,
    /// The last time step a code was accepted for: codes of that step and
    /// earlier are refused.
    last_step: u64,
    recovery: Vec<RecoveryCode>,
    pub enrolled_at: i64,
}

/// A recovery code as stored: HMAC-SHA256 under a random salt.
#[derive(Serialize, Deserialize)]
struct RecoveryCode {
    salt: String,
    hash: String,
    used_at: Option<i64>,
}

/// What a presented code turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// A code of the authenticator, for a step not used before.
    Code,
    /// An unused recovery code, now used; this many are left.
    Recovery { left: u32 },
    /// A valid code whose step was used already (a replayed code).
    Reused,
    /// Neither.
    Wrong,
}

fn expose<S: Serializer>(secret: &SecretString, ser: S) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(secret.expose_secret())
}

impl Authenticator {
    /// A new authenticator with a fresh secret (not yet enrolled: stored
    /// only once a code for it is confirmed).
    pub fn generate(now: i64) -> Authenticator {
        let bytes = crypto::random_bytes::<SECRET_LEN>();
        let secret = SecretString::from(Secret::from(&bytes[..]).to_base32());
        Authenticator {
            secret,
            last_step: 0,
            recovery: Vec::new(),
            enrolled_at: now,
        }
    }

    fn totp(&self, account: &str) -> Totp {
        let secret = Secret::try_from_base32(self.secret.expose_secret())
            .expect("the stored secret is base32 this module wrote");
        totp_rs::Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS as u8)
            .with_skew(SKEW)
            .with_step_duration(PERIOD)
            .with_secret(secret)
            .with_issuer(Some("Latchkey"))
            .with_account_name(account.replace(':', "_"))
            .build()
            .expect("fixed parameters and a 160-bit secret are valid")
    }

    /// The secret in base32, for typing into an app by hand.
    pub fn secret(&self) -> SecretString {
        self.secret.clone()
    }

    /// The `otpauth://` URI an authenticator app scans.
    pub fn uri(&self, account: &str) -> SecretString {
        let totp = self.totp(account);
        SecretString::from(
            totp.to_url()
                .expect("an account name without ':' makes a URI"),
        )
    }

    /// Makes new recovery codes (replacing any), returning them to show once.
    pub fn new_recovery_codes(&mut self) -> Vec<SecretString> {
        let mut shown = Vec::with_capacity(RECOVERY_CODES);
        self.recovery.clear();
        for _ in 0..RECOVERY_CODES {
            let bits = crypto::random_bytes::<8>();
            let mut n = u64::from_le_bytes(*bits);
            let mut code = String::with_capacity(RECOVERY_LEN + 1);
            for i in 0..RECOVERY_LEN {
                if i == RECOVERY_LEN / 2 {
                    code.push('-');
                }
                code.push(RECOVERY_ALPHABET[(n & 31) as usize] as char);
                n >>= 5;
            }
            let salt = crypto::random_id();
            let hash = hex::encode(keyed_hash(salt.as_bytes(), normalize(&code).as_bytes()));
            self.recovery.push(RecoveryCode {
                salt,
                hash,
                used_at: None,
            });
            shown.push(SecretString::from(code));
        }
        shown
    }

    /// Recovery codes not used yet.
    pub fn recovery_left(&self) -> u32 {
        self.recovery.iter().filter(|r| r.used_at.is_none()).count() as u32
    }

    /// Checks `presented` at `now` (Unix seconds), recording its use: a
    /// code's step, or a recovery code as used. The caller stores the
    /// document again after `Code` and `Recovery`.
    pub fn check(&mut self, presented: &str, now: i64) -> Checked {
        let compact: String = presented.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.len() == DIGITS as usize && compact.bytes().all(|b| b.is_ascii_digit()) {
            let now = u64::try_from(now).unwrap_or(0);
            return match self.totp("").check(&compact, now) {
                Some(step) if step > self.last_step => {
                    self.last_step = step;
                    Checked::Code
                }
                Some(_) => Checked::Reused,
                None => Checked::Wrong,
            };
        }
        let code = normalize(&compact);
        if code.len() != RECOVERY_LEN {
            return Checked::Wrong;
        }
        // Every unused code is compared, so the time taken says nothing
        // about which one matched.
        let mut matched = None;
        for (i, r) in self.recovery.iter().enumerate() {
            let Ok(hash) = hex::decode(&r.hash) else {
                continue;
            };
            if r.used_at.is_none() && keyed_hash_matches(r.salt.as_bytes(), code.as_bytes(), &hash)
            {
                matched = Some(i);
            }
        }
        match matched {
            Some(i) => {
                self.recovery[i].used_at = Some(now);
                Checked::Recovery {
                    left: self.recovery_left(),
                }
            }
            None => Checked::Wrong,
        }
    }
}

/// A recovery code as compared: lower case, without the dash.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Vault {
    /// The enrolled authenticator, if any. A document that fails its
    /// integrity check is an error: a step-up must not silently vanish.
    pub fn load_authenticator(&self, keys: &Keys) -> Result<Option<Authenticator>> {
        let Some(row) = self.store.authenticator()? else {
            return Ok(None);
        };
        Ok(Some(keys.open_json::<Authenticator>(
            "authenticator",
            &row.id,
            "sealed",
            &row.sealed,
        )?))
    }

    /// Whether an authenticator is enrolled (no key needed).
    pub fn has_authenticator(&self) -> Result<bool> {
        Ok(self.store.has_authenticator()?)
    }

    /// Stores `auth` as the authenticator (replacing any).
    pub fn put_authenticator(&mut self, keys: &Keys, auth: &Authenticator) -> Result<()> {
        let row = SealedRow {
            sealed: keys.seal_json("authenticator", ROW_ID, "sealed", auth),
            id: ROW_ID.to_owned(),
        };
        Ok(self.store.put_authenticator(&row, auth.enrolled_at)?)
    }

    /// Removes the authenticator; true if one was enrolled.
    pub fn remove_authenticator(&mut self) -> Result<bool> {
        Ok(self.store.delete_authenticator()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A code for `at`, computed the way an authenticator app does.
    fn code_at(auth: &Authenticator, at: i64) -> String {
        auth.totp("").generate(at as u64).to_string()
    }

    #[test]
    fn a_code_is_good_once_and_only_near_its_time() {
        let now = 1_800_000_000;
        let mut auth = Authenticator::generate(now);
        let code = code_at(&auth, now);
        assert_eq!(auth.check(&code, now), Checked::Code);
        assert_eq!(auth.check(&code, now), Checked::Reused, "replayed");
        // The previous step's code is older than the one used: refused.
        let old = code_at(&auth, now - PERIOD as i64);
        assert_ne!(auth.check(&old, now), Checked::Code);
        // The next step's code works (clock skew), once.
        let next = code_at(&auth, now + PERIOD as i64);
        assert_eq!(auth.check(&next, now), Checked::Code);
        // Far from its time, a code is wrong.
        let later = code_at(&auth, now + 10 * PERIOD as i64);
        assert_eq!(auth.check(&later, now), Checked::Wrong);
        assert_eq!(auth.check("12345", now), Checked::Wrong);
        assert_eq!(auth.check("", now), Checked::Wrong);
    }

    #[test]
    fn recovery_codes_work_once_in_any_case_and_spacing() {
        let now = 1_800_000_000;
        let mut auth = Authenticator::generate(now);
        let codes = auth.new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let first = codes[0].expose_secret().to_owned();
        assert_eq!(first.len(), RECOVERY_LEN + 1);
        let shouted = first.to_uppercase().replace('-', " - ");
        assert_eq!(
            auth.check(&shouted, now),
            Checked::Recovery {
                left: RECOVERY_CODES as u32 - 1
            }
        );
        assert_eq!(auth.check(&first, now), Checked::Wrong, "used up");
        assert_eq!(auth.check("abcde-fghjk", now), Checked::Wrong);
        // The stored document holds neither the codes nor the secret in a
        // form other than the sealed one: no code in clear.
        let json = serde_json::to_string(&auth).unwrap();
        for code in &codes {
            assert!(!json.contains(code.expose_secret()));
            assert!(!json.contains(&normalize(code.expose_secret())));
        }
    }

    #[test]
    fn the_uri_is_what_authenticator_apps_read() {
        let auth = Authenticator::generate(0);
        let uri = auth.uri("alice:laptop");
        let parsed = Totp::from_url(uri.expose_secret()).unwrap();
        assert_eq!(parsed.digits(), DIGITS as u8);
        assert_eq!(parsed.step(), PERIOD);
        assert_eq!(
            parsed.secret().to_base32(),
            auth.secret().expose_secret().to_owned()
        );
        assert!(uri.expose_secret().contains("issuer=Latchkey"));
    }
}
