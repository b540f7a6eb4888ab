/* Series keys stored as interned label fields.
 *
 * A series' key is its label bytes as received: a run of Label fields (tag, length, name and
 * value). Most fields recur across many series (the metric name, the job, a pod's name across
 * its series), so each distinct field is stored once as an *atom* with a reference count, and
 * a key is the list of its atoms' ids: four to eight ids instead of a hundred-odd bytes.
 *
 * Splitting is a pure function of the bytes (key_span): one field per span while the bytes
 * parse as fields, the rest as one span when they do not (keys restored from a state file are
 * not checked), so two keys are equal exactly when their spans are.
 */
#ifndef ENRICHPROXY_NATIVE_KEYS_H
#define ENRICHPROXY_NATIVE_KEYS_H

#include "common.h"

#define KEY_INLINE_IDS 6

typedef struct {
    uint64_t hash;
    uint8_t *bytes;
    uint32_t len;
    uint32_t refs; /* 0: the slot is free (on the free list, threaded through len) */
} Atom;

typedef struct {
    Atom *atoms;
    size_t len, cap;
    int32_t free_atom;
    size_t count;
    uint32_t *slots; /* open addressing over atom bytes: atom id + 1, 0 empty */
    size_t slots_cap;
} Atoms;

/* A key as atom ids: inline up to KEY_INLINE_IDS, else on the heap. */
typedef struct {
    union {
        uint32_t inline_ids[KEY_INLINE_IDS];
        uint32_t *heap;
    } ids;
    uint16_t nids;
    uint16_t flags; /* for the owner: KEY_USED */
} Key;

#define KEY_USED 1

void atoms_free(Atoms *atoms);

/* The end of the span that starts at pos (pos < len). */
size_t key_span(const uint8_t *key, size_t len, size_t pos);

static inline const uint32_t *key_ids(const Key *k) {
    return k->nids > KEY_INLINE_IDS ? k->ids.heap : k->ids.inline_ids;
}

/* Make *k the key of bytes; 0, or -2 out of memory (k then holds nothing). */
int key_set(Atoms *atoms, Key *k, const uint8_t *bytes, size_t len);
void key_release(Atoms *atoms, Key *k);
int key_equals(const Atoms *atoms, const Key *k, const uint8_t *bytes, size_t len);
size_t key_length(const Atoms *atoms, const Key *k);
/* Write the key's bytes at out (key_length bytes). */
void key_write(const Atoms *atoms, const Key *k, uint8_t *out);

#endif
