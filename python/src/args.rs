//! Argument types for the Python-facing functions: whatever a caller
//! passes, a value that cannot be accepted raises `rtq.InvalidInput`
//! naming the argument (a wrong type stays a `TypeError`), never the
//! `OverflowError` or `UnicodeEncodeError` of pyo3's plain extraction.
//!
//! - [`Text`]: a `str` that must encode as UTF-8 (a lone surrogate is
//!   refused);
//! - [`Int`]: any Python `int`, range-checked by [`Int::within`] where its
//!   meaning (and so its bounds) is known;
//! - [`Secs`]: a number of seconds (an `int` too large for a float is
//!   refused); [`crate::request::seconds`] checks its range.

use std::collections::BTreeMap;
use std::fmt::Display;

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use crate::errors::invalid;

/// A `str` argument, valid Unicode.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(pub String);

impl FromPyObject<'_, '_> for Text {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        let s = obj.cast::<PyString>()?;
        text(&s).map(Text)
    }
}

/// The UTF-8 of `s`, or `rtq.InvalidInput` if it holds a lone surrogate
/// (which no UTF-8 string, Redis key or JSON document can hold).
///
/// # Errors
/// As above.
pub fn text(s: &Bound<'_, PyString>) -> PyResult<String> {
    s.to_str().map(str::to_owned).map_err(|_| {
        let shown = s.repr().map(|r| r.to_string()).unwrap_or_default();
        invalid(format!(
            "{shown} is not valid Unicode: it holds a lone surrogate (a str must encode as UTF-8)"
        ))
    })
}

impl Text {
    /// The string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// `Option<Text>` as `Option<String>`.
pub fn opt_text(t: Option<Text>) -> Option<String> {
    t.map(Text::into_string)
}

/// Labels (`dict[str, str]`) as owned strings.
pub fn labels(l: Option<BTreeMap<Text, Text>>) -> Option<BTreeMap<String, String>> {
    l.map(|m| m.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

/// An `int` argument of any size.
#[derive(Clone, Debug)]
pub struct Int {
    /// The value, if it fits in an `i128`.
    value: Option<i128>,
    /// Its decimal form (for messages), when it does not fit.
    text: String,
}

impl FromPyObject<'_, '_> for Int {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        // Only ints (and bool, an int subclass), as pyo3's own integer
        // extraction: a float or a str is a TypeError.
        let int = obj.cast::<PyInt>()?;
        match int.extract::<i128>() {
            Ok(v) => Ok(Int {
                value: Some(v),
                text: String::new(),
            }),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(Int {
                value: None,
                text: big_int_text(&int),
            }),
            Err(e) => Err(e),
        }
    }
}

/// A huge int for a message: its digits, or its size when Python
/// refuses to print that many digits.
fn big_int_text(int: &Bound<'_, PyInt>) -> String {
    int.str().map(|s| s.to_string()).unwrap_or_else(|_| {
        let bits = int
            .call_method0("bit_length")
            .and_then(|b| b.extract::<u64>())
            .unwrap_or(0);
        format!("an integer of {bits} bits")
    })
}

impl Int {
    /// A plain value (a default).
    pub fn of(v: i128) -> Self {
        Int {
            value: Some(v),
            text: String::new(),
        }
    }

    /// The value as a `T` if it lies in `[min, max]`.
    ///
    /// # Errors
    /// `rtq.InvalidInput`: "`name` must be in [min, max], got value".
    pub fn within<T>(&self, name: &str, min: T, max: T) -> PyResult<T>
    where
        T: TryFrom<i128> + Into<i128> + Copy + Display,
    {
        if let Some(v) = self.value {
            if (min.into()..=max.into()).contains(&v) {
                if let Ok(t) = T::try_from(v) {
                    return Ok(t);
                }
            }
        }
        let shown = match self.value {
            Some(v) => v.to_string(),
            None => self.text.clone(),
        };
        Err(invalid(format!(
            "{name} must be in [{min}, {max}], got {shown}"
        )))
    }

    /// The value as a `usize` in `[min, max]` (see [`Int::within`]).
    ///
    /// # Errors
    /// As [`Int::within`].
    pub fn within_usize(&self, name: &str, min: usize, max: usize) -> PyResult<usize> {
        let to = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let v = self.within::<u64>(name, to(min), to(max))?;
        usize::try_from(v).map_err(|_| invalid(format!("{name} of {v} is out of range")))
    }
}

/// A number of seconds (`int` or `float`).
#[derive(Clone, Copy, Debug)]
pub struct Secs(pub f64);

impl FromPyObject<'_, '_> for Secs {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        match obj.extract::<f64>() {
            Ok(v) => Ok(Secs(v)),
            // An int beyond a float's range.
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
                let shown = match obj.cast::<PyInt>() {
                    Ok(int) => big_int_text(&int),
                    Err(_) => "a number".to_string(),
                };
                Err(invalid(format!("{shown} seconds is out of range")))
            }
            Err(e) => Err(e),
        }
    }
}

/// `Option<Secs>` as `Option<f64>`.
pub fn opt_secs(s: Option<Secs>) -> Option<f64> {
    s.map(|s| s.0)
}
