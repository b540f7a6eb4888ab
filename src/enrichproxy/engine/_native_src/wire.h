/* Remote write 1.0 WriteRequest decoding into flat arrays (no Python object per series). */
#ifndef ENRICHPROXY_NATIVE_WIRE_H
#define ENRICHPROXY_NATIVE_WIRE_H

#include "common.h"

typedef struct {
    int64_t timestamp_ms;
    double value;
} Sample;

typedef struct {
    size_t labels_start; /* offset into the request, or into Batch.joined when joined */
    uint32_t labels_len;
    uint8_t joined;      /* labels after other fields were appended: see Batch.joined */
    uint32_t first_sample;
    uint32_t samples;
    uint64_t hash;
    int32_t entry;       /* the series table entry, once resolved; -1 before */
} SeriesRef;

typedef struct {
    size_t start, stop;
} Span;

typedef struct {
    uint64_t value;
    int overflow; /* the varint's value does not fit in 64 bits */
} Varint;

/* A remote write 2.0 series' (metric name, type): the name symbol's bytes in the request. */
typedef struct {
    size_t name_start;
    uint32_t name_len;
    uint32_t type;
} SeriesType;

/* One decoded request. Reused across requests: clear it, do not free it. */
typedef struct {
    SeriesRef *series;
    size_t nseries, series_cap;
    Sample *samples;
    size_t nsamples, samples_cap;
    Span *metadata;
    size_t nmetadata, metadata_cap;
    uint8_t *joined;
    size_t njoined, joined_cap;
    int64_t exemplars, histograms;
    const char *error; /* why decoding failed (a static string, or message) */
    /* Remote write 2.0 only: the symbols table, one series' refs, the types handed on. */
    Span *symbols;
    size_t nsymbols, symbols_cap;
    Varint *refs;
    size_t nrefs, refs_cap;
    SeriesType *types;
    size_t ntypes, types_cap;
    uint8_t *last_type; /* per name symbol, the type last handed on (0: none) */
    size_t max_label_bytes; /* the labels written out may take this much at most */
    size_t last_type_cap;
    char message[192];
} Batch;

void batch_clear(Batch *batch);
void batch_free(Batch *batch);

/* Decode buf into batch; 0 on success, -1 with batch->error set (or -2: out of memory). */
int wire_decode(const uint8_t *buf, size_t len, Batch *batch);

/* The same for a remote write 2.0 Request: every series' labels are written out in 1.0's
 * Label form into batch->joined (as enrichproxy.wire.v2.decode_v2_request does), and the
 * per-series metadata types listed in batch->types. */
int wire_decode_v2(const uint8_t *buf, size_t len, Batch *batch);

static inline const uint8_t *series_labels(const Batch *batch, const uint8_t *buf,
                                           const SeriesRef *ref) {
    return (ref->joined ? batch->joined : buf) + ref->labels_start;
}

#endif
