//! TEMPORARY STUB (replaced by the real keyring module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice { Auto, SecretService, KeyUtils }
impl BackendChoice { pub fn from_env() -> Self { BackendChoice::Auto } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend { SecretService, KeyUtils }
#[derive(Debug, thiserror::Error)]
pub enum KeyringError { #[error("no usable OS keyring")] Unavailable { tried: String } }
pub fn open(_c: BackendChoice) -> Result<Backend, KeyringError> { Err(KeyringError::Unavailable { tried: String::new() }) }
pub fn store(_b: Backend, _a: &str, _s: &[u8]) -> Result<(), KeyringError> { Err(KeyringError::Unavailable { tried: String::new() }) }
pub fn load(_b: Backend, _a: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyringError> { Err(KeyringError::Unavailable { tried: String::new() }) }
pub fn delete(_b: Backend, _a: &str) -> Result<(), KeyringError> { Ok(()) }
pub fn prepare_process() {}
