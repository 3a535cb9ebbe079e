//! The mutant generator: every single-token change the runner tries on a Lua
//! file. Mutants are made from tokens, so comments and string literals are
//! never changed, and each mutant changes one place only.
//!
//! Kinds of mutant:
//! - flip a comparison or logic operator: `==` <-> `~=`, `<` <-> `<=`,
//!   `>` <-> `>=`, `and` <-> `or`;
//! - drop one `redis.call`/`redis.pcall` of a write command: a call used as
//!   a statement becomes `do end`, a call whose result is used becomes
//!   `(nil)`, so the mutant still parses;
//! - shift a decimal integer literal by +1 and by -1.
//!
//! A line that ends with the comment `-- mutation: skip` gets no mutant.

use std::collections::HashSet;
use std::fmt;

use super::lexer::{tokenize, LexError, Token, TokenKind};

/// The comment that opts a line out of mutation.
pub const SKIP_MARKER: &str = "mutation: skip";

/// Commands that change data: dropping one of these calls is a mutant.
/// Reads are never dropped (a missing read is seldom a plausible bug).
pub const WRITE_COMMANDS: &[&str] = &[
    "APPEND",
    "COPY",
    "DECR",
    "DECRBY",
    "DEL",
    "EXPIRE",
    "EXPIREAT",
    "GETDEL",
    "GETSET",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HMSET",
    "HSET",
    "HSETNX",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LINSERT",
    "LMOVE",
    "LPOP",
    "LPUSH",
    "LREM",
    "LSET",
    "LTRIM",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PSETEX",
    "PUBLISH",
    "RENAME",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "SADD",
    "SET",
    "SETEX",
    "SETNX",
    "SMOVE",
    "SPOP",
    "SREM",
    "UNLINK",
    "XACK",
    "XADD",
    "XDEL",
    "XTRIM",
    "ZADD",
    "ZINCRBY",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
];

/// Operator pairs: each side is flipped into the other.
const OPERATOR_FLIPS: [(&str, &str); 4] = [("==", "~="), ("<", "<="), (">", ">="), ("and", "or")];

/// What a mutant changes; shown in listings as a short tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MutationKind {
    /// A comparison or logic operator replaced by its counterpart.
    FlipOperator,
    /// A write command's `redis.call` replaced by `do end` or `(nil)`.
    DropWriteCall,
    /// An integer literal shifted by one.
    ShiftNumber,
}

impl MutationKind {
    /// Short tag for listings.
    pub fn tag(self) -> &'static str {
        match self {
            Self::FlipOperator => "op",
            Self::DropWriteCall => "drop",
            Self::ShiftNumber => "num",
        }
    }
}

/// One change to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutant {
    /// Position in the full, unfiltered list, so `--only ID` and listings
    /// agree whatever the sampling or file filter.
    pub id: usize,
    /// File name relative to the Lua directory (`submit.lua`).
    pub file: String,
    /// 1-based line where the change starts.
    pub line: usize,
    /// What kind of change this is.
    pub kind: MutationKind,
    /// Byte range of the replaced source text.
    pub span: std::ops::Range<usize>,
    /// The text put in place of `span`.
    pub replacement: String,
    /// The source lines the change touches, whitespace collapsed.
    pub original_context: String,
    /// The same lines after the change, whitespace collapsed.
    pub mutated_context: String,
}

impl Mutant {
    /// `src` with this mutant's change applied.
    pub fn apply(&self, src: &str) -> String {
        format!(
            "{}{}{}",
            &src[..self.span.start],
            self.replacement,
            &src[self.span.end..]
        )
    }
}

impl fmt::Display for Mutant {
    /// `file:line: <original> -> <mutated>`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} -> {}",
            self.file, self.line, self.original_context, self.mutated_context
        )
    }
}

/// Every mutant of one file, in source order, numbered from `first_id`.
///
/// # Errors
/// [`LexError`] if the file cannot be tokenized.
pub fn mutants_of(file: &str, src: &str, first_id: usize) -> Result<Vec<Mutant>, LexError> {
    let tokens = tokenize(src)?;
    let skipped_lines = skipped_lines(&tokens);
    let code: Vec<Token<'_>> = tokens
        .into_iter()
        .filter(|t| t.kind != TokenKind::Comment)
        .collect();

    let mut changes = Vec::new();
    for (i, token) in code.iter().enumerate() {
        if let Some(flipped) = flipped_operator(token) {
            changes.push((
                MutationKind::FlipOperator,
                token.start..token.end(),
                flipped.to_string(),
            ));
        }
        if let Some((end, replacement)) = dropped_write_call(&code, i) {
            changes.push((
                MutationKind::DropWriteCall,
                token.start..end,
                replacement.to_string(),
            ));
        }
        if token.kind == TokenKind::Number && token.text.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(value) = token.text.parse::<i128>() {
                for shifted in [value + 1, value - 1] {
                    // A negative literal goes in parentheses: `x -0` must not
                    // become the comment `x --1`.
                    let text = if shifted < 0 {
                        format!("({shifted})")
                    } else {
                        shifted.to_string()
                    };
                    changes.push((MutationKind::ShiftNumber, token.start..token.end(), text));
                }
            }
        }
    }

    let mut mutants = Vec::new();
    for (kind, span, replacement) in changes {
        let line = line_of(src, span.start);
        let last_line = line + src[span.clone()].matches('\n').count();
        if (line..=last_line).any(|l| skipped_lines.contains(&l)) {
            continue;
        }
        let (original_context, mutated_context) = contexts(src, &span, &replacement);
        mutants.push(Mutant {
            id: first_id + mutants.len(),
            file: file.to_string(),
            line,
            kind,
            span,
            replacement,
            original_context,
            mutated_context,
        });
    }
    Ok(mutants)
}

/// Lines that carry a `-- mutation: skip` comment.
fn skipped_lines(tokens: &[Token<'_>]) -> HashSet<usize> {
    tokens
        .iter()
        .filter(|t| {
            t.kind == TokenKind::Comment
                && t.text.strip_prefix("--").map(str::trim) == Some(SKIP_MARKER)
        })
        .map(|t| t.line)
        .collect()
}

/// The counterpart of an operator token, if it is one we flip.
fn flipped_operator(token: &Token<'_>) -> Option<&'static str> {
    if !matches!(token.kind, TokenKind::Symbol | TokenKind::Name) {
        return None;
    }
    OPERATOR_FLIPS.iter().find_map(|&(a, b)| {
        if token.text == a {
            Some(b)
        } else if token.text == b {
            Some(a)
        } else {
            None
        }
    })
}

/// If `code[i]` starts `redis.call('<WRITE>', ...)`, the byte offset just
/// past its closing parenthesis and what replaces the call.
fn dropped_write_call(code: &[Token<'_>], i: usize) -> Option<(usize, &'static str)> {
    let head = code.get(i..i + 5)?;
    let is_call = head[0].is("redis")
        && head[1].is(".")
        && (head[2].is("call") || head[2].is("pcall"))
        && head[3].is("(")
        && head[4].kind == TokenKind::String;
    let command = head[4].text.get(1..head[4].text.len().checked_sub(1)?)?;
    if !is_call || !WRITE_COMMANDS.contains(&command.to_ascii_uppercase().as_str()) {
        return None;
    }
    let mut depth = 0usize;
    let close = (i + 3..code.len()).find(|&j| {
        if code[j].is("(") {
            depth += 1;
        } else if code[j].is(")") {
            depth -= 1;
        }
        depth == 0
    })?;
    let used_as_statement = starts_statement(i.checked_sub(1).map(|p| &code[p]))
        && !code.get(close + 1).is_some_and(continues_expression);
    let replacement = if used_as_statement { "do end" } else { "(nil)" };
    Some((code[close].end(), replacement))
}

/// Whether a token that follows `previous` begins a new statement (rather
/// than continuing an expression): it does after the end of a block header
/// or of a complete expression.
fn starts_statement(previous: Option<&Token<'_>>) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    match previous.kind {
        TokenKind::String | TokenKind::Number => true,
        TokenKind::Symbol => matches!(previous.text, ")" | "]" | "}" | ";" | "..."),
        TokenKind::Name => !matches!(
            previous.text,
            "and"
                | "elseif"
                | "for"
                | "function"
                | "if"
                | "in"
                | "local"
                | "not"
                | "or"
                | "return"
                | "until"
                | "while"
        ),
        TokenKind::Comment => unreachable!("comments are filtered out before"),
    }
}

/// Whether a token right after a call makes the call part of a larger
/// expression (`redis.call(...)[1]`, `redis.call(...):x()`).
fn continues_expression(next: &Token<'_>) -> bool {
    next.kind == TokenKind::String || matches!(next.text, "[" | "." | ":" | "(" | "{")
}

/// 1-based line of byte offset `pos`.
fn line_of(src: &str, pos: usize) -> usize {
    src[..pos].matches('\n').count() + 1
}

/// The full lines around `span` before and after the change, each with its
/// whitespace collapsed to single spaces, for one-line listings.
fn contexts(src: &str, span: &std::ops::Range<usize>, replacement: &str) -> (String, String) {
    let first = src[..span.start].rfind('\n').map_or(0, |n| n + 1);
    let last = src[span.end..]
        .find('\n')
        .map_or(src.len(), |n| span.end + n);
    let before = &src[first..last];
    let after = format!(
        "{}{}{}",
        &src[first..span.start],
        replacement,
        &src[span.end..last]
    );
    (collapse_whitespace(before), collapse_whitespace(&after))
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutants(src: &str) -> Vec<Mutant> {
        mutants_of("t.lua", src, 0).unwrap()
    }

    fn applied(src: &str) -> Vec<String> {
        mutants(src).iter().map(|m| m.apply(src)).collect()
    }

    #[test]
    fn every_operator_flip_is_produced_both_ways() {
        let cases = [
            ("x = a == b", "x = a ~= b"),
            ("x = a ~= b", "x = a == b"),
            ("x = a < b", "x = a <= b"),
            ("x = a <= b", "x = a < b"),
            ("x = a > b", "x = a >= b"),
            ("x = a >= b", "x = a > b"),
            ("x = a and b", "x = a or b"),
            ("x = a or b", "x = a and b"),
        ];
        for (src, want) in cases {
            assert_eq!(applied(src), vec![want.to_string()], "mutants of {src:?}");
        }
    }

    #[test]
    fn operators_inside_names_are_not_operators() {
        assert!(applied("x = band or_else").is_empty());
        assert!(applied("x = a .. b").is_empty());
    }

    #[test]
    fn comments_and_strings_are_never_mutated() {
        let src = concat!(
            "-- a == b and 1 < 2\n",
            "--[[ c ~= d or 3 >= 4\n",
            "redis.call('DEL', k) ]]\n",
            "local s = 'x == 5 and y' .. \"a < 7\" .. [[ or 8 ]]\n",
            "local t = [==[ redis.call('HSET', k, 'f', 1) ]==]\n",
        );
        assert!(mutants(src).is_empty(), "{:#?}", mutants(src));
    }

    #[test]
    fn only_the_code_part_of_a_line_is_mutated() {
        let src = "if a == 'b == c' then return 1 end -- 2 == 3\n";
        assert_eq!(
            applied(src),
            vec![
                "if a ~= 'b == c' then return 1 end -- 2 == 3\n",
                "if a == 'b == c' then return 2 end -- 2 == 3\n",
                "if a == 'b == c' then return 0 end -- 2 == 3\n",
            ]
        );
    }

    #[test]
    fn a_dropped_write_statement_becomes_do_end_and_nothing_else_changes() {
        let src = concat!(
            "local t = tkey(id)\n",
            "redis.call('HSET', t, 'st', 'queued',\n",
            "  'w', wid)\n",
            "redis.call('HGET', t, 'st')\n",
            "if x then redis.call('del', t) end\n",
        );
        let drops: Vec<String> = mutants(src)
            .iter()
            .filter(|m| m.kind == MutationKind::DropWriteCall)
            .map(|m| m.apply(src))
            .collect();
        assert_eq!(
            drops,
            vec![
                concat!(
                    "local t = tkey(id)\n",
                    "do end\n",
                    "redis.call('HGET', t, 'st')\n",
                    "if x then redis.call('del', t) end\n",
                ),
                concat!(
                    "local t = tkey(id)\n",
                    "redis.call('HSET', t, 'st', 'queued',\n",
                    "  'w', wid)\n",
                    "redis.call('HGET', t, 'st')\n",
                    "if x then do end end\n",
                ),
            ]
        );
    }

    #[test]
    fn a_dropped_write_whose_result_is_used_becomes_nil() {
        let cases = [
            (
                "local seq = redis.call('HINCRBY', k, 'seq', 1)",
                "local seq = (nil)",
            ),
            (
                "if redis.call('HINCRBY', b, f, 1) == 1 then end",
                "if (nil) == 1 then end",
            ),
            ("return redis.call('ZPOPMIN', k)[1]", "return (nil)[1]"),
            ("f(redis.pcall('SET', k, v), 2)", "f((nil), 2)"),
        ];
        for (src, want) in cases {
            let drops: Vec<String> = mutants(src)
                .iter()
                .filter(|m| m.kind == MutationKind::DropWriteCall)
                .map(|m| m.apply(src))
                .collect();
            assert_eq!(drops, vec![want.to_string()], "drops of {src:?}");
        }
    }

    #[test]
    fn nested_parentheses_stay_inside_the_dropped_call() {
        let src = "redis.call('RPUSH', k(f(1)), (2)) x = 1";
        let drop = mutants(src)
            .into_iter()
            .find(|m| m.kind == MutationKind::DropWriteCall)
            .unwrap();
        assert_eq!(drop.apply(src), "do end x = 1");
    }

    #[test]
    fn integers_shift_by_one_both_ways_and_other_numbers_do_not() {
        assert_eq!(applied("x = 10"), vec!["x = 11", "x = 9"]);
        assert_eq!(applied("x = 0"), vec!["x = 1", "x = (-1)"]);
        assert_eq!(applied("x = y -0"), vec!["x = y -1", "x = y -(-1)"]);
        assert!(applied("x = 1.5 + 0x10 + 1e3 + h16").is_empty());
        assert_eq!(applied("x = h[11]"), vec!["x = h[12]", "x = h[10]"]);
    }

    #[test]
    fn a_skip_marker_opts_its_line_out() {
        let src = concat!(
            "if a == b then x = 1 end -- mutation: skip\n",
            "if a == b then redis.call('DEL', k) end\n",
            "redis.call('SET', k, 'v',\n",
            "  2) -- mutation: skip\n",
        );
        let lines: Vec<usize> = mutants(src).iter().map(|m| m.line).collect();
        assert_eq!(lines, vec![2, 2]);
    }

    #[test]
    fn listings_show_the_line_before_and_after() {
        let src = "local a = 1\n  if n >= max then\n    return\n  end\n";
        let flip = mutants(src)
            .into_iter()
            .find(|m| m.kind == MutationKind::FlipOperator)
            .unwrap();
        assert_eq!(
            flip.to_string(),
            "t.lua:2: if n >= max then -> if n > max then"
        );
    }

    #[test]
    fn ids_count_up_from_the_first_id() {
        let ids: Vec<usize> = mutants_of("t.lua", "x = a == 1", 7)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![7, 8, 9]);
    }
}
