/* The decoder accepts and refuses exactly what the Python reference decoder
 * (enrichproxy.wire.codec.decode_write_request) does, and produces the same series: same label
 * bytes, same samples. Field numbers: WriteRequest{timeseries=1, metadata=3},
 * TimeSeries{labels=1, samples=2, exemplars=3, histograms=4}, Sample{value=1, timestamp=2}.
 *
 * Varints are read as Python reads them: up to ten bytes, the value unbounded. Bits past the
 * 64th are reported as an overflow, so that a length or tag that Python sees as huge is not
 * mistaken for a small one; timestamps keep their low 64 bits, as protobuf's int64 does.
 */
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

typedef struct {
    uint64_t value;
    int overflow; /* the varint's value does not fit in 64 bits */
} Varint;

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
    batch->exemplars = batch->histograms = 0;
    batch->error = NULL;
}

void batch_free(Batch *batch) {
    free(batch->series);
    free(batch->samples);
    free(batch->metadata);
    free(batch->joined);
    memset(batch, 0, sizeof *batch);
}
