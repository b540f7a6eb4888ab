/* The native engine's Python type: the series table, the plans, and the hot path.
 *
 * What stays in Python (enrichproxy.engine.native): the cold path. A series seen for the first
 * time is decoded, enriched and projected there, and the result is registered here as a plan:
 * a "kind" (lookup slots, conflicts, drop reason, capped views: shared by many series), the
 * views it feeds, and the metadata keys it depends on. Every later sample of that series is
 * handled here without creating a Python object.
 *
 * The series table is an open-addressing table (linear probing, backward-shift deletion) of
 * entry ids, hashed over the label bytes with the process-seeded SipHash. An entry lives while
 * it has a plan or an input in some view (the reference's plan cache and its per-view input
 * maps, merged so that the label bytes are stored once).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>

#include "aggregate.h"
#include "keys.h"
#include "plan.h"
#include "wire.h"

#define MAX_VIEWS 32
#define NO_PLAN (-1)
/* SeriesRef.entry of a series an input-series limit refused: it has no entry (it is not
 * cached), and the request's refused_kind says how its samples are counted. */
#define REFUSED_ENTRY (-3)
/* refused_kind of a series over the total limit: dropped whole, nothing else counted. */
#define REFUSED_NO_KIND (-1)

/* Drop reasons, numbered as enrichproxy.engine.native.DROP_REASONS lists them. */
enum {
    DROP_FUTURE = 3,
    DROP_NAN = 4,
    DROP_INFINITE_COUNTER = 8,
    DROP_INPUT_SERIES_LIMIT = 9,
    DROP_REASONS = 10
};

typedef struct {
    int32_t *slots;
    uint32_t nslots;
    int32_t conflicts;
    int32_t drop_reason;
    uint32_t capped;  /* bit v: view v's cap left the series out */
    uint32_t limited; /* bit v: view v's max_input_series left the series out */
} Kind;

typedef struct {
    uint64_t hash;
    Key key;        /* the label bytes, as interned label fields (keys.h) */
    int32_t kind;   /* NO_PLAN: no plan (the reference's plan cache does not hold it) */
    uint32_t feeds; /* bit v: the plan feeds view v */
} Entry;

typedef struct {
    PyObject_HEAD
    int nviews, nrules;
    View *views[MAX_VIEWS];
    Entry *entries;
    size_t entries_len, entries_cap;
    int32_t free_entry; /* free list threaded through Entry.kind */
    int32_t *entry_inputs; /* entries_cap * nviews */
    int32_t *entry_deps;   /* entries_cap * nrules */
    uint32_t *slots;
    size_t slots_cap, nentries, nplans;
    Kind *kinds;
    size_t nkinds, kinds_cap;
    uint64_t epoch; /* bumped whenever an entry goes away or loses its plan */
    int busy;       /* an apply runs without the GIL */
    Templates templates;
    int64_t view_caps[MAX_VIEWS]; /* max_series per view, 0: none */
    int64_t max_inputs;                 /* limits.max_input_series: plans at most, 0: none */
    int64_t view_input_caps[MAX_VIEWS]; /* max_input_series per view, 0: none */
    Atoms atoms;                  /* the label fields of every entry's key */
    uint8_t *key_scratch;         /* one key's bytes, written out */
    size_t key_scratch_cap;
} Core;

typedef struct {
    PyObject_HEAD
    PyObject *buffer; /* the decompressed request: bytes or any other read-only buffer */
    Py_buffer view;   /* held on buffer while the request lives */
    Batch batch;
    uint64_t epoch;
    int resolved;
    /* Planning (Core.plan): per series its template (or NO_TEMPLATE / TEMPLATE_SLOW), found
     * by the pass that asks for templates, valid while the core's epoch and template
     * generation are those recorded; the instantiating pass goes on from plan_from. */
    int32_t *template_of;
    size_t *asked; /* series whose templates the asking pass asks for */
    size_t nasked, ask_from;
    size_t plan_from;
    uint64_t plan_epoch, plan_generation;
    int plan_phase;
    /* Per series refused by an input-series limit (SeriesRef.entry REFUSED_ENTRY): the kind
     * its samples are counted by, or REFUSED_NO_KIND. Allocated at the first refusal. */
    int32_t *refused_kind;
} Request;

enum { PHASE_NONE = 0, PHASE_ASK = 1, PHASE_INSTANTIATE = 2 };

static PyObject *WireError;
static PyTypeObject RequestType;

/* --- the series table ------------------------------------------------------------------------ */

static int32_t table_find(const Core *core, const uint8_t *key, size_t len, uint64_t hash) {
    if (!core->slots_cap) return NO_ID;
    size_t mask = core->slots_cap - 1;
    for (size_t at = hash & mask;; at = (at + 1) & mask) {
        uint32_t value = core->slots[at];
        if (!value) return NO_ID;
        const Entry *entry = &core->entries[value - 1];
        if (entry->hash == hash && key_equals(&core->atoms, &entry->key, key, len))
            return (int32_t)(value - 1);
    }
}

static int table_grow(Core *core) {
    size_t cap = core->slots_cap ? core->slots_cap * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (slots == NULL) return -1;
    for (size_t i = 0; i < core->slots_cap; i++) {
        uint32_t value = core->slots[i];
        if (!value) continue;
        size_t at = core->entries[value - 1].hash & (cap - 1);
        while (slots[at]) at = (at + 1) & (cap - 1);
        slots[at] = value;
    }
    free(core->slots);
    core->slots = slots;
    core->slots_cap = cap;
    return 0;
}

static int32_t table_insert(Core *core, const uint8_t *key, size_t len, uint64_t hash) {
    if ((core->nentries + 1) * 2 > core->slots_cap && table_grow(core) < 0) return -2;
    Key copy;
    memset(&copy, 0, sizeof copy);
    if (key_set(&core->atoms, &copy, key, len) < 0) return -2;
    copy.flags = KEY_USED;
    int32_t id;
    if (core->free_entry != NO_ID) {
        id = core->free_entry;
        core->free_entry = core->entries[id].kind;
    } else {
        size_t cap = core->entries_cap;
        if (ep_grow((void **)&core->entries, &cap, core->entries_len + 1, sizeof(Entry)) < 0) {
            key_release(&core->atoms, &copy);
            return -2;
        }
        if (cap != core->entries_cap) {
            int32_t *inputs = realloc(core->entry_inputs, cap * (size_t)core->nviews * sizeof(int32_t));
            if (inputs == NULL) {
                key_release(&core->atoms, &copy);
                return -2;
            }
            core->entry_inputs = inputs;
            if (core->nrules) {
                int32_t *deps = realloc(core->entry_deps, cap * (size_t)core->nrules * sizeof(int32_t));
                if (deps == NULL) {
                    key_release(&core->atoms, &copy);
                    return -2;
                }
                core->entry_deps = deps;
            }
            core->entries_cap = cap;
        }
        id = (int32_t)core->entries_len++;
    }
    Entry *entry = &core->entries[id];
    entry->hash = hash;
    entry->key = copy;
    entry->kind = NO_PLAN;
    entry->feeds = 0;
    for (int v = 0; v < core->nviews; v++) core->entry_inputs[(size_t)id * core->nviews + v] = NO_ID;
    for (int r = 0; r < core->nrules; r++) core->entry_deps[(size_t)id * core->nrules + r] = NO_ID;
    size_t mask = core->slots_cap - 1;
    size_t at = hash & mask;
    while (core->slots[at]) at = (at + 1) & mask;
    core->slots[at] = (uint32_t)id + 1;
    core->nentries++;
    return id;
}

static void table_remove(Core *core, int32_t id) {
    size_t mask = core->slots_cap - 1;
    size_t at = core->entries[id].hash & mask;
    while (core->slots[at] != (uint32_t)id + 1) at = (at + 1) & mask;
    size_t hole = at;
    for (size_t next = (hole + 1) & mask; core->slots[next]; next = (next + 1) & mask) {
        size_t home = core->entries[core->slots[next] - 1].hash & mask;
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            core->slots[hole] = core->slots[next];
            hole = next;
        }
    }
    core->slots[hole] = 0;
    Entry *entry = &core->entries[id];
    key_release(&core->atoms, &entry->key);
    entry->key.flags = 0;
    entry->kind = core->free_entry;
    core->free_entry = id;
    core->nentries--;
    core->epoch++;
}

static int entry_has_inputs(const Core *core, int32_t id) {
    for (int v = 0; v < core->nviews; v++)
        if (core->entry_inputs[(size_t)id * core->nviews + v] != NO_ID) return 1;
    return 0;
}

/* The entry no longer has a plan; it goes when no view holds an input under its key. */
static void entry_forget_plan(Core *core, int32_t id) {
    Entry *entry = &core->entries[id];
    if (entry->kind == NO_PLAN) return;
    entry->kind = NO_PLAN;
    entry->feeds = 0;
    core->nplans--;
    core->epoch++;
    for (int r = 0; r < core->nrules; r++) core->entry_deps[(size_t)id * core->nrules + r] = NO_ID;
    if (!entry_has_inputs(core, id)) table_remove(core, id);
}

static int entry_used(const Core *core, size_t id) {
    return core->entries[id].key.flags & KEY_USED;
}

/* The entry's key as bytes, in the core's scratch buffer (valid until the next call); NULL
 * out of memory. */
static const uint8_t *entry_key_bytes(Core *core, const Entry *entry, size_t *len) {
    *len = key_length(&core->atoms, &entry->key);
    if (ep_grow((void **)&core->key_scratch, &core->key_scratch_cap, *len + 1, 1) < 0) return NULL;
    key_write(&core->atoms, &entry->key, core->key_scratch);
    return core->key_scratch;
}

static void forget_input_callback(void *owner, const View *view, int32_t entry) {
    Core *core = owner;
    /* Only clears the reference: the caller forgets every plan after such a flush (as the
     * reference does), which removes the entries left empty. */
    for (int v = 0; v < core->nviews; v++) {
        if (core->views[v] == view) {
            core->entry_inputs[(size_t)entry * core->nviews + v] = NO_ID;
            return;
        }
    }
}

/* --- argument helpers ------------------------------------------------------------------------ */

static int check_view(Core *core, int view) {
    if (view < 0 || view >= core->nviews) {
        PyErr_SetString(PyExc_IndexError, "view index out of range");
        return -1;
    }
    return 0;
}

static int check_idle(Core *core) {
    if (core->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is applying a request");
        return -1;
    }
    return 0;
}

/* --- Core: construction ---------------------------------------------------------------------- */

static void Core_dealloc(Core *core) {
    for (int v = 0; v < core->nviews; v++) view_free(core->views[v]);
    for (size_t i = 0; i < core->entries_len; i++)
        if (entry_used(core, i)) key_release(&core->atoms, &core->entries[i].key);
    atoms_free(&core->atoms);
    free(core->key_scratch);
    for (size_t i = 0; i < core->nkinds; i++) free(core->kinds[i].slots);
    free(core->entries);
    free(core->entry_inputs);
    free(core->entry_deps);
    free(core->slots);
    free(core->kinds);
    templates_free(&core->templates);
    Py_TYPE(core)->tp_free((PyObject *)core);
}

static int Core_init(Core *core, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"views", "rules", "sweep_ms", NULL};
    PyObject *views;
    int rules;
    long long sweep_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiL", names, &views, &rules, &sweep_ms))
        return -1;
    PyObject *sequence = PySequence_Fast(views, "views must be a sequence");
    if (sequence == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    if (n > MAX_VIEWS || rules < 0) {
        Py_DECREF(sequence);
        PyErr_Format(PyExc_ValueError, "the native engine takes at most %d views", MAX_VIEWS);
        return -1;
    }
    core->nviews = 0;
    core->nrules = rules;
    core->free_entry = NO_ID;
    templates_init(&core->templates);
    core->atoms.free_atom = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long interval, lateness, stale_after, retention, idle_flush;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(sequence, i), "LLLLL", &interval,
                              &lateness, &stale_after, &retention, &idle_flush)) {
            Py_DECREF(sequence);
            return -1;
        }
        if (interval <= 0) {
            Py_DECREF(sequence);
            PyErr_SetString(PyExc_ValueError, "interval must be positive");
            return -1;
        }
        View *view = view_new(interval, lateness, stale_after, retention, idle_flush, sweep_ms);
        if (view == NULL) {
            Py_DECREF(sequence);
            PyErr_NoMemory();
            return -1;
        }
        core->views[core->nviews++] = view;
    }
    Py_DECREF(sequence);
    return 0;
}

/* --- Core: plans ----------------------------------------------------------------------------- */

static PyObject *Core_add_kind(Core *core, PyObject *args) {
    PyObject *slots;
    int conflicts, drop_reason;
    unsigned int capped, limited = 0;
    if (!PyArg_ParseTuple(args, "OiiI|I", &slots, &conflicts, &drop_reason, &capped, &limited))
        return NULL;
    if (drop_reason < 0 || drop_reason >= DROP_REASONS) {
        PyErr_SetString(PyExc_ValueError, "unknown drop reason");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(slots, "slots must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    int32_t *copy = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (copy == NULL || ep_grow((void **)&core->kinds, &core->kinds_cap, core->nkinds + 1,
                                sizeof(Kind)) < 0) {
        free(copy);
        Py_DECREF(sequence);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long slot = PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, i));
        if ((slot == -1 && PyErr_Occurred()) || slot < 0 || slot >= 3L * core->nrules) {
            free(copy);
            Py_DECREF(sequence);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "lookup slot out of range");
            return NULL;
        }
        copy[i] = (int32_t)slot;
    }
    Py_DECREF(sequence);
    Kind *kind = &core->kinds[core->nkinds];
    kind->slots = copy;
    kind->nslots = (uint32_t)n;
    kind->conflicts = conflicts;
    kind->drop_reason = drop_reason;
    kind->capped = capped;
    kind->limited = limited;
    return PyLong_FromSize_t(core->nkinds++);
}

static int32_t entry_for(Core *core, const char *key, Py_ssize_t len, int create) {
    uint64_t hash = ep_hash((const uint8_t *)key, (size_t)len);
    int32_t id = table_find(core, (const uint8_t *)key, (size_t)len, hash);
    if (id == NO_ID && create) {
        id = table_insert(core, (const uint8_t *)key, (size_t)len, hash);
        if (id == -2) PyErr_NoMemory();
    }
    return id;
}

static PyObject *Core_attach(Core *core, PyObject *args) {
    int view;
    const char *key, *labels;
    Py_ssize_t key_len, labels_len;
    int is_counter;
    if (!PyArg_ParseTuple(args, "iy#y#p", &view, &key, &key_len, &labels, &labels_len,
                          &is_counter))
        return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0) return NULL;
    int32_t entry = entry_for(core, key, key_len, 1);
    if (entry < 0) return NULL;
    int32_t *slot = &core->entry_inputs[(size_t)entry * core->nviews + view];
    uint64_t hash = ep_hash((const uint8_t *)labels, (size_t)labels_len);
    int32_t input = view_attach(core->views[view], *slot, entry, (const uint8_t *)labels,
                                (size_t)labels_len, hash, is_counter);
    if (input < 0) return PyErr_NoMemory();
    *slot = input;
    Py_RETURN_NONE;
}

static PyObject *Core_admits(Core *core, PyObject *args) {
    int view;
    const char *labels;
    Py_ssize_t len;
    long long max_series;
    if (!PyArg_ParseTuple(args, "iy#L", &view, &labels, &len, &max_series)) return NULL;
    if (check_view(core, view) < 0) return NULL;
    uint64_t hash = ep_hash((const uint8_t *)labels, (size_t)len);
    return PyBool_FromLong(view_admits(core->views[view], (const uint8_t *)labels, (size_t)len,
                                       hash, max_series));
}

/* Whether view ``view`` may take the input ``key``: one it tracks always, a new one only while
 * it tracks fewer than its max_input_series (configure_input_limits). */
static int view_admits_input(const Core *core, int view, int32_t entry) {
    int64_t cap = core->view_input_caps[view];
    return !cap || (int64_t)core->views[view]->live_inputs < cap ||
           (entry != NO_ID && core->entry_inputs[(size_t)entry * core->nviews + view] != NO_ID);
}

static PyObject *Core_admits_input(Core *core, PyObject *args) {
    int view;
    const char *key;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "iy#", &view, &key, &len)) return NULL;
    if (check_view(core, view) < 0) return NULL;
    return PyBool_FromLong(view_admits_input(core, view, entry_for(core, key, len, 0)));
}

/* configure_input_limits(total, per_view): limits.max_input_series and each view's
 * max_input_series, 0 for none. */
static PyObject *Core_configure_input_limits(Core *core, PyObject *args) {
    long long total;
    PyObject *caps;
    if (!PyArg_ParseTuple(args, "LO", &total, &caps)) return NULL;
    PyObject *sequence = PySequence_Fast(caps, "caps must be a sequence");
    if (sequence == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(sequence) != core->nviews || total < 0) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "a total of 0 or more and one cap per view");
        return NULL;
    }
    int64_t values[MAX_VIEWS];
    for (int v = 0; v < core->nviews; v++) {
        long long cap = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sequence, v));
        if (cap == -1 && PyErr_Occurred()) {
            Py_DECREF(sequence);
            return NULL;
        }
        values[v] = cap;
    }
    Py_DECREF(sequence);
    core->max_inputs = total;
    for (int v = 0; v < core->nviews; v++) core->view_input_caps[v] = values[v];
    Py_RETURN_NONE;
}

static PyObject *Core_set_plan(Core *core, PyObject *args) {
    const char *key;
    Py_ssize_t len;
    int kind;
    unsigned int feeds;
    PyObject *deps;
    if (!PyArg_ParseTuple(args, "y#iIO", &key, &len, &kind, &feeds, &deps)) return NULL;
    if (check_idle(core) < 0) return NULL;
    if (kind < 0 || (size_t)kind >= core->nkinds) {
        PyErr_SetString(PyExc_ValueError, "unknown plan kind");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(deps, "deps must be a sequence");
    if (sequence == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(sequence) != core->nrules) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "one dependency per rule");
        return NULL;
    }
    int32_t entry = entry_for(core, key, len, 1);
    if (entry < 0) {
        Py_DECREF(sequence);
        return NULL;
    }
    for (int v = 0; v < core->nviews; v++) {
        if ((feeds >> v & 1) && core->entry_inputs[(size_t)entry * core->nviews + v] == NO_ID) {
            Py_DECREF(sequence);
            PyErr_SetString(PyExc_ValueError, "a plan feeds a view the series is not attached to");
            return NULL;
        }
    }
    for (int r = 0; r < core->nrules; r++) {
        long dep = PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, r));
        if (dep == -1 && PyErr_Occurred()) {
            Py_DECREF(sequence);
            return NULL;
        }
        core->entry_deps[(size_t)entry * core->nrules + r] = (int32_t)dep;
    }
    Py_DECREF(sequence);
    Entry *e = &core->entries[entry];
    if (e->kind == NO_PLAN) core->nplans++;
    e->kind = kind;
    e->feeds = feeds;
    Py_RETURN_NONE;
}

static PyObject *Core_received(Core *core, PyObject *arg) {
    char *key;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &key, &len) < 0) return NULL;
    return PyBool_FromLong(entry_for(core, key, len, 0) >= 0);
}

static PyObject *Core_forget_plans(Core *core, PyObject *Py_UNUSED(ignored)) {
    if (check_idle(core) < 0) return NULL;
    for (size_t i = 0; i < core->entries_len; i++) {
        if (!entry_used(core, i)) continue;
        /* An entry whose plan went earlier and whose inputs a flush has just forgotten holds
         * nothing any more: it goes too (else it would read as a series a view tracks). */
        if (core->entries[i].kind == NO_PLAN && !entry_has_inputs(core, (int32_t)i))
            table_remove(core, (int32_t)i);
        else
            entry_forget_plan(core, (int32_t)i);
    }
    Py_RETURN_NONE;
}

/* forget_plans_with(rule, dep_ids): the plans that looked up one of these keys of the rule. */
static PyObject *Core_forget_plans_with(Core *core, PyObject *args) {
    int rule;
    PyObject *deps;
    if (!PyArg_ParseTuple(args, "iO", &rule, &deps)) return NULL;
    if (check_idle(core) < 0) return NULL;
    if (rule < 0 || rule >= core->nrules) {
        PyErr_SetString(PyExc_IndexError, "rule index out of range");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(deps, "deps must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    long top = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        long dep = PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, i));
        if (dep < 0) {
            Py_DECREF(sequence);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative dependency");
            return NULL;
        }
        if (dep > top) top = dep;
    }
    uint8_t *changed = calloc((size_t)top + 2, 1);
    if (changed == NULL) {
        Py_DECREF(sequence);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) changed[PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, i))] = 1;
    Py_DECREF(sequence);
    for (size_t i = 0; i < core->entries_len; i++) {
        if (!entry_used(core, i) || core->entries[i].kind == NO_PLAN) continue;
        int32_t dep = core->entry_deps[i * core->nrules + rule];
        if (dep >= 0 && dep <= top && changed[dep]) entry_forget_plan(core, (int32_t)i);
    }
    free(changed);
    Py_RETURN_NONE;
}

static PyObject *Core_forget_capped(Core *core, PyObject *Py_UNUSED(ignored)) {
    if (check_idle(core) < 0) return NULL;
    for (size_t i = 0; i < core->entries_len; i++) {
        if (!entry_used(core, i) || core->entries[i].kind == NO_PLAN) continue;
        if (core->kinds[core->entries[i].kind].capped) entry_forget_plan(core, (int32_t)i);
    }
    Py_RETURN_NONE;
}

static PyObject *Core_get_cached_series(Core *core, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(core->nplans);
}

static PyObject *Core_get_entries(Core *core, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(core->nentries);
}

/* --- Core: requests -------------------------------------------------------------------------- */

/* scan(buffer): decode a WriteRequest held in bytes or any other contiguous buffer (the
 * decompressor's own, so that a large body is not copied), which the request keeps. */
static PyObject *scan_with(PyObject *arg, int (*decode)(const uint8_t *, size_t, Batch *),
                           size_t max_label_bytes) {
    Request *request = PyObject_New(Request, &RequestType);
    if (request == NULL) return NULL;
    request->buffer = NULL;
    request->template_of = NULL;
    request->asked = NULL;
    request->refused_kind = NULL;
    memset(&request->batch, 0, sizeof request->batch);
    request->batch.max_label_bytes = max_label_bytes;
    if (PyObject_GetBuffer(arg, &request->view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(request);
        return NULL;
    }
    Py_INCREF(arg);
    request->buffer = arg;
    request->epoch = 0;
    request->resolved = 0;
    request->template_of = NULL;
    request->asked = NULL;
    request->nasked = request->ask_from = 0;
    request->plan_from = 0;
    request->plan_epoch = request->plan_generation = 0;
    request->plan_phase = PHASE_NONE;
    const uint8_t *buf = (const uint8_t *)request->view.buf;
    size_t len = (size_t)request->view.len;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = decode(buf, len, &request->batch);
    if (status == 0) {
        for (size_t i = 0; i < request->batch.nseries; i++) {
            SeriesRef *ref = &request->batch.series[i];
            ref->hash = ep_hash(series_labels(&request->batch, buf, ref), ref->labels_len);
        }
    }
    Py_END_ALLOW_THREADS
    if (status == -2) {
        Py_DECREF(request);
        return PyErr_NoMemory();
    }
    if (status < 0) {
        PyErr_SetString(WireError, request->batch.error);
        Py_DECREF(request);
        return NULL;
    }
    return (PyObject *)request;
}

static PyObject *Core_scan(Core *core, PyObject *arg) {
    (void)core;
    return scan_with(arg, wire_decode, 0);
}

/* scan_v2(buffer, max_label_bytes): the same for a remote write 2.0 Request (wire_decode_v2),
 * whose labels written out may take max_label_bytes at most. */
static PyObject *Core_scan_v2(Core *core, PyObject *args) {
    (void)core;
    PyObject *arg;
    Py_ssize_t max_label_bytes;
    if (!PyArg_ParseTuple(args, "On:scan_v2", &arg, &max_label_bytes)) return NULL;
    if (max_label_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "max_label_bytes must not be negative");
        return NULL;
    }
    /* A series' labels are counted in 32 bits (SeriesRef.labels_len). */
    size_t cap = (size_t)max_label_bytes < UINT32_MAX ? (size_t)max_label_bytes : UINT32_MAX;
    return scan_with(arg, wire_decode_v2, cap);
}

static int series_planned(const Core *core, const SeriesRef *ref) {
    return ref->entry == REFUSED_ENTRY ||
           (ref->entry >= 0 && core->entries[ref->entry].kind != NO_PLAN);
}

/* Series ``i`` of the request is refused by an input-series limit: not cached, its samples
 * counted by ``kind`` (REFUSED_NO_KIND: all dropped as input_series_limit). 0, or -2 out of
 * memory. */
static int refuse_series(Request *request, size_t i, int32_t kind) {
    if (request->refused_kind == NULL) {
        size_t n = request->batch.nseries;
        request->refused_kind = malloc((n ? n : 1) * sizeof(int32_t));
        if (request->refused_kind == NULL) return -2;
    }
    request->refused_kind[i] = kind;
    request->batch.series[i].entry = REFUSED_ENTRY;
    return 0;
}

/* Find the series start..stop of the request in the table (the request's own resolved flag is
 * left as it is). */
static void resolve_range(Core *core, Request *request, size_t start, size_t stop) {
    const uint8_t *buf = (const uint8_t *)request->view.buf;
    for (size_t i = start; i < stop; i++) {
        SeriesRef *ref = &request->batch.series[i];
        ref->entry = table_find(core, series_labels(&request->batch, buf, ref), ref->labels_len,
                                ref->hash);
    }
}

typedef struct {
    int64_t samples;
    int64_t conflicts;
    int64_t dropped[DROP_REASONS];
    uint32_t dropped_seen; /* bit r: a series counted into reason r (even zero samples) */
    int64_t capped[MAX_VIEWS];
    uint32_t capped_seen;
    int64_t limited[MAX_VIEWS];
    uint32_t limited_seen;
} Tally;

static void apply_series(Core *core, const Batch *batch, const int32_t *refused_kind,
                         size_t start, size_t stop, int64_t *lookups, Tally *tally,
                         int64_t future_limit) {
    int nviews = core->nviews;
    for (size_t i = start; i < stop; i++) {
        const SeriesRef *ref = &batch->series[i];
        int64_t count = ref->samples;
        const Kind *kind;
        uint32_t feeds;
        if (ref->entry == REFUSED_ENTRY) {
            if (refused_kind[i] == REFUSED_NO_KIND) {
                tally->samples += count;
                tally->dropped[DROP_INPUT_SERIES_LIMIT] += count;
                tally->dropped_seen |= 1u << DROP_INPUT_SERIES_LIMIT;
                continue;
            }
            kind = &core->kinds[refused_kind[i]];
            feeds = 0;
        } else {
            const Entry *entry = &core->entries[ref->entry];
            kind = &core->kinds[entry->kind];
            feeds = entry->feeds;
        }
        for (uint32_t s = 0; s < kind->nslots; s++) lookups[kind->slots[s]]++;
        tally->conflicts += kind->conflicts;
        tally->samples += count;
        if (kind->capped) {
            for (int v = 0; v < nviews; v++) {
                if (kind->capped >> v & 1) {
                    tally->capped[v] += count;
                    tally->capped_seen |= 1u << v;
                }
            }
        }
        if (kind->limited) {
            for (int v = 0; v < nviews; v++) {
                if (kind->limited >> v & 1) {
                    tally->limited[v] += count;
                    tally->limited_seen |= 1u << v;
                }
            }
        }
        if (!feeds) {
            tally->dropped[kind->drop_reason] += count;
            tally->dropped_seen |= 1u << kind->drop_reason;
            continue;
        }
        const int32_t *inputs = &core->entry_inputs[(size_t)ref->entry * nviews];
        const Sample *sample = &batch->samples[ref->first_sample];
        /* The reference asks its first input (the lowest view fed) whether it is a counter. */
        int first = 0;
        while (!(feeds >> first & 1)) first++;
        int counter = core->views[first]->inputs[inputs[first]].flags & INPUT_COUNTER;
        for (uint32_t k = 0; k < ref->samples; k++, sample++) {
            double value = sample->value;
            if (sample->timestamp_ms > future_limit) {
                tally->dropped[DROP_FUTURE]++;
                tally->dropped_seen |= 1u << DROP_FUTURE;
            } else if (value == value) {
                if (counter && (value == INFINITY || value == -INFINITY)) {
                    tally->dropped[DROP_INFINITE_COUNTER]++;
                    tally->dropped_seen |= 1u << DROP_INFINITE_COUNTER;
                    continue;
                }
                for (int v = 0; v < nviews; v++)
                    if (feeds >> v & 1) view_observe(core->views[v], inputs[v], sample->timestamp_ms, value);
            } else if (ep_bits(value) == EP_STALE_BITS) {
                for (int v = 0; v < nviews; v++)
                    if (feeds >> v & 1) view_end(core->views[v], inputs[v], sample->timestamp_ms);
            } else {
                tally->dropped[DROP_NAN]++;
                tally->dropped_seen |= 1u << DROP_NAN;
            }
        }
    }
}

static PyObject *int64_list(const int64_t *values, size_t n) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *item = PyLong_FromLongLong(values[i]);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* apply(request, future_limit_ms[, start, stop]): every sample of the request's series
 * start..stop (all by default), which must all be planned. Returns None when one is not (a plan
 * was forgotten since: plan them and call again; nothing was applied), else
 * (samples, conflicts, lookups[3*rules], dropped[reasons], dropped_seen, capped[views],
 * capped_seen, late[views], out_of_order[views], limited[views], limited_seen). */
static PyObject *Core_apply(Core *core, PyObject *args) {
    PyObject *arg;
    long long future_limit;
    Py_ssize_t start = 0, stop = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "O!L|nn", &RequestType, &arg, &future_limit, &start, &stop))
        return NULL;
    if (check_idle(core) < 0) return NULL;
    Request *request = (Request *)arg;
    size_t nseries = request->batch.nseries;
    if (start < 0) start = 0;
    if ((size_t)stop > nseries) stop = (Py_ssize_t)nseries;
    if (start > stop) start = stop;
    /* Only this slice is looked up again: the rest of a large request waits for its own. */
    int fresh = request->resolved && request->epoch == core->epoch;
    if (!fresh) resolve_range(core, request, (size_t)start, (size_t)stop);
    for (Py_ssize_t i = start; i < stop; i++) {
        if (!series_planned(core, &request->batch.series[i])) {
            if (fresh) resolve_range(core, request, (size_t)start, (size_t)stop);
            for (Py_ssize_t k = start; k < stop; k++)
                if (!series_planned(core, &request->batch.series[k])) Py_RETURN_NONE;
            break;
        }
    }
    size_t nlookups = 3 * (size_t)core->nrules;
    int64_t *lookups = calloc(nlookups + 1, sizeof(int64_t));
    if (lookups == NULL) return PyErr_NoMemory();
    Tally tally;
    memset(&tally, 0, sizeof tally);
    int64_t late_before[MAX_VIEWS], ooo_before[MAX_VIEWS], late[MAX_VIEWS], ooo[MAX_VIEWS];
    for (int v = 0; v < core->nviews; v++) {
        late_before[v] = core->views[v]->late_samples;
        ooo_before[v] = core->views[v]->out_of_order_samples;
    }
    core->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    apply_series(core, &request->batch, request->refused_kind, (size_t)start, (size_t)stop,
                 lookups, &tally, future_limit);
    Py_END_ALLOW_THREADS
    core->busy = 0;
    for (int v = 0; v < core->nviews; v++) {
        late[v] = core->views[v]->late_samples - late_before[v];
        ooo[v] = core->views[v]->out_of_order_samples - ooo_before[v];
    }
    PyObject *result = Py_BuildValue(
        "LLNNINkNNNk", (long long)tally.samples, (long long)tally.conflicts,
        int64_list(lookups, nlookups), int64_list(tally.dropped, DROP_REASONS),
        (unsigned int)tally.dropped_seen, int64_list(tally.capped, (size_t)core->nviews),
        (unsigned long)tally.capped_seen, int64_list(late, (size_t)core->nviews),
        int64_list(ooo, (size_t)core->nviews), int64_list(tally.limited, (size_t)core->nviews),
        (unsigned long)tally.limited_seen);
    free(lookups);
    return result;
}

/* --- Core: plan templates (plan.h) ----------------------------------------------------------- */

static int name_list_from(PyObject *names, NameList *out) {
    memset(out, 0, sizeof *out);
    PyObject *sequence = PySequence_Fast(names, "names must be a sequence of bytes");
    if (sequence == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    out->names = calloc((size_t)(n ? n : 1), sizeof(uint8_t *));
    out->lens = calloc((size_t)(n ? n : 1), sizeof(uint32_t));
    if (out->names == NULL || out->lens == NULL) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char *data;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(sequence, i), &data, &len) < 0) {
            Py_DECREF(sequence);
            return -1;
        }
        out->names[i] = malloc((size_t)(len ? len : 1));
        if (out->names[i] == NULL) {
            Py_DECREF(sequence);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(out->names[i], data, (size_t)len);
        out->lens[i] = (uint32_t)len;
        out->n = (uint32_t)(i + 1);
    }
    Py_DECREF(sequence);
    return 0;
}

static void name_list_release(NameList *list) {
    for (uint32_t i = 0; i < list->n; i++) free(list->names[i]);
    free(list->names);
    free(list->lens);
}

/* configure_templates(signature_names, keep_per_view, caps_per_view, max_labels, max_name_len,
 * max_value_len): names as UTF-8 bytes; caps and limits 0 for none. */
static PyObject *Core_configure_templates(Core *core, PyObject *args) {
    PyObject *signature, *keeps, *caps;
    long long max_labels, max_name, max_value;
    if (!PyArg_ParseTuple(args, "OOOLLL", &signature, &keeps, &caps, &max_labels, &max_name,
                          &max_value))
        return NULL;
    if (check_idle(core) < 0) return NULL;
    PyObject *cap_seq = PySequence_Fast(caps, "caps must be a sequence");
    if (cap_seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(cap_seq) != core->nviews) {
        Py_DECREF(cap_seq);
        PyErr_SetString(PyExc_ValueError, "one cap per view");
        return NULL;
    }
    for (int v = 0; v < core->nviews; v++) {
        long long cap = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(cap_seq, v));
        if (cap == -1 && PyErr_Occurred()) {
            Py_DECREF(cap_seq);
            return NULL;
        }
        core->view_caps[v] = cap;
    }
    Py_DECREF(cap_seq);
    NameList sig, keep[MAX_VIEWS];
    memset(keep, 0, sizeof keep);
    PyObject *sequence = PySequence_Fast(keeps, "keep must be a sequence");
    if (sequence == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(sequence) != core->nviews) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "one keep list per view");
        return NULL;
    }
    int failed = name_list_from(signature, &sig) < 0;
    for (int v = 0; v < core->nviews && !failed; v++)
        failed = name_list_from(PySequence_Fast_GET_ITEM(sequence, v), &keep[v]) < 0;
    Py_DECREF(sequence);
    if (failed) {
        name_list_release(&sig);
        for (int v = 0; v < core->nviews; v++) name_list_release(&keep[v]);
        return NULL;
    }
    if (templates_configure(&core->templates, core->nviews, core->nrules, sig, keep, max_labels,
                            max_name, max_value) < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Core_clear_templates(Core *core, PyObject *Py_UNUSED(ignored)) {
    if (check_idle(core) < 0) return NULL;
    templates_clear(&core->templates);
    Py_RETURN_NONE;
}

static PyObject *Core_get_templates(Core *core, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(core->templates.ntemplates);
}

/* add_template(label_bytes, kind, feeds, is_counter, deps, fixed_per_view): the planner's
 * decisions for every series with the signature of label_bytes. */
static PyObject *Core_add_template(Core *core, PyObject *args) {
    const char *labels;
    Py_ssize_t len;
    int kind, is_counter;
    unsigned int feeds;
    PyObject *deps, *fixed;
    if (!PyArg_ParseTuple(args, "y#iIpOO", &labels, &len, &kind, &feeds, &is_counter, &deps, &fixed))
        return NULL;
    if (check_idle(core) < 0) return NULL;
    Templates *t = &core->templates;
    if (!t->configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure_templates first");
        return NULL;
    }
    if (kind < 0 || (size_t)kind >= core->nkinds) {
        PyErr_SetString(PyExc_ValueError, "unknown plan kind");
        return NULL;
    }
    int32_t dep_values[64];
    if (core->nrules > 64) {
        PyErr_SetString(PyExc_ValueError, "at most 64 rules");
        return NULL;
    }
    PyObject *dep_seq = PySequence_Fast(deps, "deps must be a sequence");
    if (dep_seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(dep_seq) != core->nrules) {
        Py_DECREF(dep_seq);
        PyErr_SetString(PyExc_ValueError, "one dependency per rule");
        return NULL;
    }
    for (int r = 0; r < core->nrules; r++) {
        long dep = PyLong_AsLong(PySequence_Fast_GET_ITEM(dep_seq, r));
        if (dep == -1 && PyErr_Occurred()) {
            Py_DECREF(dep_seq);
            return NULL;
        }
        dep_values[r] = (int32_t)dep;
    }
    Py_DECREF(dep_seq);
    PyObject *fixed_seq = PySequence_Fast(fixed, "fixed must be a sequence");
    if (fixed_seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(fixed_seq) != core->nviews) {
        Py_DECREF(fixed_seq);
        PyErr_SetString(PyExc_ValueError, "one fixed label set per view");
        return NULL;
    }
    const uint8_t *fixed_bytes[MAX_VIEWS];
    size_t fixed_len[MAX_VIEWS];
    for (int v = 0; v < core->nviews; v++) {
        char *data;
        Py_ssize_t n;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(fixed_seq, v), &data, &n) < 0) {
            Py_DECREF(fixed_seq);
            return NULL;
        }
        fixed_bytes[v] = (const uint8_t *)data;
        fixed_len[v] = (size_t)n;
    }
    int status = series_shape(t, (const uint8_t *)labels, (size_t)len);
    int32_t id = NO_TEMPLATE;
    if (status == 0) {
        id = template_find(t, t->sig, t->sig_len, t->sig_hash);
        if (id == NO_TEMPLATE) id = template_ask(t);
        if (id == -2) status = -2;
    }
    if (status == 0)
        status = template_fill(t, id, kind, feeds, is_counter, dep_values, fixed_bytes, fixed_len);
    Py_DECREF(fixed_seq);
    if (status == -2) return PyErr_NoMemory();
    if (status < 0) {
        PyErr_SetString(PyExc_ValueError, "labels not in the plain form");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The asking pass, from request->ask_from over at most ``budget`` unplanned series: each one's
 * template, asking for those not ready (once per pass: their indexes go to request->asked).
 * 0 when the pass is done, 1 when the budget ran out first, -2 out of memory. */
#define ASK_COST 8

static int ask_templates(Core *core, Request *request, size_t budget) {
    Templates *t = &core->templates;
    Batch *batch = &request->batch;
    const uint8_t *buf = (const uint8_t *)request->view.buf;
    uint32_t stamp = t->stamp;
    size_t i = request->ask_from;
    /* Finding a series in the table is one unit of work, working out its template eight. */
    size_t work = budget * ASK_COST;
    for (; i < batch->nseries; i++) {
        if (work < ASK_COST) break;
        SeriesRef *ref = &batch->series[i];
        request->template_of[i] = NO_TEMPLATE;
        ref->entry = table_find(core, series_labels(batch, buf, ref), ref->labels_len, ref->hash);
        work--;
        if (series_planned(core, ref)) continue;
        /* Over limits.max_input_series already (plans only grow until instantiation):
         * instantiate refuses the series, so no template is made for it. */
        if (core->max_inputs && (int64_t)core->nplans >= core->max_inputs &&
            (ref->entry == NO_ID || !entry_has_inputs(core, ref->entry)))
            continue;
        work -= ASK_COST - 1;
        int status = series_shape(t, series_labels(batch, buf, ref), ref->labels_len);
        if (status == -2) return -2;
        if (status < 0) {
            request->template_of[i] = TEMPLATE_SLOW;
            continue;
        }
        int32_t id = template_find(t, t->sig, t->sig_len, t->sig_hash);
        if (id == NO_TEMPLATE) {
            id = template_ask(t);
            if (id == -2) return -2;
        }
        Template *tp = &t->templates[id];
        if (!tp->ready && tp->stamp != stamp) {
            tp->stamp = stamp;
            request->asked[request->nasked++] = i;
        }
        request->template_of[i] = id;
    }
    request->ask_from = i;
    return i < batch->nseries;
}

#define PLAN_BUDGET_SPENT (-3)

/* The instantiating pass from request->plan_from: every unplanned series gets its template's
 * plan, in request order. Returns the index of a series Python must plan on its own (a slow
 * one, or one a view's cap leaves out), nseries when done, PLAN_BUDGET_SPENT after ``budget``
 * series, or -2 out of memory. */
static Py_ssize_t instantiate(Core *core, Request *request, size_t budget) {
    Templates *t = &core->templates;
    Batch *batch = &request->batch;
    const uint8_t *buf = (const uint8_t *)request->view.buf;
    int nviews = core->nviews;
    for (size_t i = request->plan_from; i < batch->nseries; i++) {
        SeriesRef *ref = &batch->series[i];
        if (series_planned(core, ref)) continue;
        if (!budget--) return PLAN_BUDGET_SPENT;
        const uint8_t *key = series_labels(batch, buf, ref);
        int32_t found = table_find(core, key, ref->labels_len, ref->hash);
        if (found != NO_ID && core->entries[found].kind != NO_PLAN) {
            ref->entry = found; /* the same series earlier in this request */
            continue;
        }
        /* limits.max_input_series, before anything of the series is worked out: a new series
         * (one no view tracks either) over it is refused at the cost of this lookup. */
        if (core->max_inputs && (int64_t)core->nplans >= core->max_inputs &&
            (found == NO_ID || !entry_has_inputs(core, found))) {
            if (refuse_series(request, i, REFUSED_NO_KIND) < 0) return -2;
            request->plan_from = i + 1;
            continue;
        }
        int32_t id = request->template_of[i];
        if (id < 0 || !t->templates[id].ready) return (Py_ssize_t)i;
        const Template *tp = &t->templates[id];
        size_t starts[MAX_VIEWS + 1], offset = 0;
        uint64_t hashes[MAX_VIEWS];
        if (tp->feeds) {
            if (series_shape(t, key, ref->labels_len) < 0) return (Py_ssize_t)i;
            for (int v = 0; v < nviews; v++) {
                starts[v] = offset;
                if (!(tp->feeds >> v & 1)) continue;
                if (template_output(t, tp, v, &offset) < 0) return -2;
            }
            starts[nviews] = offset;
            for (int v = 0; v < nviews; v++) {
                if (!(tp->feeds >> v & 1)) continue;
                size_t len = starts[v + 1] - starts[v];
                hashes[v] = ep_hash(t->out + starts[v], len);
                /* A limit or cap that leaves the series out of a view: the planner counts it. */
                if (!view_admits_input(core, v, found) ||
                    !view_admits(core->views[v], t->out + starts[v], len, hashes[v],
                                 core->view_caps[v]))
                    return (Py_ssize_t)i;
            }
        }
        int32_t entry = found;
        if (entry == NO_ID) {
            entry = table_insert(core, key, ref->labels_len, ref->hash);
            if (entry < 0) return -2;
        }
        for (int v = 0; v < nviews; v++) {
            if (!(tp->feeds >> v & 1)) continue;
            int32_t *slot = &core->entry_inputs[(size_t)entry * nviews + v];
            int32_t input = view_attach(core->views[v], *slot, entry, t->out + starts[v],
                                        starts[v + 1] - starts[v], hashes[v], tp->is_counter);
            if (input < 0) return -2;
            *slot = input;
        }
        for (int r = 0; r < core->nrules; r++)
            core->entry_deps[(size_t)entry * core->nrules + r] = tp->deps[r];
        Entry *e = &core->entries[entry];
        if (e->kind == NO_PLAN) core->nplans++;
        e->kind = tp->kind;
        e->feeds = tp->feeds;
        ref->entry = entry;
        request->plan_from = i + 1;
    }
    return (Py_ssize_t)batch->nseries;
}

static PyObject *series_key(const Request *request, size_t i) {
    const Batch *batch = &request->batch;
    const SeriesRef *ref = &batch->series[i];
    return PyBytes_FromStringAndSize(
        (const char *)series_labels(batch, (const uint8_t *)request->view.buf, ref),
        ref->labels_len);
}

/* plan(request, budget): plan the request's unplanned series with templates, in request order,
 * handling at most ``budget`` series per call. Returns None when every series has a plan;
 * (MAKE_TEMPLATES, [label bytes]) when the planner must make templates for these series'
 * signatures first; (PLAN_ONE, label bytes) when it must plan this one series itself;
 * (GO_ON, None) when the budget ran out. Call again after doing what it says: other requests
 * may be planned and applied in between (a plan forgotten meanwhile restarts the pass). */
enum { MAKE_TEMPLATES = 1, PLAN_ONE = 2, GO_ON = 3 };

/* refuse(request, kind): the series plan() last asked the planner for (PLAN_ONE) is refused by
 * the views' max_input_series: not cached, its samples counted by ``kind``. */
static PyObject *Core_refuse(Core *core, PyObject *args) {
    PyObject *arg;
    int kind;
    if (!PyArg_ParseTuple(args, "O!i", &RequestType, &arg, &kind)) return NULL;
    if (check_idle(core) < 0) return NULL;
    Request *request = (Request *)arg;
    if (request->plan_phase != PHASE_INSTANTIATE || request->plan_from >= request->batch.nseries) {
        PyErr_SetString(PyExc_RuntimeError, "no series is waiting for its plan");
        return NULL;
    }
    if (kind < 0 || (size_t)kind >= core->nkinds) {
        PyErr_SetString(PyExc_ValueError, "unknown plan kind");
        return NULL;
    }
    if (refuse_series(request, request->plan_from, kind) < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Core_plan(Core *core, PyObject *args) {
    PyObject *arg;
    Py_ssize_t budget;
    if (!PyArg_ParseTuple(args, "O!n", &RequestType, &arg, &budget)) return NULL;
    if (check_idle(core) < 0) return NULL;
    if (budget <= 0) {
        PyErr_SetString(PyExc_ValueError, "budget must be positive");
        return NULL;
    }
    Request *request = (Request *)arg;
    Templates *t = &core->templates;
    if (!t->configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure_templates first");
        return NULL;
    }
    size_t nseries = request->batch.nseries;
    if (request->plan_phase == PHASE_NONE || request->plan_epoch != core->epoch ||
        request->plan_generation != t->generation) {
        if (request->template_of == NULL) {
            request->template_of = malloc((nseries ? nseries : 1) * sizeof(int32_t));
            request->asked = malloc((nseries ? nseries : 1) * sizeof(size_t));
            if (request->template_of == NULL || request->asked == NULL) return PyErr_NoMemory();
        }
        /* The asking pass finds every series in the table, a budget at a time: a request of a
         * million series is never looked up in one go. */
        request->resolved = 0;
        request->plan_phase = PHASE_ASK;
        request->ask_from = request->nasked = 0;
        request->plan_from = 0;
        request->plan_epoch = core->epoch;
        request->plan_generation = t->generation;
        t->stamp++;
    }
    if (request->plan_phase == PHASE_ASK) {
        int status;
        core->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        status = ask_templates(core, request, (size_t)budget);
        Py_END_ALLOW_THREADS
        core->busy = 0;
        if (status == -2) return PyErr_NoMemory();
        if (status == 1) return Py_BuildValue("(iO)", GO_ON, Py_None);
        request->resolved = 1;
        request->epoch = request->plan_epoch;
        request->plan_phase = PHASE_INSTANTIATE;
        if (request->nasked) {
            Py_ssize_t n = (Py_ssize_t)request->nasked;
            request->nasked = 0;
            PyObject *keys = PyList_New(n);
            if (keys == NULL) return NULL;
            for (Py_ssize_t k = 0; k < n; k++) {
                PyObject *key = series_key(request, request->asked[k]);
                if (key == NULL) {
                    Py_DECREF(keys);
                    return NULL;
                }
                PyList_SET_ITEM(keys, k, key);
            }
            /* A template the planner does not fill stays unready: its series then go to the
             * planner one by one. */
            return Py_BuildValue("(iN)", MAKE_TEMPLATES, keys);
        }
    }
    Py_ssize_t stopped;
    core->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    stopped = instantiate(core, request, (size_t)budget);
    Py_END_ALLOW_THREADS
    core->busy = 0;
    if (stopped == -2) return PyErr_NoMemory();
    if (stopped == PLAN_BUDGET_SPENT) return Py_BuildValue("(iO)", GO_ON, Py_None);
    if ((size_t)stopped == nseries) Py_RETURN_NONE;
    request->plan_from = (size_t)stopped;
    return Py_BuildValue("(iN)", PLAN_ONE, series_key(request, (size_t)stopped));
}

/* --- Core: flush and view state -------------------------------------------------------------- */

/* The samples of ``out`` as a list of (label bytes, timestamp ms, value) tuples, or of
 * instances of ``type``, a tuple subclass of three fields (model.OutputSample), made here
 * without calling its Python __new__. Frees ``out``. */
static PyObject *output_list(const View *state, Outputs *out, PyTypeObject *type) {
    PyObject *list = PyList_New((Py_ssize_t)out->n);
    if (list == NULL) {
        free(out->samples);
        return NULL;
    }
    for (size_t i = 0; i < out->n; i++) {
        const Group *group = &state->groups[out->samples[i].group];
        PyObject *item;
        if (type == NULL) {
            item = Py_BuildValue("(y#Ld)", (const char *)group->labels,
                                 (Py_ssize_t)group->labels_len,
                                 (long long)out->samples[i].timestamp_ms, out->samples[i].value);
        } else {
            PyObject *labels = PyBytes_FromStringAndSize((const char *)group->labels,
                                                         (Py_ssize_t)group->labels_len);
            PyObject *timestamp = PyLong_FromLongLong(out->samples[i].timestamp_ms);
            PyObject *value = PyFloat_FromDouble(out->samples[i].value);
            item = (labels && timestamp && value) ? type->tp_alloc(type, 3) : NULL;
            if (item == NULL) {
                Py_XDECREF(labels);
                Py_XDECREF(timestamp);
                Py_XDECREF(value);
            } else {
                PyTuple_SET_ITEM(item, 0, labels);
                PyTuple_SET_ITEM(item, 1, timestamp);
                PyTuple_SET_ITEM(item, 2, value);
            }
        }
        if (item == NULL) {
            Py_DECREF(list);
            free(out->samples);
            return NULL;
        }
        /* Bytes, an int and a float: never part of a cycle, so not the collector's business.
         * A flush of 100 k series would otherwise set off full collections of the heap. */
        PyObject_GC_UnTrack(item);
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    free(out->samples);
    return list;
}

static int check_sample_type(PyTypeObject *type) {
    if (type != NULL && !PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "sample_type must be a tuple subclass");
        return -1;
    }
    return 0;
}

/* Whole-view work (a whole flush, export, adopt, marks) waits for a flush under way to end. */
static int check_not_flushing(Core *core, int view) {
    if (core->views[view]->flushing) {
        PyErr_SetString(PyExc_RuntimeError, "a flush of this view is under way");
        return -1;
    }
    return 0;
}

/* flush(view, now_ms, final[, sample_type]): the samples of the windows it closes (see
 * output_list). */
static PyObject *Core_flush(Core *core, PyObject *args) {
    int view;
    long long now_ms;
    int final;
    PyObject *sample_type = NULL;
    if (!PyArg_ParseTuple(args, "iLp|O!", &view, &now_ms, &final, &PyType_Type, &sample_type))
        return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0 ||
        check_not_flushing(core, view) < 0 || check_sample_type((PyTypeObject *)sample_type) < 0)
        return NULL;
    View *state = core->views[view];
    Outputs out = {NULL, 0, 0};
    if (view_flush(state, now_ms, final, &out, core, forget_input_callback) < 0) {
        free(out.samples);
        return PyErr_NoMemory();
    }
    return output_list(state, &out, (PyTypeObject *)sample_type);
}

/* flush_begin(view, now_ms, final): decide the windows a flush closes (see view_flush_begin);
 * only between whole requests, like flush. */
static PyObject *Core_flush_begin(Core *core, PyObject *args) {
    int view;
    long long now_ms;
    int final;
    if (!PyArg_ParseTuple(args, "iLp", &view, &now_ms, &final)) return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0 || check_not_flushing(core, view) < 0)
        return NULL;
    if (view_flush_begin(core->views[view], now_ms, final, core, forget_input_callback) < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* flush_step(view, budget[, sample_type]) -> (done, samples): up to ``budget`` inputs settled
 * (0: all that are left). Requests may be applied between two steps, even in steps of their
 * own. */
static PyObject *Core_flush_step(Core *core, PyObject *args) {
    int view;
    Py_ssize_t budget;
    PyObject *sample_type = NULL;
    if (!PyArg_ParseTuple(args, "in|O!", &view, &budget, &PyType_Type, &sample_type)) return NULL;
    if (check_view(core, view) < 0 || check_sample_type((PyTypeObject *)sample_type) < 0)
        return NULL;
    View *state = core->views[view];
    if (!state->flushing) {
        PyErr_SetString(PyExc_RuntimeError, "no flush of this view is under way");
        return NULL;
    }
    if (budget < 0) {
        PyErr_SetString(PyExc_ValueError, "budget must be >= 0");
        return NULL;
    }
    Outputs out = {NULL, 0, 0};
    int done = view_flush_step(state, (size_t)budget, &out);
    if (done < 0) {
        free(out.samples);
        return PyErr_NoMemory();
    }
    PyObject *list = output_list(state, &out, (PyTypeObject *)sample_type);
    if (list == NULL) return NULL;
    return Py_BuildValue("(ON)", done ? Py_True : Py_False, list);
}

/* (groups, inputs, open windows, max_timestamp_ms, closed_window, late, out_of_order,
 *  forgotten_inputs, forgotten_groups) */
/* set_watermark_limit(now_ms): no view's watermark passes the proxy's clock (see
 * aggregation.ViewAggregator.watermark_limit_ms). */
static PyObject *Core_set_watermark_limit(Core *core, PyObject *args) {
    long long limit;
    if (!PyArg_ParseTuple(args, "L", &limit)) return NULL;
    if (check_idle(core) < 0) return NULL;
    for (int v = 0; v < core->nviews; v++) core->views[v]->watermark_limit_ms = limit;
    Py_RETURN_NONE;
}

static PyObject *Core_view_stats(Core *core, PyObject *args) {
    int view;
    if (!PyArg_ParseTuple(args, "i", &view)) return NULL;
    if (check_view(core, view) < 0) return NULL;
    const View *s = core->views[view];
    return Py_BuildValue("nnnLLLLLL", (Py_ssize_t)s->ngroups, (Py_ssize_t)s->live_inputs,
                         (Py_ssize_t)s->nwindows, (long long)s->max_timestamp_ms,
                         (long long)s->closed_window, (long long)s->late_samples,
                         (long long)s->out_of_order_samples, (long long)s->forgotten_inputs,
                         (long long)s->forgotten_groups);
}

static PyObject *Core_mark_emitted_through(Core *core, PyObject *args) {
    int view;
    long long timestamp_ms;
    if (!PyArg_ParseTuple(args, "iL", &view, &timestamp_ms)) return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0 || check_not_flushing(core, view) < 0)
        return NULL;
    view_mark_emitted_through(core->views[view], timestamp_ms);
    Py_RETURN_NONE;
}

static PyObject *input_state(const View *view, int32_t id, PyObject *departed_index) {
    const Input *input = &view->inputs[id];
    PyObject *pending = PyList_New(input->count);
    if (pending == NULL) return NULL;
    for (uint32_t i = 0; i < input->count; i++) {
        PyObject *entry = Py_BuildValue("[LdO]", (long long)input_pending(input)[i].window,
                                        input_pending(input)[i].contribution,
                                        input_pending(input)[i].live ? Py_True : Py_False);
        if (entry == NULL) {
            Py_DECREF(pending);
            return NULL;
        }
        PyList_SET_ITEM(pending, i, entry);
    }
    PyObject *predecessor = Py_None;
    int32_t pred = input_predecessor(view, input);
    if (pred != NO_ID) {
        PyObject *key = PyLong_FromLong(pred);
        if (key == NULL) {
            Py_DECREF(pending);
            return NULL;
        }
        predecessor = PyDict_GetItemWithError(departed_index, key);
        Py_DECREF(key);
        if (predecessor == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(pending);
                return NULL;
            }
            predecessor = Py_None;
        }
    }
    PyObject *last_value = (input->flags & INPUT_HAS_VALUE) ? PyFloat_FromDouble(input->last_value)
                                                            : Py_NewRef(Py_None);
    if (last_value == NULL) {
        Py_DECREF(pending);
        return NULL;
    }
    return Py_BuildValue("{s:O,s:L,s:N,s:d,s:O,s:N,s:[dO],s:O}", "counter",
                         (input->flags & INPUT_COUNTER) ? Py_True : Py_False, "last_seen_ms",
                         (long long)input->last_seen_ms, "last_value", last_value, "offset",
                         input->offset, "live", (input->flags & INPUT_LIVE) ? Py_True : Py_False,
                         "pending", pending, "closed", input->closed_contribution,
                         (input->flags & INPUT_CLOSED_LIVE) ? Py_True : Py_False, "predecessor",
                         predecessor);
}

/* export_view(view) -> (closed_window, max_timestamp_ms, [(labels, retired, emitted_live,
 * open_windows, [(key, state)], [state])]) in the reference's orders; states as the reference's
 * aggregation_state writes them. */
static PyObject *Core_export_view(Core *core, PyObject *args) {
    int view;
    if (!PyArg_ParseTuple(args, "i", &view)) return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0 || check_not_flushing(core, view) < 0)
        return NULL;
    const View *s = core->views[view];
    PyObject *departed_index = PyDict_New();
    PyObject *groups = PyList_New(0);
    if (departed_index == NULL || groups == NULL) goto fail;
    Py_ssize_t group_index = 0;
    for (size_t pos = 0; pos < s->group_order_len; pos++) {
        int32_t id = s->group_order[pos];
        if (id == NO_ID) continue;
        const Group *group = &s->groups[id];
        for (size_t d = 0; d < group->ndeparted; d++) {
            PyObject *key = PyLong_FromLong(group->departed[d]);
            PyObject *where = Py_BuildValue("[nn]", group_index, (Py_ssize_t)d);
            int failed = key == NULL || where == NULL ||
                         PyDict_SetItem(departed_index, key, where) < 0;
            Py_XDECREF(key);
            Py_XDECREF(where);
            if (failed) goto fail;
        }
        group_index++;
    }
    for (size_t pos = 0; pos < s->group_order_len; pos++) {
        int32_t id = s->group_order[pos];
        if (id == NO_ID) continue;
        const Group *group = &s->groups[id];
        PyObject *windows = PyList_New(0);
        PyObject *inputs = PyList_New((Py_ssize_t)group->ninputs);
        PyObject *departed = PyList_New((Py_ssize_t)group->ndeparted);
        PyObject *item = NULL;
        if (windows == NULL || inputs == NULL || departed == NULL) goto fail_group;
        for (size_t w = 0; w < s->nwindows; w++) {
            const OpenWindow *window = &s->windows[w];
            size_t word = (size_t)id / 64;
            if (word < window->bits_words && (window->bits[word] >> (id % 64) & 1)) {
                PyObject *number = PyLong_FromLongLong(window->window);
                if (number == NULL || PyList_Append(windows, number) < 0) {
                    Py_XDECREF(number);
                    goto fail_group;
                }
                Py_DECREF(number);
            }
        }
        if (PyList_Sort(windows) < 0) goto fail_group;
        for (size_t i = 0; i < group->ninputs; i++) {
            int32_t input = group->inputs[i];
            const Entry *entry = &core->entries[s->inputs[input].entry];
            size_t key_len;
            const uint8_t *key = entry_key_bytes(core, entry, &key_len);
            PyObject *state = key == NULL ? PyErr_NoMemory() : input_state(s, input, departed_index);
            PyObject *pair = state == NULL ? NULL
                                           : Py_BuildValue("(y#N)", (const char *)key,
                                                           (Py_ssize_t)key_len, state);
            if (pair == NULL) goto fail_group;
            PyList_SET_ITEM(inputs, (Py_ssize_t)i, pair);
        }
        for (size_t d = 0; d < group->ndeparted; d++) {
            PyObject *state = input_state(s, group->departed[d], departed_index);
            if (state == NULL) goto fail_group;
            PyList_SET_ITEM(departed, (Py_ssize_t)d, state);
        }
        item = Py_BuildValue("(y#dONNN)", (const char *)group->labels,
                             (Py_ssize_t)group->labels_len, group->retired,
                             group->emitted_live ? Py_True : Py_False, windows, inputs, departed);
        if (item == NULL || PyList_Append(groups, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
        continue;
    fail_group:
        Py_XDECREF(windows);
        Py_XDECREF(inputs);
        Py_XDECREF(departed);
        goto fail;
    }
    Py_DECREF(departed_index);
    return Py_BuildValue("(LLN)", (long long)s->closed_window, (long long)s->max_timestamp_ms,
                         groups);
fail:
    Py_XDECREF(departed_index);
    Py_XDECREF(groups);
    return NULL;
}

/* --- restore: the primitives enrichproxy.engine.native drives -------------------------------- */

static PyObject *Core_restore_view(Core *core, PyObject *args) {
    int view;
    long long closed_window, max_timestamp_ms;
    if (!PyArg_ParseTuple(args, "iLL", &view, &closed_window, &max_timestamp_ms)) return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0) return NULL;
    View *s = core->views[view];
    if (s->ngroups || s->live_inputs) {
        PyErr_SetString(PyExc_ValueError, "restore_state needs an aggregator that has seen nothing yet");
        return NULL;
    }
    s->closed_window = closed_window;
    s->max_timestamp_ms = max_timestamp_ms;
    Py_RETURN_NONE;
}

static PyObject *Core_restore_group(Core *core, PyObject *args) {
    int view, emitted_live;
    const char *labels;
    Py_ssize_t len;
    double retired;
    PyObject *windows;
    if (!PyArg_ParseTuple(args, "iy#dpO", &view, &labels, &len, &retired, &emitted_live, &windows))
        return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0) return NULL;
    View *s = core->views[view];
    uint64_t hash = ep_hash((const uint8_t *)labels, (size_t)len);
    int32_t id = view_find_group(s, (const uint8_t *)labels, (size_t)len, hash);
    if (id == NO_ID) id = view_new_group(s, (const uint8_t *)labels, (size_t)len, hash);
    if (id < 0) return PyErr_NoMemory();
    s->groups[id].retired = retired;
    s->groups[id].emitted_live = (uint8_t)emitted_live;
    PyObject *sequence = PySequence_Fast(windows, "open windows must be a sequence");
    if (sequence == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        long long window = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sequence, i));
        if ((window == -1 && PyErr_Occurred()) || view_touch(s, window, id) < 0) {
            Py_DECREF(sequence);
            if (!PyErr_Occurred()) PyErr_NoMemory();
            return NULL;
        }
    }
    Py_DECREF(sequence);
    return PyLong_FromLong(id);
}

/* restore_input(view, group, key or None, counter, last_seen_ms, last_value or None, offset,
 * live, pending [(window, contribution, live)], closed_contribution, closed_live) -> input id.
 * With a key the input joins the group's inputs; with None it is departed from the group. */
static PyObject *Core_restore_input(Core *core, PyObject *args) {
    int view, group, counter, live, closed_live;
    PyObject *key, *last_value, *pending;
    long long last_seen_ms;
    double offset, closed_contribution;
    if (!PyArg_ParseTuple(args, "iiOpLOdpOdp", &view, &group, &key, &counter, &last_seen_ms,
                          &last_value, &offset, &live, &pending, &closed_contribution,
                          &closed_live))
        return NULL;
    if (check_view(core, view) < 0 || check_idle(core) < 0) return NULL;
    View *s = core->views[view];
    if (group < 0 || (size_t)group >= s->groups_len || !s->groups[group].used) {
        PyErr_SetString(PyExc_IndexError, "unknown group");
        return NULL;
    }
    int32_t id = view_new_input(s, group, counter);
    if (id < 0) return PyErr_NoMemory();
    Input *input = &s->inputs[id];
    input->last_seen_ms = last_seen_ms;
    if (last_value != Py_None) {
        double value = PyFloat_AsDouble(last_value);
        if (value == -1.0 && PyErr_Occurred()) goto fail;
        input->last_value = value;
        input->flags |= INPUT_HAS_VALUE;
    }
    input->offset = offset;
    if (live) input->flags |= INPUT_LIVE;
    input->closed_contribution = closed_contribution;
    if (closed_live) input->flags |= INPUT_CLOSED_LIVE;
    PyObject *sequence = PySequence_Fast(pending, "pending must be a sequence");
    if (sequence == NULL) goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        long long window;
        double contribution;
        int entry_live;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(sequence, i), "Ldp", &window,
                              &contribution, &entry_live) ||
            input_push_pending(s, id, window, contribution, entry_live) < 0) {
            Py_DECREF(sequence);
            if (!PyErr_Occurred()) PyErr_NoMemory();
            goto fail;
        }
    }
    Py_DECREF(sequence);
    if (key == Py_None) {
        if (view_add_departed(s, group, id) < 0) {
            PyErr_NoMemory();
            goto fail;
        }
    } else {
        char *bytes;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(key, &bytes, &len) < 0) goto fail;
        int32_t entry = entry_for(core, bytes, len, 1);
        if (entry < 0) goto fail;
        int32_t *slot = &core->entry_inputs[(size_t)entry * core->nviews + view];
        if (*slot != NO_ID) {
            PyErr_SetString(PyExc_ValueError, "an input is restored twice");
            goto fail;
        }
        if (view_map_input(s, group, id, entry) < 0) {
            PyErr_NoMemory();
            goto fail;
        }
        *slot = id;
    }
    return PyLong_FromLong(id);
fail:
    s->inputs[id].flags = 0; /* left unreachable: restore failures abandon the engine */
    return NULL;
}

static PyObject *Core_restore_predecessor(Core *core, PyObject *args) {
    int view, input, predecessor;
    if (!PyArg_ParseTuple(args, "iii", &view, &input, &predecessor)) return NULL;
    if (check_view(core, view) < 0) return NULL;
    View *s = core->views[view];
    if (input < 0 || predecessor < 0 || (size_t)input >= s->inputs_len ||
        (size_t)predecessor >= s->inputs_len) {
        PyErr_SetString(PyExc_IndexError, "unknown input");
        return NULL;
    }
    s->inputs[input].predecessor = predecessor;
    s->inputs[input].predecessor_generation = s->inputs[predecessor].generation;
    Py_RETURN_NONE;
}

/* --- explain --------------------------------------------------------------------------------- */

/* group_state(view, labels) -> (value, inputs, live_inputs, retired) or None */
static PyObject *Core_group_state(Core *core, PyObject *args) {
    int view;
    const char *labels;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "iy#", &view, &labels, &len)) return NULL;
    if (check_view(core, view) < 0) return NULL;
    View *s = core->views[view];
    int32_t id = view_find_group(s, (const uint8_t *)labels, (size_t)len,
                                 ep_hash((const uint8_t *)labels, (size_t)len));
    if (id == NO_ID) Py_RETURN_NONE;
    const Group *group = &s->groups[id];
    size_t n = 1 + group->ninputs + group->ndeparted, live = 0;
    double *parts = malloc(n * sizeof(double));
    if (parts == NULL) return PyErr_NoMemory();
    size_t k = 0;
    parts[k++] = group->retired;
    for (size_t i = 0; i < group->ninputs; i++) {
        const Input *input = &s->inputs[group->inputs[i]];
        parts[k++] = input_contribution(input);
        live += (input->flags & INPUT_LIVE) != 0;
    }
    for (size_t i = 0; i < group->ndeparted; i++)
        parts[k++] = input_contribution(&s->inputs[group->departed[i]]);
    double value = ep_exact_sum(parts, k);
    free(parts);
    return Py_BuildValue("(dnnd)", value, (Py_ssize_t)group->ninputs, (Py_ssize_t)live,
                         group->retired);
}

/* input_state(view, key) -> (group labels, contribution) or None */
static PyObject *Core_input_state(Core *core, PyObject *args) {
    int view;
    const char *key;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "iy#", &view, &key, &len)) return NULL;
    if (check_view(core, view) < 0) return NULL;
    int32_t entry = entry_for(core, key, len, 0);
    if (entry < 0) Py_RETURN_NONE;
    int32_t input = core->entry_inputs[(size_t)entry * core->nviews + view];
    if (input == NO_ID) Py_RETURN_NONE;
    const View *s = core->views[view];
    const Group *group = &s->groups[s->inputs[input].group];
    return Py_BuildValue("(y#d)", (const char *)group->labels, (Py_ssize_t)group->labels_len,
                         input_contribution(&s->inputs[input]));
}

/* --- reconfiguration ------------------------------------------------------------------------- */

/* adopt_view(index, previous_core, previous_index): move a view with its whole state from the
 * previous core (which must not be used afterwards) into this fresh one. */
static PyObject *Core_adopt_view(Core *core, PyObject *args) {
    int index, previous_index;
    PyObject *other;
    if (!PyArg_ParseTuple(args, "iO!i", &index, Py_TYPE(core), &other, &previous_index)) return NULL;
    Core *previous = (Core *)other;
    if (check_view(core, index) < 0 || check_view(previous, previous_index) < 0) return NULL;
    if (check_idle(core) < 0 || check_idle(previous) < 0 ||
        check_not_flushing(previous, previous_index) < 0)
        return NULL;
    View *moved = previous->views[previous_index];
    View *fresh = core->views[index];
    if (fresh->ngroups || fresh->live_inputs) {
        PyErr_SetString(PyExc_ValueError, "adopt_view needs a view that has seen nothing yet");
        return NULL;
    }
    for (size_t pos = 0; pos < moved->order_len; pos++) {
        int32_t id = moved->order[pos];
        if (id == NO_ID) continue;
        Input *input = &moved->inputs[id];
        const Entry *old = &previous->entries[input->entry];
        size_t key_len;
        const uint8_t *key = entry_key_bytes(previous, old, &key_len);
        if (key == NULL) return PyErr_NoMemory();
        int32_t entry = entry_for(core, (const char *)key, (Py_ssize_t)key_len, 1);
        if (entry < 0) return NULL;
        core->entry_inputs[(size_t)entry * core->nviews + index] = id;
        input->entry = entry;
    }
    /* The previous core keeps a fresh empty view so that it can still be freed safely. */
    previous->views[previous_index] = fresh;
    for (size_t i = 0; i < previous->entries_len; i++)
        if (entry_used(previous, i))
            previous->entry_inputs[i * previous->nviews + previous_index] = NO_ID;
    core->views[index] = moved;
    Py_RETURN_NONE;
}

/* --- type objects ---------------------------------------------------------------------------- */

static PyMethodDef Core_methods[] = {
    {"add_kind", (PyCFunction)Core_add_kind, METH_VARARGS, NULL},
    {"attach", (PyCFunction)Core_attach, METH_VARARGS, NULL},
    {"admits", (PyCFunction)Core_admits, METH_VARARGS, NULL},
    {"admits_input", (PyCFunction)Core_admits_input, METH_VARARGS, NULL},
    {"configure_input_limits", (PyCFunction)Core_configure_input_limits, METH_VARARGS, NULL},
    {"refuse", (PyCFunction)Core_refuse, METH_VARARGS, NULL},
    {"set_plan", (PyCFunction)Core_set_plan, METH_VARARGS, NULL},
    {"received", (PyCFunction)Core_received, METH_O, NULL},
    {"forget_plans", (PyCFunction)Core_forget_plans, METH_NOARGS, NULL},
    {"forget_plans_with", (PyCFunction)Core_forget_plans_with, METH_VARARGS, NULL},
    {"forget_capped", (PyCFunction)Core_forget_capped, METH_NOARGS, NULL},
    {"scan", (PyCFunction)Core_scan, METH_O, NULL},
    {"scan_v2", (PyCFunction)Core_scan_v2, METH_VARARGS, NULL},
    {"apply", (PyCFunction)Core_apply, METH_VARARGS, NULL},
    {"configure_templates", (PyCFunction)Core_configure_templates, METH_VARARGS, NULL},
    {"add_template", (PyCFunction)Core_add_template, METH_VARARGS, NULL},
    {"clear_templates", (PyCFunction)Core_clear_templates, METH_NOARGS, NULL},
    {"plan", (PyCFunction)Core_plan, METH_VARARGS, NULL},
    {"flush", (PyCFunction)Core_flush, METH_VARARGS, NULL},
    {"flush_begin", (PyCFunction)Core_flush_begin, METH_VARARGS, NULL},
    {"flush_step", (PyCFunction)Core_flush_step, METH_VARARGS, NULL},
    {"view_stats", (PyCFunction)Core_view_stats, METH_VARARGS, NULL},
    {"set_watermark_limit", (PyCFunction)Core_set_watermark_limit, METH_VARARGS, NULL},
    {"mark_emitted_through", (PyCFunction)Core_mark_emitted_through, METH_VARARGS, NULL},
    {"export_view", (PyCFunction)Core_export_view, METH_VARARGS, NULL},
    {"restore_view", (PyCFunction)Core_restore_view, METH_VARARGS, NULL},
    {"restore_group", (PyCFunction)Core_restore_group, METH_VARARGS, NULL},
    {"restore_input", (PyCFunction)Core_restore_input, METH_VARARGS, NULL},
    {"restore_predecessor", (PyCFunction)Core_restore_predecessor, METH_VARARGS, NULL},
    {"group_state", (PyCFunction)Core_group_state, METH_VARARGS, NULL},
    {"input_state", (PyCFunction)Core_input_state, METH_VARARGS, NULL},
    {"adopt_view", (PyCFunction)Core_adopt_view, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"cached_series", (getter)Core_get_cached_series, NULL, NULL, NULL},
    {"entries", (getter)Core_get_entries, NULL, NULL, NULL},
    {"templates", (getter)Core_get_templates, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "enrichproxy.engine._native.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
};

static void Request_dealloc(Request *request) {
    batch_free(&request->batch);
    free(request->template_of);
    free(request->asked);
    free(request->refused_kind);
    if (request->buffer != NULL) PyBuffer_Release(&request->view);
    Py_XDECREF(request->buffer);
    PyObject_Free(request);
}

static PyObject *Request_metadata(Request *request, PyObject *Py_UNUSED(ignored)) {
    PyObject *list = PyList_New((Py_ssize_t)request->batch.nmetadata);
    if (list == NULL) return NULL;
    for (size_t i = 0; i < request->batch.nmetadata; i++) {
        PyObject *span = Py_BuildValue("(nn)", (Py_ssize_t)request->batch.metadata[i].start,
                                       (Py_ssize_t)request->batch.metadata[i].stop);
        if (span == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, span);
    }
    return list;
}

/* series_types() -> [(metric name bytes, type)]: a 2.0 request's per-series metadata types
 * (wire_decode_v2); empty for 1.0. */
static PyObject *Request_series_types(Request *request, PyObject *Py_UNUSED(ignored)) {
    const Batch *batch = &request->batch;
    const char *buf = (const char *)request->view.buf;
    PyObject *list = PyList_New((Py_ssize_t)batch->ntypes);
    if (list == NULL) return NULL;
    for (size_t i = 0; i < batch->ntypes; i++) {
        const SeriesType *entry = &batch->types[i];
        PyObject *item = Py_BuildValue("(y#I)", buf + entry->name_start,
                                       (Py_ssize_t)entry->name_len, (unsigned)entry->type);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* series() -> [(label bytes, [(timestamp, value)])]: the decoded request as Python values, for
 * tests and the fuzzer (the engine itself never builds them). */
static PyObject *Request_series(Request *request, PyObject *Py_UNUSED(ignored)) {
    const Batch *batch = &request->batch;
    const uint8_t *buf = (const uint8_t *)request->view.buf;
    PyObject *list = PyList_New((Py_ssize_t)batch->nseries);
    if (list == NULL) return NULL;
    for (size_t i = 0; i < batch->nseries; i++) {
        const SeriesRef *ref = &batch->series[i];
        PyObject *samples = PyList_New(ref->samples);
        if (samples == NULL) goto fail;
        for (uint32_t k = 0; k < ref->samples; k++) {
            const Sample *sample = &batch->samples[ref->first_sample + k];
            PyObject *pair = Py_BuildValue("(Ld)", (long long)sample->timestamp_ms, sample->value);
            if (pair == NULL) {
                Py_DECREF(samples);
                goto fail;
            }
            PyList_SET_ITEM(samples, k, pair);
        }
        const char *labels = (const char *)series_labels(batch, buf, ref);
        /* y# makes None of a NULL pointer: a series of no labels has none written out */
        PyObject *item = Py_BuildValue("(y#N)", labels != NULL ? labels : "",
                                       (Py_ssize_t)ref->labels_len, samples);
        if (item == NULL) goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *Request_get_series_count(Request *request, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(request->batch.nseries);
}
static PyObject *Request_get_exemplars(Request *request, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(request->batch.exemplars);
}
static PyObject *Request_get_histograms(Request *request, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(request->batch.histograms);
}
static PyObject *Request_get_buffer(Request *request, void *Py_UNUSED(closure)) {
    return Py_NewRef(request->buffer);
}

static PyMethodDef Request_methods[] = {
    {"metadata", (PyCFunction)Request_metadata, METH_NOARGS, NULL},
    {"series", (PyCFunction)Request_series, METH_NOARGS, NULL},
    {"series_types", (PyCFunction)Request_series_types, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Request_getset[] = {
    {"series_count", (getter)Request_get_series_count, NULL, NULL, NULL},
    {"exemplars", (getter)Request_get_exemplars, NULL, NULL, NULL},
    {"histograms", (getter)Request_get_histograms, NULL, NULL, NULL},
    {"buffer", (getter)Request_get_buffer, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "enrichproxy.engine._native.Request",
    .tp_basicsize = sizeof(Request),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Request_dealloc,
    .tp_methods = Request_methods,
    .tp_getset = Request_getset,
};

/* --- module ---------------------------------------------------------------------------------- */

static PyObject *module_seed(PyObject *Py_UNUSED(module), PyObject *arg) {
    char *bytes;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &bytes, &len) < 0) return NULL;
    if (len != 16) {
        PyErr_SetString(PyExc_ValueError, "the hash key is 16 bytes");
        return NULL;
    }
    ep_hash_seed((const uint8_t *)bytes);
    Py_RETURN_NONE;
}

/* decode_labels(label_bytes): codec.decode_labels for label bytes in the plain form (plan.h),
 * None for any other (the caller then uses codec.decode_labels, which knows every case). */
static PyObject *module_decode_labels(PyObject *Py_UNUSED(module), PyObject *arg) {
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &data, &len) < 0) return NULL;
    LabelPair *pairs = NULL;
    size_t cap = 0, n = 0;
    int status = labels_parse_plain((const uint8_t *)data, (size_t)len, &pairs, &cap, &n);
    if (status == -2) {
        free(pairs);
        return PyErr_NoMemory();
    }
    if (status < 0) {
        free(pairs);
        Py_RETURN_NONE;
    }
    PyObject *result = PyTuple_New((Py_ssize_t)n);
    for (size_t i = 0; result != NULL && i < n; i++) {
        PyObject *pair = Py_BuildValue("(s#s#)", (const char *)pairs[i].name,
                                       (Py_ssize_t)pairs[i].name_len, (const char *)pairs[i].value,
                                       (Py_ssize_t)pairs[i].value_len);
        if (pair == NULL) Py_CLEAR(result);
        else PyTuple_SET_ITEM(result, (Py_ssize_t)i, pair);
    }
    free(pairs);
    return result;
}

/* encode_labels(labels): codec.encode_labels, for a sequence of (name, value) str pairs. */
static PyObject *module_encode_labels(PyObject *Py_UNUSED(module), PyObject *arg) {
    PyObject *sequence = PySequence_Fast(arg, "labels must be a sequence of pairs");
    if (sequence == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    const char **texts = malloc((size_t)(2 * n + 1) * sizeof(char *));
    Py_ssize_t *lens = malloc((size_t)(2 * n + 1) * sizeof(Py_ssize_t));
    PyObject *result = NULL;
    if (texts == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(sequence, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "labels must be (name, value) tuples");
            goto done;
        }
        for (int k = 0; k < 2; k++) {
            texts[2 * i + k] = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, k), &lens[2 * i + k]);
            if (texts[2 * i + k] == NULL) goto done;
            if (lens[2 * i + k] > (Py_ssize_t)UINT32_MAX / 2) {
                PyErr_SetString(PyExc_ValueError, "label too long");
                goto done;
            }
        }
        size += label_encoded_size((uint32_t)lens[2 * i], (uint32_t)lens[2 * i + 1]);
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (result == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < n; i++)
        p = label_encode(p, (const uint8_t *)texts[2 * i], (uint32_t)lens[2 * i],
                         (const uint8_t *)texts[2 * i + 1], (uint32_t)lens[2 * i + 1]);
done:
    free(texts);
    free(lens);
    Py_DECREF(sequence);
    return result;
}

/* The size of one Sample field (tag, length, message) for a timestamp. */
static size_t sample_field_size(uint64_t timestamp) {
    size_t message = 1 + 8 + 1 + ep_varint_size(timestamp);
    return 1 + ep_varint_size(message) + message;
}

typedef struct {
    const char *labels;
    Py_ssize_t labels_len;
    uint64_t hash;
    int32_t first, last; /* samples of this series, linked through next[] */
    size_t body;         /* the TimeSeries message's size */
} OutSeries;

/* What both encoders first do: the samples of ``sequence`` (n tuples of label bytes,
 * timestamp ms, value) grouped by series, in order of first appearance, through an open
 * addressing table of ``cap`` slots (a power of two, over twice n). Per series, its samples
 * are linked through next[] and ``body`` sums their fields' sizes, plus the label bytes'
 * when ``with_labels`` (1.0 writes them whole in the TimeSeries; 2.0 writes references).
 * -1 with a Python error for a malformed sample. */
static int group_samples(PyObject *sequence, Py_ssize_t n, size_t cap, uint32_t *slots,
                         OutSeries *series, int32_t *next, uint64_t *stamps, double *values,
                         int with_labels, size_t *nseries_out) {
    size_t nseries = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "a sample is (label bytes, timestamp, value)");
            return -1;
        }
        char *labels;
        Py_ssize_t labels_len;
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(item, 0), &labels, &labels_len) < 0) return -1;
        long long timestamp = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 1));
        if (timestamp == -1 && PyErr_Occurred()) return -1;
        double value = PyFloat_AsDouble(PyTuple_GET_ITEM(item, 2));
        if (value == -1.0 && PyErr_Occurred()) return -1;
        stamps[i] = (uint64_t)timestamp;
        values[i] = value;
        next[i] = -1;
        uint64_t hash = ep_hash((const uint8_t *)labels, (size_t)labels_len);
        size_t at = hash & (cap - 1);
        OutSeries *found = NULL;
        for (; slots[at]; at = (at + 1) & (cap - 1)) {
            OutSeries *candidate = &series[slots[at] - 1];
            if (candidate->hash == hash && candidate->labels_len == labels_len &&
                memcmp(candidate->labels, labels, (size_t)labels_len) == 0) {
                found = candidate;
                break;
            }
        }
        if (found == NULL) {
            found = &series[nseries++];
            slots[at] = (uint32_t)nseries;
            found->labels = labels;
            found->labels_len = labels_len;
            found->hash = hash;
            found->first = (int32_t)i;
            found->body = with_labels ? (size_t)labels_len : 0;
        } else {
            next[found->last] = (int32_t)i;
        }
        found->last = (int32_t)i;
        found->body += sample_field_size(stamps[i]);
    }
    *nseries_out = nseries;
    return 0;
}

/* encode_samples(samples): forwarder.encode_batch's WriteRequest (before compression) for a
 * sequence of (label bytes, timestamp ms, value): samples of one series grouped under it,
 * series in order of first appearance, samples in order. */
static PyObject *module_encode_samples(PyObject *Py_UNUSED(module), PyObject *arg) {
    PyObject *sequence = PySequence_Fast(arg, "samples must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    size_t cap = 16;
    while (cap < (size_t)n * 2) cap *= 2;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    OutSeries *series = malloc((size_t)(n ? n : 1) * sizeof(OutSeries));
    int32_t *next = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    uint64_t *stamps = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    double *values = malloc((size_t)(n ? n : 1) * sizeof(double));
    PyObject *result = NULL;
    size_t nseries = 0;
    if (slots == NULL || series == NULL || next == NULL || stamps == NULL || values == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (group_samples(sequence, n, cap, slots, series, next, stamps, values, 1, &nseries) < 0)
        goto done;
    size_t total = 0;
    for (size_t k = 0; k < nseries; k++)
        total += 1 + ep_varint_size(series[k].body) + series[k].body;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(result);
    for (size_t k = 0; k < nseries; k++) {
        const OutSeries *one = &series[k];
        *p++ = 0x0A;
        p = ep_put_varint(p, one->body);
        memcpy(p, one->labels, (size_t)one->labels_len);
        p += one->labels_len;
        for (int32_t i = one->first; i >= 0; i = next[i]) {
            *p++ = 0x12;
            p = ep_put_varint(p, 1 + 8 + 1 + ep_varint_size(stamps[i]));
            *p++ = 0x09;
            memcpy(p, &values[i], 8); /* little-endian, as struct "<d" packs it */
            p += 8;
            *p++ = 0x10;
            p = ep_put_varint(p, stamps[i]);
        }
    }
done:
    free(slots);
    free(series);
    free(next);
    free(stamps);
    free(values);
    Py_DECREF(sequence);
    return result;
}

/* --- remote write 2.0 output -------------------------------------------------------------- */

typedef struct {
    const uint8_t *text;
    uint32_t len;
} Symbol;

/* The request's symbols table: each distinct string once, "" first, in order of first use
 * (as wire.v2._encode numbers them). Open addressing over indices into symbols[]. */
typedef struct {
    Symbol *symbols;
    size_t nsymbols, symbols_cap;
    uint32_t *slots; /* index + 1, 0: empty */
    size_t cap;
} SymbolTable;

static int symbol_ref(SymbolTable *table, const uint8_t *text, uint32_t len, uint32_t *ref) {
    if ((table->nsymbols + 1) * 2 > table->cap) {
        size_t cap = table->cap ? table->cap * 2 : 64;
        uint32_t *slots = calloc(cap, sizeof(uint32_t));
        if (slots == NULL) return -2;
        for (size_t k = 0; k < table->nsymbols; k++) {
            const Symbol *one = &table->symbols[k];
            size_t at = ep_hash(one->text, one->len) & (cap - 1);
            while (slots[at]) at = (at + 1) & (cap - 1);
            slots[at] = (uint32_t)k + 1;
        }
        free(table->slots);
        table->slots = slots;
        table->cap = cap;
    }
    size_t at = ep_hash(text, len) & (table->cap - 1);
    for (; table->slots[at]; at = (at + 1) & (table->cap - 1)) {
        const Symbol *one = &table->symbols[table->slots[at] - 1];
        if (one->len == len && memcmp(one->text, text, len) == 0) {
            *ref = table->slots[at] - 1;
            return 0;
        }
    }
    if (ep_grow((void **)&table->symbols, &table->symbols_cap, table->nsymbols + 1,
                sizeof(Symbol)) < 0)
        return -2;
    table->symbols[table->nsymbols].text = text;
    table->symbols[table->nsymbols].len = len;
    table->slots[at] = (uint32_t)++table->nsymbols;
    *ref = (uint32_t)table->nsymbols - 1;
    return 0;
}

/* The type of one metric name: from ``types`` (name bytes -> int, filled as we go), else by
 * calling type_of(name) once; -1 with an exception set, -3 when the name is not UTF-8. */
static int metric_type_of(PyObject *types, PyObject *type_of, const uint8_t *name, uint32_t len,
                          uint64_t *type) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)name, len);
    if (key == NULL) return -1;
    PyObject *known = PyDict_GetItemWithError(types, key);
    if (known == NULL) {
        if (PyErr_Occurred()) goto fail;
        PyObject *text = PyUnicode_DecodeUTF8((const char *)name, len, "strict");
        if (text == NULL) {
            Py_DECREF(key);
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyErr_Clear();
            return -3;
        }
        known = PyObject_CallOneArg(type_of, text);
        Py_DECREF(text);
        if (known == NULL) goto fail;
        int stored = PyDict_SetItem(types, key, known);
        Py_DECREF(known); /* the dict holds it */
        if (stored < 0) goto fail;
    }
    Py_DECREF(key);
    long long number = PyLong_AsLongLong(known);
    if (number == -1 && PyErr_Occurred()) return -1;
    *type = (uint64_t)number; /* as encode_varint writes a negative int: two's complement */
    return 0;
fail:
    Py_DECREF(key);
    return -1;
}

typedef struct {
    size_t refs_start, nrefs; /* into the refs array */
    uint64_t type;
    size_t body;
} OutSeriesV2;

/* encode_samples_v2(samples, type_of): wire.v2.encode_v2_samples in C, byte for byte: a 2.0
 * Request of (label bytes, timestamp ms, value), samples grouped per series in order of first
 * appearance, one symbols table, each series typed by type_of(metric name) (asked once per
 * name). None when some label bytes are not in the plain form (plan.h) or not UTF-8: the
 * caller then uses the Python encoder, which knows every case. */
static PyObject *module_encode_samples_v2(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *samples_arg, *type_of;
    if (!PyArg_ParseTuple(args, "OO:encode_samples_v2", &samples_arg, &type_of)) return NULL;
    PyObject *sequence = PySequence_Fast(samples_arg, "samples must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    size_t cap = 16;
    while (cap < (size_t)n * 2) cap *= 2;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    OutSeries *series = malloc((size_t)(n ? n : 1) * sizeof(OutSeries));
    OutSeriesV2 *extra = malloc((size_t)(n ? n : 1) * sizeof(OutSeriesV2));
    int32_t *next = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    uint64_t *stamps = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    double *values = malloc((size_t)(n ? n : 1) * sizeof(double));
    PyObject *types = PyDict_New();
    SymbolTable table = {0};
    LabelPair *pairs = NULL;
    size_t pairs_cap = 0, npairs = 0;
    uint32_t *refs = NULL;
    size_t refs_cap = 0, nrefs = 0;
    PyObject *result = NULL;
    size_t nseries = 0;
    uint32_t empty_ref;
    if (slots == NULL || series == NULL || extra == NULL || next == NULL || stamps == NULL ||
        values == NULL || types == NULL || symbol_ref(&table, (const uint8_t *)"", 0, &empty_ref) < 0) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    if (group_samples(sequence, n, cap, slots, series, next, stamps, values, 0, &nseries) < 0)
        goto done;
    /* Each series' refs, symbols numbered in order of first use, and its type. */
    for (size_t k = 0; k < nseries; k++) {
        OutSeries *one = &series[k];
        OutSeriesV2 *two = &extra[k];
        int status = labels_parse_plain((const uint8_t *)one->labels, (size_t)one->labels_len,
                                        &pairs, &pairs_cap, &npairs);
        if (status == -2) {
            PyErr_NoMemory();
            goto done;
        }
        if (status < 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        two->refs_start = nrefs;
        two->nrefs = 2 * npairs;
        if (ep_grow((void **)&refs, &refs_cap, nrefs + 2 * npairs, sizeof(uint32_t)) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        const uint8_t *name = (const uint8_t *)"";
        uint32_t name_len = 0;
        size_t refs_size = 0;
        for (size_t p = 0; p < npairs; p++) {
            if (pairs[p].name_len == 8 && memcmp(pairs[p].name, "__name__", 8) == 0) {
                name = pairs[p].value;
                name_len = pairs[p].value_len;
            }
            if (symbol_ref(&table, pairs[p].name, pairs[p].name_len, &refs[nrefs]) < 0 ||
                symbol_ref(&table, pairs[p].value, pairs[p].value_len, &refs[nrefs + 1]) < 0) {
                PyErr_NoMemory();
                goto done;
            }
            refs_size += ep_varint_size(refs[nrefs]) + ep_varint_size(refs[nrefs + 1]);
            nrefs += 2;
        }
        int typed = metric_type_of(types, type_of, name, name_len, &two->type);
        if (typed == -3) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        if (typed < 0) goto done;
        two->body = 1 + ep_varint_size(refs_size) + refs_size + one->body;
        if (two->type) two->body += 1 + 1 + 1 + ep_varint_size(two->type);
    }
    size_t total = 0;
    for (size_t k = 0; k < table.nsymbols; k++)
        total += 1 + ep_varint_size(table.symbols[k].len) + table.symbols[k].len;
    for (size_t k = 0; k < nseries; k++)
        total += 1 + ep_varint_size(extra[k].body) + extra[k].body;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(result);
    for (size_t k = 0; k < table.nsymbols; k++) {
        *p++ = 0x22;
        p = ep_put_varint(p, table.symbols[k].len);
        memcpy(p, table.symbols[k].text, table.symbols[k].len);
        p += table.symbols[k].len;
    }
    for (size_t k = 0; k < nseries; k++) {
        const OutSeries *one = &series[k];
        const OutSeriesV2 *two = &extra[k];
        *p++ = 0x2A;
        p = ep_put_varint(p, two->body);
        size_t refs_size = 0;
        for (size_t r = 0; r < two->nrefs; r++)
            refs_size += ep_varint_size(refs[two->refs_start + r]);
        *p++ = 0x0A;
        p = ep_put_varint(p, refs_size);
        for (size_t r = 0; r < two->nrefs; r++) p = ep_put_varint(p, refs[two->refs_start + r]);
        for (int32_t i = one->first; i >= 0; i = next[i]) {
            *p++ = 0x12;
            p = ep_put_varint(p, 1 + 8 + 1 + ep_varint_size(stamps[i]));
            *p++ = 0x09;
            memcpy(p, &values[i], 8); /* little-endian, as struct "<d" packs it */
            p += 8;
            *p++ = 0x10;
            p = ep_put_varint(p, stamps[i]);
        }
        if (two->type) {
            *p++ = 0x2A;
            p = ep_put_varint(p, 1 + ep_varint_size(two->type));
            *p++ = 0x08;
            p = ep_put_varint(p, two->type);
        }
    }
done:
    free(slots);
    free(series);
    free(extra);
    free(next);
    free(stamps);
    free(values);
    free(table.symbols);
    free(table.slots);
    free(pairs);
    free(refs);
    Py_XDECREF(types);
    Py_DECREF(sequence);
    return result;
}

static PyMethodDef module_methods[] = {
    {"encode_samples", module_encode_samples, METH_O,
     "forwarder.encode_batch's WriteRequest, before compression, for (labels, ms, value)."},
    {"encode_samples_v2", module_encode_samples_v2, METH_VARARGS,
     "wire.v2.encode_v2_samples for (labels, ms, value) and type_of; None: use Python's."},
    {"decode_labels", module_decode_labels, METH_O,
     "codec.decode_labels for label bytes in the plain form; None for any other."},
    {"encode_labels", module_encode_labels, METH_O, "codec.encode_labels."},
    {"seed", module_seed, METH_O,
     "Set the process's hash key (16 bytes); call once, before any Core is made."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "enrichproxy.engine._native",
    "The native engine's hot path (see enrichproxy.engine.native).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&RequestType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    WireError = PyErr_NewException("enrichproxy.engine._native.WireError", PyExc_ValueError, NULL);
    if (WireError == NULL || PyModule_AddObjectRef(m, "WireError", WireError) < 0 ||
        PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObjectRef(m, "Request", (PyObject *)&RequestType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
