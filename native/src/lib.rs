//! Strict JSON-to-columns decoder: the fast path of pipeline_project's parse stage.
//!
//! Each value is parsed once by sonic-rs (SIMD, 25 % less CPU than serde_json on the events;
//! strict RFC 8259: UTF-8 checked, no NaN, no trailing bytes, lone surrogate escapes refused)
//! through its serde interface straight into column buffers, by a visitor that
//! knows the event schema: top-level scalars and any number of nested objects of scalars (the
//! event's `properties`, contract v2's `consent`). A record is *accepted* only when it is a plain
//! event object: known keys only, none repeated, every required key present, every value of its
//! declared JSON type (or null). Anything else, however harmless, is *deferred* to the Python parse path, which
//! classifies it exactly. So this module never decides why a record is bad; it only proves that
//! a record is good and gives its values, which the tests check against the Python path.

mod drain;

use drain::{Blobs, Reader};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::fmt;

/// Integers a float column takes as they are: beyond 2^53 the conversion could round.
const EXACT_FLOAT_INT: u64 = 1 << 53;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Str,
    Int,
    Num,
    Bool,
    Object,
}

impl Kind {
    fn parse(name: &str) -> PyResult<Kind> {
        match name {
            "str" => Ok(Kind::Str),
            "int" => Ok(Kind::Int),
            "number" => Ok(Kind::Num),
            "bool" => Ok(Kind::Bool),
            "object" => Ok(Kind::Object),
            other => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown field kind {other:?}"
            ))),
        }
    }
}

/// A key: its column slot (a scalar) or the index of its entries in `Spec::objects` (an object).
struct Field {
    name: String,
    kind: Kind,
    slot: usize,
}

/// The event schema: top-level keys, the keys of each nested object, and column kinds.
struct Spec {
    top: Vec<Field>,
    required_mask: u64,
    objects: Vec<Vec<Field>>,
    kinds: Vec<Kind>,
}

#[derive(Clone, Copy)]
enum Cell {
    Null,
    Str(usize, usize),
    Int(i64),
    Num(f64),
    Bool(bool),
}

/// One record's values while it is parsed; copied into the columns only if it is accepted.
struct Row {
    cells: Vec<Cell>,
    text: Vec<u8>,
    seen: u64,
    seen_nested: Vec<u64>,
}

impl Row {
    fn reset(&mut self) {
        self.cells.fill(Cell::Null);
        self.text.clear();
        self.seen = 0;
        self.seen_nested.fill(0);
    }
}

/// Bytes per value in a column's values buffer (booleans are bits, see `Column::push`).
fn width(kind: Kind) -> usize {
    match kind {
        Kind::Str => 16,
        Kind::Bool => 0,
        _ => 8,
    }
}

/// Arrow buffers of one column: a validity bitmap (LSB first, built as rows come), then
/// 16-byte string views into the column's own text (one column's strings side by side, so a
/// scan of one column reads only its bytes: interleaved rows made validation 2x slower),
/// 8-byte little-endian values, or a bitmap of booleans (Arrow's layout, LSB first).
struct Column {
    bitmap: Vec<u8>,
    rows: usize,
    nulls: usize,
    values: Vec<u8>,
    text: Vec<u8>,
}

impl Column {
    fn new(kind: Kind, capacity: usize) -> Column {
        let bytes = if kind == Kind::Bool {
            capacity.div_ceil(8)
        } else {
            capacity * width(kind)
        };
        Column {
            bitmap: Vec::with_capacity(capacity.div_ceil(8)),
            rows: 0,
            nulls: 0,
            values: Vec::with_capacity(bytes),
            text: Vec::new(),
        }
    }

    fn push(&mut self, kind: Kind, cell: Cell, text: &[u8]) {
        let (byte, bit) = (self.rows / 8, self.rows % 8);
        if bit == 0 {
            self.bitmap.push(0);
            if kind == Kind::Bool {
                self.values.push(0);
            }
        }
        let valid = !matches!(cell, Cell::Null);
        self.bitmap[byte] |= (valid as u8) << bit;
        self.rows += 1;
        match cell {
            Cell::Null => {
                self.nulls += 1;
                self.values.extend_from_slice(&[0u8; 16][..width(kind)]);
            }
            Cell::Bool(v) => self.values[byte] |= (v as u8) << bit,
            Cell::Str(start, len) => {
                let bytes = &text[start..start + len];
                self.values
                    .extend_from_slice(&string_view(bytes, self.text.len()));
                if len > 12 {
                    self.text.extend_from_slice(bytes);
                }
            }
            Cell::Int(v) => self.values.extend_from_slice(&v.to_le_bytes()),
            Cell::Num(v) => self.values.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Arrow string view: length, then the bytes inline (up to 12) or a prefix, buffer 0 and offset.
fn string_view(bytes: &[u8], offset: usize) -> [u8; 16] {
    let mut view = [0u8; 16];
    view[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    if bytes.len() <= 12 {
        view[4..4 + bytes.len()].copy_from_slice(bytes);
    } else {
        view[4..8].copy_from_slice(&bytes[..4]);
        view[12..].copy_from_slice(&(offset as u32).to_le_bytes());
    }
    view
}

/// What one part of the batch gave: accepted rows in columns, and deferred positions.
struct Output {
    columns: Vec<Column>,
    deferred: Vec<u32>,
}

/// A Rust-owned byte buffer lent to Python through the buffer protocol (pyarrow wraps it with
/// no copy). Frozen: the bytes never change once built.
#[pyclass(frozen)]
struct Buffer {
    data: Vec<u8>,
}

#[pymethods]
impl Buffer {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let data = &slf.get().data;
        // SAFETY: the view keeps `slf` alive (FillInfo takes a reference) and the data is frozen.
        let status = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut std::os::raw::c_void,
                data.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

// --- serde visitors: one pass from bytes to cells, no intermediate JSON tree -------------------

fn refuse<E: de::Error>(why: &str) -> E {
    E::custom(why)
}

struct KeySeed<'s>(&'s [Field]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a known key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|field| field.name == key)
            .ok_or_else(|| refuse("unknown key"))
    }
}

/// A scalar field: null, or a value of its kind.
struct CellSeed<'r> {
    kind: Kind,
    slot: usize,
    row: &'r mut Row,
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:?} or null", self.kind)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.kind {
            Kind::Str => d.deserialize_str(ValueVisitor(self)),
            Kind::Int => d.deserialize_i64(ValueVisitor(self)),
            Kind::Bool => d.deserialize_bool(ValueVisitor(self)),
            _ => d.deserialize_f64(ValueVisitor(self)),
        }
    }
}

/// The non-null value of a scalar field; any JSON type other than the field's kind is refused.
struct ValueVisitor<'r>(CellSeed<'r>);

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:?}", self.0.kind)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        let seed = self.0;
        if seed.kind != Kind::Bool {
            return Err(refuse("not a boolean field"));
        }
        seed.row.cells[seed.slot] = Cell::Bool(v);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let seed = self.0;
        if seed.kind != Kind::Str {
            return Err(refuse("not a string field"));
        }
        let start = seed.row.text.len();
        seed.row.text.extend_from_slice(v.as_bytes());
        seed.row.cells[seed.slot] = Cell::Str(start, v.len());
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        let seed = self.0;
        seed.row.cells[seed.slot] = match seed.kind {
            Kind::Int => Cell::Int(v),
            Kind::Num if v != 0 && v.unsigned_abs() <= EXACT_FLOAT_INT => Cell::Num(v as f64),
            _ => return Err(refuse("integer out of place")),
        };
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let seed = self.0;
        seed.row.cells[seed.slot] = match seed.kind {
            Kind::Int if v <= i64::MAX as u64 => Cell::Int(v as i64),
            Kind::Num if v != 0 && v <= EXACT_FLOAT_INT => Cell::Num(v as f64),
            _ => return Err(refuse("integer out of place")),
        };
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let seed = self.0;
        // A zero is left to Python, whichever way it came: "-0.0" is -0.0 there but reaches this
        // visitor as 0.0, and "-0" is the integer 0 there. Zero prices are rare.
        if seed.kind != Kind::Num || !v.is_finite() || v == 0.0 {
            return Err(refuse("float out of place"));
        }
        seed.row.cells[seed.slot] = Cell::Num(v);
        Ok(())
    }
}

/// An object of known keys (the event, or one of its nested objects), each at most once.
/// `nested`: None for the event, else the index of the nested object's entries in the spec.
struct ObjectSeed<'s, 'r> {
    spec: &'s Spec,
    nested: Option<usize>,
    row: &'r mut Row,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.nested.is_some() {
            d.deserialize_option(self)
        } else {
            d.deserialize_map(self)
        }
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // "properties": null
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (spec, row) = (self.spec, self.row);
        let fields = match self.nested {
            Some(object) => &spec.objects[object],
            None => &spec.top,
        };
        while let Some(index) = map.next_key_seed(KeySeed(fields))? {
            let seen = match self.nested {
                Some(object) => &mut row.seen_nested[object],
                None => &mut row.seen,
            };
            if *seen & (1 << index) != 0 {
                return Err(refuse("duplicate key"));
            }
            *seen |= 1 << index;
            let field = &fields[index];
            if field.kind == Kind::Object {
                if self.nested.is_some() {
                    return Err(refuse("nested object"));
                }
                map.next_value_seed(ObjectSeed {
                    spec,
                    nested: Some(field.slot),
                    row: &mut *row,
                })?;
            } else {
                let (kind, slot) = (field.kind, field.slot);
                map.next_value_seed(CellSeed {
                    kind,
                    slot,
                    row: &mut *row,
                })?;
            }
        }
        Ok(())
    }
}

/// True when `value` is a plain event object; its values are then in `row`.
fn accept(value: &[u8], spec: &Spec, max_bytes: usize, row: &mut Row) -> bool {
    row.reset();
    if value.len() > max_bytes {
        return false;
    }
    let mut de = sonic_rs::Deserializer::from_slice(value);
    let seed = ObjectSeed {
        spec,
        nested: None,
        row: &mut *row,
    };
    if seed.deserialize(&mut de).is_err() || de.end().is_err() {
        return false;
    }
    row.seen & spec.required_mask == spec.required_mask
}

fn parse_part(values: &[Option<&[u8]>], base: usize, spec: &Spec, max_bytes: usize) -> Output {
    let mut columns: Vec<Column> = spec
        .kinds
        .iter()
        .map(|k| Column::new(*k, values.len()))
        .collect();
    let mut deferred = Vec::new();
    let mut row = Row {
        cells: vec![Cell::Null; spec.kinds.len()],
        text: Vec::with_capacity(4096),
        seen: 0,
        seen_nested: vec![0; spec.objects.len()],
    };
    for (i, value) in values.iter().enumerate() {
        if i == SAMPLE_ROWS {
            reserve_text(&mut columns, i, values.len());
        }
        match value {
            Some(bytes) if accept(bytes, spec, max_bytes, &mut row) => {
                for ((column, cell), kind) in columns.iter_mut().zip(&row.cells).zip(&spec.kinds) {
                    column.push(*kind, *cell, &row.text);
                }
            }
            _ => deferred.push((base + i) as u32),
        }
    }
    Output { columns, deferred }
}

/// Rows after which each column's text buffer is sized for the whole part.
const SAMPLE_ROWS: usize = 1024;

/// Reserves each column's text for the rest of the part at 1.25x the sampled bytes per row, so
/// the buffers rarely grow by doubling (each doubling copies and touches fresh pages).
fn reserve_text(columns: &mut [Column], seen: usize, total: usize) {
    for column in columns.iter_mut() {
        let per_row = column.text.len().div_ceil(seen.max(1));
        column.text.reserve(per_row * (total - seen) * 5 / 4);
    }
}

/// Most text bytes one part may hold: string views address their buffer with a signed 32-bit
/// offset, and a part's text is at most its input's size.
const PART_TEXT_LIMIT: usize = 1 << 30;

/// Contiguous parts of about equal input size: at least `parts`, each under PART_TEXT_LIMIT.
fn split(values: &[Option<&[u8]>], parts: usize, max_bytes: usize) -> Vec<(usize, usize)> {
    let sizes = || {
        values
            .iter()
            .map(|v| v.map_or(0, |b| b.len().min(max_bytes)))
    };
    let total: usize = sizes().sum();
    let count = parts.max(1).max(total.div_ceil(PART_TEXT_LIMIT));
    let target = total.div_ceil(count).max(1);
    let mut bounds = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, size) in sizes().enumerate() {
        filled += size;
        if filled >= target {
            bounds.push((start, i + 1));
            (start, filled) = (i + 1, 0);
        }
    }
    if start < values.len() || bounds.is_empty() {
        bounds.push((start, values.len()));
    }
    bounds
}

/// Parses the parts on as many threads, in position order.
fn parse_all(values: &[Option<&[u8]>], spec: &Spec, max_bytes: usize, parts: usize) -> Vec<Output> {
    let bounds = split(values, parts, max_bytes);
    std::thread::scope(|scope| {
        let handles: Vec<_> = bounds
            .iter()
            .map(|&(start, stop)| {
                scope.spawn(move || parse_part(&values[start..stop], start, spec, max_bytes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("parse thread panicked"))
            .collect()
    })
}

fn spec_error(why: &str) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(why.to_string())
}

/// `objects` holds the entries of each "object" key of `top`, in the order those keys come.
fn build_spec(
    top: Vec<(String, String, bool)>,
    objects: Vec<Vec<(String, String)>>,
) -> PyResult<Spec> {
    if top.len() > 64 || objects.iter().any(|entries| entries.len() > 64) {
        return Err(spec_error("at most 64 keys per object"));
    }
    let mut kinds = Vec::new();
    let mut required_mask = 0u64;
    let mut fields = Vec::new();
    let mut object_count = 0;
    for (i, (name, kind, required)) in top.into_iter().enumerate() {
        let kind = Kind::parse(&kind)?;
        let slot = if kind == Kind::Object {
            object_count += 1;
            object_count - 1
        } else {
            kinds.push(kind);
            kinds.len() - 1
        };
        if required {
            required_mask |= 1 << i;
        }
        fields.push(Field { name, kind, slot });
    }
    if object_count != objects.len() {
        return Err(spec_error("one list of entries per object key"));
    }
    let mut object_fields = Vec::new();
    for entries in objects {
        let mut nested = Vec::new();
        for (name, kind) in entries {
            let kind = Kind::parse(&kind)?;
            if kind == Kind::Object {
                return Err(spec_error("nested objects hold scalars"));
            }
            nested.push(Field {
                name,
                kind,
                slot: kinds.len(),
            });
            kinds.push(kind);
        }
        object_fields.push(nested);
    }
    Ok(Spec {
        top: fields,
        required_mask,
        objects: object_fields,
        kinds,
    })
}

type Part = (usize, Vec<(Option<Buffer>, Buffer, Buffer)>);

/// Decodes `values` (bytes or None) against a schema with one nested object (`props`).
///
/// The first form of `decode_objects`, kept so that Python code of either age can call either
/// build of this module.
#[pyfunction]
#[pyo3(signature = (values, top, props, max_bytes, parts=2))]
fn decode_columns<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    top: Vec<(String, String, bool)>,
    props: Vec<(String, String)>,
    max_bytes: usize,
    parts: usize,
) -> PyResult<(Vec<u32>, Vec<Part>)> {
    decode_objects(py, values, top, vec![props], max_bytes, parts)
}

/// Decodes `values` (bytes or None) against the schema.
///
/// `top` is (key, kind, required) per top-level key, kinds "str", "int", "number", "bool" or
/// "object"; `objects` holds each object key's (entry, kind) list, in the order of those keys.
/// Returns the deferred positions and the accepted rows in position order, as parts (one per
/// thread): (rows, per scalar column (validity bitmap or None, string views, values or a bitmap
/// of booleans, text the string views point into)). Columns are the top-level scalars in order,
/// then each object's entries.
#[pyfunction]
#[pyo3(signature = (values, top, objects, max_bytes, parts=2))]
fn decode_objects<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    top: Vec<(String, String, bool)>,
    objects: Vec<Vec<(String, String)>>,
    max_bytes: usize,
    parts: usize,
) -> PyResult<(Vec<u32>, Vec<Part>)> {
    let spec = build_spec(top, objects)?;
    // Either a list of bytes (or None), or the native drain's Blobs, read without a copy.
    let blobs = values.cast::<Blobs>().ok().map(|b| b.borrow());
    let items: Vec<Bound<'py, PyAny>> = match blobs {
        Some(_) => Vec::new(),
        None => values.cast::<PyList>()?.iter().collect(),
    };
    let slices: Vec<Option<&[u8]>> = match &blobs {
        Some(b) => b.slices(),
        None => items
            .iter()
            .map(|item| item.cast::<PyBytes>().ok().map(|b| b.as_bytes()))
            .collect(),
    };
    let outputs = py.detach(|| parse_all(&slices, &spec, max_bytes, parts));
    let mut deferred = Vec::new();
    let mut parts_out = Vec::new();
    for output in outputs {
        deferred.extend(output.deferred);
        let rows = output.columns.first().map_or(0, |c| c.rows);
        let columns = output
            .columns
            .into_iter()
            .map(|c| {
                let bitmap = (c.nulls > 0).then_some(Buffer { data: c.bitmap });
                (bitmap, Buffer { data: c.values }, Buffer { data: c.text })
            })
            .collect();
        parts_out.push((rows, columns));
    }
    Ok((deferred, parts_out))
}

#[pymodule]
fn pipeline_project_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_columns, m)?)?;
    m.add_function(wrap_pyfunction!(decode_objects, m)?)?;
    m.add_class::<Buffer>()?;
    m.add_class::<Blobs>()?;
    m.add_class::<Reader>()?;
    Ok(())
}
