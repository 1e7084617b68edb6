//! A chat client's input as lines: bytes split at `\n` (a final `\r` dropped),
//! lines over [`MAX_LINE`] refused as they arrive (their bytes dropped up to the next
//! newline, so a client cannot grow the buffer), and a line's text cleaned of
//! control characters. Public so the fuzz targets can drive it.

use std::collections::VecDeque;

use super::MAX_LINE;

/// One line of client input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Line(Vec<u8>),
    /// A line over [`MAX_LINE`] bytes (its bytes were dropped).
    TooLong,
}

/// Received bytes split into lines.
#[derive(Debug, Default)]
pub struct Lines {
    /// Bytes after the last newline.
    partial: Vec<u8>,
    /// Inside an over-long line: bytes are dropped up to the next newline.
    discarding: bool,
    /// Complete lines not yet taken.
    ready: VecDeque<Input>,
}

impl Lines {
    /// Splits received bytes into lines, refusing over-long lines as they come.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            if self.discarding {
                match nl {
                    Some(p) => {
                        self.discarding = false;
                        data = &data[p + 1..];
                        continue;
                    }
                    None => return,
                }
            }
            match nl {
                Some(p) => {
                    self.partial.extend_from_slice(&data[..p]);
                    let line = std::mem::take(&mut self.partial);
                    self.ready.push_back(line_or_too_long(line));
                    data = &data[p + 1..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    // Longer than any acceptable line (+ a CR): refuse it now.
                    if self.partial.len() > MAX_LINE + 1 {
                        self.partial.clear();
                        self.ready.push_back(Input::TooLong);
                        self.discarding = true;
                    }
                    return;
                }
            }
        }
    }

    /// The next complete line.
    pub fn next_line(&mut self) -> Option<Input> {
        self.ready.pop_front()
    }

    /// True when no complete line is waiting.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// At end of input: the unterminated last line, if there is one.
    pub fn take_last(&mut self) -> Option<Input> {
        if self.partial.is_empty() || self.discarding {
            return None;
        }
        Some(line_or_too_long(std::mem::take(&mut self.partial)))
    }

    /// True when bytes of an unfinished line are held (not those of an over-long
    /// line being dropped).
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() && !self.discarding
    }

    /// Takes the unfinished line as a whole one: its client paused after it (the
    /// reference takes each recv() as a message; see the worker's
    /// `PARTIAL_LINE_PAUSE`).
    pub fn close_partial(&mut self) {
        if let Some(line) = self.take_last() {
            self.ready.push_back(line);
        }
    }

    /// Bytes held for an unfinished line (at most [`MAX_LINE`] + 1).
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// A complete line, or TooLong when it exceeds [`MAX_LINE`] (a final CR not counted).
fn line_or_too_long(mut line: Vec<u8>) -> Input {
    if line.ends_with(b"\r") {
        line.pop();
    }
    if line.len() > MAX_LINE {
        Input::TooLong
    } else {
        Input::Line(line)
    }
}

/// A line's text without control characters (tabs kept); None when it is not UTF-8.
pub fn clean(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    Some(
        text.chars()
            .filter(|&c| c == '\t' || !c.is_control())
            .collect(),
    )
}
