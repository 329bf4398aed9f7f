//! The only module that touches raw key bytes: the vault's data key (DEK),
//! key-encryption keys (KEKs), Argon2id derivation and the per-field
//! XChaCha20-Poly1305 blobs of crypto format v1 (DESIGN.md, "Crypto format").
//!
//! Blob layout: `version (1) || nonce (24) || ciphertext || tag (16)`.
//! Associated data binds every blob to where it belongs:
//! `latchkey/v1/slot/<slot id>` for a wrapped DEK and
//! `latchkey/v1/<vault id>/<table>/<row id>/<field>` for a field, so a blob
//! moved to another row, field or vault fails to open.
//!
//! A key-file slot's KEK is sealed with HPKE (RFC 9180, base mode:
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, the `hpke`
//! crate) to an X25519 public key derived from the key file's secret by
//! DeriveKeyPair (§7.1.3), with `info = "latchkey/v1/slot/<slot id>"` and
//! `aad = "latchkey/v1/<vault id>/key_slots/<slot id>/sealed_kek"`: anyone
//! holding the public key (a rekey) can seal a new KEK to it; only the
//! file opens it.
//!
//! The audit log's chain key `K_audit` is derived from the DEK with
//! HKDF-SHA256 (RFC 5869) under its own label, and each audit row carries
//! `mac_n = HMAC-SHA256(K_audit, mac_{n-1} || row_n)` (RFC 2104) over the
//! unambiguous encoding of [`AuditMacInput`].

use argon2::{Algorithm, Argon2, Block, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use hpke::{Deserializable as _, Kem as _, Serializable as _};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::ffi::OsStr;
use zeroize::Zeroizing;

/// Version byte that starts every blob.
pub const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// Environment variable that lowers Argon2id to OWASP's minimum for tests.
/// Never set it for a real vault: it only makes guessing cheaper. Debug
/// builds only: a release daemon refuses to start while it is set
/// ([`test_kdf_switch`]).
pub const INSECURE_TEST_KDF_ENV: &str = "LATCHKEY_INSECURE_TEST_KDF";

/// Whether this is a release build, where test-only switches do not exist.
pub const RELEASE_BUILD: bool = !cfg!(debug_assertions);

/// The rule for [`INSECURE_TEST_KDF_ENV`], given its value and the build
/// kind: `Ok(true)` lowers the KDF (a debug build and the value `1`),
/// `Ok(false)` keeps it, and an error (a release build and the variable set
/// to anything) is the reason the daemon refuses to start.
pub fn test_kdf_switch(value: Option<&OsStr>, release: bool) -> Result<bool, String> {
    match value {
        None => Ok(false),
        Some(_) if release => Err(format!(
            "{INSECURE_TEST_KDF_ENV} is set, but this is a release build: unset it: it weakens the vault's key derivation and exists only for the test suite"
        )),
        Some(value) => Ok(value == "1"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The blob does not open with this key and associated data: wrong key,
    /// tampered bytes, or a blob moved from elsewhere.
    #[error("integrity check failed")]
    Integrity,
    #[error("unsupported blob version {0}")]
    Version(u8),
    #[error("Argon2id parameters out of bounds: {0}")]
    ExcessiveWork(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// Fills `buf` from the operating system's CSPRNG.
fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// `N` random bytes, zeroized when dropped (an authenticator's secret).
pub fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut bytes = Zeroizing::new([0u8; N]);
    fill_random(&mut bytes[..]).expect("the OS random number generator is available");
    bytes
}

/// A new secret of 256 random bits in hex (an app key's secret part).
pub fn random_secret() -> SecretString {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(&mut bytes[..]).expect("the OS random number generator is available");
    SecretString::from(hex::encode(&bytes[..]))
}

/// A random 128-bit id in hex: vault ids, slot ids and row ids (never
/// SQLite's rowid, which is reused after a delete).
pub fn random_id() -> String {
    let mut id = [0u8; 16];
    fill_random(&mut id).expect("the OS random number generator is available");
    hex::encode(id)
}

/// 32 bytes of key material in a slot of [`keymem`]'s locked pages (never
/// swapped out, left out of core dumps), zeroized when dropped.
struct KeyBytes {
    slot: keymem::Slot,
}

impl KeyBytes {
    /// A key of zero bytes, to be filled.
    fn zeroed() -> KeyBytes {
        KeyBytes {
            slot: keymem::take(),
        }
    }

    fn random() -> Result<KeyBytes, CryptoError> {
        let mut key = KeyBytes::zeroed();
        fill_random(key.bytes_mut())?;
        Ok(key)
    }

    fn from_slice(bytes: &[u8]) -> Option<KeyBytes> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut key = KeyBytes::zeroed();
        key.bytes_mut().copy_from_slice(bytes);
        Some(key)
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        // SAFETY: this `KeyBytes` owns the slot alone (the pool hands each
        // slot out once until it is given back in `drop`), and the slot's
        // page is never unmapped.
        unsafe { self.slot.0.as_ref() }
    }

    fn bytes_mut(&mut self) -> &mut [u8; KEY_LEN] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference.
        unsafe { self.slot.0.as_mut() }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(self.bytes()).expect("keys are 32 bytes")
    }
}

impl Drop for KeyBytes {
    fn drop(&mut self) {
        keymem::give(self.slot);
    }
}

/// Where keys live: locked, undumpable pages of zeroized slots.
mod keymem;

/// The vault's data key. Exists only in memory while the vault is unlocked.
pub struct Dek(KeyBytes);

/// A key-encryption key: wraps the DEK in one slot.
pub struct Kek(KeyBytes);

/// `K_audit`: the key of the audit log's MAC chain, derived from the DEK
/// ([`Dek::audit_key`]); it exists exactly as long as its DEK does.
pub struct AuditKey(KeyBytes);

/// HKDF-SHA256 `info` of `K_audit`: a label of its own, so the derived key
/// is never any other key made from the DEK.
const AUDIT_KEY_INFO: &[u8] = b"latchkey audit mac v1";

/// The first bytes every audit MAC covers: the format, so an encoding of
/// something else can never pass for a row.
const AUDIT_MAC_DOMAIN: &[u8] = b"latchkey/v1/audit-row";

/// Bytes of an audit row's MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// An audit row's MAC; also what the first row of a chain is chained on
/// (all zero for a new chain).
pub type Mac = [u8; MAC_LEN];

/// One audit row as its MAC covers it: every column but the MAC itself.
/// Encoded as a domain label, the previous MAC, then each field in this
/// order, integers as 8 bytes big-endian, optional fields as a presence
/// byte, and strings and blobs with an 8-byte big-endian length first —
/// so no two different rows encode alike.
#[derive(Debug, Clone, Copy)]
pub struct AuditMacInput<'a> {
    pub seq: i64,
    pub at: i64,
    pub event: &'a str,
    pub credential: Option<&'a str>,
    pub pid: Option<u32>,
    pub app: Option<&'a str>,
    pub app_key: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub sealed_id: Option<&'a str>,
    pub sealed_detail: Option<&'a [u8]>,
    pub chained_late: bool,
}

impl AuditMacInput<'_> {
    fn feed(&self, mac: &mut Hmac<Sha256>) {
        fn bytes(mac: &mut Hmac<Sha256>, b: &[u8]) {
            mac.update(&(b.len() as u64).to_be_bytes());
            mac.update(b);
        }
        fn opt(mac: &mut Hmac<Sha256>, b: Option<&[u8]>) {
            match b {
                None => mac.update(&[0]),
                Some(b) => {
                    mac.update(&[1]);
                    bytes(mac, b);
                }
            }
        }
        mac.update(&self.seq.to_be_bytes());
        mac.update(&self.at.to_be_bytes());
        bytes(mac, self.event.as_bytes());
        opt(mac, self.credential.map(str::as_bytes));
        match self.pid {
            None => mac.update(&[0]),
            Some(pid) => {
                mac.update(&[1]);
                mac.update(&u64::from(pid).to_be_bytes());
            }
        }
        opt(mac, self.app.map(str::as_bytes));
        opt(mac, self.app_key.map(str::as_bytes));
        opt(mac, self.outcome.map(str::as_bytes));
        opt(mac, self.detail.map(str::as_bytes));
        opt(mac, self.sealed_id.map(str::as_bytes));
        opt(mac, self.sealed_detail);
        mac.update(&[u8::from(self.chained_late)]);
    }
}

impl AuditKey {
    fn hmac(&self, prev: &Mac, row: &AuditMacInput<'_>) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(self.0.bytes()).expect("HMAC takes a key of any length");
        mac.update(AUDIT_MAC_DOMAIN);
        mac.update(prev);
        row.feed(&mut mac);
        mac
    }

    /// `HMAC-SHA256(K_audit, prev || row)`.
    pub fn mac(&self, prev: &Mac, row: &AuditMacInput<'_>) -> Mac {
        self.hmac(prev, row).finalize().into_bytes().into()
    }

    /// Whether `tag` is the row's MAC on `prev`, compared in constant time.
    pub fn verify(&self, prev: &Mac, row: &AuditMacInput<'_>, tag: &[u8]) -> bool {
        self.hmac(prev, row).verify_slice(tag).is_ok()
    }
}

/// Where a field blob belongs; becomes its associated data.
#[derive(Debug, Clone, Copy)]
pub struct FieldRef<'a> {
    pub table: &'a str,
    pub row_id: &'a str,
    pub field: &'a str,
}

impl Dek {
    pub fn generate() -> Result<Dek, CryptoError> {
        KeyBytes::random().map(Dek)
    }

    /// `K_audit = HKDF-SHA256(ikm = DEK, salt = none, info = "latchkey audit
    /// mac v1")`, 32 bytes, in a locked slot like the DEK.
    pub fn audit_key(&self) -> AuditKey {
        let hkdf = Hkdf::<Sha256>::new(None, self.0.bytes());
        let mut key = KeyBytes::zeroed();
        hkdf.expand(AUDIT_KEY_INFO, key.bytes_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        AuditKey(key)
    }

    /// Seals one field of one row.
    pub fn seal(&self, vault_id: &str, at: FieldRef<'_>, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.0, field_aad(vault_id, at).as_bytes(), plaintext)
    }

    /// Opens one field of one row; fails unless the blob was sealed for
    /// exactly this vault, table, row and field with this key.
    pub fn open(
        &self,
        vault_id: &str,
        at: FieldRef<'_>,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(&self.0, field_aad(vault_id, at).as_bytes(), blob)
    }
}

/// HMAC-SHA256 of `message` under `key`: how an app key's secret is
/// stored (under a random per-key salt, inside a sealed document, so it
/// survives a rekey and says nothing without the vault key).
pub fn keyed_hash(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `expected` is [`keyed_hash`] of `message` under `key`, compared
/// in constant time.
pub fn keyed_hash_matches(key: &[u8], message: &[u8], expected: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.verify_slice(expected).is_ok()
}

impl Kek {
    pub fn generate() -> Result<Kek, CryptoError> {
        KeyBytes::random().map(Kek)
    }

    /// A KEK read back from the OS keyring.
    pub fn from_bytes(bytes: &[u8]) -> Option<Kek> {
        KeyBytes::from_slice(bytes).map(Kek)
    }

    /// Lends the raw bytes to store them in the OS keyring.
    pub fn with_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        f(&self.0.bytes()[..])
    }

    /// `XChaCha20-Poly1305(KEK, nonce, DEK, aad = "latchkey/v1/slot/<slot_id>")`.
    pub fn wrap(&self, slot_id: &str, dek: &Dek) -> Vec<u8> {
        seal(&self.0, slot_aad(slot_id).as_bytes(), &dek.0.bytes()[..])
    }

    /// Unwraps the DEK; [`CryptoError::Integrity`] means a wrong passphrase
    /// or key, or a tampered slot.
    pub fn unwrap(&self, slot_id: &str, wrapped: &[u8]) -> Result<Dek, CryptoError> {
        let bytes = open(&self.0, slot_aad(slot_id).as_bytes(), wrapped)?;
        KeyBytes::from_slice(&bytes)
            .map(Dek)
            .ok_or(CryptoError::Integrity)
    }
}

/// The HPKE suite of key-file slots (see the module docs).
type FileKem = hpke::kem::X25519HkdfSha256;
type FileKdf = hpke::kdf::HkdfSha256;
type FileAead = hpke::aead::ChaCha20Poly1305;

/// Bytes of a key-file slot's X25519 public key.
pub const FILE_PUBLIC_KEY_LEN: usize = 32;

/// A key file's 32-byte secret, in a locked slot: the input keying
/// material of the slot's X25519 key pair, never stored by the daemon.
pub struct FileKey(KeyBytes);

/// A KEK sealed with HPKE to a key file's public key: the encapsulated
/// key and the ciphertext (the KEK and its tag).
pub struct SealedKek {
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl FileKey {
    /// The secret decoded from a key file (`None` unless 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Option<FileKey> {
        KeyBytes::from_slice(bytes).map(FileKey)
    }

    /// RFC 9180 DeriveKeyPair(ikm = the secret). The private key is
    /// zeroized when dropped (x25519-dalek's `StaticSecret`).
    fn key_pair(
        &self,
    ) -> (
        <FileKem as hpke::Kem>::PrivateKey,
        <FileKem as hpke::Kem>::PublicKey,
    ) {
        FileKem::derive_keypair(self.0.bytes())
    }

    /// The public key a slot for this file stores.
    pub fn public_key(&self) -> [u8; FILE_PUBLIC_KEY_LEN] {
        self.key_pair().1.to_bytes().into()
    }

    /// Opens a KEK sealed to this file's public key for `slot_id` of
    /// `vault_id`; [`CryptoError::Integrity`] for another file, slot or
    /// vault, or tampered bytes.
    pub fn open_kek(
        &self,
        vault_id: &str,
        slot_id: &str,
        sealed: &SealedKek,
    ) -> Result<Kek, CryptoError> {
        let (private, _) = self.key_pair();
        let enc = <FileKem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
            .map_err(|_| CryptoError::Integrity)?;
        let plain = hpke::single_shot_open::<FileAead, FileKdf, FileKem>(
            &hpke::OpModeR::Base,
            &private,
            &enc,
            slot_aad(slot_id).as_bytes(),
            &sealed.ciphertext,
            sealed_kek_aad(vault_id, slot_id).as_bytes(),
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Integrity)?;
        Kek::from_bytes(&plain).ok_or(CryptoError::Integrity)
    }
}

fn sealed_kek_aad(vault_id: &str, slot_id: &str) -> String {
    format!("latchkey/v1/{vault_id}/key_slots/{slot_id}/sealed_kek")
}

impl Kek {
    /// Seals this KEK with HPKE to a key file's public key, for `slot_id`
    /// of `vault_id` (see the module docs). Needs no key file: what a
    /// rekey does for every machine's slot.
    pub fn seal_to(
        &self,
        public_key: &[u8],
        vault_id: &str,
        slot_id: &str,
    ) -> Result<SealedKek, CryptoError> {
        let public = <FileKem as hpke::Kem>::PublicKey::from_bytes(public_key)
            .map_err(|_| CryptoError::Integrity)?;
        let (enc, ciphertext) = hpke::single_shot_seal::<FileAead, FileKdf, FileKem>(
            &hpke::OpModeS::Base,
            &public,
            slot_aad(slot_id).as_bytes(),
            &self.0.bytes()[..],
            sealed_kek_aad(vault_id, slot_id).as_bytes(),
        )
        // An all-zero shared secret: a low-order point, never a key
        // derived from a file.
        .map_err(|_| CryptoError::Integrity)?;
        Ok(SealedKek {
            enc: enc.to_bytes().to_vec(),
            ciphertext,
        })
    }
}

fn slot_aad(slot_id: &str) -> String {
    format!("latchkey/v1/slot/{slot_id}")
}

fn field_aad(vault_id: &str, at: FieldRef<'_>) -> String {
    format!(
        "latchkey/v1/{vault_id}/{}/{}/{}",
        at.table, at.row_id, at.field
    )
}

fn seal(key: &KeyBytes, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce).expect("the OS random number generator is available");
    let nonce = XNonce::from(nonce);
    let sealed = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut blob = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    blob.push(BLOB_VERSION);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    blob
}

fn open(key: &KeyBytes, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (&version, rest) = blob.split_first().ok_or(CryptoError::Integrity)?;
    if version != BLOB_VERSION {
        return Err(CryptoError::Version(version));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Integrity);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| CryptoError::Integrity)?;
    key.cipher()
        .decrypt(&nonce, Payload { msg: sealed, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Integrity)
}

/// Argon2id cost parameters, stored with each passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// RFC 9106 §4, second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const RFC9106_SECOND: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };
    /// OWASP's minimum for Argon2id (19 MiB, t = 2); the floor for any slot.
    pub const OWASP_MINIMUM: KdfParams = KdfParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// 1 GiB: a slot asking for more memory is treated as hostile (a crafted
    /// vault file must not make unlock exhaust the machine).
    const MAX_M_KIB: u32 = 1024 * 1024;
    /// Ten times the default passes; more would stall unlock for minutes.
    const MAX_T: u32 = 30;
    const MAX_P: u32 = 16;
    /// The work of one slot at the ceiling ([`KdfParams::work`]): what
    /// one unlock may spend on Argon2id over all the slots it tries.
    pub const MAX_WORK: u64 = Self::MAX_M_KIB as u64 * Self::MAX_T as u64;

    /// Argon2id's cost as memory × passes (KiB·passes): what bounds how
    /// long a derivation takes, whatever the lanes.
    pub fn work(&self) -> u64 {
        u64::from(self.m_kib) * u64::from(self.t)
    }

    /// Parameters for new slots: the RFC 9106 defaults, or OWASP's minimum
    /// when [`INSECURE_TEST_KDF_ENV`] is `1` in a debug build (tests only).
    /// A release build never lowers them, whatever the environment says
    /// (and its daemon refuses to start while the variable is set).
    pub fn for_new_slot() -> KdfParams {
        let value = std::env::var_os(INSECURE_TEST_KDF_ENV);
        if test_kdf_switch(value.as_deref(), RELEASE_BUILD) == Ok(true) {
            KdfParams::OWASP_MINIMUM
        } else {
            KdfParams::RFC9106_SECOND
        }
    }

    /// Refuses parameters read from disk that are below the floor (a
    /// downgrade) or above the ceiling (a denial of service).
    pub fn check(&self) -> Result<(), CryptoError> {
        let floor = KdfParams::OWASP_MINIMUM;
        if self.m_kib < floor.m_kib || self.t < floor.t || self.p < 1 {
            return Err(CryptoError::ExcessiveWork(format!(
                "m={} KiB t={} p={} is below the minimum m={} KiB t={}",
                self.m_kib, self.t, self.p, floor.m_kib, floor.t
            )));
        }
        if self.m_kib > Self::MAX_M_KIB || self.t > Self::MAX_T || self.p > Self::MAX_P {
            return Err(CryptoError::ExcessiveWork(format!(
                "m={} KiB t={} p={} exceeds the maximum m={} KiB t={} p={}",
                self.m_kib,
                self.t,
                self.p,
                Self::MAX_M_KIB,
                Self::MAX_T,
                Self::MAX_P
            )));
        }
        Ok(())
    }
}

/// What a passphrase slot stores besides the wrapped DEK.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassphraseSlot {
    /// 16 random bytes, hex.
    pub salt: String,
    pub kdf: KdfParams,
}

impl PassphraseSlot {
    pub fn new() -> Result<PassphraseSlot, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt)?;
        Ok(PassphraseSlot {
            salt: hex::encode(salt),
            kdf: KdfParams::for_new_slot(),
        })
    }

    /// KEK = Argon2id(passphrase, salt) with this slot's bounded parameters.
    /// Slow on purpose (~50 ms in release at the defaults): call it off the
    /// async runtime.
    pub fn derive(&self, passphrase: &SecretString) -> Result<Kek, CryptoError> {
        self.kdf.check()?;
        let salt = hex::decode(&self.salt).map_err(|_| CryptoError::Integrity)?;
        if salt.len() != SALT_LEN {
            return Err(CryptoError::Integrity);
        }
        let params = Params::new(self.kdf.m_kib, self.kdf.t, self.kdf.p, Some(KEY_LEN))
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        // Our own working memory, zeroized when dropped: the crate's own
        // (`hash_password_into`) is freed as it is, and its last blocks are
        // as good as the KEK.
        let mut memory = Zeroizing::new(vec![Block::default(); params.block_count()]);
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut kek = KeyBytes::zeroed();
        argon
            .hash_password_into_with_memory(
                passphrase.expose_secret().as_bytes(),
                &salt,
                kek.bytes_mut(),
                &mut memory[..],
            )
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(Kek(kek))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: FieldRef<'static> = FieldRef {
        table: "credentials",
        row_id: "00112233445566778899aabbccddeeff",
        field: "client_secret",
    };

    #[test]
    fn a_field_opens_only_where_it_was_sealed() {
        let dek = Dek::generate().unwrap();
        let blob = dek.seal("vault-a", AT, b"s3cret");
        assert_eq!(blob[0], BLOB_VERSION);
        assert_eq!(blob.len(), 1 + NONCE_LEN + 6 + TAG_LEN);
        assert_eq!(&dek.open("vault-a", AT, &blob).unwrap()[..], b"s3cret");

        let elsewhere = [
            ("vault-b", AT),
            (
                "vault-a",
                FieldRef {
                    table: "providers",
                    ..AT
                },
            ),
            (
                "vault-a",
                FieldRef {
                    row_id: "ffeeddccbbaa99887766554433221100",
                    ..AT
                },
            ),
            (
                "vault-a",
                FieldRef {
                    field: "config",
                    ..AT
                },
            ),
        ];
        for (vault, at) in elsewhere {
            assert!(
                matches!(dek.open(vault, at, &blob), Err(CryptoError::Integrity)),
                "{vault} {at:?}"
            );
        }
        let other = Dek::generate().unwrap();
        assert!(other.open("vault-a", AT, &blob).is_err());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let dek = Dek::generate().unwrap();
        let blob = dek.seal("v", AT, b"refresh-token");
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(dek.open("v", AT, &bad).is_err(), "bit {i}");
        }
        assert!(dek.open("v", AT, &blob[..blob.len() - 1]).is_err());
        assert!(dek.open("v", AT, &[]).is_err());
    }

    #[test]
    fn a_wrapped_dek_opens_with_its_kek_and_slot_only() {
        let dek = Dek::generate().unwrap();
        let blob_by_dek = dek.seal("v", AT, b"x");
        let kek = Kek::generate().unwrap();
        let wrapped = kek.wrap("slot-1", &dek);
        let back = kek.unwrap("slot-1", &wrapped).unwrap();
        assert_eq!(&back.open("v", AT, &blob_by_dek).unwrap()[..], b"x");
        assert!(kek.unwrap("slot-2", &wrapped).is_err());
        assert!(Kek::generate().unwrap().unwrap("slot-1", &wrapped).is_err());
    }

    #[test]
    fn a_kek_sealed_to_a_key_file_opens_with_that_file_slot_and_vault_only() {
        let file = FileKey::from_bytes(&[3u8; 32]).unwrap();
        let public = file.public_key();
        assert_eq!(public, file.public_key(), "derived, so the same every time");
        let dek = Dek::generate().unwrap();
        let kek = Kek::generate().unwrap();
        let wrapped = kek.wrap("slot-1", &dek);
        let sealed = kek.seal_to(&public, "vault-a", "slot-1").unwrap();
        let opened = file.open_kek("vault-a", "slot-1", &sealed).unwrap();
        assert!(opened.unwrap("slot-1", &wrapped).is_ok());

        let other = FileKey::from_bytes(&[4u8; 32]).unwrap();
        assert_ne!(other.public_key(), public);
        assert!(other.open_kek("vault-a", "slot-1", &sealed).is_err());
        assert!(file.open_kek("vault-a", "slot-2", &sealed).is_err());
        assert!(file.open_kek("vault-b", "slot-1", &sealed).is_err());
        for i in 0..sealed.ciphertext.len() * 8 {
            let mut bad = SealedKek {
                enc: sealed.enc.clone(),
                ciphertext: sealed.ciphertext.clone(),
            };
            bad.ciphertext[i / 8] ^= 1 << (i % 8);
            assert!(file.open_kek("vault-a", "slot-1", &bad).is_err(), "bit {i}");
        }
        let mut bad_enc = sealed.enc.clone();
        bad_enc[0] ^= 1;
        let bad = SealedKek {
            enc: bad_enc,
            ciphertext: sealed.ciphertext.clone(),
        };
        assert!(file.open_kek("vault-a", "slot-1", &bad).is_err());
        assert!(FileKey::from_bytes(&[1u8; 31]).is_none());
    }

    /// RFC 9180's DeriveKeyPair vector (tests/vectors/keyfile-derive-keypair.txt).
    #[test]
    fn a_key_files_public_key_matches_the_rfc_9180_vector() {
        let v = vector(include_str!(
            "../../tests/vectors/keyfile-derive-keypair.txt"
        ));
        let file = FileKey::from_bytes(&hex::decode(v["ikm"]).unwrap()).unwrap();
        assert_eq!(hex::encode(file.public_key()), v["public_key"]);
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let slot = PassphraseSlot {
            salt: "000102030405060708090a0b0c0d0e0f".into(),
            kdf: KdfParams::OWASP_MINIMUM,
        };
        let dek = Dek::generate().unwrap();
        let pass = SecretString::from("correct horse");
        let wrapped = slot.derive(&pass).unwrap().wrap("s", &dek);
        assert!(slot.derive(&pass).unwrap().unwrap("s", &wrapped).is_ok());
        let wrong = SecretString::from("correct horsf");
        assert!(slot.derive(&wrong).unwrap().unwrap("s", &wrapped).is_err());
    }

    /// RFC 9106 §5.3 test vector shape is covered by the argon2 crate; here we
    /// pin our own use of it so a change of algorithm, version or output
    /// length cannot slip in unnoticed (vector in tests/vectors/argon2id.txt).
    #[test]
    fn argon2id_matches_the_recorded_vector() {
        let vector = include_str!("../../tests/vectors/argon2id.txt");
        let mut fields = std::collections::HashMap::new();
        for line in vector
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (k, v) = line.split_once('=').unwrap();
            fields.insert(k.trim(), v.trim());
        }
        let slot = PassphraseSlot {
            salt: fields["salt"].into(),
            kdf: KdfParams {
                m_kib: fields["m_kib"].parse().unwrap(),
                t: fields["t"].parse().unwrap(),
                p: fields["p"].parse().unwrap(),
            },
        };
        let kek = slot
            .derive(&SecretString::from(fields["passphrase"]))
            .unwrap();
        assert_eq!(kek.with_bytes(|b| hex::encode(b)), fields["kek"]);
    }

    fn vector(text: &str) -> std::collections::HashMap<&str, &str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.trim(), v.trim())
            })
            .collect()
    }

    fn sample_row() -> AuditMacInput<'static> {
        AuditMacInput {
            seq: 7,
            at: 1_700_000_000,
            event: "login",
            credential: Some("github"),
            pid: Some(4242),
            app: Some("/usr/bin/curl (sha256 0011223344556677)"),
            app_key: Some("exe:/usr/bin/curl"),
            outcome: Some("ok"),
            detail: None,
            sealed_id: Some("00112233445566778899aabbccddeeff"),
            sealed_detail: Some(&[1, 2, 3]),
            chained_late: true,
        }
    }

    /// K_audit and the row MAC against values computed outside this code
    /// (tests/vectors/audit-mac.txt), so neither the label, the KDF nor
    /// the row encoding can change unnoticed.
    #[test]
    fn the_audit_key_and_row_mac_match_the_recorded_vector() {
        let v = vector(include_str!("../../tests/vectors/audit-mac.txt"));
        let dek = Dek(KeyBytes::from_slice(&hex::decode(v["dek"]).unwrap()).unwrap());
        let key = dek.audit_key();
        assert_eq!(hex::encode(key.0.bytes()), v["k_audit"]);
        assert_ne!(key.0.bytes(), dek.0.bytes(), "its own key, not the DEK");
        let prev: Mac = hex::decode(v["prev"]).unwrap().try_into().unwrap();
        let mac = key.mac(&prev, &sample_row());
        assert_eq!(hex::encode(mac), v["mac"]);
        assert!(key.verify(&prev, &sample_row(), &mac));
    }

    /// Every field, the previous MAC and the key count; a field's absence
    /// differs from its being empty, and no two splits of the same bytes
    /// into fields encode alike.
    #[test]
    fn every_part_of_a_row_is_covered_unambiguously() {
        let key = Dek::generate().unwrap().audit_key();
        let prev = [7u8; MAC_LEN];
        let base = sample_row();
        let mac = key.mac(&prev, &base);
        let changed: Vec<(&str, AuditMacInput<'_>)> = vec![
            ("seq", AuditMacInput { seq: 8, ..base }),
            ("at", AuditMacInput { at: 1, ..base }),
            (
                "event",
                AuditMacInput {
                    event: "logout",
                    ..base
                },
            ),
            (
                "credential",
                AuditMacInput {
                    credential: None,
                    ..base
                },
            ),
            (
                "credential empty",
                AuditMacInput {
                    credential: Some(""),
                    ..base
                },
            ),
            ("pid", AuditMacInput { pid: None, ..base }),
            (
                "pid value",
                AuditMacInput {
                    pid: Some(4243),
                    ..base
                },
            ),
            (
                "app",
                AuditMacInput {
                    app: Some("/usr/bin/wget"),
                    ..base
                },
            ),
            (
                "app key",
                AuditMacInput {
                    app_key: None,
                    ..base
                },
            ),
            (
                "outcome",
                AuditMacInput {
                    outcome: Some("denied"),
                    ..base
                },
            ),
            (
                "detail",
                AuditMacInput {
                    detail: Some(""),
                    ..base
                },
            ),
            (
                "sealed id",
                AuditMacInput {
                    sealed_id: None,
                    ..base
                },
            ),
            (
                "sealed detail",
                AuditMacInput {
                    sealed_detail: Some(&[1, 2, 4]),
                    ..base
                },
            ),
            (
                "chained late",
                AuditMacInput {
                    chained_late: false,
                    ..base
                },
            ),
            // The same bytes split differently between two fields.
            (
                "split",
                AuditMacInput {
                    event: "logingithub",
                    credential: Some(""),
                    ..base
                },
            ),
        ];
        for (what, row) in changed {
            assert_ne!(key.mac(&prev, &row), mac, "{what}");
            assert!(!key.verify(&prev, &row, &mac), "{what}");
        }
        assert_ne!(key.mac(&[8u8; MAC_LEN], &base), mac, "the previous MAC");
        let other = Dek::generate().unwrap().audit_key();
        assert!(!other.verify(&prev, &base, &mac), "another key");
        assert!(!key.verify(&prev, &base, &mac[..31]), "a shortened MAC");
        assert!(!key.verify(&prev, &base, &[]));
    }

    /// The `Locked:` kB of the mapping holding `addr` (/proc/self/smaps).
    fn locked_kb_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            if let Some((start, end)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
            if let Some(kb) = line.strip_prefix("Locked:").filter(|_| inside) {
                return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    fn vm_lck_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
        line["VmLck:".len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// Fails, saying why, on a machine that refuses to lock memory.
    fn assert_locked(region: &keymem::Region) {
        assert!(
            region.locked,
            "this machine refused mlock (RLIMIT_MEMLOCK too low? see `ulimit -l`): key memory cannot be locked here"
        );
    }

    #[test]
    fn key_slots_are_distinct_reused_after_drop_and_zeroized() {
        let mut pool = keymem::Pool::new();
        let a = pool.take();
        let b = pool.take();
        assert_ne!(a, b);
        // SAFETY: the test owns `a` and `b` (taken from its own pool).
        unsafe {
            (*a.0.as_ptr()).fill(0xa5);
            (*b.0.as_ptr()).fill(0x5a);
        }
        pool.give(a);
        let region = pool.regions[0];
        // SAFETY: the region is mapped for the life of the process and
        // nothing else writes to this test's pool.
        let page = unsafe { std::slice::from_raw_parts(region.base as *const u8, region.len) };
        let offset = a.0.as_ptr() as usize - region.base;
        assert_eq!(&page[offset..offset + KEY_LEN], &[0u8; KEY_LEN]);
        assert_eq!(
            page.iter().filter(|&&byte| byte != 0).count(),
            KEY_LEN,
            "b alone"
        );
        assert_eq!(pool.take(), a, "a given-back slot is handed out again");
        pool.give(b);
        assert!(page.iter().all(|&byte| byte == 0));
    }

    #[test]
    fn the_pool_grows_by_another_locked_region_rather_than_failing() {
        let mut pool = keymem::Pool::new();
        let first = pool.take();
        let per_region = pool.regions[0].len / KEY_LEN;
        let mut held: Vec<_> = (1..=per_region).map(|_| pool.take()).collect();
        held.push(first);
        assert_eq!(pool.regions.len(), 2);
        let distinct: std::collections::HashSet<_> =
            held.iter().map(|s| s.0.as_ptr() as usize).collect();
        assert_eq!(distinct.len(), per_region + 1);
        for region in &pool.regions {
            assert_locked(region);
        }
        for slot in held {
            pool.give(slot);
        }
    }

    #[test]
    fn key_pages_stay_locked_after_keys_are_dropped() {
        let mut pool = keymem::Pool::new();
        let kek = pool.take();
        let dek = pool.take();
        let region = pool.regions[0];
        assert_locked(&region);
        let page_kb = region.len as u64 / 1024;
        assert!(locked_kb_at(region.base) >= page_kb);
        pool.give(kek);
        assert!(
            locked_kb_at(dek.0.as_ptr() as usize) >= page_kb,
            "dropping the KEK unlocked the DEK's page"
        );
        pool.give(dek);
        assert!(locked_kb_at(region.base) >= page_kb, "never munlocked");
        assert!(vm_lck_kb() >= page_kb);
    }

    #[test]
    fn dropping_a_kek_leaves_the_deks_page_locked() {
        let dek = Dek::generate().unwrap();
        let kek = Kek::generate().unwrap();
        let wrapped = kek.wrap("s", &dek);
        drop(kek);
        let at = dek.0.bytes().as_ptr() as usize;
        assert!(locked_kb_at(at) >= 4, "the DEK's page is not locked");
        let blob = dek.seal("v", AT, b"x");
        assert_eq!(&dek.open("v", AT, &blob).unwrap()[..], b"x");
        assert!(!wrapped.is_empty());
    }

    #[test]
    fn the_test_kdf_switch_exists_only_in_debug_builds() {
        let one = OsStr::new("1");
        let cases: [(Option<&OsStr>, bool, Result<bool, ()>); 7] = [
            (None, false, Ok(false)),
            (None, true, Ok(false)),
            (Some(one), false, Ok(true)),
            (Some(OsStr::new("0")), false, Ok(false)),
            (Some(one), true, Err(())),
            (Some(OsStr::new("0")), true, Err(())),
            (Some(OsStr::new("")), true, Err(())),
        ];
        for (value, release, want) in cases {
            let got = test_kdf_switch(value, release);
            assert_eq!(
                got.clone().map_err(|_| ()),
                want,
                "{value:?} release={release}"
            );
            if let Err(message) = got {
                assert!(message.contains(INSECURE_TEST_KDF_ENV), "{message}");
                assert!(message.contains("unset it: it weakens the vault's key derivation and exists only for the test suite"), "{message}");
            }
        }
    }

    #[test]
    fn kdf_parameters_from_disk_are_bounded() {
        assert!(KdfParams::RFC9106_SECOND.check().is_ok());
        assert!(KdfParams::OWASP_MINIMUM.check().is_ok());
        let cases = [
            KdfParams {
                m_kib: 8,
                t: 3,
                p: 4,
            },
            KdfParams {
                m_kib: 65536,
                t: 1,
                p: 4,
            },
            KdfParams {
                m_kib: 65536,
                t: 3,
                p: 0,
            },
            KdfParams {
                m_kib: u32::MAX,
                t: 3,
                p: 4,
            },
            KdfParams {
                m_kib: 65536,
                t: 1000,
                p: 4,
            },
            KdfParams {
                m_kib: 65536,
                t: 3,
                p: 255,
            },
        ];
        for params in cases {
            assert!(
                matches!(params.check(), Err(CryptoError::ExcessiveWork(_))),
                "{params:?}"
            );
        }
    }
}
