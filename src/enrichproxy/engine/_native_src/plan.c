/* Plan templates (see plan.h): parsing a series' labels, its signature, and the output labels
 * of a templated series. Everything here must produce what enrichproxy.wire.codec's
 * decode_labels / encode_labels and enrichproxy.engine.views produce for the same labels. */
#include <stdlib.h>

#include "plan.h"

#define TAG_LABEL 0x0A
#define TAG_NAME 0x0A
#define TAG_VALUE 0x12

void templates_init(Templates *t) { memset(t, 0, sizeof *t); }

static void names_free(NameList *list) {
    for (uint32_t i = 0; i < list->n; i++) free(list->names[i]);
    free(list->names);
    free(list->lens);
    memset(list, 0, sizeof *list);
}

static void template_release(Template *tp) {
    free(tp->sig);
    free(tp->deps);
    free(tp->fixed_bytes);
    free(tp->fixed);
    free(tp->fixed_from);
}

void templates_clear(Templates *t) {
    for (size_t i = 0; i < t->ntemplates; i++) template_release(&t->templates[i]);
    t->ntemplates = 0;
    if (t->slots_cap) memset(t->slots, 0, t->slots_cap * sizeof(uint32_t));
    t->generation++;
}

void templates_free(Templates *t) {
    templates_clear(t);
    names_free(&t->signature);
    for (int v = 0; v < PLAN_MAX_VIEWS; v++) names_free(&t->keep[v]);
    free(t->templates);
    free(t->slots);
    free(t->pairs);
    free(t->found);
    free(t->sig);
    free(t->merged);
    free(t->out);
    templates_init(t);
}

int templates_configure(Templates *t, int nviews, int nrules, NameList signature,
                        const NameList *keep, int64_t max_labels, int64_t max_name_len,
                        int64_t max_value_len) {
    templates_clear(t);
    names_free(&t->signature);
    for (int v = 0; v < PLAN_MAX_VIEWS; v++) names_free(&t->keep[v]);
    t->signature = signature;
    for (int v = 0; v < nviews; v++) t->keep[v] = keep[v];
    t->nviews = nviews;
    t->nrules = nrules;
    t->max_labels = max_labels;
    t->max_name_len = max_name_len;
    t->max_value_len = max_value_len;
    free(t->found);
    t->found = malloc((signature.n ? signature.n : 1) * sizeof(int32_t));
    if (t->found == NULL) return -2;
    t->configured = 1;
    return 0;
}

/* --- parsing --------------------------------------------------------------------------------- */

/* Strict UTF-8, as Python's bytes.decode("utf-8") accepts it (no surrogates, no overlong
 * forms, nothing past U+10FFFF). */
static int utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (len - i <= need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

/* A length varint of at most 32 bits; -1 otherwise. */
static int read_length(const uint8_t *buf, size_t *pos, size_t end, uint32_t *out) {
    uint64_t value = 0;
    size_t p = *pos;
    for (unsigned shift = 0; shift < 35; shift += 7) {
        if (p >= end) return -1;
        uint8_t byte = buf[p++];
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            if (value > UINT32_MAX) return -1;
            *pos = p;
            *out = (uint32_t)value;
            return 0;
        }
    }
    return -1;
}

static int name_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : alen > blen;
}

static int pair_cmp(const LabelPair *a, const LabelPair *b) {
    int c = name_cmp(a->name, a->name_len, b->name, b->name_len);
    return c ? c : name_cmp(a->value, a->value_len, b->value, b->value_len);
}

static int name_is(const uint8_t *name, uint32_t len, const uint8_t *other, uint32_t other_len) {
    return len == other_len && memcmp(name, other, len) == 0;
}

/* Parse label bytes in the plain form into *pairs (growing it); empty values dropped, sorted.
 * 0; -1 when not in the plain form; -2 out of memory. */
static int parse_pairs(const uint8_t *buf, size_t len, LabelPair **pairs, size_t *cap,
                       size_t *count) {
    size_t n = 0, pos = 0;
    while (pos < len) {
        if (buf[pos++] != TAG_LABEL) return -1;
        uint32_t label_len;
        if (read_length(buf, &pos, len, &label_len) < 0 || label_len > len - pos) return -1;
        size_t end = pos + label_len;
        const uint8_t *name = NULL, *value = (const uint8_t *)"";
        uint32_t name_len = 0, value_len = 0;
        int seen_name = 0, seen_value = 0;
        while (pos < end) {
            uint8_t tag = buf[pos++];
            uint32_t field_len;
            if ((tag != TAG_NAME && tag != TAG_VALUE) || read_length(buf, &pos, end, &field_len) < 0 ||
                field_len > end - pos)
                return -1;
            if (tag == TAG_NAME) {
                if (seen_name++) return -1;
                name = buf + pos;
                name_len = field_len;
            } else {
                if (seen_value++) return -1;
                value = buf + pos;
                value_len = field_len;
            }
            pos += field_len;
        }
        if (!name_len || !utf8_valid(name, name_len) || !utf8_valid(value, value_len)) return -1;
        if (ep_grow((void **)pairs, cap, n + 1, sizeof(LabelPair)) < 0) return -2;
        LabelPair *pair = &(*pairs)[n++];
        pair->name = name;
        pair->name_len = name_len;
        pair->value = value;
        pair->value_len = value_len;
        pair->flags = 0;
    }
    /* Insertion sort by name: senders send labels sorted, so this is one pass. A duplicate
     * name (with any value, empty included) is the reference's DecodeError. */
    LabelPair *p = *pairs;
    for (size_t i = 1; i < n; i++) {
        LabelPair item = p[i];
        size_t j = i;
        int c = 1;
        while (j > 0 && (c = name_cmp(p[j - 1].name, p[j - 1].name_len, item.name, item.name_len)) > 0) {
            p[j] = p[j - 1];
            j--;
        }
        if (j > 0 && c == 0) return -1;
        p[j] = item;
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i].value_len) p[kept++] = p[i];
    *count = kept;
    return 0;
}

int labels_parse_plain(const uint8_t *buf, size_t len, LabelPair **pairs, size_t *cap,
                       size_t *count) {
    return parse_pairs(buf, len, pairs, cap, count);
}

size_t label_encoded_size(uint32_t name_len, uint32_t value_len) {
    size_t inner = 2 + ep_varint_size(name_len) + name_len + ep_varint_size(value_len) + value_len;
    return 1 + ep_varint_size(inner) + inner;
}

uint8_t *label_encode(uint8_t *p, const uint8_t *name, uint32_t name_len, const uint8_t *value,
                      uint32_t value_len) {
    size_t inner = 2 + ep_varint_size(name_len) + name_len + ep_varint_size(value_len) + value_len;
    *p++ = TAG_LABEL;
    p = ep_put_varint(p, inner);
    *p++ = TAG_NAME;
    p = ep_put_varint(p, name_len);
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = TAG_VALUE;
    p = ep_put_varint(p, value_len);
    memcpy(p, value, value_len);
    return p + value_len;
}

int series_shape(Templates *t, const uint8_t *labels, size_t len) {
    size_t n;
    int status = parse_pairs(labels, len, &t->pairs, &t->pairs_cap, &n);
    if (status < 0) return status;
    t->npairs = n;
    if (t->max_labels && (int64_t)n > t->max_labels) return -1;
    const NameList *sig = &t->signature;
    for (uint32_t j = 0; j < sig->n; j++) t->found[j] = -1;
    size_t sig_size = 0;
    for (size_t i = 0; i < n; i++) {
        LabelPair *pair = &t->pairs[i];
        if ((t->max_name_len && pair->name_len > t->max_name_len) ||
            (t->max_value_len && pair->value_len > t->max_value_len))
            return -1;
        int in_signature = 0;
        for (uint32_t j = 0; j < sig->n; j++) {
            if (name_is(pair->name, pair->name_len, sig->names[j], sig->lens[j])) {
                t->found[j] = (int32_t)i;
                in_signature = 1;
                sig_size += 6 + pair->value_len;
                break;
            }
        }
        uint32_t flags = 0;
        if (!in_signature) {
            for (int v = 0; v < t->nviews; v++) {
                const NameList *keep = &t->keep[v];
                for (uint32_t k = 0; k < keep->n; k++) {
                    if (name_is(pair->name, pair->name_len, keep->names[k], keep->lens[k])) {
                        flags |= 1u << v;
                        break;
                    }
                }
            }
        }
        pair->flags = flags;
    }
    if (ep_grow((void **)&t->sig, &t->sig_cap, sig->n + sig_size + 1, 1) < 0) return -2;
    uint8_t *p = t->sig;
    for (uint32_t j = 0; j < sig->n; j++) {
        if (t->found[j] < 0) {
            *p++ = 0;
            continue;
        }
        const LabelPair *pair = &t->pairs[t->found[j]];
        *p++ = 1;
        p = ep_put_varint(p, pair->value_len);
        memcpy(p, pair->value, pair->value_len);
        p += pair->value_len;
    }
    t->sig_len = (size_t)(p - t->sig);
    t->sig_hash = ep_hash(t->sig, t->sig_len);
    return 0;
}

/* --- the template table ---------------------------------------------------------------------- */

int32_t template_find(const Templates *t, const uint8_t *sig, size_t len, uint64_t hash) {
    if (!t->slots_cap) return NO_TEMPLATE;
    size_t mask = t->slots_cap - 1;
    for (size_t at = hash & mask;; at = (at + 1) & mask) {
        uint32_t value = t->slots[at];
        if (!value) return NO_TEMPLATE;
        const Template *tp = &t->templates[value - 1];
        if (tp->hash == hash && tp->sig_len == len && memcmp(tp->sig, sig, len) == 0)
            return (int32_t)(value - 1);
    }
}

static int slots_grow(Templates *t) {
    size_t cap = t->slots_cap ? t->slots_cap * 2 : 256;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (slots == NULL) return -1;
    for (size_t i = 0; i < t->ntemplates; i++) {
        size_t at = t->templates[i].hash & (cap - 1);
        while (slots[at]) at = (at + 1) & (cap - 1);
        slots[at] = (uint32_t)i + 1;
    }
    free(t->slots);
    t->slots = slots;
    t->slots_cap = cap;
    return 0;
}

int32_t template_ask(Templates *t) {
    if ((t->ntemplates + 1) * 2 > t->slots_cap && slots_grow(t) < 0) return -2;
    if (ep_grow((void **)&t->templates, &t->templates_cap, t->ntemplates + 1, sizeof(Template)) < 0)
        return -2;
    uint8_t *sig = malloc(t->sig_len ? t->sig_len : 1);
    if (sig == NULL) return -2;
    memcpy(sig, t->sig, t->sig_len);
    int32_t id = (int32_t)t->ntemplates++;
    Template *tp = &t->templates[id];
    memset(tp, 0, sizeof *tp);
    tp->sig = sig;
    tp->sig_len = (uint32_t)t->sig_len;
    tp->hash = t->sig_hash;
    size_t mask = t->slots_cap - 1;
    size_t at = tp->hash & mask;
    while (t->slots[at]) at = (at + 1) & mask;
    t->slots[at] = (uint32_t)id + 1;
    return id;
}

int template_fill(Templates *t, int32_t id, int32_t kind, uint32_t feeds, int is_counter,
                  const int32_t *deps, const uint8_t *const *fixed, const size_t *fixed_len) {
    Template *tp = &t->templates[id];
    size_t total = 0;
    for (int v = 0; v < t->nviews; v++) total += fixed_len[v];
    int32_t *deps_copy = malloc((size_t)(t->nrules ? t->nrules : 1) * sizeof(int32_t));
    uint8_t *bytes = malloc(total ? total : 1);
    uint32_t *from = malloc((size_t)(t->nviews + 1) * sizeof(uint32_t));
    LabelPair *pairs = NULL;
    size_t pairs_cap = 0, npairs = 0;
    if (deps_copy == NULL || bytes == NULL || from == NULL) goto oom;
    memcpy(deps_copy, deps, (size_t)t->nrules * sizeof(int32_t));
    size_t at = 0;
    for (int v = 0; v < t->nviews; v++) {
        from[v] = (uint32_t)npairs;
        if (!fixed_len[v]) continue;
        memcpy(bytes + at, fixed[v], fixed_len[v]);
        LabelPair *view_pairs = NULL;
        size_t view_cap = 0, count;
        int status = parse_pairs(bytes + at, fixed_len[v], &view_pairs, &view_cap, &count);
        if (status == 0 &&
            ep_grow((void **)&pairs, &pairs_cap, npairs + count + 1, sizeof(LabelPair)) < 0)
            status = -2;
        if (status < 0) {
            free(view_pairs);
            free(deps_copy);
            free(bytes);
            free(from);
            free(pairs);
            return status;
        }
        if (count) memcpy(pairs + npairs, view_pairs, count * sizeof(LabelPair));
        npairs += count;
        free(view_pairs);
        at += fixed_len[v];
    }
    from[t->nviews] = (uint32_t)npairs;
    free(tp->deps);
    free(tp->fixed_bytes);
    free(tp->fixed);
    free(tp->fixed_from);
    tp->deps = deps_copy;
    tp->fixed_bytes = bytes;
    tp->fixed = pairs;
    tp->fixed_from = from;
    tp->kind = kind;
    tp->feeds = feeds;
    tp->is_counter = (uint8_t)(is_counter != 0);
    tp->ready = 1;
    return 0;
oom:
    free(deps_copy);
    free(bytes);
    free(from);
    return -2;
}

/* --- output labels --------------------------------------------------------------------------- */

int template_output(Templates *t, const Template *tp, int view, size_t *offset) {
    const LabelPair *fixed = tp->fixed + tp->fixed_from[view];
    size_t nfixed = tp->fixed_from[view + 1] - tp->fixed_from[view];
    if (ep_grow((void **)&t->merged, &t->merged_cap, t->npairs + nfixed + 1, sizeof(LabelPair)) < 0)
        return -2;
    /* Both lists are sorted and share no name: merge them. */
    size_t n = 0, i = 0, k = 0, size = 0;
    uint32_t bit = 1u << view;
    while (1) {
        while (i < t->npairs && !(t->pairs[i].flags & bit)) i++;
        const LabelPair *next;
        if (i < t->npairs && (k >= nfixed || pair_cmp(&t->pairs[i], &fixed[k]) < 0))
            next = &t->pairs[i++];
        else if (k < nfixed)
            next = &fixed[k++];
        else
            break;
        t->merged[n++] = *next;
        size += label_encoded_size(next->name_len, next->value_len);
    }
    if (ep_grow((void **)&t->out, &t->out_cap, *offset + size + 1, 1) < 0) return -2;
    uint8_t *p = t->out + *offset;
    for (size_t m = 0; m < n; m++) {
        const LabelPair *pair = &t->merged[m];
        p = label_encode(p, pair->name, pair->name_len, pair->value, pair->value_len);
    }
    *offset += size;
    return 0;
}
