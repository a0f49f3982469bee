/*
 * The consumer's hot loop, record decoding, in C: logstore.codec._record_decoder.
 *
 * decode_records(data, start, end, record_count, base_offset, base_timestamp,
 *                log_append_time, record_type, prefix) -> list
 *
 * Decodes exactly `record_count` RecordBatch v2 records from data[start:end] (an
 * uncompressed records section) and returns a list of
 * `record_type(*prefix, offset, timestamp, key, value, headers)`, where record_type is a
 * tuple subclass (a NamedTuple) built the way tuple.__new__ builds one.
 *
 * `logstore.codec.records_reference` is the format spec in code, with the same signature.
 * This decoder accepts exactly the inputs the reference accepts, returns equal records,
 * and raises logstore.errors.CorruptRecordError with the same message, word for word, on
 * anything else: tests/codec/test_record_decoder.py checks all three with hypothesis. Every
 * read is bounds-checked against the current record's end (or the section's end for a
 * record's length): the bytes come from the network.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

/* A record is at least a one-byte length plus six bytes (attributes, timestamp delta,
 * offset delta, key length, value length, header count). */
#define MIN_RECORD_BYTES 7
#define MIN_RECORD_LENGTH 6

static PyObject *CorruptRecordError = NULL;
static PyObject *empty_tuple = NULL;

/* What was wrong with the record being read, in the reference's words. The reader that
 * finds a problem writes it here and returns -1; the loop then raises CorruptRecordError
 * naming the record. Empty when -1 comes from a Python error (e.g. MemoryError) instead. */
typedef struct {
    char text[256];
} problem_t;

/* Cold and out of line: a char buffer in the hot readers would cost a stack canary check
 * on every call. */
static void __attribute__((cold, noinline, format(printf, 2, 3)))
report(problem_t *problem, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(problem->text, sizeof problem->text, format, args);
    va_end(args);
}

/* A field as the messages name it: "keyLength", or "headerKeyLength of header 2" when
 * `header` >= 0. */
typedef struct {
    const char *name;
    Py_ssize_t header;
} field_t;

/* report() for a problem with one field: "<field name> <what is wrong>". */
static void __attribute__((cold, noinline, format(printf, 3, 4)))
report_field(problem_t *problem, const field_t *field, const char *format, ...)
{
    char name[96], what[160];
    if (field->header < 0) {
        snprintf(name, sizeof name, "%s", field->name);
    }
    else {
        snprintf(name, sizeof name, "%s of header %zd", field->name, field->header);
    }
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    report(problem, "%s %s", name, what);
}

/* Zigzag varint at data[*pos], reading no byte at or past `limit`. Same rules as
 * records_reference.read_varint: at most 10 bytes, and the 10th byte at most 1. */
static int
read_varint(const uint8_t *data, Py_ssize_t *pos, Py_ssize_t limit, const field_t *field,
            problem_t *problem, int64_t *out)
{
    Py_ssize_t p = *pos;
    uint64_t result = 0;
    int shift = 0;
    for (;;) {
        if (p >= limit) {
            report_field(problem, field, "varint is cut short");
            return -1;
        }
        uint8_t byte = data[p++];
        if (shift == 63 && byte > 1) {
            report_field(problem, field, "varint is longer than 10 bytes or overflows 64 bits");
            return -1;
        }
        result |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            break;
        }
        shift += 7;
    }
    *out = (int64_t)((result >> 1) ^ (0 - (result & 1)));
    *pos = p;
    return 0;
}

/* A varint length then that many bytes, inside data[*pos:limit]; -1 gives None. Inlined
 * at its four calls: a call per key, value and header costs a few percent of the loop. */
static inline __attribute__((always_inline)) int
read_bytes(const uint8_t *data, Py_ssize_t *pos, Py_ssize_t limit, const field_t *field,
           problem_t *problem, PyObject **out)
{
    int64_t length;
    if (read_varint(data, pos, limit, field, problem, &length) < 0) {
        return -1;
    }
    if (length == -1) {
        Py_INCREF(Py_None);
        *out = Py_None;
        return 0;
    }
    if (length < 0) {
        report_field(problem, field, "%lld is negative but not -1 (null)", (long long)length);
        return -1;
    }
    if (length > limit - *pos) {
        report_field(problem, field, "%lld runs past the end of the record (%zd bytes left)",
                     (long long)length, limit - *pos);
        return -1;
    }
    *out = PyBytes_FromStringAndSize((const char *)data + *pos, (Py_ssize_t)length);
    if (*out == NULL) {
        return -1;
    }
    *pos += (Py_ssize_t)length;
    return 0;
}

/* Header `number` of a record: a non-null UTF-8 key, then a value that may be null. */
static int
read_header(const uint8_t *data, Py_ssize_t *pos, Py_ssize_t limit, Py_ssize_t number,
            problem_t *problem, PyObject **out)
{
    const field_t key_length = {"headerKeyLength", number};
    const field_t value_length = {"headerValueLength", number};
    PyObject *name = NULL, *key = NULL, *value = NULL;
    if (read_bytes(data, pos, limit, &key_length, problem, &name) < 0) {
        return -1;
    }
    if (name == Py_None) {
        Py_DECREF(name);
        report(problem, "header %zd has a null key", number);
        return -1;
    }
    key = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), "strict");
    Py_DECREF(name);
    if (key == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            report(problem, "header %zd key is not UTF-8", number);
            return -1;
        }
        return -1;
    }
    if (read_bytes(data, pos, limit, &value_length, problem, &value) < 0) {
        Py_DECREF(key);
        return -1;
    }
    *out = PyTuple_Pack(2, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return *out == NULL ? -1 : 0;
}

/* The header count, then that many headers, inside data[*pos:limit]. */
static int
read_headers(const uint8_t *data, Py_ssize_t *pos, Py_ssize_t limit, problem_t *problem,
             PyObject **out)
{
    static const field_t header_count = {"header count", -1};
    int64_t count;
    if (read_varint(data, pos, limit, &header_count, problem, &count) < 0) {
        return -1;
    }
    if (count < 0) {
        report(problem, "header count %lld is negative", (long long)count);
        return -1;
    }
    /* a header takes two bytes at the least: a count above the bytes left cannot fit */
    if (count > limit - *pos) {
        report(problem,
               "header count %lld does not fit in the rest of the record (%zd bytes left)",
               (long long)count, limit - *pos);
        return -1;
    }
    if (count == 0) {
        Py_INCREF(empty_tuple);
        *out = empty_tuple;
        return 0;
    }
    PyObject *headers = PyTuple_New((Py_ssize_t)count);
    if (headers == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        PyObject *header = NULL;
        if (read_header(data, pos, limit, i, problem, &header) < 0) {
            Py_DECREF(headers);
            return -1;
        }
        PyTuple_SET_ITEM(headers, i, header);
    }
    *out = headers;
    return 0;
}

/* base + delta as a Python int, exact even where an int64 would overflow. */
static PyObject *
add_exact(int64_t base, int64_t delta)
{
    int64_t sum;
    if (!__builtin_add_overflow(base, delta, &sum)) {
        return PyLong_FromLongLong(sum);
    }
    PyObject *a = PyLong_FromLongLong(base);
    PyObject *b = PyLong_FromLongLong(delta);
    PyObject *result = (a && b) ? PyNumber_Add(a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    return result;
}

typedef struct {
    const uint8_t *data;
    Py_ssize_t start; /* the records section is data[start:end] */
    Py_ssize_t end;
    int64_t base_offset;
    int64_t base_timestamp;
    PyObject *log_append_time; /* NULL for CreateTime batches */
    PyTypeObject *record_type;
    PyObject *prefix;
} batch_t;

/* The five decoded fields of one record, owned references. */
typedef struct {
    PyObject *fields[5]; /* offset, timestamp, key, value, headers */
} fields_t;

static void
clear_fields(fields_t *f)
{
    for (int i = 0; i < 5; i++) {
        Py_CLEAR(f->fields[i]);
    }
}


/* The record at data[*pos], which must lie inside data[:b->end]. */
static int
read_fields(const batch_t *b, Py_ssize_t *pos, problem_t *problem, fields_t *f)
{
    static const field_t length_field = {"length", -1};
    static const field_t timestamp_delta_field = {"timestampDelta", -1};
    static const field_t offset_delta_field = {"offsetDelta", -1};
    static const field_t key_length = {"keyLength", -1};
    static const field_t value_length = {"valueLength", -1};
    const uint8_t *data = b->data;
    int64_t length, timestamp_delta, offset_delta;
    if (read_varint(data, pos, b->end, &length_field, problem, &length) < 0) {
        return -1;
    }
    if (length < MIN_RECORD_LENGTH) {
        report(problem, "record length %lld is below the minimum %d", (long long)length,
               MIN_RECORD_LENGTH);
        return -1;
    }
    if (length > b->end - *pos) {
        report(problem,
               "record length %lld runs past the end of the records section "
               "(%zd bytes left)",
               (long long)length, b->end - *pos);
        return -1;
    }
    Py_ssize_t record_end = *pos + (Py_ssize_t)length;
    *pos += 1; /* attributes: unused in v2 */
    if (read_varint(data, pos, record_end, &timestamp_delta_field, problem, &timestamp_delta) < 0 ||
        read_varint(data, pos, record_end, &offset_delta_field, problem, &offset_delta) < 0) {
        return -1;
    }
    if (read_bytes(data, pos, record_end, &key_length, problem, &f->fields[2]) < 0 ||
        read_bytes(data, pos, record_end, &value_length, problem, &f->fields[3]) < 0 ||
        read_headers(data, pos, record_end, problem, &f->fields[4]) < 0) {
        return -1;
    }
    if (*pos != record_end) {
        report(problem, "record length %lld disagrees with its fields: %zd bytes are left over",
               (long long)length, record_end - *pos);
        return -1;
    }
    f->fields[0] = add_exact(b->base_offset, offset_delta);
    if (b->log_append_time != NULL) {
        Py_INCREF(b->log_append_time);
        f->fields[1] = b->log_append_time;
    }
    else {
        f->fields[1] = add_exact(b->base_timestamp, timestamp_delta);
    }
    return (f->fields[0] == NULL || f->fields[1] == NULL) ? -1 : 0;
}

/* record_type(*prefix, *fields), built as tuple.__new__(record_type, ...) builds it. */
static PyObject *
build_record(const batch_t *b, fields_t *f)
{
    Py_ssize_t n_prefix = PyTuple_GET_SIZE(b->prefix);
    PyObject *record = b->record_type->tp_alloc(b->record_type, n_prefix + 5);
    if (record == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n_prefix; i++) {
        PyObject *item = PyTuple_GET_ITEM(b->prefix, i);
        Py_INCREF(item);
        PyTuple_SET_ITEM(record, i, item);
    }
    for (int i = 0; i < 5; i++) {
        PyTuple_SET_ITEM(record, n_prefix + i, f->fields[i]); /* steals */
        f->fields[i] = NULL;
    }
    return record;
}

static int
check_record_type(PyObject *record_type)
{
    if (!PyType_Check(record_type) ||
        !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass");
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)record_type;
    /* a NamedTuple adds no instance fields (no __dict__, empty __slots__) */
    if (type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        type->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "record_type must not add instance fields to tuple");
        return -1;
    }
    return 0;
}


/* Decodes record `index`, at data[*pos], into records[index]. On failure raises
 * CorruptRecordError naming the record (or passes a Python error on). `problem` is empty on
 * entry: the first problem ends the batch, so one buffer serves every record. */
static int
decode_one(const batch_t *b, Py_ssize_t index, Py_ssize_t *pos, problem_t *problem,
           PyObject *records)
{
    Py_ssize_t record_start = *pos;
    fields_t fields = {{NULL, NULL, NULL, NULL, NULL}};
    PyObject *record = NULL;
    if (read_fields(b, pos, problem, &fields) == 0) {
        record = build_record(b, &fields);
    }
    clear_fields(&fields);
    if (record == NULL) {
        if (problem->text[0] != '\0') {
            PyErr_Format(CorruptRecordError,
                         "record %zd of the batch at base offset %lld, at byte %zd of its "
                         "records: %s",
                         index, (long long)b->base_offset, record_start - b->start, problem->text);
        }
        return -1;
    }
    PyList_SET_ITEM(records, index, record);
    return 0;
}

static PyObject *
decode_records(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, end, record_count;
    long long base_offset, base_timestamp;
    PyObject *log_append_time, *record_type, *prefix;
    if (!PyArg_ParseTuple(args, "y*nnnLLOOO!:decode_records", &view, &start, &end,
                          &record_count, &base_offset, &base_timestamp, &log_append_time,
                          &record_type, &PyTuple_Type, &prefix)) {
        return NULL;
    }
    PyObject *records = NULL;
    if (start < 0 || start > end || end > view.len) {
        PyErr_SetString(PyExc_ValueError,
                        "start and end must satisfy 0 <= start <= end <= len(data)");
        goto done;
    }
    if (check_record_type(record_type) < 0) {
        goto done;
    }
    if (record_count < 0) {
        PyErr_Format(CorruptRecordError,
                     "record batch at base offset %lld has a negative record count %zd",
                     base_offset, record_count);
        goto done;
    }
    /* A count the bytes cannot hold fails inside the loop, by the record where the bytes
     * run out, so the list needs room for at most one record more than fits. */
    Py_ssize_t capacity = Py_MIN(record_count, (end - start) / MIN_RECORD_BYTES + 1);
    batch_t batch = {
        .data = (const uint8_t *)view.buf,
        .start = start,
        .end = end,
        .base_offset = base_offset,
        .base_timestamp = base_timestamp,
        .log_append_time = log_append_time == Py_None ? NULL : log_append_time,
        .record_type = (PyTypeObject *)record_type,
        .prefix = prefix,
    };
    records = PyList_New(capacity);
    if (records == NULL) {
        goto done;
    }
    Py_ssize_t pos = start;
    problem_t problem;
    problem.text[0] = '\0';
    for (Py_ssize_t i = 0; i < record_count; i++) {
        /* i < capacity holds whenever pos < end: each record takes MIN_RECORD_BYTES or more */
        if (pos == end || i >= capacity) {
            PyErr_Format(CorruptRecordError,
                         "record batch at base offset %lld ends after %zd of its %zd records",
                         base_offset, i, record_count);
            Py_CLEAR(records); /* list_dealloc skips the slots still NULL */
            goto done;
        }
        if (decode_one(&batch, i, &pos, &problem, records) < 0) {
            Py_CLEAR(records);
            goto done;
        }
    }
    if (pos != end) {
        PyErr_Format(CorruptRecordError,
                     "record batch at base offset %lld has %zd bytes after its %zd records",
                     base_offset, end - pos, record_count);
        Py_CLEAR(records);
    }
done:
    PyBuffer_Release(&view);
    return records;
}

static PyMethodDef methods[] = {
    {"decode_records", decode_records, METH_VARARGS,
     "decode_records(data, start, end, record_count, base_offset, base_timestamp, "
     "log_append_time, record_type, prefix) -> list of record_type"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_record_decoder",
    .m_doc = "RecordBatch v2 record decoding in C (the consumer's hot loop).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__record_decoder(void)
{
    PyObject *errors = PyImport_ImportModule("logstore.errors");
    if (errors == NULL) {
        return NULL;
    }
    CorruptRecordError = PyObject_GetAttrString(errors, "CorruptRecordError");
    Py_DECREF(errors);
    if (CorruptRecordError == NULL) {
        return NULL;
    }
    empty_tuple = PyTuple_New(0);
    if (empty_tuple == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
