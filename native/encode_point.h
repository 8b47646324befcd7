/* The common case of LineProtocolEncoder.encode_point, compiled (see _lineprotocol.py).
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
            int written = format_int(n, number);
            number[written++] = 'i';
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
    if (written == 0) {
        Py_RETURN_NONE;
    }
    char number[24];
    number[0] = ' ';
    int length = 1 + format_int(time, number + 1);
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

