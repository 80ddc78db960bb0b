//! A drain of one exact offset range through the librdkafka that confluent-kafka ships.
//!
//! The Python drain pays for a Python message object, a bytes object per value and key, and the
//! GIL per record. Here each read fills contiguous buffers outside the GIL, and the values reach
//! the decoder (`lib.rs`) without ever becoming Python objects; Python still decides what every
//! error means (`kafka/drain.py`), so the two drains share their rules and their tests.
//!
//! The library is the one confluent-kafka loaded (its path comes from Python), opened again by
//! name: same version, same settings, no second build of librdkafka.

use libloading::Library;
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PySlice};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONSUMER: c_int = 1;
const PARTITION_EOF: c_int = -191;
const FATAL: c_int = -150;
const CONF_OK: c_int = 0;
/// The most a read reserves up front for its records' bytes (64 MiB); beyond, it grows.
const RESERVE_CAP: usize = 64 << 20;

#[repr(C)]
struct Message {
    err: c_int,
    rkt: *mut c_void,
    partition: i32,
    payload: *const u8,
    len: usize,
    key: *const u8,
    key_len: usize,
    offset: i64,
    private: *mut c_void,
}

#[repr(C)]
struct TopicPartition {
    topic: *mut c_char,
    partition: i32,
    offset: i64,
    metadata: *mut c_void,
    metadata_size: usize,
    opaque: *mut c_void,
    err: c_int,
    private: *mut c_void,
}

#[repr(C)]
struct PartitionList {
    cnt: c_int,
    size: c_int,
    elems: *mut TopicPartition,
}

type Handle = *mut c_void;

/// The librdkafka functions the drain calls, resolved once per reader.
struct Api {
    conf_new: unsafe extern "C" fn() -> Handle,
    conf_set:
        unsafe extern "C" fn(Handle, *const c_char, *const c_char, *mut c_char, usize) -> c_int,
    conf_destroy: unsafe extern "C" fn(Handle),
    new: unsafe extern "C" fn(c_int, Handle, *mut c_char, usize) -> Handle,
    destroy: unsafe extern "C" fn(Handle),
    consumer_close: unsafe extern "C" fn(Handle) -> c_int,
    poll_set_consumer: unsafe extern "C" fn(Handle) -> c_int,
    list_new: unsafe extern "C" fn(c_int) -> *mut PartitionList,
    list_add: unsafe extern "C" fn(*mut PartitionList, *const c_char, i32) -> *mut TopicPartition,
    list_destroy: unsafe extern "C" fn(*mut PartitionList),
    assign: unsafe extern "C" fn(Handle, *const PartitionList) -> c_int,
    position: unsafe extern "C" fn(Handle, *mut PartitionList) -> c_int,
    consumer_poll: unsafe extern "C" fn(Handle, c_int) -> *mut Message,
    message_destroy: unsafe extern "C" fn(*mut Message),
    message_timestamp: unsafe extern "C" fn(*const Message, *mut c_int) -> i64,
    err2str: unsafe extern "C" fn(c_int) -> *const c_char,
    fatal_error: unsafe extern "C" fn(Handle, *mut c_char, usize) -> c_int,
    _lib: Library, // last: dropped after every use of the pointers above
}

macro_rules! symbol {
    ($lib:expr, $name:literal) => {
        *$lib
            .get(concat!($name, "\0").as_bytes())
            .map_err(|e| PyRuntimeError::new_err(format!("librdkafka has no {}: {e}", $name)))?
    };
}

impl Api {
    fn load(path: &str) -> PyResult<Api> {
        // SAFETY: the library is librdkafka (already loaded by confluent-kafka); each symbol is
        // given its C prototype from rdkafka.h.
        unsafe {
            let lib = Library::new(path)
                .map_err(|e| PyRuntimeError::new_err(format!("cannot open {path}: {e}")))?;
            Ok(Api {
                conf_new: symbol!(lib, "rd_kafka_conf_new"),
                conf_set: symbol!(lib, "rd_kafka_conf_set"),
                conf_destroy: symbol!(lib, "rd_kafka_conf_destroy"),
                new: symbol!(lib, "rd_kafka_new"),
                destroy: symbol!(lib, "rd_kafka_destroy"),
                consumer_close: symbol!(lib, "rd_kafka_consumer_close"),
                poll_set_consumer: symbol!(lib, "rd_kafka_poll_set_consumer"),
                list_new: symbol!(lib, "rd_kafka_topic_partition_list_new"),
                list_add: symbol!(lib, "rd_kafka_topic_partition_list_add"),
                list_destroy: symbol!(lib, "rd_kafka_topic_partition_list_destroy"),
                assign: symbol!(lib, "rd_kafka_assign"),
                position: symbol!(lib, "rd_kafka_position"),
                consumer_poll: symbol!(lib, "rd_kafka_consumer_poll"),
                message_destroy: symbol!(lib, "rd_kafka_message_destroy"),
                message_timestamp: symbol!(lib, "rd_kafka_message_timestamp"),
                err2str: symbol!(lib, "rd_kafka_err2str"),
                fatal_error: symbol!(lib, "rd_kafka_fatal_error"),
                _lib: lib,
            })
        }
    }

    fn err_text(&self, code: c_int) -> String {
        // SAFETY: rd_kafka_err2str returns a static NUL-terminated string for any code.
        unsafe {
            CStr::from_ptr((self.err2str)(code))
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Records' bytes (values or keys) in one buffer: record i is `data[starts[i]..starts[i + 1]]`,
/// or None where `present[i]` is false.
#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    starts: Vec<usize>,
    present: Vec<bool>,
}

impl Chunk {
    fn new(records: usize) -> Chunk {
        let mut starts = Vec::with_capacity(records + 1);
        starts.push(0);
        Chunk {
            data: Vec::new(),
            starts,
            present: Vec::with_capacity(records),
        }
    }

    fn push(&mut self, bytes: Option<&[u8]>) {
        if let Some(b) = bytes {
            self.data.extend_from_slice(b);
        }
        self.present.push(bytes.is_some());
        self.starts.push(self.data.len());
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        self.present[i].then(|| &self.data[self.starts[i]..self.starts[i + 1]])
    }

    fn len(&self) -> usize {
        self.present.len()
    }
}

/// A run of records of one chunk: rows [start, stop).
#[derive(Clone)]
struct Segment {
    chunk: Arc<Chunk>,
    start: usize,
    stop: usize,
}

/// The drained records' values (or keys) as a read-only sequence of bytes-or-None.
///
/// Indexing gives a bytes object (made on demand: only the records Python looks at, such as
/// the rejects, ever become one); slicing shares the buffers. `extend` appends another's
/// records, so a drain can grow one as it reads.
#[pyclass(module = "pipeline_project_native")]
#[derive(Clone, Default)]
pub struct Blobs {
    segments: Vec<Segment>,
    len: usize,
}

impl Blobs {
    fn of(chunk: Chunk) -> Blobs {
        let len = chunk.len();
        let segments = if len == 0 {
            vec![]
        } else {
            vec![Segment {
                chunk: Arc::new(chunk),
                start: 0,
                stop: len,
            }]
        };
        Blobs { segments, len }
    }

    fn locate(&self, mut i: usize) -> (&Segment, usize) {
        for segment in &self.segments {
            let n = segment.stop - segment.start;
            if i < n {
                return (segment, segment.start + i);
            }
            i -= n;
        }
        unreachable!("index checked against len")
    }

    fn range(&self, start: usize, stop: usize) -> Blobs {
        let mut out = Blobs::default();
        let mut at = 0;
        for segment in &self.segments {
            let n = segment.stop - segment.start;
            let (lo, hi) = (start.max(at), stop.min(at + n));
            if lo < hi {
                out.segments.push(Segment {
                    chunk: segment.chunk.clone(),
                    start: segment.start + lo - at,
                    stop: segment.start + hi - at,
                });
                out.len += hi - lo;
            }
            at += n;
        }
        out
    }

    /// Every record's bytes in order, borrowed from the shared chunks.
    pub fn slices(&self) -> Vec<Option<&[u8]>> {
        let mut out = Vec::with_capacity(self.len);
        for segment in &self.segments {
            out.extend((segment.start..segment.stop).map(|i| segment.chunk.get(i)));
        }
        out
    }

    fn item<'py>(&self, py: Python<'py>, i: usize) -> Option<Bound<'py, PyBytes>> {
        let (segment, at) = self.locate(i);
        segment.chunk.get(at).map(|b| PyBytes::new(py, b))
    }
}

#[pymethods]
impl Blobs {
    #[new]
    fn empty() -> Blobs {
        Blobs::default()
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __getitem__<'py>(&self, py: Python<'py>, index: &Bound<'py, PyAny>) -> PyResult<Py<PyAny>> {
        if let Ok(slice) = index.cast::<PySlice>() {
            let found = slice.indices(self.len as isize)?;
            if found.step != 1 {
                return Err(PyTypeError::new_err("Blobs slices take no step"));
            }
            let (start, stop) = (found.start as usize, (found.stop.max(found.start)) as usize);
            return Ok(Py::new(py, self.range(start, stop))?.into_any());
        }
        let mut i: isize = index.extract()?;
        if i < 0 {
            i += self.len as isize;
        }
        if i < 0 || i as usize >= self.len {
            return Err(PyIndexError::new_err("Blobs index out of range"));
        }
        Ok(match self.item(py, i as usize) {
            Some(b) => b.into_any().unbind(),
            None => py.None(),
        })
    }

    /// Every record as bytes or None, in a list (for code that wants plain Python objects).
    fn to_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<Py<PyAny>> = self
            .slices()
            .into_iter()
            .map(|s| match s {
                Some(b) => PyBytes::new(py, b).into_any().unbind(),
                None => py.None(),
            })
            .collect();
        PyList::new(py, items)
    }

    fn extend(&mut self, other: PyRef<'_, Blobs>) {
        self.segments.extend(other.segments.iter().cloned());
        self.len += other.len;
    }
}

/// What one read ended with, besides its records.
///
/// `error`: (code, reason, fatal, offset or -1) of the first error message, as librdkafka
/// gave it; `done`: a record at or past the range's last offset was seen.
type ReadResult = (
    Vec<i64>,
    Vec<i64>,
    Blobs,
    Blobs,
    Option<(i32, String, bool, i64)>,
    bool,
);

/// One consumer of librdkafka, for exact-range reads by `assign` (no group subscription).
#[pyclass(module = "pipeline_project_native")]
pub struct Reader {
    api: Api,
    rk: Handle,
}

// SAFETY: librdkafka handles are thread-safe; pyo3 serialises access to `&mut self` methods.
unsafe impl Send for Reader {}
unsafe impl Sync for Reader {}

impl Reader {
    fn partition_list(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> PyResult<*mut PartitionList> {
        let name = CString::new(topic).map_err(|e| PyTypeError::new_err(e.to_string()))?;
        // SAFETY: a fresh list of capacity 1; `list_add` copies the topic name.
        unsafe {
            let list = (self.api.list_new)(1);
            let elem = (self.api.list_add)(list, name.as_ptr(), partition);
            (*elem).offset = offset;
            Ok(list)
        }
    }

    /// The live handle; an error once the reader is closed (librdkafka must never see a null).
    fn live(&self) -> PyResult<usize> {
        if self.rk.is_null() {
            return Err(PyRuntimeError::new_err("the native reader is closed"));
        }
        Ok(self.rk as usize)
    }

    fn check(&self, err: c_int, what: &str) -> PyResult<()> {
        if err == 0 {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(format!(
            "{what}: {}",
            self.api.err_text(err)
        )))
    }

    /// The error of a consumed error message: its code, reason, and whether it is fatal.
    fn message_error(&self, msg: &Message) -> (i32, String, bool) {
        if msg.err == FATAL {
            let mut buf = vec![0 as c_char; 512];
            // SAFETY: buf is writable for its length; librdkafka NUL-terminates within it.
            let code = unsafe { (self.api.fatal_error)(self.rk, buf.as_mut_ptr(), buf.len()) };
            let text = unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return (code, text, true);
        }
        let text = if !msg.payload.is_null() && msg.len > 0 {
            // SAFETY: an error message's payload is its error string, `len` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(msg.payload, msg.len) };
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            self.api.err_text(msg.err)
        };
        (msg.err, text, false)
    }
}

#[pymethods]
impl Reader {
    /// A consumer with `config` (librdkafka property names and text values) from `library`.
    #[new]
    fn open(library: &str, config: Vec<(String, String)>) -> PyResult<Reader> {
        let api = Api::load(library)?;
        let mut errstr = vec![0 as c_char; 512];
        // SAFETY: conf is owned until rd_kafka_new takes it (or destroyed on error).
        unsafe {
            let conf = (api.conf_new)();
            for (name, value) in &config {
                let (n, v) = (CString::new(name.as_str()), CString::new(value.as_str()));
                let (Ok(n), Ok(v)) = (n, v) else {
                    (api.conf_destroy)(conf);
                    return Err(PyTypeError::new_err(format!("setting {name}: NUL byte")));
                };
                let res = (api.conf_set)(
                    conf,
                    n.as_ptr(),
                    v.as_ptr(),
                    errstr.as_mut_ptr(),
                    errstr.len(),
                );
                if res != CONF_OK {
                    (api.conf_destroy)(conf);
                    let why = CStr::from_ptr(errstr.as_ptr())
                        .to_string_lossy()
                        .into_owned();
                    return Err(PyRuntimeError::new_err(format!("setting {name}: {why}")));
                }
            }
            let rk = (api.new)(CONSUMER, conf, errstr.as_mut_ptr(), errstr.len());
            if rk.is_null() {
                (api.conf_destroy)(conf);
                let why = CStr::from_ptr(errstr.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                return Err(PyRuntimeError::new_err(format!(
                    "consumer not created: {why}"
                )));
            }
            // Errors of the client itself (all brokers down, ...) then come out of
            // consumer_poll too, as confluent-kafka's Consumer arranges it.
            (api.poll_set_consumer)(rk);
            Ok(Reader { api, rk })
        }
    }

    /// Reads from `offset` of the partition on: assign() at an explicit offset.
    fn assign(&self, py: Python<'_>, topic: &str, partition: i32, offset: i64) -> PyResult<()> {
        let rk = self.live()?;
        let list = self.partition_list(topic, partition, offset)?;
        let assign = self.api.assign;
        // SAFETY: list is valid until destroyed below; rk lives as long as self.
        let at = list as usize;
        let err = py.detach(|| unsafe { assign(rk as Handle, at as *const PartitionList) });
        unsafe { (self.api.list_destroy)(list) };
        self.check(err, "assign")
    }

    /// Stops reading any partition.
    fn unassign(&self, py: Python<'_>) -> PyResult<()> {
        let rk = self.live()?;
        let assign = self.api.assign;
        // SAFETY: a null list unassigns.
        let err = py.detach(|| unsafe { assign(rk as Handle, std::ptr::null()) });
        self.check(err, "unassign")
    }

    /// The consumer's next offset to read of the partition, -1 if it has none yet.
    fn position(&self, topic: &str, partition: i32) -> PyResult<i64> {
        self.live()?;
        let list = self.partition_list(topic, partition, -1001)?;
        // SAFETY: list holds one element, filled in by rd_kafka_position.
        unsafe {
            let err = (self.api.position)(self.rk, list);
            let offset = (*(*list).elems).offset;
            (self.api.list_destroy)(list);
            self.check(err, "position")?;
            Ok(if offset >= 0 { offset } else { -1 })
        }
    }

    /// Up to `max_records` records below `end`, waiting at most `timeout_s` for the first.
    ///
    /// Returns (offsets, timestamps in ms, keys, values, error, done). Stops early at the first
    /// error message (partition EOF included), handing it over with what was read before it,
    /// and at the first record at or past `end - 1` (`done`; a record past `end` is dropped).
    fn read(
        &self,
        py: Python<'_>,
        end: i64,
        max_records: usize,
        timeout_s: f64,
    ) -> PyResult<ReadResult> {
        let rk = self.live()?;
        let api = &self.api;
        let (poll, destroy, stamp) = (
            api.consumer_poll,
            api.message_destroy,
            api.message_timestamp,
        );
        let mut offsets = Vec::with_capacity(max_records);
        let mut stamps = Vec::with_capacity(max_records);
        let (mut keys, mut values) = (Chunk::new(max_records), Chunk::new(max_records));
        let mut error = None;
        let mut done = false;
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_s.max(0.0));
        py.detach(|| {
            while offsets.len() < max_records {
                // Like confluent-kafka's consume(): wait until the batch is full or time is up.
                // A record already queued is taken without a wait, and without reading the clock.
                // SAFETY: rk is a live consumer; each message is destroyed once, after use.
                let mut msg = unsafe { poll(rk as Handle, 0) };
                if msg.is_null() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let wait = left.as_millis().min(i32::MAX as u128) as c_int;
                    if wait > 0 {
                        msg = unsafe { poll(rk as Handle, wait) };
                    }
                }
                if msg.is_null() {
                    break; // time is up
                }
                let m = unsafe { &*msg };
                if m.err != 0 {
                    let (code, text, fatal) = self.message_error(m);
                    let at = if m.err == PARTITION_EOF { m.offset } else { -1 };
                    error = Some((code, text, fatal, at));
                    unsafe { destroy(msg) };
                    break;
                }
                if m.offset >= end {
                    done = true;
                    unsafe { destroy(msg) };
                    break;
                }
                let mut kind: c_int = 0;
                offsets.push(m.offset);
                stamps.push(unsafe { stamp(msg, &mut kind) });
                // SAFETY: payload and key point to len / key_len bytes owned by the message.
                let key = (!m.key.is_null())
                    .then(|| unsafe { std::slice::from_raw_parts(m.key, m.key_len) });
                let value = (!m.payload.is_null())
                    .then(|| unsafe { std::slice::from_raw_parts(m.payload, m.len) });
                if values.len() == 0 {
                    // Room for the whole read at the first record's size (plus slack): no
                    // doubling copies while it fills.
                    values
                        .data
                        .reserve(((m.len + 64) * 2 * max_records).min(RESERVE_CAP));
                    keys.data
                        .reserve(((m.key_len + 8) * max_records).min(RESERVE_CAP));
                }
                keys.push(key);
                values.push(value);
                let last = m.offset >= end - 1;
                unsafe { destroy(msg) };
                if last {
                    done = true;
                    break;
                }
            }
        });
        // The reservation was a guess: hand what the records did not fill back, or a range's
        // memory would hold it until the range is freed (glibc often shrinks in place).
        keys.data.shrink_to_fit();
        values.data.shrink_to_fit();
        Ok((
            offsets,
            stamps,
            Blobs::of(keys),
            Blobs::of(values),
            error,
            done,
        ))
    }

    /// Leaves the group's view and frees the consumer; further calls fail.
    fn close(&mut self, py: Python<'_>) {
        if self.rk.is_null() {
            return;
        }
        let rk = self.rk as usize;
        let (close, destroy) = (self.api.consumer_close, self.api.destroy);
        // SAFETY: rk is live and used by nothing else once closed here.
        py.detach(|| unsafe {
            close(rk as Handle);
            destroy(rk as Handle);
        });
        self.rk = std::ptr::null_mut();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if !self.rk.is_null() {
            // SAFETY: as in close(); nothing else holds the handle at drop.
            unsafe {
                (self.api.consumer_close)(self.rk);
                (self.api.destroy)(self.rk);
            }
        }
    }
}
