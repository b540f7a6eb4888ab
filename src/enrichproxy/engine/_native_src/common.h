/* Shared definitions of the native engine: integer helpers that match Python's arithmetic.
 *
 * The native engine must give bit-identical results to the Python reference engine, so every
 * integer operation that Python does on unbounded ints is done here in 128 bits where an
 * int64 could overflow (sentinels such as INT64_MIN take part in comparisons), and every
 * division rounds the way Python's // does.
 */
#ifndef ENRICHPROXY_NATIVE_COMMON_H
#define ENRICHPROXY_NATIVE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef __int128 i128;

/* The Python engine's "never": windows and times before any sample. */
#define EP_NEVER INT64_MIN

/* Python's a // b for b > 0. */
static inline i128 ep_floordiv(i128 a, int64_t b) {
    i128 q = a / b;
    if ((a % b) != 0 && a < 0) q -= 1;
    return q;
}

/* Python's -(-a // b) for b > 0: the window that holds time a. */
static inline i128 ep_ceildiv(i128 a, int64_t b) {
    i128 q = a / b;
    if ((a % b) != 0 && a > 0) q += 1;
    return q;
}

static inline int64_t ep_clamp64(i128 v) {
    if (v > (i128)INT64_MAX) return INT64_MAX;
    if (v < (i128)INT64_MIN) return INT64_MIN;
    return (int64_t)v;
}

/* The staleness marker is one NaN bit pattern; it is recognised by its bits only. */
#define EP_STALE_BITS UINT64_C(0x7ff0000000000002)

static inline uint64_t ep_bits(double v) {
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

static inline double ep_stale_nan(void) {
    uint64_t b = EP_STALE_BITS;
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* Encoded size of a protobuf varint, and writing one at p (returns the end). */
static inline size_t ep_varint_size(uint64_t value) {
    size_t n = 1;
    while (value >= 0x80) {
        value >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *ep_put_varint(uint8_t *p, uint64_t value) {
    while (value >= 0x80) {
        *p++ = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    *p++ = (uint8_t)value;
    return p;
}

/* Grow *ptr (holding *cap items of size item) to hold at least need items; 0 on success. */
int ep_grow(void **ptr, size_t *cap, size_t need, size_t item);

/* SipHash-1-3 of data under the process key: the series and group tables hash with it, so a
 * sender cannot choose label sets that all land in one bucket. */
uint64_t ep_hash(const uint8_t *data, size_t len);
void ep_hash_seed(const uint8_t key[16]);

/* math.fsum of parts, exactly as CPython computes it. Returns 0, or 1 where math.fsum raises
 * (intermediate overflow, or inf + -inf): the caller then sums left to right. */
int ep_fsum(const double *parts, size_t n, double *out);
double ep_exact_sum(const double *parts, size_t n);

#endif
