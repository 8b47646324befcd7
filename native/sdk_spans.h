/* The common case of a batch of SDK spans, read, mapped and encoded in one pass (see
 * otel_luna/ingest/_native.py, which calls it, and the Python it stands for: span_records in
 * ingest/_sdk.py, RequestMapper.add in mapping/_requests.py, SeriesTimes.claim in
 * mapping/_timestamps.py, LineProtocolEncoder.encode_point and Ingest.write_spans).
 *
 * sdk_spans(spans, start, services, mapper, prefixes, field_keys, lines, earliest, latest)
 *     -> (index of the first span it left, SERVER spans it mapped, the error that stopped it
 *         or None)
 *
 * From spans[start] on, in order, it takes the two kinds of span that make most of an
 * instrumented application's traffic, and stops at the first span that is neither:
 *
 * - a span that is no SERVER span and has no luna.* key, whose data nobody waits for (not in
 *   mapper._pending): nothing to write; its ended span is linked to its local parent
 *   (mapper._ended), as RequestMapper.wants does;
 * - a SERVER span without waiting data whose own luna.* keys (classified by the mapper,
 *   mapper._classified) are plain tags, float timings and int usages, whose tag set the mapper
 *   has cached (mapper._tagsets, nothing counted making it) and whose prefixes the encoder has
 *   cached (prefixes, field_keys), whose time is free or its own (SeriesTimes) and inside the
 *   window: its `requests` line, `errors` line for a failed request, `usages_statistic` line for
 *   its usages, appended to lines; its ended span remembered.
 *
 * Everything else - an unfinished span, a resource it cannot name, a value it would have to
 * count or convert, a cache miss, a collision of times - stops it before it changes anything for
 * that span: the Python path, the reference, takes the span and fills the caches for the next
 * ones. So the two write the same bytes and keep the same state, span after span
 * (tests/ingest/test_native_spans.py). An error of the C API stops it the same way (its lines
 * are appended last, all or none), and is handed back.
 *
 * It reads the SDK's ReadableSpan (exact type) by its attributes (_context, _start_time, ...) and
 * the mapper's and the times' state by theirs: their names are listed below, beside the Python
 * that keeps them.
 */

/* Set once by configure_sdk (otel_luna/ingest/_native.py). */
static PyObject *readable_span_type, *span_context_type, *status_type, *server_kind,
    *error_status, *requests_measurement, *errors_measurement, *usages_measurement, *luna_prefix,
    *unknown_error_tag; /* ("error_code", UNKNOWN_ERROR_CODE) */
static Py_ssize_t luna_prefix_length, max_tag_value_bytes;
static PyObject *no_luna_keys; /* () */

/* Interned names: the SDK's span, the mapper's and its times' state, the HTTP attributes. */
static PyObject *s_context, *s_end_time, *s_start_time, *s_attributes, *s_kind, *s_parent,
    *s_status, *s_resource, *s_status_code, *s_dict;
static PyObject *s_pending, *s_ended, *s_ended_before, *s_ended_generation, *s_batch_span_ids,
    *s_tagsets, *s_classified, *s_key_limit, *s_times, *s_current, *s_previous, *s_generation;
static PyObject *s_error_code, *s_service;
static PyObject *a_method_new, *a_method_old, *a_method_original, *a_route, *a_status_new,
    *a_status_old;

static int
intern(PyObject **name, const char *text)
{
    *name = PyUnicode_InternFromString(text);
    return *name == NULL ? -1 : 0;
}

static PyObject *
configure_sdk(PyObject *module, PyObject *args)
{
    PyObject *unknown_error_code;
    if (!PyArg_ParseTuple(args, "OOOOOUUUUUn", &readable_span_type, &span_context_type,
                          &status_type, &server_kind, &error_status, &requests_measurement,
                          &errors_measurement, &usages_measurement, &unknown_error_code,
                          &luna_prefix, &max_tag_value_bytes)) {
        return NULL;
    }
    if (intern(&s_error_code, "error_code") || intern(&s_service, "service") ||
        (unknown_error_tag = PyTuple_Pack(2, s_error_code, unknown_error_code)) == NULL) {
        return NULL;
    }
    if (!PyUnicode_IS_COMPACT_ASCII(luna_prefix)) {
        PyErr_SetString(PyExc_ValueError, "configure_sdk: the luna prefix is ASCII");
        return NULL;
    }
    if ((no_luna_keys = PyTuple_New(0)) == NULL) {
        return NULL;
    }
    Py_INCREF(errors_measurement);
    Py_INCREF(usages_measurement);
    Py_INCREF(readable_span_type);
    Py_INCREF(span_context_type);
    Py_INCREF(status_type);
    Py_INCREF(server_kind);
    Py_INCREF(error_status);
    Py_INCREF(requests_measurement);
    Py_INCREF(luna_prefix);
    luna_prefix_length = PyUnicode_GET_LENGTH(luna_prefix);
    if (intern(&s_context, "_context") || intern(&s_end_time, "_end_time") ||
        intern(&s_start_time, "_start_time") || intern(&s_attributes, "_attributes") ||
        intern(&s_kind, "_kind") || intern(&s_parent, "_parent") ||
        intern(&s_status, "_status") || intern(&s_resource, "_resource") ||
        intern(&s_status_code, "_status_code") || intern(&s_dict, "_dict") ||
        intern(&s_pending, "_pending") || intern(&s_ended, "_ended") ||
        intern(&s_ended_before, "_ended_before") ||
        intern(&s_ended_generation, "_ended_generation") ||
        intern(&s_batch_span_ids, "batch_span_ids") || intern(&s_tagsets, "_tagsets") ||
        intern(&s_classified, "_classified") || intern(&s_key_limit, "_key_limit") ||
        intern(&s_times, "times") || intern(&s_current, "_current") ||
        intern(&s_previous, "_previous") || intern(&s_generation, "_generation") ||
        intern(&a_method_new, "http.request.method") || intern(&a_method_old, "http.method") ||
        intern(&a_method_original, "http.request.method_original") ||
        intern(&a_route, "http.route") ||
        intern(&a_status_new, "http.response.status_code") ||
        intern(&a_status_old, "http.status_code")) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The state one call works on: the mapper's and the times' dicts and sets (held: Python code
 * may run during the call), the encoder's caches and the output (the caller's arguments). */
#define MEMO_SIZE 32
#define TAGSET_KEY 9 /* items of RequestMapper._points' key */
typedef struct {
    PyObject *mapper, *times;       /* new references */
    PyObject *pending, *ended;      /* mapper._pending, mapper._ended (new references) */
    Py_ssize_t ended_generation;    /* mapper._ended_generation */
    PyObject *batch_span_ids;       /* mapper.batch_span_ids (new reference) */
    PyObject *tagsets;              /* mapper._tagsets (new reference) */
    PyObject *classified;           /* mapper._classified (new reference) */
    Py_ssize_t key_limit;           /* mapper._key_limit */
    PyObject *current, *previous;   /* times._current, times._previous (new references) */
    Py_ssize_t generation;          /* times._generation */
    PyObject *prefixes, *field_keys, *lines; /* borrowed: the encoder's caches, the output */
    long long earliest, latest;     /* the window, clamped to int64 */
    PyObject *resource, *service;   /* the last SERVER span's resource and its service name */
    /* Memos for the call (the caches they read are not changed during it): the prefixes found,
     * by measurement and the object they were found by (a tag set, the errors tag set's base,
     * a service name); the last attribute keys classified. */
    struct {
        PyObject *measurement;  /* a module constant */
        PyObject *by, *prefix;  /* new references: Python code may run between two uses */
    } prefixes_found[MEMO_SIZE];
    int prefixes_count;
    PyObject *last_keys;       /* new reference, or NULL */
    PyObject *last_classified; /* new reference: from mapper._classified, or no_luna_keys */
    PyObject *last_status;     /* the last span's status (new reference), and whether ERROR */
    int last_failed;
} state_t;

static void
state_clear(state_t *state)
{
    Py_CLEAR(state->mapper);
    Py_CLEAR(state->times);
    Py_CLEAR(state->pending);
    Py_CLEAR(state->ended);
    Py_CLEAR(state->batch_span_ids);
    Py_CLEAR(state->tagsets);
    Py_CLEAR(state->classified);
    Py_CLEAR(state->current);
    Py_CLEAR(state->previous);
    Py_CLEAR(state->resource);
    Py_CLEAR(state->service);
    Py_CLEAR(state->last_keys);
    Py_CLEAR(state->last_classified);
    Py_CLEAR(state->last_status);
    for (int i = 0; i < state->prefixes_count; i++) {
        Py_CLEAR(state->prefixes_found[i].by);
        Py_CLEAR(state->prefixes_found[i].prefix);
    }
    state->prefixes_count = 0;
}

/* An attribute that must be an exact dict (set: 1 for a set); new reference or NULL. */
static PyObject *
exact_attribute(PyObject *owner, PyObject *name, int want_set)
{
    PyObject *value = PyObject_GetAttr(owner, name);
    if (value != NULL && !(want_set ? PySet_CheckExact(value) : PyDict_CheckExact(value))) {
        Py_DECREF(value);
        PyErr_SetString(PyExc_TypeError, "unexpected state");
        return NULL;
    }
    return value;
}

static int
size_attribute(PyObject *owner, PyObject *name, Py_ssize_t *size)
{
    PyObject *value = PyObject_GetAttr(owner, name);
    if (value == NULL) {
        return -1;
    }
    *size = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return *size == -1 && PyErr_Occurred() ? -1 : 0;
}

/* An int clamped to int64 (the window's bounds may be +-2**64: no bound). */
static int
clamped(PyObject *value, long long *out)
{
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (*out == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow) {
        *out = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    }
    return 0;
}

static int
state_init(state_t *state, PyObject *mapper, PyObject *prefixes, PyObject *field_keys,
           PyObject *lines, PyObject *earliest, PyObject *latest)
{
    memset(state, 0, sizeof *state);
    if (!PyDict_CheckExact(prefixes) || !PyDict_CheckExact(field_keys) ||
        !PyList_CheckExact(lines) || !PyLong_Check(earliest) || !PyLong_Check(latest)) {
        PyErr_SetString(PyExc_TypeError,
                        "sdk_spans: prefixes and field_keys dicts, lines list, int window");
        return -1;
    }
    state->prefixes = prefixes;
    state->field_keys = field_keys;
    state->lines = lines;
    Py_INCREF(mapper);
    state->mapper = mapper;
    if (clamped(earliest, &state->earliest) || clamped(latest, &state->latest) ||
        (state->pending = exact_attribute(mapper, s_pending, 0)) == NULL ||
        (state->ended = exact_attribute(mapper, s_ended, 0)) == NULL ||
        size_attribute(mapper, s_ended_generation, &state->ended_generation) ||
        (state->batch_span_ids = exact_attribute(mapper, s_batch_span_ids, 1)) == NULL ||
        (state->tagsets = exact_attribute(mapper, s_tagsets, 0)) == NULL ||
        (state->classified = exact_attribute(mapper, s_classified, 0)) == NULL ||
        size_attribute(mapper, s_key_limit, &state->key_limit) ||
        (state->times = PyObject_GetAttr(mapper, s_times)) == NULL ||
        (state->current = exact_attribute(state->times, s_current, 0)) == NULL ||
        (state->previous = exact_attribute(state->times, s_previous, 0)) == NULL ||
        size_attribute(state->times, s_generation, &state->generation)) {
        return -1;
    }
    return 0;
}

/* (*newer)[key] = value, and the two generations swapped when the newer is full, as the
 * mapper keeps its ended spans (self._ended_before, self._ended = ended, {}) and SeriesTimes its
 * times (self._previous, self._current = self._current, {}): owner.<older_name> becomes the
 * full dict, owner.<newer_name> a new one; *newer and (if given) *older follow. */
static int
set_in_generations(PyObject *owner, PyObject *newer_name, PyObject *older_name,
                   PyObject **newer, PyObject **older, Py_ssize_t generation, PyObject *key,
                   PyObject *value)
{
    if (PyDict_SetItem(*newer, key, value) < 0) {
        return -1;
    }
    if (PyDict_GET_SIZE(*newer) < generation) {
        return 0;
    }
    PyObject *fresh = PyDict_New();
    if (fresh == NULL || PyObject_SetAttr(owner, older_name, *newer) < 0 ||
        PyObject_SetAttr(owner, newer_name, fresh) < 0) {
        Py_XDECREF(fresh);
        return -1;
    }
    if (older != NULL) {
        Py_SETREF(*older, *newer);
    }
    else {
        Py_DECREF(*newer);
    }
    *newer = fresh;
    return 0;
}

/* mapper._ended[span_id] = value (a SERVER span's (service, start), another's parent id) */
static int
remember_ended(state_t *state, PyObject *span_id, PyObject *value)
{
    return set_in_generations(state->mapper, s_ended, s_ended_before, &state->ended, NULL,
                              state->ended_generation, span_id, value);
}

/* times._current[time] = owner */
static int
claim_time(state_t *state, PyObject *time, PyObject *owner)
{
    return set_in_generations(state->times, s_current, s_previous, &state->current,
                              &state->previous, state->generation, time, owner);
}

/* An int in [0, 2**bits) as little-endian bytes: 1, or 0 if it is another value. */
static int
unsigned_bytes(PyObject *value, unsigned char *out, int bits)
{
    if (!PyLong_CheckExact(value) || _PyLong_Sign(value) < 0 ||
        _PyLong_NumBits(value) > (size_t)bits) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_AsNativeBytes(value, out, bits / 8,
                                Py_ASNATIVEBYTES_LITTLE_ENDIAN |
                                    Py_ASNATIVEBYTES_UNSIGNED_BUFFER) >= 0;
#else
    return _PyLong_AsByteArray((PyLongObject *)value, out, (size_t)(bits / 8), 1, 0) == 0;
#endif
}

/* The attributes of a span as the Python path reads them (_attributes_of): the SDK's plain
 * dict under its BoundedAttributes, or a dict given as it is. New reference; NULL (no error
 * set) for anything else. */
static PyObject *
attributes_of(PyObject *span)
{
    PyObject *held = PyObject_GetAttr(span, s_attributes);
    if (held == NULL) {
        return NULL;
    }
    if (held == Py_None || PyDict_CheckExact(held)) {
        return held; /* None: no attribute */
    }
    PyObject *plain = PyObject_GetAttr(held, s_dict);
    Py_DECREF(held);
    if (plain != NULL && !PyDict_CheckExact(plain)) {
        Py_CLEAR(plain);
    }
    return plain;
}

/* 1 if every key is a str and none starts with luna.*, 0 if one does or is no str. */
static int
unmarked(PyObject *attributes)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    if (attributes == Py_None) {
        return 1;
    }
    const char *prefix = (const char *)PyUnicode_1BYTE_DATA(luna_prefix); /* ASCII */
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            return 0;
        }
        if (PyUnicode_GET_LENGTH(key) < luna_prefix_length) {
            continue;
        }
        if (PyUnicode_IS_COMPACT_ASCII(key)
                ? memcmp(PyUnicode_1BYTE_DATA(key), prefix, (size_t)luna_prefix_length) == 0
                : PyUnicode_Tailmatch(key, luna_prefix, 0, luna_prefix_length, -1) == 1) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
get_or_none(PyObject *attributes, PyObject *key)
{
    PyObject *value = attributes == Py_None ? NULL : PyDict_GetItemWithError(attributes, key);
    return value == NULL ? Py_None : value; /* borrowed; an error is impossible: str keys */
}

static const char HEX[] = "0123456789abcdef";

/* spread() of mapping/_timestamps.py: the trailing decimal zeros (at most 6) of time filled
 * with owner % resolution, owner = trace_id << 64 | span_id. */
static long long
spread(long long time, const unsigned char *trace, unsigned long long span_id)
{
    unsigned long long resolution = 10;
    while (resolution < 1000000 && time % (long long)(resolution * 10) == 0) {
        resolution *= 10;
    }
    unsigned __int128 trace_value = 0;
    for (int i = 15; i >= 0; i--) {
        trace_value = trace_value << 8 | trace[i];
    }
    /* owner % r = (trace % r * (2**64 % r) + span_id % r) % r, in 128 bits: no overflow */
    unsigned __int128 r = resolution;
    unsigned __int128 shift = ((unsigned __int128)1 << 64) % r;
    unsigned __int128 salt = (trace_value % r * shift + span_id % r) % r;
    return time + (long long)salt;
}

/* What one span comes to. */
enum { LEFT = 0, TAKEN = 1, FAILED = -1 };

/* A span that is no SERVER span: TAKEN (nothing to write, its parent link kept) or LEFT. */
static int
take_other(state_t *state, PyObject *context, PyObject *parent, PyObject *attributes)
{
    PyObject *span_id = PyTuple_GET_ITEM(context, 1);
    if (!PyLong_CheckExact(span_id) || !unmarked(attributes)) {
        return LEFT;
    }
    int waited_for = PyDict_GET_SIZE(state->pending) ? PyDict_Contains(state->pending, span_id) : 0;
    if (waited_for != 0) {
        return waited_for < 0 ? FAILED : LEFT;
    }
    if (parent == Py_None) {
        return TAKEN;
    }
    PyObject *remote = PyTuple_GET_ITEM(parent, 2), *parent_id = PyTuple_GET_ITEM(parent, 1);
    if (!PyBool_Check(remote) || !PyLong_CheckExact(parent_id)) {
        return LEFT;
    }
    if (remote == Py_True) {
        return TAKEN;
    }
    return remember_ended(state, span_id, parent_id) < 0 ? FAILED : TAKEN;
}

/* The service name of a resource, cached for the call: borrowed, or NULL (no error) if
 * services(resource) does not give a str first. */
static PyObject *
service_of(state_t *state, PyObject *services, PyObject *resource)
{
    if (resource == state->resource) {
        return state->service;
    }
    PyObject *named = PyObject_CallOneArg(services, resource);
    if (named == NULL) {
        PyErr_Clear(); /* the Python path meets it again and counts it */
        return NULL;
    }
    PyObject *name = PyTuple_Check(named) && PyTuple_GET_SIZE(named) > 0
                         ? PyTuple_GET_ITEM(named, 0)
                         : NULL;
    if (name == NULL || !PyUnicode_CheckExact(name)) {
        Py_DECREF(named);
        return NULL;
    }
    Py_INCREF(name);
    Py_DECREF(named);
    Py_INCREF(resource);
    Py_XSETREF(state->resource, resource);
    Py_XSETREF(state->service, name);
    return name;
}

/* The luna.* data of a SERVER span's own keys, when they are of the kinds written here. */
#define MOST_NAMES 64
typedef struct {
    PyObject *classified;              /* the keys' classification (new reference), or NULL */
    PyObject *tags;                    /* tuple of (name, value), or Py_None (new reference) */
    Py_ssize_t times, usages;          /* how many of each */
    PyObject *time_names[MOST_NAMES];  /* borrowed from the mapper's classification */
    double time_values[MOST_NAMES];
    PyObject *usage_names[MOST_NAMES]; /* borrowed */
    long long usage_values[MOST_NAMES];
} data_t;

/* _Kind of mapping/_requests.py: the kinds taken here */
enum { KIND_TIME = 0, KIND_TAG = 1, KIND_USAGE = 9 };

/* 1 if the tag value is one RequestMapper.add takes as it is (printable ASCII, no backslash,
 * within MAX_TAG_VALUE_BYTES) */
static int
plain_tag_value(PyObject *value)
{
    Py_ssize_t size;
    const char *text = ascii_of(value, &size);
    if (text == NULL || size > max_tag_value_bytes) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        if (text[i] < 0x20 || text[i] > 0x7e || text[i] == '\\') {
            return 0;
        }
    }
    return 1;
}

/* The span's own luna.* data into data, as RequestMapper.add gathers it: TAKEN, LEFT (a key or
 * value it would count, convert or treat otherwise) or FAILED. */
static int
gather(state_t *state, PyObject *attributes, data_t *data)
{
    Py_ssize_t count = PyDict_GET_SIZE(attributes), pos = 0, i = 0;
    PyObject *key, *value, *classified = NULL;
    PyObject *last = state->last_keys;
    if (last != NULL && PyTuple_GET_SIZE(last) == count) { /* spans of one kind: the same keys */
        while (PyDict_Next(attributes, &pos, &key, &value) && key == PyTuple_GET_ITEM(last, i)) {
            i++;
        }
        if (i == count) {
            classified = state->last_classified;
        }
    }
    if (classified == NULL) {
        PyObject *keys = PyTuple_New(count);
        if (keys == NULL) {
            return FAILED;
        }
        for (pos = 0, i = 0; PyDict_Next(attributes, &pos, &key, &value) && i < count; i++) {
            Py_INCREF(key);
            PyTuple_SET_ITEM(keys, i, key);
            if (!PyUnicode_CheckExact(key)) { /* hashing it could run Python code: its path */
                Py_DECREF(keys);
                return LEFT;
            }
        }
        classified = i == count ? PyDict_GetItemWithError(state->classified, keys) : NULL;
        if (classified == NULL && !PyErr_Occurred() && i == count && unmarked(attributes)) {
            classified = no_luna_keys; /* what _classify makes of them */
        }
        if (classified == NULL) {
            Py_DECREF(keys);
            return PyErr_Occurred() ? FAILED : LEFT; /* classified by the Python path first */
        }
        Py_XSETREF(state->last_keys, keys);
        Py_INCREF(classified);
        Py_XSETREF(state->last_classified, classified);
    }
    Py_INCREF(classified); /* its names are the data's: held while the span is taken */
    data->classified = classified;
    Py_ssize_t found = PyTuple_Check(classified) ? PyTuple_GET_SIZE(classified) : -1;
    if (found < 0 || found > state->key_limit || found > MOST_NAMES) {
        return LEFT;
    }
    PyObject *tags = NULL;
    for (i = 0; i < found; i++) {
        PyObject *item = PyTuple_GET_ITEM(classified, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
            goto left;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        PyObject *name = PyTuple_GET_ITEM(item, 2);
        value = PyDict_GetItemWithError(attributes, PyTuple_GET_ITEM(item, 0));
        if (value == NULL || !PyUnicode_CheckExact(name)) {
            PyErr_Clear();
            goto left;
        }
        if (kind == KIND_TIME && PyFloat_CheckExact(value)) {
            data->time_names[data->times] = name;
            data->time_values[data->times++] = 0.0 + PyFloat_AS_DOUBLE(value);
        }
        else if (kind == KIND_TAG && plain_tag_value(value)) {
            PyObject *pair = PyTuple_Pack(2, name, value);
            if (pair == NULL || (tags == NULL && (tags = PyList_New(0)) == NULL) ||
                PyList_Append(tags, pair) < 0) {
                Py_XDECREF(pair);
                Py_XDECREF(tags);
                return FAILED;
            }
            Py_DECREF(pair);
        }
        else if (kind == KIND_USAGE && PyLong_CheckExact(value)) {
            int overflow;
            long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow || number < 0) {
                goto left; /* attribute_invalid_usage, counted by the Python path */
            }
            if (number) {
                data->usage_names[data->usages] = name;
                data->usage_values[data->usages++] = number;
            }
        }
        else {
            PyErr_Clear();
            goto left;
        }
    }
    /* a name both a tag and a timing: the Python path keeps the tag and counts */
    Py_ssize_t tag_count = tags == NULL ? 0 : PyList_GET_SIZE(tags);
    for (i = 0; i < tag_count; i++) {
        PyObject *tag_name = PyTuple_GET_ITEM(PyList_GET_ITEM(tags, i), 0);
        for (Py_ssize_t t = 0; t < data->times; t++) {
            int same = PyUnicode_Compare(tag_name, data->time_names[t]);
            if (same == 0) {
                goto left;
            }
        }
    }
    if (tags == NULL) {
        Py_INCREF(Py_None);
        data->tags = Py_None;
    }
    else {
        data->tags = PyList_AsTuple(tags);
        Py_DECREF(tags);
        if (data->tags == NULL) {
            return FAILED;
        }
    }
    return TAKEN;
left:
    Py_XDECREF(tags);
    return LEFT;
}

/* ``key=`` of a field, escaped, from the encoder's cache: its ASCII text, or NULL. */
static const char *
field_key(state_t *state, PyObject *name, Py_ssize_t *size)
{
    PyObject *escaped = PyDict_GetItemWithError(state->field_keys, name);
    if (escaped == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return ascii_of(escaped, size);
}

/* prefixes[(measurement, tags)] (borrowed), or NULL (a miss: the Python path encodes it) */
static PyObject *
cached_prefix(state_t *state, PyObject *measurement, PyObject *tags)
{
    PyObject *key = PyTuple_Pack(2, measurement, tags);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *prefix = PyDict_GetItemWithError(state->prefixes, key);
    Py_DECREF(key);
    if (prefix == NULL) {
        PyErr_Clear();
    }
    return prefix;
}

/* The prefix of a measurement's point found by ``by`` (its tag set, the errors tag set's base,
 * the service of a usages point) in the call's memo: borrowed, or NULL. */
static PyObject *
remembered_prefix(state_t *state, PyObject *measurement, PyObject *by)
{
    for (int i = 0; i < state->prefixes_count; i++) {
        if (state->prefixes_found[i].by == by &&
            state->prefixes_found[i].measurement == measurement) {
            return state->prefixes_found[i].prefix;
        }
    }
    return NULL;
}

static void
remember_prefix(state_t *state, PyObject *measurement, PyObject *by, PyObject *prefix)
{
    if (state->prefixes_count < MEMO_SIZE) {
        state->prefixes_found[state->prefixes_count].measurement = measurement;
        Py_INCREF(by);
        Py_INCREF(prefix);
        state->prefixes_found[state->prefixes_count].by = by;
        state->prefixes_found[state->prefixes_count++].prefix = prefix;
    }
}

/* The ASCII text of the prefix of a point of ``measurement`` whose tag set ``tags_of(by)``
 * makes (a new reference, NULL with an error set if it cannot), found by ``by`` in the call's
 * memo first; NULL on a miss (or with an error set). */
static const char *
prefix_text(state_t *state, PyObject *measurement, PyObject *by,
            PyObject *(*tags_of)(PyObject *), Py_ssize_t *size)
{
    PyObject *prefix = remembered_prefix(state, measurement, by);
    if (prefix == NULL) {
        PyObject *tags = tags_of(by);
        if (tags == NULL) {
            return NULL;
        }
        prefix = cached_prefix(state, measurement, tags);
        Py_DECREF(tags);
        if (prefix == NULL) {
            return NULL;
        }
        remember_prefix(state, measurement, by, prefix);
    }
    return ascii_of(prefix, size);
}

/* A requests point's tag set: the cached one as it is. */
static PyObject *
requests_tags(PyObject *tags)
{
    Py_INCREF(tags);
    return tags;
}

/* A usages_statistic point's tag set: (("service", service),). */
static PyObject *
usages_tags(PyObject *service)
{
    PyObject *pair = PyTuple_Pack(2, s_service, service);
    PyObject *tags = pair == NULL ? NULL : PyTuple_Pack(1, pair);
    Py_XDECREF(pair);
    return tags;
}

/* The errors tag set: the cached one without error_code, with ("error_code", "0") in its
 * sorted place (as RequestMapper._points sorts it). New reference or NULL. */
static PyObject *
error_tags(PyObject *base)
{
    Py_ssize_t count = PyTuple_GET_SIZE(base), at = 0;
    while (at < count) {
        PyObject *item = PyTuple_GET_ITEM(base, at);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 0))) {
            return NULL;
        }
        if (PyUnicode_Compare(PyTuple_GET_ITEM(item, 0), s_error_code) > 0) {
            break;
        }
        at++;
    }
    PyObject *tags = PyTuple_New(count + 1);
    if (tags == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(base, i);
        Py_INCREF(item);
        PyTuple_SET_ITEM(tags, i < at ? i : i + 1, item);
    }
    Py_INCREF(unknown_error_tag);
    PyTuple_SET_ITEM(tags, at, unknown_error_tag);
    return tags;
}

/* A line into lines' list of new str: 0, or -1. */
static int
add_line(PyObject *out[], int *count, const line_t *line)
{
    PyObject *text = PyUnicode_New(line->size, 127);
    if (text == NULL) {
        return -1;
    }
    memcpy(PyUnicode_1BYTE_DATA(text), line->data, (size_t)line->size);
    out[(*count)++] = text;
    return 0;
}

/* " <time>" ending a line: 1, or 0 if it does not fit */
static int
put_time(line_t *line, long long time)
{
    char number[24];
    number[0] = ' ';
    int length = 1 + format_int(time, number + 1);
    return put(line, number, length);
}

/* mapper._tagsets[key] for the key made of ``items`` (borrowed), NULL on a miss (or with an
 * error set). (A memo of the call's last keys, compared item by item, cost more than it saved:
 * spans of one route differ in their tags.) */
static PyObject *
tagset_of(state_t *state, PyObject *items[TAGSET_KEY])
{
    PyObject *key = PyTuple_New(TAGSET_KEY);
    if (key == NULL) {
        return NULL;
    }
    for (int i = 0; i < TAGSET_KEY; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(key, i, items[i]);
    }
    PyObject *cached = PyDict_GetItemWithError(state->tagsets, key); /* borrowed */
    Py_DECREF(key);
    if (cached == NULL) {
        PyErr_Clear(); /* a miss, or unhashable */
    }
    return cached;
}

/* A SERVER span: TAKEN (its lines appended), LEFT or FAILED. */
static int
take_server(state_t *state, PyObject *services, PyObject *span, PyObject *context,
            PyObject *start_time, PyObject *end_time, PyObject *attributes)
{
    PyObject *span_id = PyTuple_GET_ITEM(context, 1);
    PyObject *trace_id = PyTuple_GET_ITEM(context, 0);
    unsigned char owner_bytes[24]; /* span id, then trace id: little-endian */
    if (!unsigned_bytes(span_id, owner_bytes, 64) ||
        !unsigned_bytes(trace_id, owner_bytes + 8, 128)) {
        return LEFT;
    }
    int waited_for = PyDict_GET_SIZE(state->pending) ? PyDict_Contains(state->pending, span_id) : 0;
    if (waited_for != 0) {
        return waited_for < 0 ? FAILED : LEFT;
    }
    int overflow;
    long long start = PyLong_AsLongLongAndOverflow(start_time, &overflow);
    if (overflow || start < 0 || start > MAX_TIME_NS - 1000000) {
        return LEFT; /* spread below could pass int64: out of InfluxDB's range in any case */
    }
    long long end = PyLong_AsLongLongAndOverflow(end_time, &overflow);
    if (overflow || end < start) {
        return LEFT; /* a negative duration is counted by the Python path */
    }
    /* the status and the resource, as the Python path reads them */
    PyObject *status = PyObject_GetAttr(span, s_status);
    if (status == NULL) {
        PyErr_Clear(); /* unreadable: the Python path counts it */
        return LEFT;
    }
    if (status != state->last_status) { /* spans share a few: the SDK's unset one, ... */
        if (Py_TYPE(status) != (PyTypeObject *)status_type) {
            Py_DECREF(status);
            return LEFT;
        }
        PyObject *code = PyObject_GetAttr(status, s_status_code);
        if (code == NULL) {
            PyErr_Clear();
            Py_DECREF(status);
            return LEFT;
        }
        state->last_failed = code == error_status;
        Py_DECREF(code);
        Py_XSETREF(state->last_status, status);
    }
    else {
        Py_DECREF(status);
    }
    PyObject *status_error = state->last_failed ? Py_True : Py_False;
    PyObject *resource = PyObject_GetAttr(span, s_resource);
    if (resource == NULL) {
        PyErr_Clear();
        return LEFT;
    }
    PyObject *service = service_of(state, services, resource);
    Py_DECREF(resource);
    if (service == NULL) {
        return LEFT;
    }
    /* RequestMapper.add: the span's own luna.* data (every key a str from here on: looking one
     * up runs no Python code) */
    data_t data;
    data.classified = data.tags = NULL;
    data.times = data.usages = 0;
    int outcome = attributes == Py_None ? TAKEN : gather(state, attributes, &data);
    if (outcome != TAKEN) {
        Py_XDECREF(data.classified);
        return outcome;
    }
    outcome = LEFT;
    if (data.tags == NULL) {
        Py_INCREF(Py_None);
        data.tags = Py_None;
    }
    int held = 0, written = 0;
    Py_ssize_t lines_before = PyList_GET_SIZE(state->lines);
    PyObject *owner = NULL, *time_key = NULL, *ended = NULL, *cached = NULL;
    PyObject *out[3] = {NULL, NULL, NULL};
    PyObject *route = get_or_none(attributes, a_route);
    if (route != Py_None && !PyUnicode_CheckExact(route)) {
        goto done; /* only a str route (or none: an unmatched request) is cached */
    }
    /* RequestMapper._points: the tag set cached under the same key */
    PyObject *raw_status = get_or_none(attributes, a_status_new);
    if (raw_status == Py_None) {
        raw_status = get_or_none(attributes, a_status_old);
    }
    PyObject *items[TAGSET_KEY] = {service,
                                   get_or_none(attributes, a_method_new),
                                   get_or_none(attributes, a_method_old),
                                   get_or_none(attributes, a_method_original),
                                   route,
                                   raw_status,
                                   (PyObject *)Py_TYPE(raw_status),
                                   status_error,
                                   data.tags};
    for (int i = 1; i < TAGSET_KEY - 3; i++) { /* what hashing and comparing keeps in C */
        PyTypeObject *type = Py_TYPE(items[i]);
        if (items[i] != Py_None && type != &PyUnicode_Type && type != &PyLong_Type &&
            type != &PyFloat_Type && type != &PyBool_Type) {
            goto done;
        }
    }
    cached = tagset_of(state, items);
    if (cached == NULL) {
        if (PyErr_Occurred()) {
            outcome = FAILED;
        }
        goto done; /* a miss, or unhashable: the Python path makes it */
    }
    Py_INCREF(cached);
    if (!PyTuple_CheckExact(cached) || PyTuple_GET_SIZE(cached) != 5 ||
        !PyTuple_Check(PyTuple_GET_ITEM(cached, 0)) ||
        !PyTuple_Check(PyTuple_GET_ITEM(cached, 1))) {
        goto done;
    }
    PyObject *tags = PyTuple_GET_ITEM(cached, 0), *status_code = PyTuple_GET_ITEM(cached, 2),
             *problems = PyTuple_GET_ITEM(cached, 4);
    if (!PyTuple_Check(problems) || PyTuple_GET_SIZE(problems) != 0) {
        goto done; /* counted at each use */
    }
    int failed = status_error == Py_True;
    if (status_code != Py_None) {
        long code_value = PyLong_Check(status_code) ? PyLong_AsLong(status_code) : -1;
        if (code_value == -1) {
            PyErr_Clear();
            goto done;
        }
        failed |= code_value >= 400;
    }
    /* SeriesTimes.claim: spread, then free or already the owner's; a collision is left */
    unsigned long long span_value = 0;
    for (int i = 7; i >= 0; i--) {
        span_value = span_value << 8 | owner_bytes[i];
    }
    long long time = start;
    if (time % 10 == 0) {
        time = spread(time, owner_bytes + 8, span_value);
    }
    if (time < MIN_TIME_NS || time > MAX_TIME_NS || time < state->earliest ||
        time > state->latest) {
        goto done; /* out of the window or of InfluxDB's range: counted by the Python path */
    }
#if PY_VERSION_HEX >= 0x030D0000
    owner = PyLong_FromUnsignedNativeBytes(owner_bytes, 24, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    owner = _PyLong_FromByteArray(owner_bytes, 24, 1, 0);
#endif
    time_key = PyLong_FromLongLong(time);
    if (owner == NULL || time_key == NULL) {
        outcome = FAILED;
        goto done;
    }
    PyObject *holder = PyDict_GetItemWithError(state->current, time_key);
    if (holder == NULL && !PyErr_Occurred()) {
        holder = PyDict_GetItemWithError(state->previous, time_key);
    }
    if (holder == NULL && PyErr_Occurred()) {
        outcome = FAILED;
        goto done;
    }
    if (holder != NULL) {
        int same = PyObject_RichCompareBool(holder, owner, Py_EQ);
        if (same <= 0) {
            outcome = same < 0 ? FAILED : LEFT; /* another owner's: moved by the Python path */
            goto done;
        }
        held = 1;
    }
    /* LineProtocolEncoder.encode_point of each point: prefix cached, fields, time */
    char request_id[46], number[32];
    Py_ssize_t size;
    memcpy(request_id, " request_id=\"", 13);
    for (int i = 0; i < 16; i++) {
        unsigned char byte = owner_bytes[8 + 15 - i];
        request_id[13 + 2 * i] = HEX[byte >> 4];
        request_id[14 + 2 * i] = HEX[byte & 15];
    }
    request_id[45] = '"';
    line_t line;
    line.size = 0;
    const char *text = prefix_text(state, requests_measurement, tags, requests_tags, &size);
    if (text == NULL || !put(&line, text, size) || !put(&line, request_id, 46) ||
        !put(&line, ",execution_time=", 16) ||
        !put(&line, number, format_float((double)(end - start) / 1e9, number))) {
        goto done;
    }
    for (Py_ssize_t t = 0; t < data.times; t++) {
        double value = data.time_values[t];
        text = field_key(state, data.time_names[t], &size);
        if (text == NULL || !isfinite(value) || !put(&line, ",", 1) || !put(&line, text, size) ||
            !put(&line, number, format_float(value, number))) {
            goto done; /* nonfinite_field, a key not cached yet: the Python path */
        }
    }
    if (!put_time(&line, time) || add_line(out, &written, &line)) {
        outcome = PyErr_Occurred() ? FAILED : LEFT;
        goto done;
    }
    if (failed) {
        line.size = 0;
        text = prefix_text(state, errors_measurement, PyTuple_GET_ITEM(cached, 1), error_tags,
                           &size);
        if (text == NULL || !put(&line, text, size) || !put(&line, request_id, 46) ||
            !put_time(&line, time) || add_line(out, &written, &line)) {
            outcome = PyErr_Occurred() ? FAILED : LEFT;
            goto done;
        }
    }
    if (data.usages) {
        line.size = 0;
        text = prefix_text(state, usages_measurement, service, usages_tags, &size);
        if (text == NULL || !put(&line, text, size) || !put(&line, " ", 1)) {
            outcome = PyErr_Occurred() ? FAILED : LEFT;
            goto done;
        }
        for (Py_ssize_t u = 0; u < data.usages; u++) {
            int length = format_int(data.usage_values[u], number);
            number[length++] = 'i';
            text = field_key(state, data.usage_names[u], &size);
            if (text == NULL || (u && !put(&line, ",", 1)) || !put(&line, text, size) ||
                !put(&line, number, length)) {
                goto done;
            }
        }
        if (!put_time(&line, time) || add_line(out, &written, &line)) {
            outcome = PyErr_Occurred() ? FAILED : LEFT;
            goto done;
        }
    }
    /* everything checked: the span's state changes, as RequestMapper.add's */
    ended = PyTuple_Pack(2, service, start_time);
    if (ended != NULL) {
        /* a str and an int: no cycle through it. Untracked, as the collector would make it
         * later, it keeps mapper._ended (up to ENDED_LIMIT of them) out of every collection. */
        PyObject_GC_UnTrack(ended);
    }
    if (ended == NULL || (PySet_GET_SIZE(state->batch_span_ids) &&
                          PySet_Discard(state->batch_span_ids, span_id) < 0) ||
        remember_ended(state, span_id, ended) < 0 ||
        (!held && claim_time(state, time_key, owner) < 0)) {
        outcome = FAILED;
        goto done;
    }
    for (int i = 0; i < written; i++) {
        if (PyList_Append(state->lines, out[i]) < 0) {
            /* none of the span's lines, or the Python path would write some twice */
            PyList_SetSlice(state->lines, lines_before, PyList_GET_SIZE(state->lines), NULL);
            outcome = FAILED;
            goto done;
        }
    }
    outcome = TAKEN;
done:
    Py_XDECREF(cached);
    Py_XDECREF(data.classified);
    for (int i = 0; i < written; i++) {
        Py_DECREF(out[i]);
    }
    Py_XDECREF(data.tags);
    Py_XDECREF(owner);
    Py_XDECREF(time_key);
    Py_XDECREF(ended);
    return outcome;
}

/* One span: TAKEN, LEFT or FAILED. */
static int
take_span(state_t *state, PyObject *services, PyObject *span, int *server)
{
    if (Py_TYPE(span) != (PyTypeObject *)readable_span_type) {
        return LEFT;
    }
    int outcome = LEFT;
    PyObject *context = NULL, *end_time = NULL, *start_time = NULL, *attributes = NULL,
             *kind = NULL, *parent = NULL;
    if ((context = PyObject_GetAttr(span, s_context)) == NULL ||
        (end_time = PyObject_GetAttr(span, s_end_time)) == NULL ||
        (start_time = PyObject_GetAttr(span, s_start_time)) == NULL ||
        (kind = PyObject_GetAttr(span, s_kind)) == NULL ||
        (parent = PyObject_GetAttr(span, s_parent)) == NULL) {
        PyErr_Clear(); /* not what the SDK makes: the Python path reads it, or counts it */
        goto done;
    }
    if (Py_TYPE(context) != (PyTypeObject *)span_context_type ||
        PyTuple_GET_SIZE(context) < 3 || !PyLong_CheckExact(end_time) ||
        !PyLong_CheckExact(start_time) ||
        (parent != Py_None && (Py_TYPE(parent) != (PyTypeObject *)span_context_type ||
                               PyTuple_GET_SIZE(parent) < 3))) {
        goto done; /* unfinished, or not what the SDK makes */
    }
    attributes = attributes_of(span);
    if (attributes == NULL) {
        PyErr_Clear();
        goto done;
    }
    if (kind == server_kind) {
        outcome = take_server(state, services, span, context, start_time, end_time, attributes);
        *server = outcome == TAKEN;
    }
    else {
        outcome = take_other(state, context, parent, attributes);
    }
done:
    Py_XDECREF(context);
    Py_XDECREF(end_time);
    Py_XDECREF(start_time);
    Py_XDECREF(attributes);
    Py_XDECREF(kind);
    Py_XDECREF(parent);
    return outcome;
}

static PyObject *
sdk_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (readable_span_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sdk_spans: configure_sdk first");
        return NULL;
    }
    if (nargs != 9 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "sdk_spans(spans: list, start, services, mapper, "
                                         "prefixes, field_keys, lines, earliest, latest)");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "sdk_spans: start >= 0");
        return NULL;
    }
    state_t state;
    if (state_init(&state, args[3], args[4], args[5], args[6], args[7], args[8]) < 0) {
        state_clear(&state);
        return NULL;
    }
    PyObject *spans = args[0];
    Py_ssize_t servers = 0;
    PyObject *failed = NULL;
    while (index < PyList_GET_SIZE(spans)) {
        PyObject *span = PyList_GET_ITEM(spans, index);
        Py_INCREF(span);
        int server = 0;
        int outcome = take_span(&state, args[2], span, &server);
        Py_DECREF(span);
        if (outcome == FAILED) {
            /* Not raised: the spans before are taken. The Python path takes this one (and meets
             * the error, if it is the span's); the error goes back for the log. */
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            if (value != NULL && traceback != NULL) {
                PyException_SetTraceback(value, traceback);
            }
            Py_XDECREF(type);
            Py_XDECREF(traceback);
            failed = value;
            break;
        }
        if (outcome == LEFT) {
            break;
        }
        servers += server;
        index++;
    }
    state_clear(&state);
    PyObject *result = Py_BuildValue("(nnO)", index, servers, failed == NULL ? Py_None : failed);
    Py_XDECREF(failed);
    return result;
}
