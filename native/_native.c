/* otel_luna._native: the optional compiled common cases (built by setup.py where a C compiler
 * and Python's headers are found). The pure-Python code is the reference: each function here
 * writes only what that code would write, and hands everything else back to it.
 *
 * - encode_point (encode_point.h): LineProtocolEncoder.encode_point's common case;
 * - sdk_spans (sdk_spans.h): a batch of SDK spans read, mapped and encoded in one pass, for the
 *   spans that make most of an instrumented application's traffic;
 * - float_repr: repr() of a float as both write it (for the tests).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ryu/d2s.c"
#include "line.h"
#include "encode_point.h"
#include "sdk_spans.h"

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
    Py_ssize_t short_key;
    if (!PyArg_ParseTuple(args, "nn", &short_key, &short_string)) {
        return NULL;
    }
    if (short_key < LINE_BUFFER) { /* see line.h: no line written here needs the key check */
        PyErr_SetString(PyExc_ValueError, "configure: short_key < LINE_BUFFER");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode_point", (PyCFunction)(void (*)(void))encode_point, METH_FASTCALL,
     "The line for a point, or fallback(point) when only the Python path can say."},
    {"float_repr", float_repr, METH_O, "repr() of a finite float, as the encoder writes it"},
    {"configure", configure, METH_VARARGS, "configure(short_key, short_string)"},
    {"sdk_spans", (PyCFunction)(void (*)(void))sdk_spans, METH_FASTCALL,
     "Map and encode spans[start:] while they are the common case: (next index, SERVER spans, "
     "error or None)."},
    {"configure_sdk", configure_sdk, METH_VARARGS,
     "configure_sdk(ReadableSpan, SpanContext, Status, SpanKind.SERVER, StatusCode.ERROR, "
     "requests, errors and usages measurements, unknown error code, luna prefix, "
     "MAX_TAG_VALUE_BYTES)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "otel_luna._native", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&module);
}
