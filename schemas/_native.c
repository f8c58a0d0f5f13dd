/* schemas._native: the profile's HSET arguments and their RESP bytes, in C (issue 18).
 *
 * Why: rendering a re-scored customer's profile (schemas.profile._render_python) and packing it for Redis
 * (streams.sinks.redis_profiles.pack_hset) took ~217k instructions per profile under callgrind, a third of an
 * assessed customer's, spent on CPython's object work (attribute reads, small strings, f-strings). Here it is
 * the same strings built from C numbers: ~87k, most of it the Python the render still calls.
 *
 * The Python functions stay the reference and the fallback: render() returns None whenever a value leaves the
 * ranges handled here (numbers beyond 64 bits or the fast ranges of _float/_iso/_money, a "%.4f" near a tie, a
 * type other than the scorers' own), and the caller renders that customer in Python. What stays Python is passed
 * in the context: the scorer's service_fields for ticket records, the churn reasons' JSON, and an episode whose
 * texts JSON would escape. tests/unit/test_native_profile.py holds the two byte for byte equal over scored
 * histories and hostile values.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define DAY_MS 86400000LL
#define HOUR_MS 3600000LL
#define MONTH_MS 2629746000LL          /* scoring.orders.MONTH_MS: int(30.436875 * DAY_MS) */
#define FAST_ISO_MS 4102444800000LL    /* schemas.profile._FAST_ISO_MS (2100-01-01) */
#define FAST_CENTS 1000000000000000000LL /* schemas.profile._FAST_CENTS (10**18) */
#define FAST_FLOAT 1e11                /* schemas.profile._float's exact range */
#define EXACT_DOUBLE 9007199254740992LL /* 2**53: ints below convert to double exactly */
#define N_FIELDS 51

/* the profile's fields in the renderer's order (CustomerProfile.model_fields; checked at import in Python) */
static const char *FIELD_NAMES[N_FIELDS] = {
    "customer_id", "currency", "revenue", "profit", "orders", "refunds", "aov", "revenue_window",
    "first_purchase_at", "last_purchase_at", "recency_days", "tenure_days", "orders_per_month", "r_score",
    "f_score", "m_score", "rfm_cell", "segment", "vip", "nps", "nps_category", "nps_previous", "csat",
    "csat_satisfied", "complaints_window", "complaint_worst_severity", "complaints_total", "tickets_total",
    "open_tickets", "reopened_total", "sla_breaches", "first_response_hours_mean", "last_first_response_hours",
    "last_resolution_hours", "oldest_open_ticket_hours", "p_alive", "expected_purchases", "expected_order_value",
    "clv", "clv_historical", "value_at_risk", "revenue_buckets", "churn_risk", "churn_level", "churn_reasons",
    "churn_alerts", "last_alert_at", "last_event_at", "events_total", "as_of", "episode",
};

static PyObject *fields[N_FIELDS];
static PyObject *s_empty, *s_true, *s_false, *s_zero, *s_empty_list;

/* attribute names */
static PyObject *a_orders, *a_first_purchase_ms, *a_last_purchase_ms, *a_refunds, *a_revenue_cents,
    *a_cost_cents, *a_revenue_buckets, *a_voice, *a_nps, *a_complaint_days, *a_csat, *a_complaints_total,
    *a_service, *a_tickets, *a_folded, *a_first_responses, *a_first_response_ms_sum, *a_reopens, *a_breaches,
    *a_rfm_cell, *a_segment, *a_vip, *a_churn, *a_alert_ms, *a_alerts, *a_last_event_ms, *a_events,
    *a_episodes, *a_p_alive, *a_expected_purchases, *a_expected_order_value_cents, *a_clv_predictive_cents,
    *a_clv_historical_cents, *a_score, *a_level, *a_reasons;

/* A render that leaves the handled ranges: the caller renders in Python (not an error). The line of the last one
 * is kept for the tests (last_bail()). */
#define BAIL (-2)
static int bail_line;
#define BAILED (bail_line = __LINE__, BAIL)
/* the same from a function returning an object: NULL with no exception set */
#define BAILED_NULL (bail_line = __LINE__, (PyObject *)NULL)

/* ---- numbers ---------------------------------------------------------------------------------------------- */

/* An exact int that fits 64 bits: 0, else BAIL (another type, or beyond), or -1 with an exception set. */
static int
as_i64(PyObject *o, long long *out)
{
    if (!PyLong_CheckExact(o))
        return BAILED;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
        return BAILED;
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* The attribute ``name`` of ``obj`` as a 64-bit int; ``*none`` set when it is None (nullable). */
static int
attr_i64(PyObject *obj, PyObject *name, long long *out, int *none)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int rc;
    if (v == Py_None && none != NULL) {
        *none = 1;
        rc = 0;
    }
    else {
        if (none != NULL)
            *none = 0;
        rc = as_i64(v, out);
    }
    Py_DECREF(v);
    return rc;
}

/* the truth of the attribute ``name`` of ``obj``: 1, 0, or -1 with an exception set */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int truth = PyObject_IsTrue(v);
    Py_DECREF(v);
    return truth;
}

static PyObject *
ascii(const char *text, Py_ssize_t n)
{
    return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, text, n);
}

/* the decimal digits of v at p (no sign), returning the end; snprintf's format parsing was most of a field */
static char *
put_digits(char *p, unsigned long long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *
put_int(char *p, long long v)
{
    if (v < 0) {
        *p++ = '-';
        return put_digits(p, 0ULL - (unsigned long long)v);
    }
    return put_digits(p, (unsigned long long)v);
}

/* ``width`` digits of v, zero-padded */
static char *
put_padded(char *p, long long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + width;
}

#define N_SMALL_INTS 1024
/* str(n) of 0 <= n < N_SMALL_INTS, made once (most counts are small) */
static PyObject *small_ints[N_SMALL_INTS];

/* str(v) of an int */
static PyObject *
int_text(long long v)
{
    if (v >= 0 && v < N_SMALL_INTS)
        return Py_NewRef(small_ints[v]);
    char buf[24];
    return ascii(buf, put_int(buf, v) - buf);
}

/* schemas.profile._money for cents in (-10**18, 10**18); NULL with no exception: BAIL */
static PyObject *
money_text(long long cents)
{
    char buf[32], *p = buf;
    if (cents < 0) {
        if (cents <= -FAST_CENTS)
            return BAILED_NULL;
        *p++ = '-';
        cents = -cents;
    }
    else if (cents >= FAST_CENTS)
        return BAILED_NULL;
    p = put_digits(p, (unsigned long long)(cents / 100));
    *p++ = '.';
    p = put_padded(p, cents % 100, 2);
    return ascii(buf, p - buf);
}

/* schemas.profile._float for -1e11 < value < 1e11: "%.4f" without its trailing zeros (one kept after the point) */
static PyObject *
float_text(double value)
{
    if (!(value > -FAST_FLOAT && value < FAST_FLOAT))
        return BAILED_NULL;
    /* value × 10^4 rounded to an integer is "%.4f"'s digits. The product is computed within half an ulp; below
     * 2^40 that is under 2^-13, so a fraction more than 1/1024 away from one half rounds the same as the exact
     * product would. Near a half (a tie or nearly), Python's own conversion decides. */
    double scaled = fabs(value) * 10000.0;
    if (scaled < 1099511627776.0) {
        double whole = floor(scaled), frac = scaled - whole;
        if (fabs(frac - 0.5) > 1.0 / 1024) {
            unsigned long long r = (unsigned long long)whole + (frac > 0.5);
            char buf[40], *p = buf;
            if (signbit(value))
                *p++ = '-'; /* "%.4f" keeps the sign of a negative that rounds to zero, and of -0.0 */
            p = put_digits(p, r / 10000);
            *p++ = '.';
            int decimals = (int)(r % 10000), keep = 4;
            char digits[4];
            put_padded(digits, decimals, 4);
            while (keep > 1 && digits[keep - 1] == '0')
                keep--;
            memcpy(p, digits, (size_t)keep);
            p += keep;
            return ascii(buf, p - buf);
        }
    }
    char *text = PyOS_double_to_string(value, 'f', 4, 0, NULL);
    if (text == NULL)
        return NULL;
    Py_ssize_t n = (Py_ssize_t)strlen(text);
    while (n > 0 && text[n - 1] == '0')
        n--;
    if (n > 0 && text[n - 1] == '.')
        n++; /* "3." -> "3.0": the zero after the point is still in the buffer */
    PyObject *out = ascii(text, n);
    PyMem_Free(text);
    return out;
}

/* v converts to a double exactly (|v| < 2^53): Python's int / int is then one correctly rounded division */
static int
exact(long long v)
{
    return v > -EXACT_DOUBLE && v < EXACT_DOUBLE;
}

/* floor division, as Python's // */
static long long
floordiv(long long a, long long b)
{
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* schemas.profile._iso for 0 <= ms < 2100-01-01: "YYYY-MM-DDTHH:MM:SS" + "Z" or ".mmm000Z" */
static PyObject *
iso_text(long long ms)
{
    if (ms < 0 || ms >= FAST_ISO_MS)
        return BAILED_NULL;
    long long days = ms / DAY_MS, rest = ms % DAY_MS;
    /* days since 1970-01-01 -> civil date (H. Hinnant's days_from_civil inverse) */
    long long z = days + 719468;
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long y = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1;
    long long m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2)
        y++;
    long long hour = rest / HOUR_MS, minute = rest / 60000 % 60, second = rest / 1000 % 60, milli = rest % 1000;
    char buf[40], *p = buf;
    p = put_padded(p, y, 4);
    *p++ = '-';
    p = put_padded(p, m, 2);
    *p++ = '-';
    p = put_padded(p, d, 2);
    *p++ = 'T';
    p = put_padded(p, hour, 2);
    *p++ = ':';
    p = put_padded(p, minute, 2);
    *p++ = ':';
    p = put_padded(p, second, 2);
    if (milli) {
        *p++ = '.';
        p = put_padded(p, milli, 3);
        memcpy(p, "000", 3);
        p += 3;
    }
    *p++ = 'Z';
    return ascii(buf, p - buf);
}

/* ``text(value)`` of an optional int (iso_text, money_text): "" for None; NULL: BAIL or error (PyErr_Occurred) */
static PyObject *
opt_int(PyObject *value, PyObject *(*text)(long long))
{
    if (value == Py_None)
        return Py_NewRef(s_empty);
    long long v;
    if (as_i64(value, &v) != 0)
        return NULL;
    return text(v);
}

static PyObject *
opt_iso(PyObject *value)
{
    return opt_int(value, iso_text);
}

static PyObject *
opt_money(PyObject *value)
{
    return opt_int(value, money_text);
}

static PyObject *
opt_float(PyObject *value)
{
    if (value == Py_None)
        return Py_NewRef(s_empty);
    if (!PyFloat_CheckExact(value))
        return BAILED_NULL;
    return float_text(PyFloat_AS_DOUBLE(value));
}

/* str() of an attribute that is a str or None ("" for None); another type goes through str() */
static PyObject *
opt_str(PyObject *value)
{
    if (value == Py_None)
        return Py_NewRef(s_empty);
    if (PyUnicode_CheckExact(value))
        return Py_NewRef(value);
    return PyObject_Str(value);
}

/* the items of a list or tuple and their number: 0, else -1 (another type). (An empty list has no item array.) */
static int
seq_items(PyObject *seq, PyObject *const **items, Py_ssize_t *size)
{
    if (PyList_CheckExact(seq)) {
        *size = PyList_GET_SIZE(seq);
        *items = (PyObject *const *)((PyListObject *)seq)->ob_item;
        return 0;
    }
    if (PyTuple_CheckExact(seq)) {
        *size = PyTuple_GET_SIZE(seq);
        *items = (PyObject *const *)((PyTupleObject *)seq)->ob_item;
        return 0;
    }
    return -1;
}

/* the items of a list or tuple of exactly ``n`` (at least ``-n`` when ``n`` < 0; n is never 0), else NULL */
static PyObject *const *
pair_items(PyObject *seq, Py_ssize_t n)
{
    Py_ssize_t size;
    PyObject *const *items;
    if (seq_items(seq, &items, &size) != 0 || (n >= 0 ? size != n : size < -n))
        return NULL;
    return items;
}

/* the second item of a [ms, score] pair (a list or tuple of at least two; Python indexes it), as an int */
static int
pair_score(PyObject *pair, long long *out)
{
    PyObject *const *item = pair_items(pair, -2);
    if (item == NULL)
        return BAILED;
    return as_i64(item[1], out);
}

/* ---- render ----------------------------------------------------------------------------------------------- */

/* a growing text buffer (PyMem), for the JSON parts */
typedef struct {
    char *buf;
    size_t len, cap;
} Writer;

static int
w_reserve(Writer *w, size_t more)
{
    if (w->len + more <= w->cap)
        return 0;
    size_t cap = (w->len + more) * 2;
    char *buf = PyMem_Realloc(w->buf, cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = buf;
    w->cap = cap;
    return 0;
}

static int
w_raw(Writer *w, const char *text, size_t n)
{
    if (w_reserve(w, n) != 0)
        return -1;
    memcpy(w->buf + w->len, text, n);
    w->len += n;
    return 0;
}

#define W_LIT(w, text) w_raw((w), (text), sizeof(text) - 1)


typedef struct {
    long long bucket_ms, window_buckets, complaint_window_days, csat_satisfied_min, nps_promoter_min,
        nps_passive_min;
    double default_margin;
    PyObject *promoter, *passive, *detractor; /* borrowed from the context tuple */
    PyObject *severities;                     /* tuple */
    PyObject *tickets_fn, *reasons_fn, *episode_fn;
} Context;

static int
read_context(PyObject *ctx, Context *c)
{
    if (!PyTuple_CheckExact(ctx) || PyTuple_GET_SIZE(ctx) != 14) {
        PyErr_SetString(PyExc_TypeError, "render: the context is not the 14-tuple schemas.profile builds");
        return -1;
    }
    long long *ints[] = {&c->bucket_ms, &c->window_buckets, &c->complaint_window_days, &c->csat_satisfied_min,
                         &c->nps_promoter_min, &c->nps_passive_min};
    for (int i = 0; i < 6; i++) {
        if (as_i64(PyTuple_GET_ITEM(ctx, i), ints[i]) != 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "render: a context number is not a 64-bit int");
            return -1;
        }
    }
    if (c->bucket_ms <= 0) {
        PyErr_SetString(PyExc_ValueError, "render: bucket_ms must be positive");
        return -1;
    }
    c->default_margin = PyFloat_AsDouble(PyTuple_GET_ITEM(ctx, 6));
    if (c->default_margin == -1.0 && PyErr_Occurred())
        return -1;
    c->promoter = PyTuple_GET_ITEM(ctx, 7);
    c->passive = PyTuple_GET_ITEM(ctx, 8);
    c->detractor = PyTuple_GET_ITEM(ctx, 9);
    c->severities = PyTuple_GET_ITEM(ctx, 10);
    c->tickets_fn = PyTuple_GET_ITEM(ctx, 11);
    c->reasons_fn = PyTuple_GET_ITEM(ctx, 12);
    c->episode_fn = PyTuple_GET_ITEM(ctx, 13);
    if (!PyTuple_CheckExact(c->severities)) {
        PyErr_SetString(PyExc_TypeError, "render: severities must be a tuple");
        return -1;
    }
    return 0;
}

/* the revenue buckets: their JSON ([[bucket start ms, cents], ...] sorted, as orjson writes it), the revenue
 * window (scoring.orders.window_revenue_cents) */
static int
buckets_part(PyObject *buckets, long long now_ms, const Context *c, PyObject **json, long long *window)
{
    if (!PyDict_CheckExact(buckets))
        return BAILED;
    Py_ssize_t n = PyDict_GET_SIZE(buckets);
    if (n == 0) {
        *json = Py_NewRef(s_empty_list);
        *window = 0;
        return 0;
    }
    long long small[2 * 16];
    long long *kv = n <= 16 ? small : PyMem_Malloc(sizeof(long long) * 2 * (size_t)n);
    if (kv == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = 0;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(buckets, &pos, &key, &value)) {
        if ((rc = as_i64(key, &kv[2 * i])) != 0 || (rc = as_i64(value, &kv[2 * i + 1])) != 0)
            goto done;
        /* sorted by bucket (insertion: a customer has at most window_buckets + 1) */
        Py_ssize_t j = i;
        while (j > 0 && kv[2 * (j - 1)] > kv[2 * j]) {
            long long k0 = kv[2 * j], v0 = kv[2 * j + 1];
            kv[2 * j] = kv[2 * (j - 1)];
            kv[2 * j + 1] = kv[2 * (j - 1) + 1];
            kv[2 * (j - 1)] = k0;
            kv[2 * (j - 1) + 1] = v0;
            j--;
        }
        i++;
    }
    long long current = floordiv(now_ms, c->bucket_ms);
    long long oldest = current - c->window_buckets + 1, sum = 0;
    for (i = 0; i < n; i++) {
        if (oldest <= kv[2 * i] && kv[2 * i] <= current && __builtin_add_overflow(sum, kv[2 * i + 1], &sum)) {
            rc = BAILED;
            goto done;
        }
    }
    *window = sum;
    Writer w = {PyMem_Malloc(2 + (size_t)n * 44), 0, 2 + (size_t)n * 44}; /* "[" "[-k,-v]," ... "]" */
    if (w.buf == NULL) {
        PyErr_NoMemory();
        rc = -1;
        goto done;
    }
    rc = W_LIT(&w, "[");
    for (i = 0; rc == 0 && i < n; i++) {
        long long start;
        char item[48], *p = item;
        if (__builtin_mul_overflow(kv[2 * i], c->bucket_ms, &start)) {
            rc = BAILED;
            break;
        }
        if (i)
            *p++ = ',';
        *p++ = '[';
        p = put_int(p, start);
        *p++ = ',';
        p = put_int(p, kv[2 * i + 1]);
        *p++ = ']';
        rc = w_raw(&w, item, (size_t)(p - item));
    }
    if (rc == 0)
        rc = W_LIT(&w, "]");
    if (rc == 0) {
        *json = ascii(w.buf, (Py_ssize_t)w.len);
        rc = *json == NULL ? -1 : 0;
    }
    PyMem_Free(w.buf);
done:
    if (kv != small)
        PyMem_Free(kv);
    return rc;
}

/* complaints in the window and the worst severity's name (scoring.voice.complaints_in_window) */
static int
complaints_part(PyObject *days, long long now_ms, const Context *c, PyObject **count_text, PyObject **worst_text)
{
    if (!PyDict_CheckExact(days))
        return BAILED;
    if (PyDict_GET_SIZE(days) == 0) {
        *count_text = Py_NewRef(s_zero);
        *worst_text = Py_NewRef(s_empty);
        return 0;
    }
    long long today = floordiv(now_ms, DAY_MS), oldest = today - c->complaint_window_days;
    long long count = 0, worst = 0;
    int any = 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    int rc;
    while (PyDict_Next(days, &pos, &key, &value)) {
        long long day, complaints, severity;
        if ((rc = as_i64(key, &day)) != 0)
            return rc;
        PyObject *const *item = pair_items(value, 2);
        if (item == NULL)
            return BAILED;
        if ((rc = as_i64(item[0], &complaints)) != 0 || (rc = as_i64(item[1], &severity)) != 0)
            return rc;
        if (oldest < day && day <= today) {
            if (__builtin_add_overflow(count, complaints, &count))
                return BAILED;
            if (!any || severity > worst)
                worst = severity;
            any = 1;
        }
    }
    if (any && (worst < 0 || worst >= PyTuple_GET_SIZE(c->severities)))
        return BAILED; /* an index Python would read from the end, or an IndexError: Python says which */
    *count_text = int_text(count);
    if (*count_text == NULL)
        return -1;
    *worst_text = Py_NewRef(any ? PyTuple_GET_ITEM(c->severities, worst) : s_empty);
    return 0;
}

/* the eight ticket fields of a customer without ticket records (from the folded totals) */
static int
folded_tickets(PyObject *folded, PyObject **out)
{
    long long n, sum, tickets, reopens, breaches;
    int rc;
    if ((rc = attr_i64(folded, a_first_responses, &n, NULL)) != 0 ||
        (rc = attr_i64(folded, a_first_response_ms_sum, &sum, NULL)) != 0 ||
        (rc = attr_i64(folded, a_tickets, &tickets, NULL)) != 0 ||
        (rc = attr_i64(folded, a_reopens, &reopens, NULL)) != 0 ||
        (rc = attr_i64(folded, a_breaches, &breaches, NULL)) != 0)
        return rc;
    if (n) {
        /* f.first_response_ms_sum / n / HOUR_MS: int / int is one correctly rounded division when both are exact
         * doubles, as here */
        if (!exact(sum) || !exact(n))
            return BAILED;
        out[4] = float_text((double)sum / (double)n / (double)HOUR_MS);
        if (out[4] == NULL)
            return PyErr_Occurred() ? -1 : BAIL;
    }
    else
        out[4] = Py_NewRef(s_empty);
    out[0] = int_text(tickets);
    out[1] = Py_NewRef(s_zero);
    out[2] = int_text(reopens);
    out[3] = int_text(breaches);
    out[5] = Py_NewRef(s_empty);
    out[6] = Py_NewRef(s_empty);
    out[7] = Py_NewRef(s_empty);
    if (out[0] == NULL || out[2] == NULL || out[3] == NULL)
        return -1;
    return 0;
}

/* the value at risk (scoring.clv.value_at_risk_cents): round(window × margin), half to even */
static int
value_at_risk(long long revenue, long long cost, long long window, double default_margin, long long *out)
{
    if (window <= 0) {
        *out = 0;
        return 0;
    }
    long long profit;
    if (__builtin_sub_overflow(revenue, cost, &profit))
        return BAILED;
    if (!exact(window) || !exact(revenue) || !exact(profit))
        return BAILED;
    double share = revenue > 0 ? (double)profit / (double)revenue : default_margin;
    share = share > 0.0 ? share : 0.0;
    share = share < 1.0 ? share : 1.0;
    double v = nearbyint((double)window * share); /* the default rounding mode: to nearest, ties to even */
    *out = (long long)v;
    return 0;
}

/* scoring.orders._average_cents for |cents| < 10**18 and a positive count */
static int
average_cents(long long cents, long long count, long long *out)
{
    if (count <= 0 || cents >= FAST_CENTS || cents <= -FAST_CENTS)
        return BAILED;
    long long q = floordiv(cents, count), r = cents - q * count, twice = 2 * r;
    if (twice > count || (twice == count && (q & 1)))
        q++;
    *out = q;
    return 0;
}

/* ---- the latest alert episode's JSON (schemas.profile._episode, as orjson writes it) --------------------------- */

/* a str as a JSON string; BAIL for one that JSON would escape (a quote, a backslash, a control character) or
 * that is not ASCII: orjson's escaping stays orjson's */
static int
w_text(Writer *w, PyObject *text)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return BAILED;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const char *data = (const char *)PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (data[i] < 0x20 || data[i] == '"' || data[i] == '\\')
            return BAILED;
    }
    if (w_reserve(w, (size_t)n + 2) != 0)
        return -1;
    w->buf[w->len++] = '"';
    memcpy(w->buf + w->len, data, (size_t)n);
    w->len += (size_t)n;
    w->buf[w->len++] = '"';
    return 0;
}

/* a str or null */
static int
w_opt_text(Writer *w, PyObject *text)
{
    return text == Py_None ? W_LIT(w, "null") : w_text(w, text);
}

/* the formatted value of a text maker (iso_text, money_text), as a JSON string; NULL maker result: BAIL/error */
static int
w_made(Writer *w, PyObject *made)
{
    if (made == NULL)
        return PyErr_Occurred() ? -1 : BAIL;
    int rc = w_text(w, made);
    Py_DECREF(made);
    return rc;
}

/* an optional time attribute: an ISO string or null */
static int
w_opt_time(Writer *w, PyObject *obj, PyObject *name)
{
    long long ms;
    int none, rc = attr_i64(obj, name, &ms, &none);
    if (rc != 0)
        return rc;
    return none ? W_LIT(w, "null") : w_made(w, iso_text(ms));
}

static int
w_attr_text(Writer *w, PyObject *obj, PyObject *name, int nullable)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int rc = nullable ? w_opt_text(w, v) : w_text(w, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *a_first_alert, *a_last_alert, *a_raised_ms, *a_status, *a_owner, *a_outcome,
    *a_closed_ms, *a_purchased_ms, *a_recovered_cents, *a_destinations, *a_settled;

static int
episode_parts(Writer *w, PyObject *customer_id, PyObject *e)
{
    int rc;
    long long first, last;
    if ((rc = attr_i64(e, a_first_alert, &first, NULL)) != 0 || (rc = attr_i64(e, a_last_alert, &last, NULL)) != 0)
        return rc;
    if (!PyUnicode_CheckExact(customer_id) || !PyUnicode_IS_ASCII(customer_id))
        return BAILED;
    /* "{cid}:churn:{n}": checked as one text */
    for (int i = 0; i < 2; i++) {
        PyObject *id = PyUnicode_FromFormat("%U:churn:%lld", customer_id, i ? last : first);
        if (id == NULL)
            return -1;
        if ((rc = i ? W_LIT(w, ",\"latest_alert_id\":") : W_LIT(w, "{\"alert_id\":")) != 0) {
            Py_DECREF(id);
            return rc;
        }
        rc = w_text(w, id);
        Py_DECREF(id);
        if (rc != 0)
            return rc;
    }
    long long raised;
    if ((rc = attr_i64(e, a_raised_ms, &raised, NULL)) != 0 || (rc = W_LIT(w, ",\"raised_at\":")) != 0 ||
        (rc = w_made(w, iso_text(raised))) != 0)
        return rc;
    if ((rc = W_LIT(w, ",\"level\":")) != 0 || (rc = w_attr_text(w, e, a_level, 0)) != 0 ||
        (rc = W_LIT(w, ",\"status\":")) != 0 || (rc = w_attr_text(w, e, a_status, 0)) != 0 ||
        (rc = W_LIT(w, ",\"owner\":")) != 0 || (rc = w_attr_text(w, e, a_owner, 1)) != 0 ||
        (rc = W_LIT(w, ",\"outcome\":")) != 0 || (rc = w_attr_text(w, e, a_outcome, 1)) != 0 ||
        (rc = W_LIT(w, ",\"closed_at\":")) != 0 || (rc = w_opt_time(w, e, a_closed_ms)) != 0 ||
        (rc = W_LIT(w, ",\"saved_at\":")) != 0 || (rc = w_opt_time(w, e, a_purchased_ms)) != 0)
        return rc;
    PyObject *recovered = PyObject_GetAttr(e, a_recovered_cents);
    if (recovered == NULL)
        return -1;
    PyObject *money = opt_money(recovered);
    Py_DECREF(recovered);
    if ((rc = W_LIT(w, ",\"recovered\":")) != 0 || (rc = w_made(w, money)) != 0)
        return rc;
    PyObject *destinations = PyObject_GetAttr(e, a_destinations);
    if (destinations == NULL)
        return -1;
    PyObject *const *items;
    Py_ssize_t n;
    if (seq_items(destinations, &items, &n) != 0) {
        Py_DECREF(destinations);
        return BAILED;
    }
    rc = W_LIT(w, ",\"destinations\":[");
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        if (i)
            rc = W_LIT(w, ",");
        if (rc == 0)
            rc = w_text(w, items[i]);
    }
    Py_DECREF(destinations);
    if (rc != 0 || (rc = W_LIT(w, "],\"settled\":")) != 0)
        return rc;
    PyObject *settled = PyObject_GetAttr(e, a_settled);
    if (settled == NULL)
        return -1;
    if (!PyBool_Check(settled)) { /* orjson writes another type otherwise: Python's */
        Py_DECREF(settled);
        return BAILED;
    }
    rc = settled == Py_True ? W_LIT(w, "true}") : W_LIT(w, "false}");
    Py_DECREF(settled);
    return rc;
}

/* the JSON of the latest episode of ``state`` (an EpisodeState), "" without one; NULL with no exception: BAIL */
static PyObject *
episode_json(PyObject *customer_id, PyObject *state)
{
    PyObject *episodes = PyObject_GetAttr(state, a_episodes);
    if (episodes == NULL)
        return NULL;
    PyObject *const *items;
    Py_ssize_t n;
    if (seq_items(episodes, &items, &n) != 0) {
        Py_DECREF(episodes);
        return BAILED_NULL;
    }
    if (n == 0) {
        Py_DECREF(episodes);
        return Py_NewRef(s_empty);
    }
    PyObject *e = Py_NewRef(items[n - 1]);
    Py_DECREF(episodes);
    Writer w = {PyMem_Malloc(512), 0, 512};
    if (w.buf == NULL) {
        Py_DECREF(e);
        return PyErr_NoMemory();
    }
    int rc = episode_parts(&w, customer_id, e);
    Py_DECREF(e);
    PyObject *out = rc == 0 ? ascii(w.buf, (Py_ssize_t)w.len) : NULL;
    PyMem_Free(w.buf);
    return out;
}

#define TAKE(slot, expr)                                                                                              \
    do {                                                                                                              \
        values[slot] = (expr);                                                                                        \
        if (values[slot] == NULL)                                                                                     \
            goto fail;                                                                                                \
    } while (0)

/* values[slot] = format(obj.name), the attribute released whatever came of it */
#define TAKE_ATTR(slot, obj, name, format)                                                                            \
    do {                                                                                                              \
        tmp = PyObject_GetAttr((obj), (name));                                                                        \
        if (tmp == NULL)                                                                                              \
            goto fail;                                                                                                \
        values[slot] = format(tmp);                                                                                   \
        Py_CLEAR(tmp);                                                                                                \
        if (values[slot] == NULL)                                                                                     \
            goto fail;                                                                                                \
    } while (0)

/* out of the handled ranges: the caller renders this customer in Python */
#define GIVE_UP()                                                                                                     \
    do {                                                                                                              \
        bail_line = __LINE__;                                                                                         \
        goto fail;                                                                                                    \
    } while (0)

#define CHECK(call)                                                                                                   \
    do {                                                                                                              \
        int rc_ = (call);                                                                                             \
        if (rc_ != 0)                                                                                                 \
            goto fail;                                                                                                \
    } while (0)

static PyObject *
render(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "render(customer_id, state, now_ms, context, currency, clv, risk) takes 7 arguments");
        return NULL;
    }
    PyObject *customer_id = args[0], *state = args[1], *context = args[3], *currency = args[4], *clv = args[5],
             *risk = args[6];
    Context c;
    long long now_ms;
    if (read_context(context, &c) != 0)
        return NULL;
    int now_rc = as_i64(args[2], &now_ms);
    if (now_rc == -1)
        return NULL;
    if (now_rc == BAIL)
        Py_RETURN_NONE;
    if (!PyUnicode_CheckExact(customer_id) || !PyUnicode_CheckExact(currency))
        Py_RETURN_NONE;

    PyObject *values[N_FIELDS] = {NULL};
    PyObject *o = NULL, *voice = NULL, *service = NULL, *folded = NULL, *churn = NULL, *tmp = NULL, *nps = NULL;
    PyObject *result = NULL;
    long long at_risk = 0;

    values[0] = Py_NewRef(customer_id);
    values[1] = Py_NewRef(currency);

    /* orders */
    o = PyObject_GetAttr(state, a_orders);
    if (o == NULL)
        goto fail;
    long long revenue, cost, orders, refunds, first = 0, last = 0;
    int first_none, last_none;
    CHECK(attr_i64(o, a_revenue_cents, &revenue, NULL));
    CHECK(attr_i64(o, a_cost_cents, &cost, NULL));
    CHECK(attr_i64(o, a_orders, &orders, NULL));
    CHECK(attr_i64(o, a_refunds, &refunds, NULL));
    CHECK(attr_i64(o, a_first_purchase_ms, &first, &first_none));
    CHECK(attr_i64(o, a_last_purchase_ms, &last, &last_none));
    long long profit;
    if (__builtin_sub_overflow(revenue, cost, &profit))
        GIVE_UP();
    TAKE(2, money_text(revenue));
    TAKE(3, money_text(profit));
    TAKE(4, int_text(orders));
    TAKE(5, int_text(refunds));
    if (orders) {
        long long aov;
        CHECK(average_cents(revenue, orders, &aov));
        TAKE(6, money_text(aov));
    }
    else
        values[6] = Py_NewRef(s_empty);
    if (!last_none && !first_none) {
        long long tenure_ms, recency_ms;
        if (__builtin_sub_overflow(now_ms, first, &tenure_ms) || __builtin_sub_overflow(now_ms, last, &recency_ms))
            GIVE_UP();
        tenure_ms = now_ms > first ? tenure_ms : 0;
        recency_ms = now_ms > last ? recency_ms : 0;
        if (!exact(tenure_ms) || !exact(recency_ms) || !exact(orders))
            GIVE_UP();
        double months = (double)tenure_ms / (double)MONTH_MS;
        TAKE(10, float_text((double)recency_ms / (double)DAY_MS));
        TAKE(11, float_text((double)tenure_ms / (double)DAY_MS));
        TAKE(12, float_text((double)orders / (months > 1.0 ? months : 1.0)));
    }
    else {
        values[10] = Py_NewRef(s_empty);
        values[11] = Py_NewRef(s_empty);
        values[12] = Py_NewRef(s_empty);
    }
    TAKE(8, first_none ? Py_NewRef(s_empty) : iso_text(first));
    TAKE(9, last_none ? Py_NewRef(s_empty) : iso_text(last));
    long long window;
    tmp = PyObject_GetAttr(o, a_revenue_buckets);
    if (tmp == NULL)
        goto fail;
    CHECK(buckets_part(tmp, now_ms, &c, &values[41], &window));
    Py_CLEAR(tmp);
    TAKE(7, money_text(window));
    CHECK(value_at_risk(revenue, cost, window, c.default_margin, &at_risk));
    TAKE(40, money_text(at_risk));

    /* RFM, segment, VIP */
    tmp = PyObject_GetAttr(state, a_rfm_cell);
    if (tmp == NULL)
        goto fail;
    if (tmp == Py_None) {
        for (int i = 13; i <= 16; i++)
            values[i] = Py_NewRef(s_empty);
    }
    else {
        if (!PyUnicode_CheckExact(tmp) || PyUnicode_GET_LENGTH(tmp) < 3)
            GIVE_UP();
        for (int i = 0; i < 3; i++)
            TAKE(13 + i, PyUnicode_Substring(tmp, i, i + 1));
        values[16] = Py_NewRef(tmp);
    }
    Py_CLEAR(tmp);
    TAKE_ATTR(17, state, a_segment, opt_str);
    int vip = attr_true(state, a_vip);
    if (vip < 0)
        goto fail;
    values[18] = Py_NewRef(vip ? s_true : s_false);

    /* voice */
    voice = PyObject_GetAttr(state, a_voice);
    if (voice == NULL)
        goto fail;
    nps = PyObject_GetAttr(voice, a_nps);
    if (nps == NULL)
        goto fail;
    Py_ssize_t n_answers;
    PyObject *const *answers;
    if (seq_items(nps, &answers, &n_answers) != 0)
        GIVE_UP();
    if (n_answers > 0) {
        long long score;
        CHECK(pair_score(answers[0], &score));
        TAKE(19, int_text(score));
        values[20] = Py_NewRef(score >= c.nps_promoter_min  ? c.promoter
                               : score >= c.nps_passive_min ? c.passive
                                                            : c.detractor);
    }
    else {
        values[19] = Py_NewRef(s_empty);
        values[20] = Py_NewRef(s_empty);
    }
    if (n_answers > 1) {
        long long previous;
        CHECK(pair_score(answers[1], &previous));
        TAKE(21, int_text(previous));
    }
    else
        values[21] = Py_NewRef(s_empty);
    tmp = PyObject_GetAttr(voice, a_csat);
    if (tmp == NULL)
        goto fail;
    if (tmp == Py_None) {
        values[22] = Py_NewRef(s_empty);
        values[23] = Py_NewRef(s_empty);
    }
    else {
        long long csat;
        CHECK(pair_score(tmp, &csat));
        TAKE(22, int_text(csat));
        values[23] = Py_NewRef(csat >= c.csat_satisfied_min ? s_true : s_false);
    }
    Py_CLEAR(tmp);
    tmp = PyObject_GetAttr(voice, a_complaint_days);
    if (tmp == NULL)
        goto fail;
    CHECK(complaints_part(tmp, now_ms, &c, &values[24], &values[25]));
    Py_CLEAR(tmp);
    long long complaints_total;
    CHECK(attr_i64(voice, a_complaints_total, &complaints_total, NULL));
    TAKE(26, int_text(complaints_total));

    /* service */
    service = PyObject_GetAttr(state, a_service);
    if (service == NULL)
        goto fail;
    int has_tickets = attr_true(service, a_tickets);
    if (has_tickets < 0)
        goto fail;
    if (has_tickets) {
        /* ticket records: the scorer's scoring.tickets.service_fields (Python), its numbers formatted here */
        tmp = PyObject_CallFunctionObjArgs(c.tickets_fn, service, args[2], NULL);
        if (tmp == NULL)
            goto fail;
        if (!PyTuple_CheckExact(tmp) || PyTuple_GET_SIZE(tmp) != 8) {
            PyErr_SetString(PyExc_TypeError, "render: service_fields must return a tuple of 8");
            goto fail;
        }
        for (int i = 0; i < 4; i++) {
            long long count;
            CHECK(as_i64(PyTuple_GET_ITEM(tmp, i), &count));
            TAKE(27 + i, int_text(count));
        }
        for (int i = 4; i < 8; i++)
            TAKE(27 + i, opt_float(PyTuple_GET_ITEM(tmp, i)));
        Py_CLEAR(tmp);
    }
    else {
        folded = PyObject_GetAttr(service, a_folded);
        if (folded == NULL)
            goto fail;
        CHECK(folded_tickets(folded, &values[27]));
    }

    /* CLV */
    TAKE_ATTR(35, clv, a_p_alive, opt_float);
    TAKE_ATTR(36, clv, a_expected_purchases, opt_float);
    TAKE_ATTR(37, clv, a_expected_order_value_cents, opt_money);
    TAKE_ATTR(38, clv, a_clv_predictive_cents, opt_money);
    TAKE_ATTR(39, clv, a_clv_historical_cents, opt_money);

    /* churn */
    long long score;
    CHECK(attr_i64(risk, a_score, &score, NULL));
    TAKE(42, int_text(score));
    TAKE_ATTR(43, risk, a_level, opt_str); /* str(level); never None */
    tmp = PyObject_GetAttr(risk, a_reasons);
    if (tmp == NULL)
        goto fail;
    int has_reasons = PyObject_IsTrue(tmp);
    if (has_reasons < 0)
        goto fail;
    if (has_reasons) {
        PyObject *json = PyObject_CallOneArg(c.reasons_fn, tmp);
        Py_CLEAR(tmp);
        TAKE(44, json);
    }
    else {
        Py_CLEAR(tmp);
        values[44] = Py_NewRef(s_empty_list);
    }
    churn = PyObject_GetAttr(state, a_churn);
    if (churn == NULL)
        goto fail;
    long long alerts;
    CHECK(attr_i64(churn, a_alerts, &alerts, NULL));
    TAKE(45, int_text(alerts));
    TAKE_ATTR(46, churn, a_alert_ms, opt_iso);
    TAKE_ATTR(47, state, a_last_event_ms, opt_iso);

    /* events, as of, episode */
    tmp = PyObject_GetAttr(state, a_events);
    if (tmp == NULL)
        goto fail;
    if (!PyDict_CheckExact(tmp))
        GIVE_UP();
    long long events = 0;
    {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(tmp, &pos, &key, &value)) {
            long long n;
            CHECK(as_i64(value, &n));
            if (__builtin_add_overflow(events, n, &events))
                GIVE_UP();
        }
    }
    Py_CLEAR(tmp);
    TAKE(48, int_text(events));
    TAKE(49, iso_text(now_ms)); /* as_of */
    tmp = PyObject_GetAttr(state, a_episodes);
    if (tmp == NULL)
        goto fail;
    if (tmp == Py_None)
        values[50] = Py_NewRef(s_empty);
    else {
        values[50] = episode_json(customer_id, tmp);
        if (values[50] == NULL) {
            if (PyErr_Occurred())
                goto fail;
            /* a text JSON would escape, or a type other than the scorer's: schemas.profile._episode */
            TAKE(50, PyObject_CallFunctionObjArgs(c.episode_fn, customer_id, tmp, NULL));
        }
    }
    Py_CLEAR(tmp);

    /* field, value, field, value, ... */
    PyObject *out = PyTuple_New(2 * N_FIELDS);
    if (out == NULL)
        goto fail;
    for (int i = 0; i < N_FIELDS; i++) {
        PyTuple_SET_ITEM(out, 2 * i, Py_NewRef(fields[i]));
        PyTuple_SET_ITEM(out, 2 * i + 1, values[i]);
        values[i] = NULL;
    }
    PyObject *var = PyLong_FromLongLong(at_risk);
    if (var != NULL)
        result = PyTuple_Pack(2, out, var);
    Py_DECREF(out);
    Py_XDECREF(var);
    goto done;

fail:
    for (int i = 0; i < N_FIELDS; i++)
        Py_XDECREF(values[i]);
    result = PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
done:
    Py_XDECREF(tmp);
    Py_XDECREF(o);
    Py_XDECREF(voice);
    Py_XDECREF(nps);
    Py_XDECREF(service);
    Py_XDECREF(folded);
    Py_XDECREF(churn);
    return result;
}

/* ---- RESP ------------------------------------------------------------------------------------------------- */

/* "$<n>\r\n<bytes>\r\n" appended at p */
static char *
bulk(char *p, const char *data, Py_ssize_t n)
{
    *p++ = '$';
    p = put_digits(p, (unsigned long long)n);
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, data, (size_t)n);
    p += n;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* pack_hset(key, args): HSET key field value ... in RESP, as hiredis's pack_command packs it (each str as UTF-8);
 * None when an argument is not a str or not encodable (the caller packs it with hiredis, which says why) */
static PyObject *
pack_hset(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pack_hset(key, args) takes a str and a tuple of str");
        return NULL;
    }
    PyObject *key = args[0], *items = args[1];
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    Py_ssize_t count = n + 2;
    const char *small_data[128];
    Py_ssize_t small_len[128];
    const char **data = count <= 128 ? small_data : PyMem_Malloc(sizeof(char *) * (size_t)count);
    Py_ssize_t *len = count <= 128 ? small_len : PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)count);
    PyObject *out = NULL;
    if (data == NULL || len == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    data[0] = "HSET";
    len[0] = 4;
    size_t total = 24 + 10; /* "*<count>\r\n" and "$4\r\nHSET\r\n" */
    for (Py_ssize_t i = 1; i < count; i++) {
        PyObject *s = i == 1 ? key : PyTuple_GET_ITEM(items, i - 2);
        if (!PyUnicode_Check(s))
            goto none;
        data[i] = PyUnicode_AsUTF8AndSize(s, &len[i]);
        if (data[i] == NULL) {
            PyErr_Clear();
            goto none;
        }
        total += (size_t)len[i] + 26; /* "$" + up to 20 digits + 2 CRLF */
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL)
        goto done;
    char *start = PyBytes_AS_STRING(out), *p = start;
    *p++ = '*';
    p = put_digits(p, (unsigned long long)count);
    *p++ = '\r';
    *p++ = '\n';
    for (Py_ssize_t i = 0; i < count; i++)
        p = bulk(p, data[i], len[i]);
    if (_PyBytes_Resize(&out, p - start) != 0)
        out = NULL;
    goto done;
none:
    out = Py_NewRef(Py_None);
done:
    if (data != small_data)
        PyMem_Free((void *)data);
    if (len != small_len)
        PyMem_Free(len);
    return out;
}

/* ---- module ----------------------------------------------------------------------------------------------- */

static PyObject *
last_bail(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(bail_line);
}

static PyMethodDef methods[] = {
    {"last_bail", last_bail, METH_NOARGS, "the source line of the last render left to Python (tests)"},
    {"render", (PyCFunction)(void (*)(void))render, METH_FASTCALL,
     "render(customer_id, state, now_ms, context, currency, clv, risk) -> (args, value at risk cents) | None"},
    {"pack_hset", (PyCFunction)(void (*)(void))pack_hset, METH_FASTCALL,
     "pack_hset(key, args) -> bytes | None: HSET key field value ... in RESP"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "schemas._native", NULL, -1, methods};

#define INTERN(var, text)                                                                                             \
    do {                                                                                                              \
        var = PyUnicode_InternFromString(text);                                                                       \
        if (var == NULL)                                                                                              \
            return NULL;                                                                                              \
    } while (0)

PyMODINIT_FUNC
PyInit__native(void)
{
    INTERN(s_empty, "");
    INTERN(s_true, "True");
    INTERN(s_false, "False");
    INTERN(s_zero, "0");
    INTERN(s_empty_list, "[]");
    INTERN(a_orders, "orders");
    INTERN(a_first_purchase_ms, "first_purchase_ms");
    INTERN(a_last_purchase_ms, "last_purchase_ms");
    INTERN(a_refunds, "refunds");
    INTERN(a_revenue_cents, "revenue_cents");
    INTERN(a_cost_cents, "cost_cents");
    INTERN(a_revenue_buckets, "revenue_buckets");
    INTERN(a_voice, "voice");
    INTERN(a_nps, "nps");
    INTERN(a_complaint_days, "complaint_days");
    INTERN(a_csat, "csat");
    INTERN(a_complaints_total, "complaints_total");
    INTERN(a_service, "service");
    INTERN(a_tickets, "tickets");
    INTERN(a_folded, "folded");
    INTERN(a_first_responses, "first_responses");
    INTERN(a_first_response_ms_sum, "first_response_ms_sum");
    INTERN(a_reopens, "reopens");
    INTERN(a_breaches, "breaches");
    INTERN(a_rfm_cell, "rfm_cell");
    INTERN(a_segment, "segment");
    INTERN(a_vip, "vip");
    INTERN(a_churn, "churn");
    INTERN(a_alert_ms, "alert_ms");
    INTERN(a_alerts, "alerts");
    INTERN(a_last_event_ms, "last_event_ms");
    INTERN(a_events, "events");
    INTERN(a_episodes, "episodes");
    INTERN(a_p_alive, "p_alive");
    INTERN(a_expected_purchases, "expected_purchases");
    INTERN(a_expected_order_value_cents, "expected_order_value_cents");
    INTERN(a_clv_predictive_cents, "clv_predictive_cents");
    INTERN(a_clv_historical_cents, "clv_historical_cents");
    INTERN(a_score, "score");
    INTERN(a_level, "level");
    INTERN(a_reasons, "reasons");
    INTERN(a_first_alert, "first_alert");
    INTERN(a_last_alert, "last_alert");
    INTERN(a_raised_ms, "raised_ms");
    INTERN(a_status, "status");
    INTERN(a_owner, "owner");
    INTERN(a_outcome, "outcome");
    INTERN(a_closed_ms, "closed_ms");
    INTERN(a_purchased_ms, "purchased_ms");
    INTERN(a_recovered_cents, "recovered_cents");
    INTERN(a_destinations, "destinations");
    INTERN(a_settled, "settled");
    for (int i = 0; i < N_SMALL_INTS; i++) {
        char buf[8];
        small_ints[i] = PyUnicode_InternFromString((*put_digits(buf, (unsigned long long)i) = 0, buf));
        if (small_ints[i] == NULL)
            return NULL;
    }
    PyObject *names = PyTuple_New(N_FIELDS);
    if (names == NULL)
        return NULL;
    for (int i = 0; i < N_FIELDS; i++) {
        fields[i] = PyUnicode_InternFromString(FIELD_NAMES[i]);
        if (fields[i] == NULL)
            return NULL;
        PyTuple_SET_ITEM(names, i, Py_NewRef(fields[i]));
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || PyModule_AddObject(m, "FIELDS", names) != 0)
        return NULL;
    return m;
}
