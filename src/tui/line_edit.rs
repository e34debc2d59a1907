//! A one-line text field for the dialogs (the optimizer spec, the smoothing weight).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// The text being typed in a dialog, and where typing goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineEdit {
    text: String,
    /// The cursor, in characters from the start: typing inserts before the character there.
    cursor: usize,
}

impl LineEdit {
    /// A field holding `text`, the cursor at its end.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let cursor = text.chars().count();
        Self { text, cursor }
    }

    /// The text typed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor, in characters from the start of the text.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Applies an editing key (typing, backspace, delete, ←/→/home/end, ctrl-w deletes the word
    /// before the cursor); false when `k` edits nothing.
    pub fn key(&mut self, k: KeyEvent) -> bool {
        let len = self.text.chars().count();
        match k.code {
            KeyCode::Char('w') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                let before: Vec<char> = self.text.chars().take(self.cursor).collect();
                let spaces = before
                    .iter()
                    .rev()
                    .take_while(|c| c.is_whitespace())
                    .count();
                let word = before[..before.len() - spaces]
                    .iter()
                    .rev()
                    .take_while(|c| !c.is_whitespace())
                    .count();
                self.remove(self.cursor - spaces - word..self.cursor);
            }
            KeyCode::Char(_) if k.modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Char(c) => {
                let at = self.byte(self.cursor);
                self.text.insert(at, c);
                self.cursor += 1;
            }
            KeyCode::Backspace if self.cursor > 0 => self.remove(self.cursor - 1..self.cursor),
            KeyCode::Delete if self.cursor < len => self.remove(self.cursor..self.cursor + 1),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(len),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = len,
            KeyCode::Backspace | KeyCode::Delete => {}
            _ => return false,
        }
        true
    }

    /// The text with the cursor drawn where typing goes.
    pub fn with_cursor(&self) -> String {
        let at = self.byte(self.cursor);
        format!("{}▏{}", &self.text[..at], &self.text[at..])
    }

    /// [`LineEdit::with_cursor`] in at most `width` columns: a window around the cursor, with
    /// `…` where the text goes on past an edge (a long spec hid the cursor and the text typed
    /// last behind the dialog's edge).
    pub fn window(&self, width: usize) -> String {
        let chars: Vec<char> = self.with_cursor().chars().collect();
        let len = chars.len();
        if len <= width || width < 3 {
            return chars.into_iter().collect();
        }
        // The cursor second from the window's right end, or the text's end in view.
        let start = (self.cursor + 2).saturating_sub(width).min(len - width);
        let mut shown = chars[start..start + width].to_vec();
        if start > 0 {
            shown[0] = '…';
        }
        if start + width < len {
            shown[width - 1] = '…';
        }
        shown.into_iter().collect()
    }

    /// The byte offset of the `chars`-th character.
    fn byte(&self, chars: usize) -> usize {
        self.text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(i, _)| i)
    }

    /// Deletes the characters `chars` and puts the cursor where they were.
    fn remove(&mut self, chars: std::ops::Range<usize>) {
        let (start, end) = (self.byte(chars.start), self.byte(chars.end));
        self.text.replace_range(start..end, "");
        self.cursor = chars.start;
    }
}

impl std::fmt::Display for LineEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(e: &mut LineEdit, code: KeyCode) -> bool {
        e.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn ctrl(e: &mut LineEdit, c: char) -> bool {
        e.key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    #[test]
    fn keys_move_the_cursor_and_edit_where_it_is() {
        let mut e = LineEdit::new("adam(lr=0.1)");
        assert_eq!(e.with_cursor(), "adam(lr=0.1)▏");
        // ← twice, then type: the digit goes before `1)`.
        press(&mut e, KeyCode::Left);
        press(&mut e, KeyCode::Left);
        press(&mut e, KeyCode::Char('0'));
        assert_eq!(e.with_cursor(), "adam(lr=0.0▏1)");
        // home, delete, type: the first letter replaced.
        press(&mut e, KeyCode::Home);
        assert_eq!(e.cursor(), 0);
        press(&mut e, KeyCode::Delete);
        press(&mut e, KeyCode::Char('A'));
        assert_eq!(e.with_cursor(), "A▏dam(lr=0.01)");
        // Backspace at the start does nothing; → past the end stops there.
        press(&mut e, KeyCode::Home);
        press(&mut e, KeyCode::Backspace);
        assert_eq!(e.text(), "Adam(lr=0.01)");
        press(&mut e, KeyCode::End);
        press(&mut e, KeyCode::Right);
        assert_eq!(e.cursor(), 13);
        press(&mut e, KeyCode::Backspace);
        assert_eq!(e.with_cursor(), "Adam(lr=0.01▏");
    }

    #[test]
    fn a_long_text_shows_the_window_around_the_cursor() {
        let mut e = LineEdit::new("sgd(lr=0.001, momentum=0.9) + agc(clipping=0.05)");
        assert_eq!(e.window(20), "…agc(clipping=0.05)▏");
        press(&mut e, KeyCode::Home);
        assert_eq!(e.window(20), "▏sgd(lr=0.001, mome…");
        for _ in 0..25 {
            press(&mut e, KeyCode::Right);
        }
        let w = e.window(20);
        assert!(
            w.starts_with('…') && w.ends_with('…') && w.contains('▏'),
            "{w}"
        );
        assert_eq!(LineEdit::new("adam").window(20), "adam▏");
    }

    #[test]
    fn ctrl_w_deletes_the_word_before_the_cursor() {
        let mut e = LineEdit::new("sgd lr=0.1  momentum=0.9");
        // From the end: the last word; then again, the spaces and the word before them.
        assert!(ctrl(&mut e, 'w'));
        assert_eq!(e.with_cursor(), "sgd lr=0.1  ▏");
        ctrl(&mut e, 'w');
        assert_eq!(e.with_cursor(), "sgd ▏");
        // In the middle of a word: only the part before the cursor.
        let mut e = LineEdit::new("adam lr=0.1");
        for _ in 0..3 {
            press(&mut e, KeyCode::Left);
        }
        ctrl(&mut e, 'w');
        assert_eq!(e.with_cursor(), "adam ▏0.1");
        // At the start there is nothing to delete; other ctrl keys type nothing.
        press(&mut e, KeyCode::Home);
        ctrl(&mut e, 'w');
        assert!(!ctrl(&mut e, 'x'));
        assert_eq!(e.with_cursor(), "▏adam 0.1");
    }
}
