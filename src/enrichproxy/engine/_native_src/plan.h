/* Plan templates: the cold path's decisions, shared by every series of the same shape.
 *
 * What the Python planner decides for a series (the join's lookups and conflicts, whether it
 * is dropped, which views it feeds, the counter/gauge decision, and the values of the labels
 * the join or a view's selector can touch) depends only on the values of a few label names:
 * the metric name, `quantile`, the join rules' key labels and the fields they add, the
 * labels the views' selectors test, and `view`. Call those the *signature names*. Every other
 * label passes through unchanged into each view that keeps it.
 *
 * So the planner works out a series once per distinct signature (the values of the signature
 * names, absent ones included) and registers the result here as a template; every other
 * series with that signature is planned in C: its kept labels that are not signature names are
 * merged with the template's labels of that view and encoded as Python's encode_labels does.
 * The test suite's differential tests compare the result with the Python engine's, which
 * plans every series on its own.
 *
 * Label bytes that are not in the plain form (a label field other than a name and a value once
 * each, invalid UTF-8, an empty or duplicate name, a label over a configured limit) are left to
 * the Python planner, which accepts or refuses them exactly as the reference does.
 */
#ifndef ENRICHPROXY_NATIVE_PLAN_H
#define ENRICHPROXY_NATIVE_PLAN_H

#include "common.h"

#define PLAN_MAX_VIEWS 32
#define NO_TEMPLATE (-1)
#define TEMPLATE_SLOW (-3) /* the series is planned by Python on its own */

typedef struct {
    const uint8_t *name, *value;
    uint32_t name_len, value_len;
    uint32_t flags; /* bit v: view v keeps it and it is no signature name */
} LabelPair;

typedef struct {
    uint8_t *sig;
    uint32_t sig_len;
    uint64_t hash;
    int32_t kind;
    uint32_t feeds;
    uint8_t is_counter;
    uint8_t ready;  /* registered by the planner (else only asked for) */
    uint32_t stamp; /* the pass that last asked the planner for it */
    int32_t *deps;  /* one per rule */
    uint8_t *fixed_bytes;
    LabelPair *fixed;     /* per view, the template's own labels, sorted */
    uint32_t *fixed_from; /* nviews + 1 offsets into fixed */
} Template;

typedef struct {
    uint8_t **names;
    uint32_t *lens;
    uint32_t n;
} NameList;

typedef struct {
    int configured;
    int nviews, nrules;
    NameList signature;            /* signature names, in signature order */
    NameList keep[PLAN_MAX_VIEWS]; /* per view, the label names it keeps */
    int64_t max_labels, max_name_len, max_value_len; /* 0: no limit */

    Template *templates;
    size_t ntemplates, templates_cap;
    uint32_t *slots; /* open addressing over signatures: template id + 1, 0 empty */
    size_t slots_cap;
    uint64_t generation; /* bumped when templates are cleared */
    uint32_t stamp;

    /* scratch for one series */
    LabelPair *pairs;
    size_t pairs_cap, npairs;
    int32_t *found; /* per signature name, the pair index or -1 */
    uint8_t *sig;
    size_t sig_cap, sig_len;
    uint64_t sig_hash;
    LabelPair *merged;
    size_t merged_cap;
    uint8_t *out; /* encoded output labels of every view of one series */
    size_t out_cap;
} Templates;

void templates_init(Templates *t);
void templates_free(Templates *t);
void templates_clear(Templates *t);
/* Take the names and limits; 0, or -2 out of memory. */
int templates_configure(Templates *t, int nviews, int nrules, NameList signature,
                        const NameList *keep, int64_t max_labels, int64_t max_name_len,
                        int64_t max_value_len);

/* Parse one series' label bytes into t->pairs (sorted, empty values dropped) and its
 * signature into t->sig. 0; -1 when Python must plan it; -2 out of memory. */
int series_shape(Templates *t, const uint8_t *labels, size_t len);

int32_t template_find(const Templates *t, const uint8_t *sig, size_t len, uint64_t hash);
/* A template for the signature in t->sig that is not ready yet; its id, or -2. */
int32_t template_ask(Templates *t);
/* Register the planner's decisions; fixed[v] holds view v's encoded template labels (Python's
 * encode_labels form). 0; -1 for malformed fixed labels; -2 out of memory. */
int template_fill(Templates *t, int32_t id, int32_t kind, uint32_t feeds, int is_counter,
                  const int32_t *deps, const uint8_t *const *fixed, const size_t *fixed_len);

/* The encoded output labels of the parsed series (t->pairs) in view v under template tp,
 * appended to t->out at *offset (which moves past them). 0 or -2. */
int template_output(Templates *t, const Template *tp, int view, size_t *offset);

/* Label bytes in the plain form as pairs (sorted, empty values dropped); 0, -1 when not in
 * the plain form, -2 out of memory. */
int labels_parse_plain(const uint8_t *buf, size_t len, LabelPair **pairs, size_t *cap,
                       size_t *count);
/* One Label field as encode_labels writes it: its size, and writing it at p (returns the end). */
size_t label_encoded_size(uint32_t name_len, uint32_t value_len);
uint8_t *label_encode(uint8_t *p, const uint8_t *name, uint32_t name_len, const uint8_t *value,
                      uint32_t value_len);

#endif
