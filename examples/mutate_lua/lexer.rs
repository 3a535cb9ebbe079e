//! A Lua 5.1 tokenizer, just precise enough for the mutant generator: it
//! tells comments and string literals apart from code (so neither is ever
//! mutated) and gives every token its byte span and line.

use std::fmt;

/// What a token is. Only the kinds the generator looks at are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An identifier or a keyword (`redis`, `local`, `and`).
    Name,
    /// A numeric literal as written (`42`, `0x1F`, `1e3`, `.5`).
    Number,
    /// A string literal with its delimiters (`'a'`, `"b"`, `[[c]]`).
    String,
    /// A `--` line comment or a `--[[ ]]` block comment, delimiters included.
    Comment,
    /// An operator or punctuation (`==`, `..`, `(`, `,`).
    Symbol,
}

/// One token of a Lua source: its kind, text and place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// What the token is.
    pub kind: TokenKind,
    /// The token's exact source text.
    pub text: &'a str,
    /// Byte offset of the token's first byte in the source.
    pub start: usize,
    /// 1-based line of the token's first byte.
    pub line: usize,
}

impl Token<'_> {
    /// Byte offset just past the token.
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// Whether the token is the name or symbol `text`.
    pub fn is(&self, text: &str) -> bool {
        matches!(self.kind, TokenKind::Name | TokenKind::Symbol) && self.text == text
    }
}

/// A source the tokenizer cannot read: an unterminated string or comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    /// 1-based line where the unterminated token starts.
    pub line: usize,
    /// What is wrong.
    pub message: &'static str,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LexError {}

/// Operators of two or three characters, longest first.
const MULTI_CHAR_SYMBOLS: [&str; 10] =
    ["...", "==", "~=", "<=", ">=", "..", "::", "<<", ">>", "//"];

/// Splits `src` into tokens; whitespace is dropped, comments are kept. A
/// first line starting with `#!` (the `#!lua name=<library>` header of a
/// Redis Functions library) counts as a comment.
///
/// # Errors
/// [`LexError`] for an unterminated string or long comment.
pub fn tokenize(src: &str) -> Result<Vec<Token<'_>>, LexError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    let mut line = 1;
    if src.starts_with("#!") {
        pos = src.find('\n').unwrap_or(src.len());
        tokens.push(Token {
            kind: TokenKind::Comment,
            text: &src[..pos],
            start: 0,
            line,
        });
    }
    while pos < bytes.len() {
        let c = bytes[pos];
        if c == b'\n' {
            line += 1;
            pos += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            pos += 1;
            continue;
        }
        let start = pos;
        let kind = if src[pos..].starts_with("--") {
            pos = match long_bracket_level(bytes, pos + 2) {
                Some(level) => long_bracket_end(src, pos + 2, level).ok_or(LexError {
                    line,
                    message: "unterminated block comment",
                })?,
                None => src[pos..].find('\n').map_or(bytes.len(), |n| pos + n),
            };
            TokenKind::Comment
        } else if c == b'\'' || c == b'"' {
            pos = short_string_end(bytes, pos).ok_or(LexError {
                line,
                message: "unterminated string",
            })?;
            TokenKind::String
        } else if let Some(level) = long_bracket_level(bytes, pos) {
            pos = long_bracket_end(src, pos, level).ok_or(LexError {
                line,
                message: "unterminated long string",
            })?;
            TokenKind::String
        } else if c.is_ascii_digit()
            || (c == b'.' && bytes.get(pos + 1).is_some_and(u8::is_ascii_digit))
        {
            pos = number_end(bytes, pos);
            TokenKind::Number
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'_') {
                pos += 1;
            }
            TokenKind::Name
        } else {
            let width = MULTI_CHAR_SYMBOLS
                .iter()
                .find(|symbol| src[pos..].starts_with(*symbol))
                .map_or_else(
                    || src[pos..].chars().next().map_or(1, char::len_utf8),
                    |s| s.len(),
                );
            pos += width;
            TokenKind::Symbol
        };
        let text = &src[start..pos];
        tokens.push(Token {
            kind,
            text,
            start,
            line,
        });
        line += text.matches('\n').count();
    }
    Ok(tokens)
}

/// If a long bracket `[[`, `[=[`, `[==[`... opens at `pos`, its level (the
/// number of `=`).
fn long_bracket_level(bytes: &[u8], pos: usize) -> Option<usize> {
    if bytes.get(pos) != Some(&b'[') {
        return None;
    }
    let level = bytes[pos + 1..].iter().take_while(|&&b| b == b'=').count();
    (bytes.get(pos + 1 + level) == Some(&b'[')).then_some(level)
}

/// Byte offset just past the long bracket of `level` that opens at `pos`.
fn long_bracket_end(src: &str, pos: usize, level: usize) -> Option<usize> {
    let close = format!("]{}]", "=".repeat(level));
    let body = pos + level + 2;
    src[body..].find(&close).map(|n| body + n + close.len())
}

/// Byte offset just past the quoted string that opens at `pos`.
fn short_string_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let quote = bytes[pos];
    let mut i = pos + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\n' => return None,
            b if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Byte offset just past the number that starts at `pos`.
fn number_end(bytes: &[u8], pos: usize) -> usize {
    let mut i = pos;
    if bytes[i] == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
        i += 2;
        while i < bytes.len() && bytes[i].is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
        i += 1;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_and_texts(src: &str) -> Vec<(TokenKind, &str)> {
        tokenize(src)
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.text))
            .collect()
    }

    #[test]
    fn comments_strings_and_code_are_told_apart() {
        use TokenKind::*;
        let src = "local a = 'x -- y' -- c == 1\nb = [==[ ]] ]==] --[[ a\n== ]] c";
        assert_eq!(
            kinds_and_texts(src),
            vec![
                (Name, "local"),
                (Name, "a"),
                (Symbol, "="),
                (String, "'x -- y'"),
                (Comment, "-- c == 1"),
                (Name, "b"),
                (Symbol, "="),
                (String, "[==[ ]] ]==]"),
                (Comment, "--[[ a\n== ]]"),
                (Name, "c"),
            ]
        );
    }

    #[test]
    fn lines_count_newlines_inside_tokens() {
        let tokens = tokenize("a\n--[[\n\n]] b\n'c'").unwrap();
        let lines: Vec<_> = tokens.iter().map(|t| (t.text, t.line)).collect();
        assert_eq!(
            lines,
            vec![("a", 1), ("--[[\n\n]]", 2), ("b", 4), ("'c'", 5)]
        );
    }

    #[test]
    fn escaped_quotes_stay_inside_the_string() {
        assert_eq!(
            kinds_and_texts(r#"x = "a\"b" .. 'c\'d'"#)[2..],
            [
                (TokenKind::String, r#""a\"b""#),
                (TokenKind::Symbol, ".."),
                (TokenKind::String, r"'c\'d'"),
            ]
        );
    }

    #[test]
    fn numbers_and_names_with_digits() {
        use TokenKind::*;
        assert_eq!(
            kinds_and_texts("h16 = 0x1F + 1e3 - .5 + 10"),
            vec![
                (Name, "h16"),
                (Symbol, "="),
                (Number, "0x1F"),
                (Symbol, "+"),
                (Number, "1e3"),
                (Symbol, "-"),
                (Number, ".5"),
                (Symbol, "+"),
                (Number, "10"),
            ]
        );
    }

    #[test]
    fn a_functions_library_header_is_a_comment() {
        assert_eq!(
            kinds_and_texts("#!lua name=rtq_2\nx = 1"),
            vec![
                (TokenKind::Comment, "#!lua name=rtq_2"),
                (TokenKind::Name, "x"),
                (TokenKind::Symbol, "="),
                (TokenKind::Number, "1"),
            ]
        );
    }

    #[test]
    fn unterminated_tokens_are_errors() {
        assert_eq!(
            tokenize("a = 'b\n").unwrap_err().message,
            "unterminated string"
        );
        assert_eq!(
            tokenize("x\n--[[ open").unwrap_err(),
            LexError {
                line: 2,
                message: "unterminated block comment"
            }
        );
    }
}
