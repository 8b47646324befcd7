/* A line being written: a fixed buffer, text put into it, floats as repr() writes them, ASCII
 * strings read in place. Included by _native.c (one translation unit). */

/* MIN_TIME_NS, MAX_TIME_NS of _lineprotocol.py */
#define MIN_TIME_NS (LLONG_MIN + 2)
#define MAX_TIME_NS (LLONG_MAX - 1)
/* Longer lines take the Python path (they are rare; a fixed buffer keeps this simple). The
 * encoder checks a point's key length only past _SHORT_KEY characters of prefix and fields, and
 * configure() refuses a _SHORT_KEY below this: no line that fits needs that check. */
#define LINE_BUFFER 4096

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

/* str(n) of an int64 (what %lld writes, without snprintf's cost). Returns its length; buffer
 * of 21 bytes at least. */
static int
format_int(long long n, char *out)
{
    char buffer[20];
    int start = 20, length = 0;
    unsigned long long magnitude = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    do {
        buffer[--start] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (n < 0) {
        out[length++] = '-';
    }
    memcpy(out + length, buffer + start, (size_t)(20 - start));
    return length + 20 - start;
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

