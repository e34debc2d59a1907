//! A one-line text field for the dialogs (the optimizer spec, the smoothing weight).

use crossterm::event::{KeyCode, KeyEvent};

/// The text being typed in a dialog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineEdit {
    text: String,
}

impl LineEdit {
    /// A field holding `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// The text typed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Applies an editing key (typing, backspace); false when `k` edits nothing.
    pub fn key(&mut self, k: KeyEvent) -> bool {
        match k.code {
            KeyCode::Char(c) => self.text.push(c),
            KeyCode::Backspace => {
                self.text.pop();
            }
            _ => return false,
        }
        true
    }

    /// The text with the cursor drawn where typing goes.
    pub fn with_cursor(&self) -> String {
        format!("{}▏", self.text)
    }
}

impl std::fmt::Display for LineEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
