/* filterd._table: PairTable, a compact hash table of (number, sender) -> fixed-width words.
 *
 * The state filterd keeps per recipient (step 4 counters, pending live changes) is millions
 * of small records keyed by a phone number and an interned sender id. A dict of tuples costs
 * 150-1,000 bytes per record; this table costs 8 + 4 + words * word_bytes bytes per slot,
 * with the load kept between 0.53 and 0.8 (it grows by 1.5x), so 20-30 bytes per key for one
 * 32-bit counter.
 *
 * Layout: three flat arrays (numbers, senders, values), open addressing with linear probing;
 * a slot is empty when its number is 0 (a number is 1 .. 2**63-1). The home slot is the
 * 64-bit mix of the key mapped onto the capacity by multiply-shift, so the capacity need not
 * be a power of two. Deletion shifts the following entries back (no tombstones), so lookups
 * never slow down with churn.
 *
 * filterd/table.py holds the pure-Python twin with the same behaviour (used when this module
 * is not compiled); tests/test_table.py checks both against a model.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_WORDS 8
#define MIN_CAPACITY 8

typedef struct {
    PyObject_HEAD
    uint64_t *numbers;
    uint32_t *senders;
    unsigned char *values;
    Py_ssize_t capacity;
    Py_ssize_t size;
    Py_ssize_t resizes;
    int words;
    int word_bytes;
} PairTable;

static inline uint64_t mix(uint64_t number, uint32_t sender)
{
    uint64_t x = number ^ ((uint64_t)sender * 0x9E3779B97F4A7C15ULL);
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

static inline Py_ssize_t home(const PairTable *t, uint64_t number, uint32_t sender)
{
    return (Py_ssize_t)(((unsigned __int128)mix(number, sender) * (uint64_t)t->capacity) >> 64);
}

static inline size_t row_bytes(const PairTable *t)
{
    return (size_t)t->words * (size_t)t->word_bytes;
}

static inline unsigned char *row_at(const PairTable *t, Py_ssize_t slot)
{
    return t->values + (size_t)slot * row_bytes(t);
}

/* The slot of the key, or -1. */
static Py_ssize_t find(const PairTable *t, uint64_t number, uint32_t sender)
{
    if (t->capacity == 0)
        return -1;
    Py_ssize_t i = home(t, number, sender);
    for (;;) {
        uint64_t n = t->numbers[i];
        if (n == 0)
            return -1;
        if (n == number && t->senders[i] == sender)
            return i;
        if (++i == t->capacity)
            i = 0;
    }
}

static int resize(PairTable *t, Py_ssize_t capacity)
{
    size_t rb = row_bytes(t);
    uint64_t *numbers = PyMem_Calloc((size_t)capacity, sizeof(uint64_t));
    uint32_t *senders = PyMem_Malloc((size_t)capacity * sizeof(uint32_t));
    unsigned char *values = PyMem_Malloc((size_t)capacity * rb);
    if (numbers == NULL || senders == NULL || values == NULL) {
        PyMem_Free(numbers);
        PyMem_Free(senders);
        PyMem_Free(values);
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *old_numbers = t->numbers;
    uint32_t *old_senders = t->senders;
    unsigned char *old_values = t->values;
    Py_ssize_t old_capacity = t->capacity;
    t->numbers = numbers;
    t->senders = senders;
    t->values = values;
    t->capacity = capacity;
    t->resizes++;
    for (Py_ssize_t j = 0; j < old_capacity; j++) {
        uint64_t n = old_numbers[j];
        if (n == 0)
            continue;
        uint32_t s = old_senders[j];
        Py_ssize_t i = home(t, n, s);
        while (numbers[i] != 0) {
            if (++i == capacity)
                i = 0;
        }
        numbers[i] = n;
        senders[i] = s;
        memcpy(values + (size_t)i * rb, old_values + (size_t)j * rb, rb);
    }
    PyMem_Free(old_numbers);
    PyMem_Free(old_senders);
    PyMem_Free(old_values);
    return 0;
}

/* The slot of the key, inserted (all words 0) when missing; -1 with an exception set. */
static Py_ssize_t find_or_insert(PairTable *t, uint64_t number, uint32_t sender)
{
    /* Keep size + 1 <= 0.8 * capacity. */
    if ((t->size + 1) * 5 > t->capacity * 4) {
        Py_ssize_t grown = t->capacity + t->capacity / 2;
        if (grown < MIN_CAPACITY)
            grown = MIN_CAPACITY;
        Py_ssize_t found = find(t, number, sender);
        if (found >= 0)
            return found;
        if (resize(t, grown) < 0)
            return -1;
    }
    Py_ssize_t i = home(t, number, sender);
    for (;;) {
        uint64_t n = t->numbers[i];
        if (n == 0)
            break;
        if (n == number && t->senders[i] == sender)
            return i;
        if (++i == t->capacity)
            i = 0;
    }
    t->numbers[i] = number;
    t->senders[i] = sender;
    memset(row_at(t, i), 0, row_bytes(t));
    t->size++;
    return i;
}

static void remove_slot(PairTable *t, Py_ssize_t i)
{
    size_t rb = row_bytes(t);
    Py_ssize_t cap = t->capacity;
    Py_ssize_t j = i;
    for (;;) {
        if (++j == cap)
            j = 0;
        uint64_t n = t->numbers[j];
        if (n == 0)
            break;
        Py_ssize_t k = home(t, n, t->senders[j]);
        /* The entry at j stays when its home k lies cyclically in (i, j]. */
        int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        t->numbers[i] = n;
        t->senders[i] = t->senders[j];
        memcpy(row_at(t, i), row_at(t, j), rb);
        i = j;
    }
    t->numbers[i] = 0;
    t->size--;
}

/* --- argument conversion ------------------------------------------------------------ */

/* obj as a C long long; -1 with an exception set when it is not an int or does not fit. */
static int as_long_long(PyObject *obj, const char *what, long long *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyLong_AsLongLong(obj);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int to_number(PyObject *obj, uint64_t *out)
{
    long long v;
    if (as_long_long(obj, "number", &v) < 0)
        return -1;
    if (v <= 0) {
        PyErr_SetString(PyExc_ValueError, "number must be 1 .. 2**63-1");
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int to_sender(PyObject *obj, uint32_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "sender must be an int, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_OverflowError, "sender must be 0 .. 2**32-1");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int to_word(const PairTable *t, PyObject *obj, int *out)
{
    long long v;
    if (as_long_long(obj, "word", &v) < 0)
        return -1;
    if (v < 0 || v >= t->words) {
        PyErr_Format(PyExc_IndexError, "word %lld out of range (the table has %d)", v, t->words);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A Python int as a word value; -1 with an exception when it does not fit. */
static int to_value(const PairTable *t, PyObject *obj, int64_t *out)
{
    long long v;
    if (as_long_long(obj, "value", &v) < 0)
        return -1;
    if (t->word_bytes == 4 && (v < 0 || v > 0xFFFFFFFFLL)) {
        PyErr_SetString(PyExc_OverflowError, "value must be 0 .. 2**32-1 (4-byte words)");
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

static inline int64_t read_word(const PairTable *t, Py_ssize_t slot, int word)
{
    unsigned char *p = row_at(t, slot) + (size_t)word * (size_t)t->word_bytes;
    if (t->word_bytes == 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        return (int64_t)v;
    }
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void write_word(PairTable *t, Py_ssize_t slot, int word, int64_t value)
{
    unsigned char *p = row_at(t, slot) + (size_t)word * (size_t)t->word_bytes;
    if (t->word_bytes == 4) {
        uint32_t v = (uint32_t)value;
        memcpy(p, &v, 4);
    } else {
        memcpy(p, &value, 8);
    }
}

static PyObject *row_tuple(const PairTable *t, Py_ssize_t slot)
{
    PyObject *row = PyTuple_New(t->words);
    if (row == NULL)
        return NULL;
    for (int w = 0; w < t->words; w++) {
        PyObject *v = PyLong_FromLongLong(read_word(t, slot, w));
        if (v == NULL) {
            Py_DECREF(row);
            return NULL;
        }
        PyTuple_SET_ITEM(row, w, v);
    }
    return row;
}

static int check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t least, Py_ssize_t most)
{
    if (nargs < least || nargs > most) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)", name,
                     least, most, nargs);
        return -1;
    }
    return 0;
}

static int key_args(PyObject *const *args, uint64_t *number, uint32_t *sender)
{
    if (to_number(args[0], number) < 0 || to_sender(args[1], sender) < 0)
        return -1;
    return 0;
}

/* --- methods ------------------------------------------------------------------------- */

static int PairTable_init(PairTable *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"words", "word_bytes", NULL};
    int words = 1, word_bytes = 8;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ii", kwlist, &words, &word_bytes))
        return -1;
    if (words < 1 || words > MAX_WORDS) {
        PyErr_Format(PyExc_ValueError, "words must be 1 .. %d", MAX_WORDS);
        return -1;
    }
    if (word_bytes != 4 && word_bytes != 8) {
        PyErr_SetString(PyExc_ValueError, "word_bytes must be 4 or 8");
        return -1;
    }
    PyMem_Free(self->numbers);
    PyMem_Free(self->senders);
    PyMem_Free(self->values);
    self->numbers = NULL;
    self->senders = NULL;
    self->values = NULL;
    self->capacity = 0;
    self->size = 0;
    self->words = words;
    self->word_bytes = word_bytes;
    return 0;
}

static void PairTable_dealloc(PairTable *self)
{
    PyMem_Free(self->numbers);
    PyMem_Free(self->senders);
    PyMem_Free(self->values);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *PairTable_get(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    int word = 0;
    if (check_nargs("get", nargs, 2, 4) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    if (nargs > 2 && to_word(self, args[2], &word) < 0)
        return NULL;
    Py_ssize_t slot = find(self, number, sender);
    if (slot < 0) {
        if (nargs > 3)
            return Py_NewRef(args[3]);
        return PyLong_FromLong(0);
    }
    return PyLong_FromLongLong(read_word(self, slot, word));
}

static PyObject *PairTable_add(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    int word = 0;
    if (check_nargs("add", nargs, 3, 4) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    long long delta;
    if (as_long_long(args[2], "delta", &delta) < 0)
        return NULL;
    if (nargs > 3 && to_word(self, args[3], &word) < 0)
        return NULL;
    Py_ssize_t slot = find(self, number, sender);
    int64_t old = slot < 0 ? 0 : read_word(self, slot, word);
    int64_t sum;
    if (__builtin_add_overflow(old, (int64_t)delta, &sum) ||
        (self->word_bytes == 4 && (sum < 0 || sum > 0xFFFFFFFFLL))) {
        PyErr_SetString(PyExc_OverflowError, "the sum does not fit the word");
        return NULL;
    }
    if (slot < 0) {
        slot = find_or_insert(self, number, sender);
        if (slot < 0)
            return NULL;
    }
    write_word(self, slot, word, sum);
    return PyLong_FromLongLong(sum);
}

static PyObject *PairTable_put(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    int word = 0;
    int64_t value;
    if (check_nargs("put", nargs, 3, 4) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    if (to_value(self, args[2], &value) < 0)
        return NULL;
    if (nargs > 3 && to_word(self, args[3], &word) < 0)
        return NULL;
    Py_ssize_t slot = find_or_insert(self, number, sender);
    if (slot < 0)
        return NULL;
    write_word(self, slot, word, value);
    Py_RETURN_NONE;
}

static PyObject *PairTable_row(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    if (check_nargs("row", nargs, 2, 2) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    Py_ssize_t slot = find(self, number, sender);
    if (slot < 0)
        Py_RETURN_NONE;
    return row_tuple(self, slot);
}

static PyObject *PairTable_put_row(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    int64_t values[MAX_WORDS];
    if (check_nargs("put_row", nargs, 3, 3) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(args[2], "values must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n != self->words) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%zd values for a table of %d words", n, self->words);
        return NULL;
    }
    for (Py_ssize_t w = 0; w < n; w++) {
        if (to_value(self, PySequence_Fast_GET_ITEM(seq, w), &values[w]) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_ssize_t slot = find_or_insert(self, number, sender);
    if (slot < 0)
        return NULL;
    for (int w = 0; w < self->words; w++)
        write_word(self, slot, w, values[w]);
    Py_RETURN_NONE;
}

static PyObject *PairTable_has(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    if (check_nargs("has", nargs, 2, 2) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    return PyBool_FromLong(find(self, number, sender) >= 0);
}

static PyObject *PairTable_discard(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t number;
    uint32_t sender;
    if (check_nargs("discard", nargs, 2, 2) < 0 || key_args(args, &number, &sender) < 0)
        return NULL;
    Py_ssize_t slot = find(self, number, sender);
    if (slot < 0)
        Py_RETURN_FALSE;
    remove_slot(self, slot);
    Py_RETURN_TRUE;
}

static PyObject *PairTable_items(PairTable *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(self->size);
    if (out == NULL)
        return NULL;
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < self->capacity; i++) {
        if (self->numbers[i] == 0)
            continue;
        PyObject *row = row_tuple(self, i);
        if (row == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *item = Py_BuildValue("(KIN)", (unsigned long long)self->numbers[i],
                                       (unsigned int)self->senders[i], row);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k++, item);
    }
    return out;
}

static PyObject *PairTable_scan(PairTable *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long cursor, count;
    if (check_nargs("scan", nargs, 2, 2) < 0 || as_long_long(args[0], "cursor", &cursor) < 0 ||
        as_long_long(args[1], "count", &count) < 0)
        return NULL;
    if (cursor < 0 || count < 1) {
        PyErr_SetString(PyExc_ValueError, "scan needs a cursor >= 0 and a count >= 1");
        return NULL;
    }
    Py_ssize_t start = cursor < self->capacity ? (Py_ssize_t)cursor : self->capacity;
    Py_ssize_t end = count < self->capacity - start ? start + (Py_ssize_t)count : self->capacity;
    PyObject *found = PyList_New(0);
    if (found == NULL)
        return NULL;
    for (Py_ssize_t i = start; i < end; i++) {
        if (self->numbers[i] == 0)
            continue;
        PyObject *row = row_tuple(self, i);
        if (row == NULL) {
            Py_DECREF(found);
            return NULL;
        }
        PyObject *item = Py_BuildValue("(KIN)", (unsigned long long)self->numbers[i],
                                       (unsigned int)self->senders[i], row);
        if (item == NULL || PyList_Append(found, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(found);
            return NULL;
        }
        Py_DECREF(item);
    }
    return Py_BuildValue("(nN)", end >= self->capacity ? (Py_ssize_t)-1 : end, found);
}

static PyObject *PairTable_clear(PairTable *self, PyObject *Py_UNUSED(ignored))
{
    PyMem_Free(self->numbers);
    PyMem_Free(self->senders);
    PyMem_Free(self->values);
    self->numbers = NULL;
    self->senders = NULL;
    self->values = NULL;
    self->capacity = 0;
    self->size = 0;
    Py_RETURN_NONE;
}

static Py_ssize_t slot_bytes(const PairTable *t)
{
    return (Py_ssize_t)(sizeof(uint64_t) + sizeof(uint32_t) + row_bytes(t));
}

static PyObject *PairTable_sizeof(PairTable *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t((Py_ssize_t)sizeof(PairTable) + self->capacity * slot_bytes(self));
}

static Py_ssize_t PairTable_len(PairTable *self)
{
    return self->size;
}

static PyObject *PairTable_get_nbytes(PairTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->capacity * slot_bytes(self));
}

static PyObject *PairTable_get_capacity(PairTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->capacity);
}

static PyObject *PairTable_get_resizes(PairTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->resizes);
}

static PyObject *PairTable_get_words(PairTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->words);
}

static PyObject *PairTable_get_word_bytes(PairTable *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->word_bytes);
}

static PyMethodDef PairTable_methods[] = {
    {"get", (PyCFunction)(void (*)(void))PairTable_get, METH_FASTCALL,
     "get(number, sender, word=0, default=0): the word's value, or default when absent"},
    {"add", (PyCFunction)(void (*)(void))PairTable_add, METH_FASTCALL,
     "add(number, sender, delta, word=0): insert when missing, add delta, return the sum"},
    {"put", (PyCFunction)(void (*)(void))PairTable_put, METH_FASTCALL,
     "put(number, sender, value, word=0): insert when missing, set the word"},
    {"row", (PyCFunction)(void (*)(void))PairTable_row, METH_FASTCALL,
     "row(number, sender): every word as a tuple, or None"},
    {"put_row", (PyCFunction)(void (*)(void))PairTable_put_row, METH_FASTCALL,
     "put_row(number, sender, values): insert when missing, set every word"},
    {"has", (PyCFunction)(void (*)(void))PairTable_has, METH_FASTCALL,
     "has(number, sender): whether the key is in the table"},
    {"discard", (PyCFunction)(void (*)(void))PairTable_discard, METH_FASTCALL,
     "discard(number, sender): remove the key; True when it was there"},
    {"items", (PyCFunction)PairTable_items, METH_NOARGS,
     "items(): a list of (number, sender, words) of every key, in no particular order"},
    {"scan", (PyCFunction)(void (*)(void))PairTable_scan, METH_FASTCALL,
     "scan(cursor, count): (next cursor or -1 at the end, the keys of up to count slots)"},
    {"clear", (PyCFunction)PairTable_clear, METH_NOARGS, "clear(): remove every key"},
    {"__sizeof__", (PyCFunction)PairTable_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef PairTable_getset[] = {
    {"nbytes", (getter)PairTable_get_nbytes, NULL, "bytes allocated for the slots", NULL},
    {"capacity", (getter)PairTable_get_capacity, NULL, "slots allocated", NULL},
    {"resizes", (getter)PairTable_get_resizes, NULL,
     "times the slots were re-placed (a scan under way may then miss keys)", NULL},
    {"words", (getter)PairTable_get_words, NULL, "values per key", NULL},
    {"word_bytes", (getter)PairTable_get_word_bytes, NULL, "4 (unsigned) or 8 (signed)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods PairTable_as_sequence = {
    .sq_length = (lenfunc)PairTable_len,
};

static PyTypeObject PairTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "filterd._table.PairTable",
    .tp_doc = PyDoc_STR("PairTable(words=1, word_bytes=8): (number, sender) -> fixed-width words"),
    .tp_basicsize = sizeof(PairTable),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PairTable_init,
    .tp_dealloc = (destructor)PairTable_dealloc,
    .tp_methods = PairTable_methods,
    .tp_getset = PairTable_getset,
    .tp_as_sequence = &PairTable_as_sequence,
};

/* --- encode_changes: a batch's changelog records of one counter group -------------- */

/* Decimal digits of v (v >= 0) written at the end of buf[0..20); returns the first. */
static char *digits(unsigned long long v, char *end)
{
    char *p = end;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

/* 0 when obj is of type (or a subclass), else -1 with a TypeError naming what. */
static int typed_arg(PyObject *obj, PyTypeObject *type, const char *what)
{
    if (!PyObject_TypeCheck(obj, type)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, not %.100s", what,
                     type == &PyList_Type ? "a list" : type->tp_name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

/* Kafka's zigzag varint of n >= 0 at p; returns the bytes written (at most 10). */
static int put_varint(char *p, unsigned long long n)
{
    unsigned long long z = n << 1;
    int i = 0;
    while (z >= 0x80) {
        p[i++] = (char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    p[i++] = (char)z;
    return i;
}

/* The entries start.. of three parallel lists (a counter group's changes in offset order),
 * latest first, each key (number, sender) once, appended to out: key = head +
 * sender_json[sender] + the number's digits + tail, value = the count's digits.
 *
 * encode_changes(numbers, senders, counts, start, head, sender_json, tail, small, out)
 * appends (key, value) (value: small[count] when count < len(small));
 * encode_change_bodies(numbers, senders, counts, start, head, sender_json, tail, out)
 * appends each record's body as a Kafka record v2 has it after its offset delta: key
 * length, key, value length, value, no headers (filterd.records.record_body).
 * filterd/table.py has the same loops in Python (their fallback, and the reference of
 * tests/test_table.py). */
static PyObject *changes(PyObject *const *args, Py_ssize_t nargs, int bodies)
{
    const char *name = bodies ? "encode_change_bodies" : "encode_changes";
    Py_ssize_t want = bodies ? 8 : 9;
    if (check_nargs(name, nargs, want, want) < 0)
        return NULL;
    PyObject *numbers = args[0], *senders = args[1], *counts = args[2];
    PyObject *head = args[4], *sender_json = args[5], *tail = args[6];
    PyObject *small = bodies ? NULL : args[7], *out = args[want - 1];
    long long start;
    PyTypeObject *list = &PyList_Type, *bytes = &PyBytes_Type;
    if (typed_arg(numbers, list, "numbers") < 0 || typed_arg(senders, list, "senders") < 0 ||
        typed_arg(counts, list, "counts") < 0 || as_long_long(args[3], "start", &start) < 0 ||
        typed_arg(head, bytes, "head") < 0 || typed_arg(sender_json, list, "sender_json") < 0 ||
        typed_arg(tail, bytes, "tail") < 0 ||
        (small != NULL && typed_arg(small, list, "small") < 0) ||
        typed_arg(out, list, "out") < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(numbers);
    if (PyList_GET_SIZE(senders) != n || PyList_GET_SIZE(counts) != n) {
        PyErr_SetString(PyExc_ValueError, "numbers, senders and counts differ in length");
        return NULL;
    }
    if (start < 0)
        start = 0;
    if (start >= n)
        Py_RETURN_NONE;
    /* The keys met so far: open addressing over a power of two at least twice the entries. */
    size_t cap = 16;
    while (cap < 2 * (size_t)(n - start))
        cap <<= 1;
    uint64_t *seen_numbers = PyMem_Calloc(cap, sizeof(uint64_t));
    uint32_t *seen_senders = PyMem_Malloc(cap * sizeof(uint32_t));
    if (seen_numbers == NULL || seen_senders == NULL) {
        PyMem_Free(seen_numbers);
        PyMem_Free(seen_senders);
        return PyErr_NoMemory();
    }
    const char *head_s = PyBytes_AS_STRING(head), *tail_s = PyBytes_AS_STRING(tail);
    Py_ssize_t head_n = PyBytes_GET_SIZE(head), tail_n = PyBytes_GET_SIZE(tail);
    Py_ssize_t small_n = small == NULL ? 0 : PyList_GET_SIZE(small);
    for (Py_ssize_t i = n - 1; i >= (Py_ssize_t)start; i--) {
        uint64_t number;
        uint32_t sender;
        long long count;
        if (to_number(PyList_GET_ITEM(numbers, i), &number) < 0 ||
            to_sender(PyList_GET_ITEM(senders, i), &sender) < 0 ||
            as_long_long(PyList_GET_ITEM(counts, i), "count", &count) < 0)
            goto error;
        size_t h = (size_t)mix(number, sender) & (cap - 1);
        int met = 0;
        while (seen_numbers[h] != 0) {
            if (seen_numbers[h] == number && seen_senders[h] == sender) {
                met = 1;
                break;
            }
            h = (h + 1) & (cap - 1);
        }
        if (met)
            continue;
        seen_numbers[h] = number;
        seen_senders[h] = sender;
        if ((Py_ssize_t)sender >= PyList_GET_SIZE(sender_json)) {
            PyErr_Format(PyExc_IndexError, "sender %u has no sender_json", (unsigned)sender);
            goto error;
        }
        PyObject *json = PyList_GET_ITEM(sender_json, (Py_ssize_t)sender);
        if (typed_arg(json, &PyBytes_Type, "sender_json item") < 0)
            goto error;
        char buf[24], cbuf[24];
        char *end = buf + sizeof(buf), *cend = cbuf + sizeof(cbuf);
        char *first = digits(number, end);
        Py_ssize_t json_n = PyBytes_GET_SIZE(json), digits_n = end - first;
        Py_ssize_t key_n = head_n + json_n + digits_n + tail_n;
        char *c = digits(count < 0 ? 0ULL - (unsigned long long)count : (unsigned long long)count,
                         cend);
        if (count < 0)
            *--c = '-';
        Py_ssize_t value_n = cend - c;
        char lead[10], mid[10];
        int lead_n = 0, mid_n = 0;
        if (bodies) {
            lead_n = put_varint(lead, (unsigned long long)key_n);
            mid_n = put_varint(mid, (unsigned long long)value_n);
        }
        PyObject *item = PyBytes_FromStringAndSize(
            NULL, bodies ? lead_n + key_n + mid_n + value_n + 1 : key_n);
        if (item == NULL)
            goto error;
        char *k = PyBytes_AS_STRING(item);
        memcpy(k, lead, (size_t)lead_n);
        k += lead_n;
        memcpy(k, head_s, (size_t)head_n);
        k += head_n;
        memcpy(k, PyBytes_AS_STRING(json), (size_t)json_n);
        k += json_n;
        memcpy(k, first, (size_t)digits_n);
        k += digits_n;
        memcpy(k, tail_s, (size_t)tail_n);
        k += tail_n;
        if (bodies) {
            memcpy(k, mid, (size_t)mid_n);
            k += mid_n;
            memcpy(k, c, (size_t)value_n);
            k[value_n] = 0; /* no headers */
        } else {
            PyObject *value = count >= 0 && count < small_n
                                  ? Py_NewRef(PyList_GET_ITEM(small, (Py_ssize_t)count))
                                  : PyBytes_FromStringAndSize(c, value_n);
            PyObject *pair = value == NULL ? NULL : PyTuple_New(2);
            if (pair == NULL) {
                Py_DECREF(item);
                Py_XDECREF(value);
                goto error;
            }
            PyTuple_SET_ITEM(pair, 0, item);
            PyTuple_SET_ITEM(pair, 1, value);
            item = pair;
        }
        int failed = PyList_Append(out, item);
        Py_DECREF(item);
        if (failed < 0)
            goto error;
    }
    PyMem_Free(seen_numbers);
    PyMem_Free(seen_senders);
    Py_RETURN_NONE;
error:
    PyMem_Free(seen_numbers);
    PyMem_Free(seen_senders);
    return NULL;
}

static PyObject *encode_changes(PyObject *Py_UNUSED(module), PyObject *const *args,
                                Py_ssize_t nargs)
{
    return changes(args, nargs, 0);
}

static PyObject *encode_change_bodies(PyObject *Py_UNUSED(module), PyObject *const *args,
                                      Py_ssize_t nargs)
{
    return changes(args, nargs, 1);
}

static PyMethodDef table_functions[] = {
    {"encode_changes", (PyCFunction)(void (*)(void))encode_changes, METH_FASTCALL,
     "encode_changes(numbers, senders, counts, start, head, sender_json, tail, small, out): "
     "append (key, value) of each key of the entries start.., latest first, once"},
    {"encode_change_bodies", (PyCFunction)(void (*)(void))encode_change_bodies, METH_FASTCALL,
     "encode_change_bodies(numbers, senders, counts, start, head, sender_json, tail, out): "
     "append the Kafka record body of each key of the entries start.., latest first, once"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef table_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "filterd._table",
    .m_doc = "PairTable: compact (number, sender) -> words hash table (see filterd/table.py)",
    .m_size = -1,
    .m_methods = table_functions,
};

PyMODINIT_FUNC PyInit__table(void)
{
    if (PyType_Ready(&PairTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&table_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PairTableType);
    if (PyModule_AddObject(m, "PairTable", (PyObject *)&PairTableType) < 0) {
        Py_DECREF(&PairTableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
