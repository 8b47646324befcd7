/* The common case of LineProtocolEncoder.encode_point, compiled (optional; see _lineprotocol.py).
 *
 * encode_point(prefixes, field_keys, fallback, point) -> str
 *
 * It writes a line only when the pure-Python encoder would write the same line with no count and
 * no error: the prefix (measurement + tag set) and every field key already in the encoder's
 * caches, everything ASCII, string fields short and free of quotes and backslashes, floats finite,
 * ints within int64, the time within InfluxDB's range, the line short. Anything else (a cache
 * miss, a drop to count, an error to raise) is handed, untouched, to ``fallback(point)``: the
 * pure-Python encoder, the reference, which fills the caches for the next point. It changes no
 * state of its own, so the two cannot disagree on counts or errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "_ryu/d2s.c"

/* MIN_TIME_NS, MAX_TIME_NS of _lineprotocol.py */
#define MIN_TIME_NS (LLONG_MIN + 2)
#define MAX_TIME_NS (LLONG_MAX - 1)
/* Longer lines take the Python path (they are rare; a fixed buffer keeps this simple). */
#define LINE_BUFFER 4096

static Py_ssize_t short_key = -1;    /* _SHORT_KEY */
static Py_ssize_t short_string = -1; /* _SHORT_STRING */

typedef struct {
    char data[LINE_BUFFER];
    Py_ssize_t size;
} line_t;

/* 0 if it does not fit */
static int
put(line_t *line, const char *text, Py_ssize_t size)
{
    if (size > LINE_BUFFER - line->size) {
        return 0;
    }
    memcpy(line->data + line->size, text, (size_t)size);
    line->size += size;
    return 1;
}

/* repr(x) of a finite float: Ryu's shortest digits, laid out as float_repr does ('r' mode:
 * exponent notation below 1e-4 and from 1e16, at least two exponent digits, ".0" on whole
 * numbers). Returns its length; buffer of 32 bytes at least. */
static int
format_float(double x, char *out)
{
    int n = 0;
    if (signbit(x)) {
        out[n++] = '-';
    }
    if (x == 0.0) {
        memcpy(out + n, "0.0", 3);
        return n + 3;
    }
    uint64_t mantissa;
    int32_t exponent;
    otel_luna_d2d(x, &mantissa, &exponent);
    char buffer[20];
    int start = 20, i;
    do {
        buffer[--start] = (char)('0' + mantissa % 10);
        mantissa /= 10;
    } while (mantissa);
    const char *digits = buffer + start;
    int count = 20 - start;
    int point = exponent + count; /* x = 0.digits × 10^point */
    if (point <= -4 || point > 16) {
        out[n++] = digits[0];
        if (count > 1) {
            out[n++] = '.';
            memcpy(out + n, digits + 1, (size_t)(count - 1));
            n += count - 1;
        }
        int e = point - 1;
        out[n++] = 'e';
        out[n++] = e < 0 ? '-' : '+';
        if (e < 0) {
            e = -e;
        }
        if (e >= 100) {
            out[n++] = (char)('0' + e / 100);
        }
        out[n++] = (char)('0' + e / 10 % 10);
        out[n++] = (char)('0' + e % 10);
    }
    else if (point <= 0) {
        out[n++] = '0';
        out[n++] = '.';
        for (i = 0; i < -point; i++) {
            out[n++] = '0';
        }
        memcpy(out + n, digits, (size_t)count);
        n += count;
    }
    else if (point >= count) {
        memcpy(out + n, digits, (size_t)count);
        n += count;
        for (i = 0; i < point - count; i++) {
            out[n++] = '0';
        }
        memcpy(out + n, ".0", 2);
        n += 2;
    }
    else {
        memcpy(out + n, digits, (size_t)point);
        n += point;
        out[n++] = '.';
        memcpy(out + n, digits + point, (size_t)(count - point));
        n += count - point;
    }
    return n;
}

/* An exact, compact, ASCII str: its bytes, else NULL. */
static const char *
ascii_of(PyObject *text, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text)) {
        return NULL;
    }
    *size = PyUnicode_GET_LENGTH(text);
    return (const char *)PyUnicode_1BYTE_DATA(text);
}

/* 1 written, 0 take the Python path, -1 error set */
static int
write_fields(line_t *line, PyObject *field_keys, PyObject *fields)
{
    Py_ssize_t pos = 0, count = 0, size;
    PyObject *key, *value;
    char number[32];
    while (PyDict_Next(fields, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            return 0;
        }
        PyObject *prefix = PyDict_GetItemWithError(field_keys, key); /* borrowed */
        if (prefix == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        const char *escaped = ascii_of(prefix, &size);
        if (escaped == NULL || (count && !put(line, ",", 1)) || !put(line, escaped, size)) {
            return 0;
        }
        PyTypeObject *kind = Py_TYPE(value);
        if (kind == &PyUnicode_Type) {
            const char *text = ascii_of(value, &size);
            if (text == NULL || size > short_string || memchr(text, '"', (size_t)size) != NULL ||
                memchr(text, '\\', (size_t)size) != NULL) {
                return 0;
            }
            if (!put(line, "\"", 1) || !put(line, text, size) || !put(line, "\"", 1)) {
                return 0;
            }
        }
        else if (kind == &PyFloat_Type) {
            double x = PyFloat_AS_DOUBLE(value);
            if (!isfinite(x)) {
                return 0; /* nonfinite_field: counted by the Python path */
            }
            if (!put(line, number, format_float(x, number))) {
                return 0;
            }
        }
        else if (kind == &PyLong_Type) {
            int overflow;
            long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow) {
                return 0; /* int_out_of_range */
            }
            if (n == -1 && PyErr_Occurred()) {
                return -1;
            }
            int written = snprintf(number, sizeof number, "%lldi", n);
            if (!put(line, number, written)) {
                return 0;
            }
        }
        else if (kind == &PyBool_Type) {
            if (value == Py_True ? !put(line, "true", 4) : !put(line, "false", 5)) {
                return 0;
            }
        }
        else {
            return 0; /* unsupported_field_type */
        }
        count++;
    }
    return count ? 1 : 0; /* no field: no_fields */
}

/* the line, Py_None for the Python path, NULL on error */
static PyObject *
try_encode(PyObject *prefixes, PyObject *field_keys, PyObject *point)
{
    if (!PyTuple_Check(point) || PyTuple_GET_SIZE(point) != 4) {
        Py_RETURN_NONE;
    }
    PyObject *fields = PyTuple_GET_ITEM(point, 2), *time_ns = PyTuple_GET_ITEM(point, 3);
    if (!PyDict_CheckExact(fields) || !PyLong_CheckExact(time_ns)) {
        Py_RETURN_NONE;
    }
    int overflow;
    long long time = PyLong_AsLongLongAndOverflow(time_ns, &overflow);
    if (time == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow || time < MIN_TIME_NS || time > MAX_TIME_NS) {
        Py_RETURN_NONE;
    }
    PyObject *cache_key = PyTuple_Pack(2, PyTuple_GET_ITEM(point, 0), PyTuple_GET_ITEM(point, 1));
    if (cache_key == NULL) {
        return NULL;
    }
    PyObject *prefix = PyDict_GetItemWithError(prefixes, cache_key); /* borrowed */
    Py_DECREF(cache_key);
    if (prefix == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    Py_ssize_t size;
    const char *text = ascii_of(prefix, &size);
    line_t line;
    line.size = 0;
    if (text == NULL || !put(&line, text, size) || !put(&line, " ", 1)) {
        Py_RETURN_NONE;
    }
    int written = write_fields(&line, field_keys, fields);
    if (written < 0) {
        return NULL;
    }
    if (written == 0 || line.size - 1 > short_key) { /* key too long: the Python path checks */
        Py_RETURN_NONE;
    }
    char number[24];
    int length = snprintf(number, sizeof number, " %lld", time);
    if (!put(&line, number, length)) {
        Py_RETURN_NONE;
    }
    PyObject *result = PyUnicode_New(line.size, 127);
    if (result != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(result), line.data, (size_t)line.size);
    }
    return result;
}

static PyObject *
encode_point(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_point(prefixes: dict, field_keys: dict, fallback, point)");
        return NULL;
    }
    PyObject *line = try_encode(args[0], args[1], args[3]);
    if (line == NULL) {
        PyErr_Clear(); /* whatever went wrong, the Python path meets it again and says it */
    }
    else if (line != Py_None) {
        return line;
    }
    else {
        Py_DECREF(line);
    }
    return PyObject_CallOneArg(args[2], args[3]);
}

static PyObject *
float_repr(PyObject *module, PyObject *value)
{
    double x = PyFloat_AsDouble(value);
    if (x == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!isfinite(x)) {
        PyErr_SetString(PyExc_ValueError, "not finite");
        return NULL;
    }
    char text[32];
    return PyUnicode_FromStringAndSize(text, format_float(x, text));
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    if (!PyArg_ParseTuple(args, "nn", &short_key, &short_string)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode_point", (PyCFunction)(void (*)(void))encode_point, METH_FASTCALL,
     "The line for a point, or fallback(point) when only the Python path can say."},
    {"float_repr", float_repr, METH_O, "repr() of a finite float, as the encoder writes it"},
    {"configure", configure, METH_VARARGS, "configure(short_key, short_string)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lineprotocol_c", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__lineprotocol_c(void)
{
    return PyModule_Create(&module);
}
