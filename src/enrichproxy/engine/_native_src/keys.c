/* Series keys as interned label fields (see keys.h). */
#include <stdlib.h>

#include "keys.h"

/* A varint's end, or 0 when it runs past len or over ten bytes. */
static size_t varint_end(const uint8_t *buf, size_t len, size_t pos, uint64_t *value) {
    uint64_t result = 0;
    for (unsigned shift = 0; shift < 70 && pos < len; shift += 7) {
        uint8_t byte = buf[pos++];
        if (shift < 64) result |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            *value = result;
            return pos;
        }
    }
    return 0;
}

size_t key_span(const uint8_t *key, size_t len, size_t pos) {
    uint64_t tag, length;
    size_t at = varint_end(key, len, pos, &tag);
    if (at == 0 || (tag & 7) != 2) return len;
    at = varint_end(key, len, at, &length);
    if (at == 0 || length > len - at) return len;
    return at + (size_t)length;
}

void atoms_free(Atoms *atoms) {
    for (size_t i = 0; i < atoms->len; i++)
        if (atoms->atoms[i].refs) free(atoms->atoms[i].bytes);
    free(atoms->atoms);
    free(atoms->slots);
    memset(atoms, 0, sizeof *atoms);
    atoms->free_atom = -1;
}

static int atoms_grow_slots(Atoms *atoms) {
    size_t cap = atoms->slots_cap ? atoms->slots_cap * 2 : 256;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (slots == NULL) return -1;
    for (size_t i = 0; i < atoms->slots_cap; i++) {
        uint32_t value = atoms->slots[i];
        if (!value) continue;
        size_t at = atoms->atoms[value - 1].hash & (cap - 1);
        while (slots[at]) at = (at + 1) & (cap - 1);
        slots[at] = value;
    }
    free(atoms->slots);
    atoms->slots = slots;
    atoms->slots_cap = cap;
    return 0;
}

static int32_t atoms_find(const Atoms *atoms, const uint8_t *bytes, size_t len, uint64_t hash) {
    if (!atoms->slots_cap) return -1;
    size_t mask = atoms->slots_cap - 1;
    for (size_t at = hash & mask;; at = (at + 1) & mask) {
        uint32_t value = atoms->slots[at];
        if (!value) return -1;
        const Atom *atom = &atoms->atoms[value - 1];
        if (atom->hash == hash && atom->len == len && memcmp(atom->bytes, bytes, len) == 0)
            return (int32_t)(value - 1);
    }
}

/* The atom for bytes, its reference taken; -2 out of memory. */
static int32_t atoms_intern(Atoms *atoms, const uint8_t *bytes, size_t len) {
    uint64_t hash = ep_hash(bytes, len);
    int32_t id = atoms_find(atoms, bytes, len, hash);
    if (id >= 0) {
        atoms->atoms[id].refs++;
        return id;
    }
    if ((atoms->count + 1) * 2 > atoms->slots_cap && atoms_grow_slots(atoms) < 0) return -2;
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL) return -2;
    memcpy(copy, bytes, len);
    if (atoms->free_atom >= 0) {
        id = atoms->free_atom;
        atoms->free_atom = (int32_t)atoms->atoms[id].len;
    } else {
        if (ep_grow((void **)&atoms->atoms, &atoms->cap, atoms->len + 1, sizeof(Atom)) < 0) {
            free(copy);
            return -2;
        }
        id = (int32_t)atoms->len++;
    }
    Atom *atom = &atoms->atoms[id];
    atom->hash = hash;
    atom->bytes = copy;
    atom->len = (uint32_t)len;
    atom->refs = 1;
    size_t mask = atoms->slots_cap - 1;
    size_t at = hash & mask;
    while (atoms->slots[at]) at = (at + 1) & mask;
    atoms->slots[at] = (uint32_t)id + 1;
    atoms->count++;
    return id;
}

static void atoms_release(Atoms *atoms, uint32_t id) {
    Atom *atom = &atoms->atoms[id];
    if (--atom->refs) return;
    size_t mask = atoms->slots_cap - 1;
    size_t at = atom->hash & mask;
    while (atoms->slots[at] != id + 1) at = (at + 1) & mask;
    size_t hole = at;
    for (size_t next = (hole + 1) & mask; atoms->slots[next]; next = (next + 1) & mask) {
        size_t home = atoms->atoms[atoms->slots[next] - 1].hash & mask;
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            atoms->slots[hole] = atoms->slots[next];
            hole = next;
        }
    }
    atoms->slots[hole] = 0;
    free(atom->bytes);
    atom->bytes = NULL;
    atom->len = (uint32_t)atoms->free_atom;
    atoms->free_atom = (int32_t)id;
    atoms->count--;
}

int key_set(Atoms *atoms, Key *k, const uint8_t *bytes, size_t len) {
    size_t n = 0;
    for (size_t pos = 0; pos < len; pos = key_span(bytes, len, pos)) n++;
    if (n > UINT16_MAX) return -2;
    uint32_t *ids = k->ids.inline_ids;
    if (n > KEY_INLINE_IDS) {
        ids = malloc(n * sizeof(uint32_t));
        if (ids == NULL) return -2;
    }
    size_t i = 0;
    for (size_t pos = 0; pos < len; i++) {
        size_t end = key_span(bytes, len, pos);
        int32_t id = atoms_intern(atoms, bytes + pos, end - pos);
        if (id < 0) {
            while (i--) atoms_release(atoms, ids[i]);
            if (n > KEY_INLINE_IDS) free(ids);
            k->nids = 0;
            return -2;
        }
        ids[i] = (uint32_t)id;
        pos = end;
    }
    if (n > KEY_INLINE_IDS) k->ids.heap = ids;
    k->nids = (uint16_t)n;
    return 0;
}

void key_release(Atoms *atoms, Key *k) {
    const uint32_t *ids = key_ids(k);
    for (uint16_t i = 0; i < k->nids; i++) atoms_release(atoms, ids[i]);
    if (k->nids > KEY_INLINE_IDS) free(k->ids.heap);
    k->nids = 0;
}

int key_equals(const Atoms *atoms, const Key *k, const uint8_t *bytes, size_t len) {
    const uint32_t *ids = key_ids(k);
    size_t pos = 0;
    for (uint16_t i = 0; i < k->nids; i++) {
        if (pos >= len) return 0;
        size_t end = key_span(bytes, len, pos);
        const Atom *atom = &atoms->atoms[ids[i]];
        if (atom->len != end - pos || memcmp(atom->bytes, bytes + pos, atom->len) != 0) return 0;
        pos = end;
    }
    return pos == len;
}

size_t key_length(const Atoms *atoms, const Key *k) {
    const uint32_t *ids = key_ids(k);
    size_t total = 0;
    for (uint16_t i = 0; i < k->nids; i++) total += atoms->atoms[ids[i]].len;
    return total;
}

void key_write(const Atoms *atoms, const Key *k, uint8_t *out) {
    const uint32_t *ids = key_ids(k);
    for (uint16_t i = 0; i < k->nids; i++) {
        const Atom *atom = &atoms->atoms[ids[i]];
        memcpy(out, atom->bytes, atom->len);
        out += atom->len;
    }
}
