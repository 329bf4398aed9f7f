//! What `latchkey login` draws for a person at a terminal, on stderr only:
//! a QR code of the page to open on a phone, and a spinner with the time
//! left while the daemon waits for the login. Neither is drawn when stderr
//! is not a terminal, so logs and pipes never see escape codes.

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// 100 ms: smooth enough to look alive, rare enough to cost nothing.
const TICK: Duration = Duration::from_millis(100);

/// Braille spinner frames, as most terminal tools draw them.
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Whether stderr is a terminal a person watches.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// `text` as a QR code drawn with Unicode half blocks, two modules per
/// character cell, with its quiet zone. Light modules are the blocks and dark
/// ones the background, which scans right on the usual dark terminal. `None`
/// when the text is too long for any QR code.
pub fn qr(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let mut image = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .build();
    image.push('\n');
    Some(image)
}

/// One frame of the progress line: `⠋ waiting for …: 4m 32s left`.
pub fn progress_line(frame: usize, what: &str, left: Duration) -> String {
    let spinner = FRAMES[frame % FRAMES.len()];
    // Round up so the count reaches 0s only at the deadline itself.
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    format!("{spinner} {what}: {} left", crate::output::span(secs))
}

/// A spinner on stderr, redrawn by its own thread until dropped; dropping it
/// erases the line, so whatever is printed next starts on a clean line.
pub struct Spinner {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    /// Starts drawing `what` with the time left until `deadline`.
    pub fn start(what: String, deadline: Instant) -> Spinner {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut err = std::io::stderr();
            let mut frame = 0;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                // `\r` then erase the line: the text may shrink as time passes.
                let _ = write!(err, "\r\x1b[2K{}", progress_line(frame, &what, left));
                let _ = err.flush();
                frame += 1;
                match stopped.recv_timeout(TICK) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // Asked to stop, or the owner is gone.
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        });
        Spinner {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A spinner that panicked has nothing left to erase.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_becomes_a_square_of_half_blocks() {
        let url = "https://login.example.com/device?user_code=WDJB-MJHT";
        let image = qr(url).expect("a short URL fits in a QR code");
        let lines: Vec<&str> = image.lines().collect();
        assert!(lines.len() > 10, "{image}");
        let width = lines[0].chars().count();
        // Two modules per line: the height in lines is half the width, rounded up.
        assert_eq!(lines.len(), width.div_ceil(2), "{image}");
        assert!(lines.iter().all(|l| l.chars().count() == width), "{image}");
        assert!(
            image
                .chars()
                .all(|c| matches!(c, ' ' | '\n' | '▀' | '▄' | '█')),
            "{image}"
        );
        // The quiet zone is light, so drawn as full blocks.
        assert!(lines[0].chars().all(|c| c == '█'), "{image}");
        assert!(image.ends_with('\n'));
    }

    #[test]
    fn a_text_too_long_for_any_qr_code_is_none() {
        assert!(qr(&"x".repeat(8000)).is_none());
    }

    #[test]
    fn progress_lines_count_down() {
        let what = "waiting for the login in your browser";
        assert_eq!(
            progress_line(0, what, Duration::from_secs(272)),
            "⠋ waiting for the login in your browser: 4m 32s left"
        );
        assert_eq!(
            progress_line(11, what, Duration::from_millis(59_200)),
            "⠙ waiting for the login in your browser: 1m left"
        );
        assert_eq!(
            progress_line(2, what, Duration::ZERO),
            "⠹ waiting for the login in your browser: 0s left"
        );
    }
}
