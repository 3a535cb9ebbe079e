//! JSON values between Python and Rust: task input and results are JSON
//! (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused (instead of overflowing the stack).
const MAX_DEPTH: usize = 256;

/// Converts a Python object into JSON.
///
/// # Errors
/// `TypeError` naming the path of a value JSON cannot hold (bytes, a set,
/// a non-string key, ...), `ValueError` for NaN/infinity, a str holding a
/// lone surrogate, or nesting deeper than 256 levels.
pub fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    convert(obj, 0, &mut String::from("input"))
}

fn convert(obj: &Bound<'_, PyAny>, depth: usize, path: &mut String) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{path}: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyValueError::new_err(format!(
            "{path}: integer {obj} does not fit in 64 bits"
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{path}: {v} is not a JSON number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(utf8(s, path)?));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = utf8(
                k.cast::<PyString>().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "{path}: dict key {} is not a str (JSON keys are strings)",
                        k.repr().map(|r| r.to_string()).unwrap_or_default()
                    ))
                })?,
                path,
            )?;
            let len = path.len();
            path.push('.');
            path.push_str(&key);
            let value = convert(&v, depth + 1, path)?;
            path.truncate(len);
            map.insert(key, value);
        }
        return Ok(Value::Object(map));
    }
    let items: Option<Vec<Bound<'_, PyAny>>> = if let Ok(l) = obj.cast::<PyList>() {
        Some(l.iter().collect())
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        Some(t.iter().collect())
    } else {
        None
    };
    if let Some(items) = items {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            out.push(convert(item, depth + 1, path)?);
            path.truncate(len);
        }
        return Ok(Value::Array(out));
    }
    let type_name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(PyTypeError::new_err(format!(
        "{path}: a {type_name} is not JSON (use dict, list, str, int, float, bool or None)"
    )))
}

/// A str's UTF-8, or `ValueError` at `path` for a lone surrogate.
fn utf8(s: &Bound<'_, PyString>, path: &str) -> PyResult<String> {
    s.to_str().map(str::to_owned).map_err(|_| {
        PyValueError::new_err(format!(
            "{path}: {} is not valid Unicode (a lone surrogate)",
            s.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

/// Converts JSON into Python objects.
///
/// # Errors
/// Only if Python cannot allocate.
pub fn to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64()
                    .unwrap_or(f64::NAN)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}
