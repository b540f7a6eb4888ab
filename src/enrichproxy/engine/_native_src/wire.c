/* The decoder accepts and refuses exactly what the Python reference decoder
 * (enrichproxy.wire.codec.decode_write_request) does, and produces the same series: same label
 * bytes, same samples. Field numbers: WriteRequest{timeseries=1, metadata=3},
 * TimeSeries{labels=1, samples=2, exemplars=3, histograms=4}, Sample{value=1, timestamp=2}.
 *
 * Varints are read as Python reads them: up to ten bytes, the value unbounded. Bits past the
 * 64th are reported as an overflow, so that a length or tag that Python sees as huge is not
 * mistaken for a small one; timestamps keep their low 64 bits, as protobuf's int64 does.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "wire.h"

enum { WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5 };
#define TAG_TIMESERIES 0x0A
#define TAG_METADATA 0x1A
#define TAG_LABEL 0x0A
#define TAG_SAMPLE 0x12
#define TAG_EXEMPLAR 0x1A
#define TAG_HISTOGRAM 0x22
#define TAG_VALUE 0x09
#define TAG_TIMESTAMP 0x10


#define FAIL(message)                                                                          \
    do {                                                                                       \
        batch->error = (message);                                                              \
        return -1;                                                                             \
    } while (0)

/* Read a varint at *pos, stopping at end; -1 when truncated or longer than ten bytes. */
static inline int read_varint(const uint8_t *buf, size_t *pos, size_t end, Varint *out) {
    uint64_t result = 0;
    int overflow = 0;
    unsigned shift = 0;
    size_t p = *pos;
    while (p < end) {
        uint8_t byte = buf[p++];
        uint64_t bits = byte & 0x7F;
        if (shift < 63) {
            result |= bits << shift;
            if (shift > 57 && (bits >> (64 - shift)) != 0) overflow = 1;
        } else if (shift == 63) {
            result |= bits << 63;
            if (bits >> 1) overflow = 1;
        }
        if (byte < 0x80) {
            *pos = p;
            out->value = result;
            out->overflow = overflow;
            return 0;
        }
        shift += 7;
        if (shift >= 70) break;
    }
    return -1;
}

/* A tag as the reference reads it: the byte itself when below 0x80, else a varint. */
static inline int read_tag(const uint8_t *buf, size_t *pos, size_t end, Varint *tag) {
    uint8_t byte = buf[*pos];
    if (byte < 0x80) {
        *pos += 1;
        tag->value = byte;
        tag->overflow = 0;
        return 0;
    }
    return read_varint(buf, pos, end, tag);
}

static inline int tag_is(const Varint *tag, uint64_t value) {
    return !tag->overflow && tag->value == value;
}

/* Position after a field we do not read. */
static int skip_field(const uint8_t *buf, size_t *pos, size_t end, const Varint *tag,
                      Batch *batch) {
    Varint v;
    switch (tag->value & 7) {
    case WIRE_VARINT:
        if (read_varint(buf, pos, end, &v) < 0) FAIL("protobuf: truncated or overlong varint");
        return 0;
    case WIRE_I64:
        if (end - *pos < 8) FAIL("protobuf: field runs past the end of its message");
        *pos += 8;
        return 0;
    case WIRE_LEN:
        if (read_varint(buf, pos, end, &v) < 0) FAIL("protobuf: truncated or overlong varint");
        if (v.overflow || v.value > end - *pos)
            FAIL("protobuf: field runs past the end of its message");
        *pos += v.value;
        return 0;
    case WIRE_I32:
        if (end - *pos < 4) FAIL("protobuf: field runs past the end of its message");
        *pos += 4;
        return 0;
    default:
        FAIL("protobuf: unsupported wire type");
    }
}

static int decode_sample(const uint8_t *buf, size_t pos, size_t end, Batch *batch) {
    double value = 0.0;
    uint64_t timestamp = 0;
    while (pos < end) {
        Varint tag;
        if (read_tag(buf, &pos, end, &tag) < 0) FAIL("protobuf: truncated or overlong varint");
        if (tag_is(&tag, TAG_VALUE)) {
            if (end - pos < 8) FAIL("protobuf: truncated sample value");
            memcpy(&value, buf + pos, 8);
            pos += 8;
        } else if (tag_is(&tag, TAG_TIMESTAMP)) {
            Varint v;
            if (read_varint(buf, &pos, end, &v) < 0)
                FAIL("protobuf: truncated or overlong varint");
            timestamp = v.value;
        } else if (skip_field(buf, &pos, end, &tag, batch) < 0) {
            return -1;
        }
    }
    if (ep_grow((void **)&batch->samples, &batch->samples_cap, batch->nsamples + 1,
                sizeof(Sample)) < 0)
        return -2;
    Sample *sample = &batch->samples[batch->nsamples++];
    sample->timestamp_ms = (int64_t)timestamp;
    sample->value = value;
    return 0;
}

/* Append bytes to the joined-labels buffer. */
static int join(Batch *batch, const uint8_t *data, size_t len) {
    if (len == 0) return 0;
    if (ep_grow((void **)&batch->joined, &batch->joined_cap, batch->njoined + len, 1) < 0)
        return -2;
    memcpy(batch->joined + batch->njoined, data, len);
    batch->njoined += len;
    return 0;
}

static int decode_series(const uint8_t *buf, size_t pos, size_t end, Batch *batch) {
    /* Senders put every label first: the usual series is one run of label fields. */
    size_t start = pos;
    while (pos < end && buf[pos] == TAG_LABEL) {
        if (pos + 1 >= end) FAIL("protobuf: label runs past the end of its timeseries");
        uint8_t length = buf[pos + 1];
        if (length < 0x80) {
            pos += 2 + (size_t)length;
        } else {
            Varint v;
            pos += 1;
            if (read_varint(buf, &pos, end, &v) < 0)
                FAIL("protobuf: truncated or overlong varint");
            if (v.overflow || v.value > end - pos)
                FAIL("protobuf: label runs past the end of its timeseries");
            pos += v.value;
        }
    }
    if (pos > end) FAIL("protobuf: label runs past the end of its timeseries");
    if (ep_grow((void **)&batch->series, &batch->series_cap, batch->nseries + 1,
                sizeof(SeriesRef)) < 0)
        return -2;
    size_t index = batch->nseries++;
    SeriesRef *ref = &batch->series[index];
    ref->labels_start = start;
    ref->labels_len = (uint32_t)(pos - start);
    ref->joined = 0;
    ref->first_sample = (uint32_t)batch->nsamples;
    ref->entry = -1;
    while (pos < end) {
        Varint tag;
        if (read_tag(buf, &pos, end, &tag) < 0) FAIL("protobuf: truncated or overlong varint");
        if (tag_is(&tag, TAG_SAMPLE)) {
            Varint length;
            if (pos >= end) FAIL("protobuf: truncated message");
            if (read_varint(buf, &pos, end, &length) < 0)
                FAIL("protobuf: truncated or overlong varint");
            if (length.overflow || length.value > end - pos)
                FAIL("protobuf: sample runs past the end of its timeseries");
            int status = decode_sample(buf, pos, pos + length.value, batch);
            if (status < 0) return status;
            pos += length.value;
        } else if (tag_is(&tag, TAG_LABEL)) {
            /* A label after other fields: legal, rare. Its bytes (from the tag's last byte, as
             * the reference slices them) go after the first run, in a buffer of their own. */
            size_t field_start = pos - 1;
            if (skip_field(buf, &pos, end, &tag, batch) < 0) return -1;
            ref = &batch->series[index];
            if (!ref->joined) {
                size_t joined_start = batch->njoined;
                if (join(batch, buf + ref->labels_start, ref->labels_len) < 0) return -2;
                ref = &batch->series[index];
                ref->joined = 1;
                ref->labels_start = joined_start;
            }
            if (join(batch, buf + field_start, pos - field_start) < 0) return -2;
            ref = &batch->series[index];
            ref->labels_len += (uint32_t)(pos - field_start);
        } else {
            if (tag_is(&tag, TAG_EXEMPLAR)) {
                batch->exemplars++;
            } else if (tag_is(&tag, TAG_HISTOGRAM)) {
                batch->histograms++;
            }
            if (skip_field(buf, &pos, end, &tag, batch) < 0) return -1;
        }
    }
    ref = &batch->series[index];
    ref->samples = (uint32_t)(batch->nsamples - ref->first_sample);
    return 0;
}

int wire_decode(const uint8_t *buf, size_t len, Batch *batch) {
    batch_clear(batch);
    size_t pos = 0, end = len;
    while (pos < end) {
        if (buf[pos] != TAG_TIMESERIES) {
            Varint tag;
            if (read_tag(buf, &pos, end, &tag) < 0) FAIL("protobuf: truncated or overlong varint");
            if (tag_is(&tag, TAG_METADATA)) {
                Varint length;
                if (read_varint(buf, &pos, end, &length) < 0)
                    FAIL("protobuf: truncated or overlong varint");
                if (length.overflow || length.value > end - pos)
                    FAIL("protobuf: metadata runs past the end of the request");
                if (ep_grow((void **)&batch->metadata, &batch->metadata_cap, batch->nmetadata + 1,
                            sizeof(Span)) < 0)
                    return -2;
                batch->metadata[batch->nmetadata].start = pos;
                batch->metadata[batch->nmetadata].stop = pos + length.value;
                batch->nmetadata++;
                pos += length.value;
                continue;
            }
            if (!tag.overflow && (tag.value >> 3) == 0) FAIL("protobuf: field number 0");
            if (skip_field(buf, &pos, end, &tag, batch) < 0) return -1;
            continue;
        }
        Varint length;
        pos += 1;
        if (pos >= end) FAIL("protobuf: truncated message");
        if (read_varint(buf, &pos, end, &length) < 0) FAIL("protobuf: truncated or overlong varint");
        if (length.overflow || length.value > end - pos)
            FAIL("protobuf: timeseries runs past the end of the request");
        int status = decode_series(buf, pos, pos + length.value, batch);
        if (status < 0) return status;
        pos += length.value;
    }
    return 0;
}

void batch_clear(Batch *batch) {
    batch->nseries = batch->nsamples = batch->nmetadata = batch->njoined = 0;
    batch->nsymbols = batch->nrefs = batch->ntypes = 0;
    batch->exemplars = batch->histograms = 0;
    batch->error = NULL;
}

void batch_free(Batch *batch) {
    free(batch->series);
    free(batch->samples);
    free(batch->metadata);
    free(batch->joined);
    free(batch->symbols);
    free(batch->refs);
    free(batch->types);
    free(batch->last_type);
    memset(batch, 0, sizeof *batch);
}

/* --- remote write 2.0 ---------------------------------------------------------------------------
 * io.prometheus.write.v2.Request{symbols=4, timeseries=5}, TimeSeries{labels_refs=1 (packed,
 * or one varint per field), samples=2, histograms=3, exemplars=4, metadata=5, ...},
 * Metadata{type=1, help_ref=3, unit_ref=4}. The checks run in the reference's order
 * (enrichproxy.wire.v2), so both refuse the same requests for the same first reason. */
#define V2_TAG_SYMBOL 0x22
#define V2_TAG_TIMESERIES 0x2A
#define V2_TAG_REFS_PACKED 0x0A
#define V2_TAG_REFS_SINGLE 0x08
#define V2_TAG_SAMPLE 0x12
#define V2_TAG_HISTOGRAM 0x1A
#define V2_TAG_EXEMPLAR 0x22
#define V2_TAG_METADATA 0x2A
#define V2_TAG_TYPE 0x08
#define V2_TAG_HELP_REF 0x18
#define V2_TAG_UNIT_REF 0x20
#define V2_MAX_TYPE 7 /* METRIC_TYPE_STATESET: a larger type reads as unspecified */

#define FAILF(...)                                                                             \
    do {                                                                                       \
        snprintf(batch->message, sizeof batch->message, __VA_ARGS__);                          \
        batch->error = batch->message;                                                         \
        return -1;                                                                             \
    } while (0)

/* A reference keeps its overflow flag: one past 64 bits is out of range whatever its low bits
 * (which are what an error message shows, as the reference shows them). */
static inline int push_ref(Batch *batch, const Varint *ref) {
    if (batch->nrefs == batch->refs_cap &&
        ep_grow((void **)&batch->refs, &batch->refs_cap, batch->nrefs + 1, sizeof(Varint)) < 0)
        return -2;
    batch->refs[batch->nrefs++] = *ref;
    return 0;
}

static inline int ref_in_range(const Varint *v, size_t count) {
    return !v->overflow && v->value < count;
}

/* Bounds of a LEN field's payload at *pos: [*pos, *stop). */
static int len_field(const uint8_t *buf, size_t *pos, size_t end, size_t *stop, const char *what,
                     Batch *batch) {
    Varint length;
    if (read_varint(buf, pos, end, &length) < 0) FAIL("protobuf: truncated or overlong varint");
    if (length.overflow || length.value > end - *pos)
        FAILF("protobuf: %s runs past the end of its message", what);
    *stop = *pos + length.value;
    return 0;
}

/* The size of the remote write 1.0 Label field of a name and a value: tag, length, then the
 * name and, when not empty, the value (protobuf leaves an empty string out). */
static inline size_t label_size(size_t name_len, size_t value_len, size_t *inner) {
    *inner = 1 + ep_varint_size(name_len) + name_len;
    if (value_len) *inner += 1 + ep_varint_size(value_len) + value_len;
    return 1 + ep_varint_size(*inner) + *inner;
}

static inline uint8_t *put_label(uint8_t *p, const uint8_t *buf, const Span *name,
                                 const Span *value) {
    size_t name_len = name->stop - name->start, value_len = value->stop - value->start, inner;
    label_size(name_len, value_len, &inner);
    *p++ = 0x0A;
    p = ep_put_varint(p, inner);
    *p++ = 0x0A;
    p = ep_put_varint(p, name_len);
    memcpy(p, buf + name->start, name_len);
    p += name_len;
    if (value_len) {
        *p++ = 0x12;
        p = ep_put_varint(p, value_len);
        memcpy(p, buf + value->start, value_len);
        p += value_len;
    }
    return p;
}

static int decode_v2_series(const uint8_t *buf, size_t pos, size_t end, size_t index,
                            Batch *batch) {
    uint64_t type = 0;
    Varint help = {0, 0}, unit = {0, 0};
    int type_overflow = 0;
    batch->nrefs = 0;
    if (ep_grow((void **)&batch->series, &batch->series_cap, batch->nseries + 1,
                sizeof(SeriesRef)) < 0)
        return -2;
    size_t first_sample = batch->nsamples;
    while (pos < end) {
        Varint tag;
        if (read_tag(buf, &pos, end, &tag) < 0) FAIL("protobuf: truncated or overlong varint");
        size_t stop;
        if (tag_is(&tag, V2_TAG_SAMPLE)) {
            if (len_field(buf, &pos, end, &stop, "sample", batch) < 0) return -1;
            int status = decode_sample(buf, pos, stop, batch);
            if (status < 0) return status;
            pos = stop;
        } else if (tag_is(&tag, V2_TAG_REFS_PACKED)) {
            if (len_field(buf, &pos, end, &stop, "labels_refs", batch) < 0) return -1;
            while (pos < stop) {
                Varint ref = {buf[pos], 0};
                if (ref.value < 0x80) {
                    pos++; /* a one-byte varint: every ref below 128 */
                } else if (read_varint(buf, &pos, stop, &ref) < 0) {
                    FAIL("protobuf: truncated or overlong varint");
                }
                if (push_ref(batch, &ref) < 0) return -2;
            }
        } else if (tag_is(&tag, V2_TAG_REFS_SINGLE)) {
            Varint ref;
            if (read_varint(buf, &pos, end, &ref) < 0)
                FAIL("protobuf: truncated or overlong varint");
            if (push_ref(batch, &ref) < 0) return -2;
        } else if (tag_is(&tag, V2_TAG_METADATA)) {
            if (len_field(buf, &pos, end, &stop, "metadata", batch) < 0) return -1;
            while (pos < stop) {
                Varint inner, v;
                if (read_tag(buf, &pos, stop, &inner) < 0)
                    FAIL("protobuf: truncated or overlong varint");
                if (tag_is(&inner, V2_TAG_TYPE) || tag_is(&inner, V2_TAG_HELP_REF) ||
                    tag_is(&inner, V2_TAG_UNIT_REF)) {
                    if (read_varint(buf, &pos, stop, &v) < 0)
                        FAIL("protobuf: truncated or overlong varint");
                    if (inner.value == V2_TAG_TYPE) {
                        type = v.value;
                        type_overflow = v.overflow;
                    } else if (inner.value == V2_TAG_HELP_REF) {
                        help = v;
                    } else {
                        unit = v;
                    }
                } else if (skip_field(buf, &pos, stop, &inner, batch) < 0) {
                    return -1;
                }
            }
        } else {
            if (tag_is(&tag, V2_TAG_HISTOGRAM)) {
                batch->histograms++;
            } else if (tag_is(&tag, V2_TAG_EXEMPLAR)) {
                batch->exemplars++;
            }
            if (skip_field(buf, &pos, end, &tag, batch) < 0) return -1;
        }
    }
    size_t count = batch->nsymbols;
    if (!ref_in_range(&help, count))
        FAILF("remote write 2.0: timeseries[%zu].metadata.help_ref = %" PRIu64
              " is out of range: the request has %zu symbols",
              index, help.value, count);
    if (!ref_in_range(&unit, count))
        FAILF("remote write 2.0: timeseries[%zu].metadata.unit_ref = %" PRIu64
              " is out of range: the request has %zu symbols",
              index, unit.value, count);
    size_t nrefs = batch->nrefs;
    if (nrefs % 2)
        FAILF("remote write 2.0: timeseries[%zu] has %zu labels_refs: they must come in pairs",
              index, nrefs);
    /* Every pair checked, in the reference's order, and the labels' size summed; then the
     * labels written out at once. */
    int64_t name_ref = -1;
    size_t total = 0;
    for (size_t at = 0; at < nrefs; at += 2) {
        const Varint *name_ref_at = &batch->refs[at], *value_ref_at = &batch->refs[at + 1];
        if (!ref_in_range(name_ref_at, count))
            FAILF("remote write 2.0: timeseries[%zu].labels_refs[%zu] = %" PRIu64
                  " is out of range: the request has %zu symbols",
                  index, at, name_ref_at->value, count);
        if (!ref_in_range(value_ref_at, count))
            FAILF("remote write 2.0: timeseries[%zu].labels_refs[%zu] = %" PRIu64
                  " is out of range: the request has %zu symbols",
                  index, at + 1, value_ref_at->value, count);
        const Span *name = &batch->symbols[name_ref_at->value];
        const Span *value = &batch->symbols[value_ref_at->value];
        size_t name_len = name->stop - name->start, inner;
        if (name_len == 0)
            FAILF("remote write 2.0: timeseries[%zu].labels_refs[%zu] names a label with the "
                  "empty string",
                  index, at);
        total += label_size(name_len, value->stop - value->start, &inner);
        if (name_ref < 0 && name_len == 8 && memcmp(buf + name->start, "__name__", 8) == 0)
            name_ref = (int64_t)value_ref_at->value;
    }
    size_t labels_start = batch->njoined;
    /* References let a small request name a long string many times: written out, the labels
     * may take no more than a request may (max_decoded_bytes). */
    if (total > batch->max_label_bytes - labels_start)
        FAILF("remote write 2.0: written out, the request's labels take more than %zu bytes "
              "(max_decoded_bytes)",
              batch->max_label_bytes);
    if (ep_grow((void **)&batch->joined, &batch->joined_cap, labels_start + total, 1) < 0)
        return -2;
    uint8_t *p = batch->joined + labels_start;
    for (size_t at = 0; at < nrefs; at += 2)
        p = put_label(p, buf, &batch->symbols[batch->refs[at].value],
                      &batch->symbols[batch->refs[at + 1].value]);
    batch->njoined = labels_start + total;
    SeriesRef *ref = &batch->series[batch->nseries++];
    ref->labels_start = labels_start;
    ref->labels_len = (uint32_t)(batch->njoined - labels_start);
    ref->joined = 1;
    ref->first_sample = (uint32_t)first_sample;
    ref->samples = (uint32_t)(batch->nsamples - first_sample);
    ref->entry = -1;
    if (type_overflow || type > V2_MAX_TYPE) type = 0;
    if (type && name_ref >= 0 && batch->last_type[name_ref] != type) {
        batch->last_type[name_ref] = (uint8_t)type;
        if (ep_grow((void **)&batch->types, &batch->types_cap, batch->ntypes + 1,
                    sizeof(SeriesType)) < 0)
            return -2;
        SeriesType *entry = &batch->types[batch->ntypes++];
        entry->name_start = batch->symbols[name_ref].start;
        entry->name_len = (uint32_t)(batch->symbols[name_ref].stop - batch->symbols[name_ref].start);
        entry->type = (uint32_t)type;
    }
    return 0;
}

int wire_decode_v2(const uint8_t *buf, size_t len, Batch *batch) {
    batch_clear(batch);
    size_t pos = 0, end = len;
    /* First pass: the symbols (they may follow the series that use them) and the series'
     * bounds, kept in batch->metadata for the second pass. */
    while (pos < end) {
        Varint tag;
        size_t stop;
        if (read_tag(buf, &pos, end, &tag) < 0) FAIL("protobuf: truncated or overlong varint");
        if (tag_is(&tag, V2_TAG_SYMBOL) || tag_is(&tag, V2_TAG_TIMESERIES)) {
            int symbol = tag.value == V2_TAG_SYMBOL;
            if (len_field(buf, &pos, end, &stop, symbol ? "symbol" : "timeseries", batch) < 0)
                return -1;
            Span **spans = symbol ? &batch->symbols : &batch->metadata;
            size_t *n = symbol ? &batch->nsymbols : &batch->nmetadata;
            size_t *cap = symbol ? &batch->symbols_cap : &batch->metadata_cap;
            if (ep_grow((void **)spans, cap, *n + 1, sizeof(Span)) < 0) return -2;
            (*spans)[*n].start = pos;
            (*spans)[*n].stop = stop;
            (*n)++;
            pos = stop;
            continue;
        }
        if (!tag.overflow && (tag.value >> 3) == 0) FAIL("protobuf: field number 0");
        if (skip_field(buf, &pos, end, &tag, batch) < 0) return -1;
    }
    if (batch->nsymbols && batch->symbols[0].stop != batch->symbols[0].start)
        FAIL("remote write 2.0: symbols[0] must be the empty string");
    if (!batch->nsymbols && batch->nmetadata)
        FAIL("remote write 2.0: the request has timeseries but no symbols (symbols[0] must be "
             "the empty string)");
    if (batch->nsymbols > batch->last_type_cap) {
        free(batch->last_type);
        batch->last_type = malloc(batch->nsymbols);
        if (batch->last_type == NULL) {
            batch->last_type_cap = 0;
            return -2;
        }
        batch->last_type_cap = batch->nsymbols;
    }
    if (batch->nsymbols) memset(batch->last_type, 0, batch->nsymbols);
    size_t nspans = batch->nmetadata;
    for (size_t i = 0; i < nspans; i++) {
        int status = decode_v2_series(buf, batch->metadata[i].start, batch->metadata[i].stop, i,
                                      batch);
        if (status < 0) return status;
    }
    batch->nmetadata = 0; /* the series' bounds, not metadata: 2.0 has no metadata requests */
    return 0;
}
